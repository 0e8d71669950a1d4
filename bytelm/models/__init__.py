"""Model families. Each file holds one family: its config dataclass, the model and its loss_fn;
blocks.py holds what they share, pooling.py the segment pooling of the hierarchical models.

The trainer knows a family only through `family(name)`: how to build the config and the model,
the `loss_fn(model, batch, z_loss=...) -> (loss, metrics)` contract, and three optional hooks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from bytelm.models import decoder, hierarchical, mrt5, t5, tagger


@dataclasses.dataclass(frozen=True)
class Family:
  config_cls: type
  model_cls: type
  loss_fn: Callable[..., Any]
  # after_step(model, metrics): called inside the compiled train step after the optimizer
  # update, to update non-trained model state (MrT5's deletion controller).
  after_step: Callable[..., None] | None = None
  # Metrics of loss_fn, besides the loss, that evaluation averages over the held-out batches.
  eval_metrics: tuple[str, ...] = ()
  # report(model, held_out_batches) -> {name: value}: end-of-run figures for the summary, of
  # what the model computes; speed is measured outside the models (bytelm.training.report).
  report: Callable[..., dict[str, float]] | None = None


FAMILIES = {
    "t5": Family(t5.T5Config, t5.T5, t5.loss_fn),
    "mrt5": Family(mrt5.MrT5Config, mrt5.MrT5, mrt5.loss_fn, after_step=mrt5.after_step,
                   eval_metrics=("deleted_frac",), report=mrt5.report),
    "decoder": Family(decoder.DecoderConfig, decoder.DecoderLM, decoder.loss_fn),
    "hierarchical": Family(hierarchical.HierarchicalConfig, hierarchical.Hierarchical,
                           hierarchical.loss_fn, eval_metrics=("bytes_per_segment",)),
    "tagger": Family(tagger.TaggerConfig, tagger.Tagger, tagger.loss_fn,
                     eval_metrics=("accuracy", "changed_accuracy")),
}


def family(name: str) -> Family:
  """The model family called `name` (config `model_family`)."""
  if name not in FAMILIES:
    raise ValueError(f"unknown model_family {name!r}; choose one of {sorted(FAMILIES)}")
  return FAMILIES[name]
