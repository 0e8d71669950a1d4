"""End-of-run figures for the training summary: the family's own (`Family.report`: quality
measured on the held-out batches) and the speed-ups this toolkit promises, measured here
rather than in the model files, with `bytelm.timing` (contenders timed in alternation).

MrT5's is the encoder's speed-up of hard deletion over the same weights without deletion:
what deleting bytes buys at inference, on the first held-out batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bytelm import timing
from bytelm.models import Family, mrt5
from bytelm.nn.compiled import Compiled


def end_of_run(family: Family, model, batches) -> dict[str, float]:
  """family.report's figures, and the measured speed-ups that apply to the model."""
  batches = list(batches)
  figures = dict(family.report(model, batches)) if family.report is not None else {}
  if isinstance(model, mrt5.MrT5) and batches:
    figures.update(encoder_speedup(model, batches[0]["inputs"]))
  return figures


def encoder_speedup(model: mrt5.MrT5, inputs_BT, repeats: int = 5) -> dict[str, float]:
  """encoder_speedup (seconds without deletion / with hard deletion) and encoder_ms_per_example
  (hard deletion), medians of `repeats` alternating calls after one compiling call each."""
  inputs_BT = jnp.asarray(inputs_BT)
  mask_BT = inputs_BT != model.config.pad_id
  compiled = Compiled(model)  # split once: no timed call pays for it
  times = timing.compare({
      "hard": lambda: jax.block_until_ready(
          model.encode_for_inference(inputs_BT, mask_BT, compiled)),
      "none": lambda: jax.block_until_ready(
          compiled("encode_memory", inputs_BT, mask_BT, deletion="none")),
  }, repeats=repeats)
  return {"encoder_speedup": times["none"] / times["hard"],
          "encoder_ms_per_example": 1e3 * times["hard"] / inputs_BT.shape[0]}
