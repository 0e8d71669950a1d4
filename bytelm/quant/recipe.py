"""The ternary switch of the recipes: `configs/byt5.py:ternary`, `mrt5.py:ternary`,
`hat.py:ternary` (and `:tiny_ternary` for tests).

BitNet b1.58 / TriLM train ternary weights with a peak learning rate several times the float
one (TriLM: ~6x at 99M parameters; here LR_MULTIPLIER), a learning rate that drops by about
a third half-way through (two_stage schedule), and no weight decay for the last third.
"""

from __future__ import annotations

import ml_collections

LR_MULTIPLIER = 3.0
SECOND_STAGE_LR = 0.6  # of the linear schedule's value, from half-way on (TriLM: 1.5e-3 / 2.4e-3)
WEIGHT_DECAY_UNTIL = 2 / 3  # of the steps


def split_variant(arg: str | None) -> tuple[str, bool]:
  """("default" | base variant, whether ternary) from a config argument such as "ternary" or
  "tiny_ternary"."""
  variant = arg or "default"
  if variant == "ternary":
    return "default", True
  if variant.endswith("_ternary"):
    return variant[:-len("_ternary")], True
  return variant, False


def make_ternary(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """c with ternary attention and feed-forward matmuls (model.quant = "ternary", BitNet's
  SubLN norms) and BitNet's training schedule; the float recipe's budget is kept."""
  c.model.quant = "ternary"
  c.opt.lr = c.opt.lr * LR_MULTIPLIER
  c.opt.schedule = "two_stage"
  c.opt.second_stage_lr = SECOND_STAGE_LR
  c.opt.weight_decay_until = WEIGHT_DECAY_UNTIL
  return c
