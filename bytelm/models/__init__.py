"""Model families. Each file holds one family: its config dataclass, the model and its loss_fn.

The trainer knows a family only through `family(name)`: how to build the config and the model,
and the `loss_fn(model, batch, z_loss=...) -> (loss, metrics)` contract.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from bytelm.models import t5


@dataclasses.dataclass(frozen=True)
class Family:
  config_cls: type
  model_cls: type
  loss_fn: Callable[..., Any]


FAMILIES = {"t5": Family(t5.T5Config, t5.T5, t5.loss_fn)}


def family(name: str) -> Family:
  """The model family called `name` (config `model_family`)."""
  if name not in FAMILIES:
    raise ValueError(f"unknown model_family {name!r}; choose one of {sorted(FAMILIES)}")
  return FAMILIES[name]
