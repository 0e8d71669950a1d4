"""Running a stack one example at a time where that is faster (XLA on CPU).

XLA:CPU keeps whole-batch intermediates in main memory: the B*H*T*T attention scores (134 MB at
8 x 1024 bytes, 4 heads) and the B*T*F feed-forward activations, streamed through several times.
One example's intermediates fit in cache. Measured on the first 2-core CI machine, `mini`
preset, 8 x 1024 bytes: the encoder takes 1.05 s batched and 0.4 s example by example
(eval/speed.py). On accelerators the batched form is the fast one, so the loop is used on CPU
only.

Whether it pays depends on the CPU's caches, so each machine decides for itself: `calibrate()`
times a T5-sized stack both ways, forward and backward, and keeps the answer in the user's
cache under `bytelm.machine.key()` (CPU model and flags, jax, XLA_FLAGS: an answer from another
CPU is never reused). The trainer and eval/speed.py calibrate before they compile; `choice()`
reads the answer, or $BYTELM_PER_EXAMPLE (1: loop, 0: batched) where a user forces it. The two
forms compute the same numbers up to float rounding (tests/test_batching.py).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from bytelm import machine, user_cache

# Below this length the per-example matmuls get too small for the loop to pay off.
MIN_LENGTH = 128
ENV = "BYTELM_PER_EXAMPLE"  # "1" or "0" forces the choice; unset or "auto": calibrated
_CALIBRATION = "per_example_v1"  # the file's name in the cache; bump when the measure changes


def loop_is_faster(length: int, dropout_active: bool) -> bool:
  """Whether `map_over_batch` should loop. Dropout needs its RNG state outside the loop."""
  # With several devices the batch is sharded; a loop over it would gather it onto each device.
  return (jax.default_backend() == "cpu" and jax.device_count() == 1 and length >= MIN_LENGTH
          and not dropout_active and choice())


def choice() -> bool:
  """Whether to loop over examples on this machine (CPU, one device): $BYTELM_PER_EXAMPLE where
  it is 1 or 0, else this machine's calibration (`calibrate`) where one was made, else True
  (what won where it was first measured)."""
  forced = os.environ.get(ENV, "auto").strip().lower()
  if forced in ("0", "1"):
    return forced == "1"
  if forced != "auto":
    raise ValueError(f"{ENV} must be 1 (loop over examples), 0 (whole batch) or auto "
                     f"(calibrated on this machine), got {forced!r}")
  found = stored()
  return True if found is None else bool(found["loop"])


def stored() -> dict | None:
  """This machine's calibration (see `calibrate`), or None where none was made here."""
  try:
    return json.loads(_path().read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def calibrate(repeats: int = 3, length: int = 1024) -> dict:
  """Times a stack of two T5-sized layers (T5's attention kernel with 4 x 64 heads over `length`
  positions and a position bias, a gated MLP 256 -> 640) on 8 examples, its loss and gradients, batched and example by example,
  alternating; keeps {"loop": the faster, "batched_s", "loop_s", ...} in the user's cache under
  this machine's key and returns it. Where one is kept already it is returned as it is (a few
  seconds the first time on a machine, nothing after). Not on accelerators: no choice there."""
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    return {"loop": False, "reason": "the loop is for one CPU device only"}
  found = stored()
  if found is not None:
    return found
  from bytelm.nn import attention_kernel  # the kernel T5 attention runs
  rng = np.random.default_rng(0)
  b, t, d, h, k, f = 8, length, 256, 4, 64, 640
  x_BTD = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  key_bias_BT = jnp.zeros((b, t), jnp.float32)
  pos_bias_HTT = jnp.asarray(rng.normal(size=(h, t, t)) * 0.1, jnp.float32)  # T5's position bias
  params = {n: jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)
            for n, shape in (("q", (d, h * k)), ("k", (d, h * k)), ("v", (d, h * k)),
                             ("o", (h * k, d)), ("wi0", (d, f)), ("wi1", (d, f)), ("wo", (f, d)))}

  def layer(p, x_BTD, key_bias_BT):
    heads = lambda w: (x_BTD @ w).reshape(*x_BTD.shape[:2], h, k).transpose(0, 2, 1, 3)
    out_BHTK = attention_kernel.attention(heads(p["q"]), heads(p["k"]), heads(p["v"]),
                                          pos_bias_HTT, key_bias_BT)
    x_BTD = x_BTD + out_BHTK.transpose(0, 2, 1, 3).reshape(x_BTD.shape[0], t, h * k) @ p["o"]
    return x_BTD + (jax.nn.gelu(x_BTD @ p["wi0"]) * (x_BTD @ p["wi1"])) @ p["wo"]

  def loss(p, loop):
    stack = lambda x_BTD, key_bias_BT: layer(p, layer(p, x_BTD, key_bias_BT), key_bias_BT)
    return jnp.mean(map_over_batch(stack, x_BTD, key_bias_BT, loop=loop) ** 2)

  grads = {loop: jax.jit(jax.grad(lambda p, loop=loop: loss(p, loop))) for loop in (False, True)}
  for g in grads.values():  # compile
    jax.block_until_ready(g(params))
  times = {False: [], True: []}
  for _ in range(repeats):
    for loop, g in grads.items():
      start = time.perf_counter()
      jax.block_until_ready(g(params))
      times[loop].append(time.perf_counter() - start)
  batched_s, loop_s = (float(np.median(times[loop])) for loop in (False, True))
  result = {"loop": loop_s < batched_s, "length": length, "batched_s": round(batched_s, 4),
            "loop_s": round(loop_s, 4), "machine": machine.describe(), "jax": jax.__version__}
  _store(result)
  return result


def prepare() -> str:
  """Calibrates where the choice is this machine's to make (one CPU device, not forced by
  $BYTELM_PER_EXAMPLE) before anything is compiled; returns a line saying what was chosen and
  why, for the log."""
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    return "examples batched (the per-example loop is for one CPU device)"
  forced = os.environ.get(ENV, "auto").strip().lower()
  if forced != "auto":
    return f"per-example loop {'on' if choice() else 'off'} ({ENV}={forced})"
  found = calibrate()
  return (f"per-example loop {'on' if found['loop'] else 'off'}: calibrated on this machine, "
          f"{found['loop_s']:.3f} s looped, {found['batched_s']:.3f} s batched ({ENV}=0 or 1 "
          "forces it)")


def _path():
  return user_cache.root() / "calibration" / f"{_CALIBRATION}-{machine.key()}.json"


def _store(result: dict) -> None:
  """Written to a temporary file, then renamed; a cache that cannot be written is done
  without (the next process calibrates again)."""
  path = _path()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
  except OSError:
    pass


def map_over_batch(fn, *args_B, loop: bool):
  """fn(*args_B), computed one example at a time with `lax.map` when `loop` is true.

  Every array in args_B has the batch as its leading axis (None entries are passed through);
  fn sees a batch of one and must not mutate module state.

  In the loop each example's forward pass is recomputed for its backward pass
  (`jax.checkpoint`): stacking every example's activations for the backward pass costs more
  memory traffic than the recomputation costs arithmetic (train step at 8 x 1024 bytes:
  3.3 s -> 3.0 s). Forward-only use pays nothing for it.
  """
  if not loop or args_B[0].shape[0] == 1:
    return fn(*args_B)

  @jax.checkpoint
  def one_example(args):
    return fn(*jax.tree.map(lambda x: x[None], args))

  def one(args):
    return jax.tree.map(lambda y: y[0], one_example(args))

  return jax.lax.map(one, args_B)
