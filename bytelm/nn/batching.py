"""Running a stack one example at a time where that is faster (XLA on CPU).

XLA:CPU keeps whole-batch intermediates in main memory: the B*H*T*T attention scores (134 MB at
8 x 1024 bytes, 4 heads) and the B*T*F feed-forward activations, streamed through several times.
One example's intermediates fit in cache. Measured on the first 2-core CI machine, `mini`
preset, 8 x 1024 bytes: the encoder takes 1.05 s batched and 0.4 s example by example
(eval/speed.py). On accelerators the batched form is the fast one, so the loop is used on CPU
only.

Whether it pays depends on the CPU's caches, and so does whether each example's forward pass is
better recomputed for the backward pass (`jax.checkpoint`) than kept: on that first machine the
recomputation won (3.3 s -> 3.0 s a train step); on a Zen 4 EPYC the two are within a few
percent, in either order from run to run, and batching costs 1.17x. There the scores were the
part that did not fit: running only the attention kernel example by example, the layers' matmuls
over the whole batch, made a `mini` train step 4.7 s against 5.0 s for the whole stack in the
loop (mode "attention_loop"). So each machine decides for itself: `calibrate()` times a model
the four ways (MODES), forward and backward, and keeps the fastest in the user's cache under
`bytelm.machine.key()` (CPU model and flags, jax, XLA_FLAGS: an answer from another CPU is never
reused). The trainer and eval/speed.py calibrate before they compile; `choice()` reads the
answer, or $BYTELM_PER_EXAMPLE where a user forces one. All four compute the same numbers up to
float rounding (tests/test_batching.py).

Forward passes alone may prefer another mode than gradients (on that EPYC greedy generation
took 1.18 s with the whole stack in the loop, 1.26-1.34 s with attention_loop, the gradients'
choice). So the calibration also times a forward pass, and `choice()` answers for gradients
while a gradient is traced inside `for_gradients()` (the trainer's step), for forward passes
elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable

import jax

from bytelm import machine, timing, user_cache

# Below this length the per-example matmuls get too small for the loop to pay off.
MIN_LENGTH = 128
ENV = "BYTELM_PER_EXAMPLE"  # one of MODES forces it; unset or "auto": calibrated
# batched: the whole batch at once; loop: one example at a time, its activations kept for the
# backward pass; loop_remat: one at a time, its forward pass recomputed for the backward pass;
# attention_loop: the layers over the whole batch, only the attention kernel (its T*S scores)
# one example at a time.
MODES = ("batched", "loop", "loop_remat", "attention_loop")
DEFAULT = "loop_remat"  # where no calibration was made: what won where it was first measured
_forced: str | None = None  # set by `forced`
_for_gradients = False  # set by `for_gradients`
_CALIBRATION = "per_example_v6"  # the file's name in the cache; bump when the measure or the
# kernels it chooses between change (v5: bf16 products, one-exp softmax; v6: the fused CPU
# attention and 2-D Dense products, with which the whole batch at once became the fastest for
# gradients on the AMX Xeon)


def loop_is_faster(length: int, dropout_active: bool) -> bool:
  """Whether a stack should run one example at a time (`map_over_batch(..., loop=True)`).
  Dropout needs its RNG state outside the loop."""
  return _may_loop(length) and not dropout_active and choice() in ("loop", "loop_remat")


def attention_loop_is_faster(length: int) -> bool:
  """Whether the attention kernel of a batched stack should run one example at a time."""
  return _may_loop(length) and choice() == "attention_loop"


def _may_loop(length: int) -> bool:
  # With several devices the batch is sharded; a loop over it would gather it onto each device.
  return jax.default_backend() == "cpu" and jax.device_count() == 1 and length >= MIN_LENGTH


def choice() -> str:
  """How to run a stack over a batch on this machine (one of MODES, for one CPU device):
  $BYTELM_PER_EXAMPLE where it names one, else this machine's calibration (`calibrate`) where
  one was made, for gradients inside `for_gradients()` and for forward passes outside it, else
  DEFAULT."""
  if _forced is not None:  # inside `forced`: calibration, tests
    return _forced
  by_user = _by_user()
  if by_user is not None:
    return by_user
  found = stored()
  if found is None:
    return DEFAULT
  return found["mode"] if _for_gradients else found.get("forward_mode", found["mode"])


@contextlib.contextmanager
def for_gradients():
  """Within it, choice() answers for a gradient's computation: enter it inside the function
  that is traced (a train step's body), so that the model is traced the gradients' way."""
  global _for_gradients
  before, _for_gradients = _for_gradients, True
  try:
    yield
  finally:
    _for_gradients = before


def _by_user() -> str | None:
  """The mode $BYTELM_PER_EXAMPLE forces, or None where it is unset or "auto"."""
  by_user = os.environ.get(ENV, "auto").strip().lower()
  if by_user != "auto" and by_user not in MODES:
    raise ValueError(f"{ENV} must be one of {', '.join(MODES)} or auto (calibrated on this "
                     f"machine), got {by_user!r}")
  return None if by_user == "auto" else by_user


def stored() -> dict | None:
  """This machine's calibration (see `calibrate`), or None where none was made here."""
  try:
    return json.loads(_path().read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def calibrate(build: Callable[[], Callable[[], object]],
              build_forward: Callable[[], Callable[[], object]] | None = None,
              repeats: int = 2) -> dict:
  """Times a workload in each of MODES and keeps the fastest for this machine.

  build() returns a function that runs the workload once and waits for it (a model's loss and
  gradients at a shape where the choice matters, traced inside `for_gradients()`:
  `bytelm.models.calibration`); it is called once per mode, inside `forced(mode)`, so that what
  it compiles runs that way. build_forward, where given, does the same for a forward pass. The
  runs alternate between modes (`bytelm.timing.compare`), `repeats` rounds after a warm-up.
  {"mode": the fastest for gradients, "seconds": {mode: median s}, "forward_mode",
  "forward_seconds", ...} is kept in the user's cache under this machine's key and returned;
  where one is kept already it is returned as it is, nothing measured. Not on accelerators: no
  choice there."""
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    return {"mode": "batched", "reason": "the loop is for one CPU device only"}
  found = stored()
  if found is not None:
    return found
  result = {}
  # A forward pass recomputes nothing, so there loop_remat runs as loop: not timed twice.
  forward_modes = tuple(m for m in MODES if m != "loop_remat")
  for prefix, workload, modes in (("", build, MODES), ("forward_", build_forward, forward_modes)):
    if workload is None:
      continue
    runs = {}
    for mode in modes:
      with forced(mode):  # traced and compiled in this mode
        runs[mode] = workload()
        runs[mode]()
    seconds = {mode: round(t, 4) for mode, t in timing.compare(runs, repeats).items()}
    result.update({f"{prefix}mode": min(seconds, key=seconds.get), f"{prefix}seconds": seconds})
  result.update(machine=machine.describe(), jax=jax.__version__)
  user_cache.store_json(_path(), result)
  return result


@contextlib.contextmanager
def forced(mode: str):
  """Within it, choice() is `mode` (what is traced then runs that way): for calibration and
  tests."""
  global _forced
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  before, _forced = _forced, mode
  try:
    yield
  finally:
    _forced = before


def prepare(build: Callable[[], Callable[[], object]],
            build_forward: Callable[[], Callable[[], object]] | None = None) -> str:
  """Calibrates (`calibrate(build, build_forward)`) where the choice is this machine's to make
  (one CPU device, not forced by $BYTELM_PER_EXAMPLE, not calibrated yet) before anything is
  compiled; returns a line saying what was chosen and why, for the log."""
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    return "examples batched (the per-example loop is for one CPU device)"
  by_user = _by_user()
  if by_user is not None:
    return f"stacks run {by_user} ({ENV}={by_user})"
  found = calibrate(build, build_forward)
  times = ", ".join(f"{m} {t:.3f} s" for m, t in found["seconds"].items())
  line = f"stacks run {found['mode']} for gradients ({times})"
  if "forward_mode" in found:
    times = ", ".join(f"{m} {t:.3f} s" for m, t in found["forward_seconds"].items())
    line += f", {found['forward_mode']} for forward passes ({times})"
  return f"{line}: calibrated on this machine ({ENV}={'|'.join(MODES)} forces one)"


def _path():
  return user_cache.root() / "calibration" / f"{_CALIBRATION}-{machine.key()}.json"


def map_over_batch(fn, *args_B, loop: bool):
  """fn(*args_B), computed one example at a time with `lax.map` when `loop` is true.

  Every array in args_B has the batch as its leading axis (None entries are passed through);
  fn sees a batch of one and must not mutate module state.

  In the loop each example's forward pass is recomputed for its backward pass
  (`jax.checkpoint`) where this machine's choice is "loop_remat": where stacking every
  example's activations costs more memory traffic than the recomputation costs arithmetic.
  Forward-only use pays nothing for it.
  """
  if not loop or args_B[0].shape[0] == 1:
    return fn(*args_B)

  def one_example(args):
    return fn(*jax.tree.map(lambda x: x[None], args))
  if choice() == "loop_remat":
    one_example = jax.checkpoint(one_example)

  def one(args):
    return jax.tree.map(lambda y: y[0], one_example(args))

  return jax.lax.map(one, args_B)
