"""The same training budget for different recipes: measure, then size the run.

A fair comparison gives every recipe the same minutes (or FLOPs) on the same machine. Steps
are not comparable across recipes (a step of a word-pooled model costs less than a byte
decoder's), so the budget is set in bytes of training text: each recipe's train step is timed
from a fresh model (`step_timer`, in alternation with the others through `bytelm.timing`), and
`steps_for` turns minutes at the measured bytes/s into its number of steps. eval/hierarchical.py
and eval/compare.py use these.
"""

from __future__ import annotations

import functools
import math
import pathlib
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
from flax import nnx

from bytelm import models
from bytelm.data import pipeline
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


class StepTimer(NamedTuple):
  """What `step_timer` gives: call() runs the timed steps and waits for them."""
  call: Callable[[], None]
  bytes_per_call: int
  flops_per_step: float  # XLA's count for one optimizer step
  compiled: jax.stages.Compiled  # the program call() runs (its HLO: bytelm.training.hlo)


def step_timer(c, workdir: pathlib.Path, steps_per_call: int = 1, scan: bool = True) -> StepTimer:
  """call() runs steps_per_call train steps on fresh batches, waiting only after the last, as
  the trainer does between log steps (so that the host's batch assembly overlaps the device's
  previous step, where the device is separate). scan: the steps as the trainer runs them with
  train.steps_per_call = steps_per_call, one compiled call over the stacked batches
  (`trainer.train_steps`); False: one call per step."""
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
  if scan and steps_per_call > 1:
    steps = jax.jit(functools.partial(trainer.train_steps, **step_kw), donate_argnums=0)
    steps = steps.lower(state, trainer.stack([first] * steps_per_call)).compile()
  box = {"state": state, "i": 0}

  def batches():  # the next steps_per_call batches, as the trainer builds them
    box["i"] += steps_per_call
    return [source.batch(i) for i in range(box["i"] - steps_per_call + 1, box["i"] + 1)]

  def call():
    if scan and steps_per_call > 1:
      box["state"], metrics = steps(box["state"], trainer.stack(batches()))
    else:
      for batch in batches():
        box["state"], metrics = step(box["state"], batch)
    jax.block_until_ready((box["state"], metrics))

  return StepTimer(call, source.bytes_per_batch * steps_per_call,
                   float(cost.get("flops", math.nan)),
                   steps if scan and steps_per_call > 1 else step)


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
