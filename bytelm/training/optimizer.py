"""Optimizers and learning-rate schedules from the `opt` section of a config.

AdamW for from-scratch and continued training; Adafactor as in T5/ByT5 pretraining (t5x: decay
rate 0.8, no momentum). Schedules: linear warm-up then cosine, linear or constant decay; or T5's
inverse square root, lr / sqrt(max(step, warmup)). Per module: `opt.lr_scale` multiplies the
updates of named sub-modules, and `opt.sgd` trains named sub-modules by plain SGD instead
(configs/mrt5.py: the delete gate, steered by a controller).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from bytelm.training.sharding import path_str

SCHEDULES = ("cosine", "linear", "constant", "rsqrt", "two_stage")
OPTIMIZERS = ("adamw", "adafactor")


def make_schedule(opt, total_steps: int) -> optax.Schedule:
  """Learning rate as a function of the optimizer step."""
  warmup = int(opt.warmup_steps)
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"opt.schedule={opt.schedule!r}; choose one of {SCHEDULES}")
  if warmup < 0 or warmup > total_steps:
    raise ValueError(f"opt.warmup_steps={warmup} must be in [0, train.steps={total_steps}]")
  if opt.schedule == "rsqrt":
    # T5: lr * sqrt(warmup) / sqrt(max(step, warmup)): flat through warm-up, then 1/sqrt decay.
    lr, floor = float(opt.lr), float(max(warmup, 1))
    return lambda step: lr * jnp.sqrt(floor / jnp.maximum(step, floor))
  decay_steps = max(total_steps - warmup, 1)
  linear = optax.linear_schedule(opt.lr, opt.lr * opt.final_lr_fraction, decay_steps)
  decay = {
      "cosine": optax.cosine_decay_schedule(opt.lr, decay_steps, alpha=opt.final_lr_fraction),
      "linear": linear,
      "constant": optax.constant_schedule(opt.lr),
      # BitNet b1.58 / TriLM's recipe for ternary weights: linear decay whose peak drops to
      # opt.second_stage_lr (a fraction) half-way through training.
      "two_stage": lambda step: linear(step) * jnp.where(
          step + warmup >= total_steps // 2, opt.get("second_stage_lr", 0.6), 1.0),
  }[opt.schedule]
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), decay], [warmup])


def make_optimizer(opt, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optax transformation, schedule) with gradient clipping by global norm when grad_clip > 0."""
  schedule = make_schedule(opt, total_steps)
  if opt.name == "adamw":
    tx = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                     weight_decay=_weight_decay(opt, total_steps))
  elif opt.name == "adafactor":
    tx = optax.adafactor(schedule, decay_rate=0.8, weight_decay_rate=opt.weight_decay or None,
                         multiply_by_parameter_scale=False)
  else:
    raise ValueError(f"opt.name={opt.name!r}; choose one of {OPTIMIZERS}")
  if opt.get("lr_scale"):
    tx = optax.chain(tx, scale_by_module(dict(opt.lr_scale)))
  if opt.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), tx)
  if opt.get("sgd"):
    tx = _with_sgd_modules(tx, dict(opt.sgd), schedule, float(opt.lr))
  return tx, schedule


def _weight_decay(opt, total_steps: int):
  """AdamW's decoupled weight decay, constant, or (opt.weight_decay_until < 1, TriLM's ternary
  recipe) switched off after that fraction of the steps."""
  until = opt.get("weight_decay_until", 1.0)
  if until >= 1.0:
    return opt.weight_decay
  return lambda step: jnp.where(step < until * total_steps, opt.weight_decay, 0.0)


def _with_sgd_modules(tx, lrs: dict[str, float], schedule, peak_lr: float):
  """tx for every parameter except those inside the modules named in lrs, which get plain SGD
  (no momentum, no clipping) at lrs[name] times the schedule's shape.

  Why: Adam's update has the same size whatever the gradient's scale, so a loss term that only
  steers a module (MrT5's deletion regulariser, weighted by a controller) moves it at a fixed
  rate in whichever direction wins: a relay, which a controller with any delay cannot hold
  still. Under SGD the update is proportional to the term's weight. Outside the clipping,
  the module's gradient does not shrink everyone else's.
  """
  patterns = [(_module_pattern(name), name) for name in lrs]

  def label(params):
    def one(path, _):
      name = path_str(path)
      return next((n for pattern, n in patterns if pattern.search(name)), "rest")
    return jax.tree_util.tree_map_with_path(one, params)

  transforms = {"rest": tx}
  for name, lr in lrs.items():
    shape = lambda step, lr=float(lr): schedule(step) * (lr / peak_lr)
    transforms[name] = optax.sgd(shape)
  return optax.multi_transform(transforms, label)


def _module_pattern(name: str) -> re.Pattern:
  """Matches a parameter path with a component named `name` ("gate" matches gate/kernel and
  gate/norm/scale, not gates/...)."""
  return re.compile(rf"(^|/){re.escape(name)}(/|$)")


def scale_by_module(scales: dict[str, float]) -> optax.GradientTransformation:
  """Multiply the update of every parameter inside a module named k by scales[k].

  A name matches one component of the parameter's path (`_module_pattern`); the first
  matching name wins.
  """
  patterns = [(_module_pattern(name), float(scale)) for name, scale in scales.items()]

  def scale(path, update):
    name = path_str(path)
    for pattern, factor in patterns:
      if pattern.search(name):
        return update * factor
    return update

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
