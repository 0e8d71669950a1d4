"""The same training budget for different recipes: measure, then size the run.

A fair comparison gives every recipe the same minutes (or FLOPs) on the same machine. Steps
are not comparable across recipes (a step of a word-pooled model costs less than a byte
decoder's), so the budget is set in bytes of training text: each recipe's train step is timed
from a fresh model (`step_timer`, in alternation with the others through `bytelm.timing`), and
`steps_for` turns minutes at the measured bytes/s into its number of steps. eval/hierarchical.py
and eval/compare.py use these.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import statistics
import time
from collections.abc import Callable

import jax
from flax import nnx

from bytelm import models
from bytelm.data import pipeline, prefetch
from bytelm.runs import data as data_lib
from bytelm.runs import workdir as run_dir
from bytelm.text import segment_jax
from bytelm.training import optimizer as optim
from bytelm.training import reuse, trainer


def prepare(c, workdir: pathlib.Path):
  """c with its fitted parts made once in workdir (an entropy segmenter's n-gram model, named
  in c; a BPE recipe's tokenizer), as the trainer makes them (bytelm.runs.data). Returns c."""
  workdir.mkdir(parents=True, exist_ok=True)
  fitted = data_lib.entropy_model(c, workdir)
  if fitted is not None:
    c.data.segments.entropy_model = str(fitted)
  data_lib.tokenizer(c, workdir)
  return c


def train_source(c, workdir: pathlib.Path, split: str = "train") -> pipeline.BatchSource:
  """The recipe's training batches, as the trainer makes them (split="validation": its
  validation batches, `eval_batches`)."""
  return data_lib.sources(c, workdir, splits=(split,))[split]


@dataclasses.dataclass
class StepTimer:
  """A recipe's train step, ready to time: `call()` runs steps_per_call steps on fresh
  batches and waits for them, as the trainer runs them between log steps.

  On an accelerator the batches come from a background thread built a few calls ahead and put
  on the device (bytelm.data.prefetch, as in the trainer), so that the host's batch assembly
  overlaps the device's step; on a CPU each call builds its own (`timer_prefetch`).
  `input_wait` is the share of the calls' time spent waiting for (or building) them.
  """

  call: Callable[[], None]
  bytes_per_call: int
  flops_per_step: float  # XLA's count for one optimizer step
  compiled: jax.stages.Compiled  # the program call() runs (its HLO: bytelm.training.hlo)
  source: pipeline.BatchSource
  prefetcher: prefetch.Prefetcher
  seconds: float = 0.0  # in call(), in all
  wait_seconds: float = 0.0  # of which waiting for a batch

  @property
  def input_wait(self) -> float:
    return self.wait_seconds / max(self.seconds, 1e-9)

  def host_ms_per_batch(self, batches: int = 20) -> float:
    """Median milliseconds the host takes to build one batch (in this thread, from step
    10**6 on: no batch the calls read)."""
    times = []
    for step in range(10**6, 10**6 + batches):
      start = time.perf_counter()
      self.source.batch(step)
      times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)

  def close(self) -> None:
    self.prefetcher.close()


def timer_prefetch(c) -> int:
  """How many batches a StepTimer builds ahead in a thread: the config's train.prefetch on an
  accelerator, 0 on a CPU. There the host is the device, so a thread hides little: hat timed
  alone at 256 rows trained as fast with it as without (2-core AMD EPYC, 2 paired runs), while
  timed in alternation with the flat decoder (`eval/hierarchical.py --timing-only --rows 256`)
  its steps were 6%, 6%, 0% and 9% slower with the timers' threads than without (4 paired runs;
  the flat decoder's within +-4%, its noise)."""
  return c.train.get("prefetch", 2) if jax.default_backend() != "cpu" else 0


def step_timer(c, workdir: pathlib.Path, steps_per_call: int = 1, scan: bool = True) -> StepTimer:
  """A `StepTimer` of config c's train step from a fresh model (compiled here, once). scan:
  the steps as the trainer runs them with train.steps_per_call = steps_per_call, one compiled
  call over the stacked batches (`trainer.train_steps`); False: one call per step."""
  family = models.family(c.model_family)
  model = family.model_cls(family.config_cls(**c.model.to_dict()), rngs=nnx.Rngs(c.seed))
  tx, schedule = optim.make_optimizer(c.opt, c.train.steps)
  graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
  source = train_source(c, workdir)
  loss_fn = segment_jax.with_segments(family.loss_fn, source.device_segmenter)
  step_kw = dict(graphdef=graphdef, loss_fn=loss_fn, schedule=schedule, z_loss=0.0,
                 after_step=family.after_step)
  step = jax.jit(functools.partial(trainer.train_step, **step_kw), donate_argnums=0)
  first = source.batch(0)
  step = step.lower(state, first).compile()  # compiled once, for the count and the calls
  cost = step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  scanned = scan and steps_per_call > 1
  if scanned:
    steps = jax.jit(functools.partial(trainer.train_steps, **step_kw), donate_argnums=0)
    steps = steps.lower(state, trainer.stack([first] * steps_per_call)).compile()

  def inputs(j):  # call j's batches: steps j k + 1 .. (j + 1) k, stacked where scanned
    got = [source.batch(i) for i in range(j * steps_per_call + 1, (j + 1) * steps_per_call + 1)]
    return jax.device_put(trainer.stack(got) if scanned else got)

  batches = prefetch.Prefetcher(inputs, 0, 1 << 40, depth=timer_prefetch(c))
  box = {"state": state, "j": 0}

  def call():
    start, waited = time.perf_counter(), batches.wait_seconds
    got = batches.get(box["j"])
    box["j"] += 1
    if scanned:
      box["state"], metrics = steps(box["state"], got)
    else:
      for batch in got:
        box["state"], metrics = step(box["state"], batch)
    jax.block_until_ready((box["state"], metrics))
    timer.seconds += time.perf_counter() - start
    timer.wait_seconds += batches.wait_seconds - waited

  timer = StepTimer(call, source.bytes_per_batch * steps_per_call,
                    float(cost.get("flops", math.nan)), steps if scanned else step, source,
                    batches)
  return timer


def steps_for(c, workdir: pathlib.Path, budget_bytes: float) -> int:
  """Sets c's steps (and its warmup, evaluation and checkpoint cadence) to train on about
  budget_bytes of text (at least 10 steps). Returns the steps."""
  return set_steps(c, max(10, round(budget_bytes / train_source(c, workdir).bytes_per_batch)))


def set_steps(c, steps: int) -> int:
  """Sets c's steps, with its warmup, evaluation and checkpoint cadence to match. Returns the
  steps."""
  c.train.steps = steps
  c.opt.warmup_steps = min(c.opt.warmup_steps, steps // 10)
  c.train.eval_every = c.ckpt.every = steps
  return steps


def train_within(c, workdir: pathlib.Path, budget_bytes: float = 0.0, steps: int = 0) -> dict:
  """Trains c into workdir on about budget_bytes of text (`steps_for`), or for `steps` steps
  where that is set, unless workdir holds a finished run of c: that is reused at the steps and
  warmup it was given (its budget was measured when it was trained; delete it to retrain); a
  run of another config is refused (`runs.workdir.ConfigMismatch`). Returns what the run
  reported at its last evaluation (`reuse.last_evaluation`), with "steps", "reused" and the
  "seconds" this call trained (none when reused)."""
  finished = reuse.finished_steps(workdir)
  if finished:
    set_steps(c, finished)
    c.opt.warmup_steps = run_dir.read_config(workdir)["opt"]["warmup_steps"]
  elif steps:
    set_steps(c, steps)
  else:
    steps_for(c, workdir, budget_bytes)
  start = time.perf_counter()
  reuse.train_unless_finished(c, workdir)
  out = {**reuse.last_evaluation(workdir), "steps": c.train.steps, "reused": bool(finished)}
  if not finished:
    out["seconds"] = time.perf_counter() - start
  return out
