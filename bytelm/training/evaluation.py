"""Held-out evaluation: summed cross-entropy over fixed validation batches, as bits per byte.

The trainer evaluates with `evaluate(eval_fn, state, batches)`, eval_fn being `eval_step`
jitted; `bytelm.api` scores texts with `eval_sums`, so that a text equal to a validation window
scores what the trainer reports.
"""

from __future__ import annotations

import math

import jax
from flax import nnx


def eval_step(state, batch, *, graphdef, loss_fn, extra=()):
  """eval_sums of the model in the trainer's (model, optimizer) state; pure, for jax.jit."""
  model, _ = nnx.merge(graphdef, state)
  return eval_sums(model, batch, loss_fn, extra)


def eval_sums(model, batch, loss_fn, extra=()) -> dict:
  """What evaluation adds up over a batch: summed cross-entropy, targets (and, for a token
  model, the bytes they spell), and the extra metrics; dropout off."""
  _, metrics = loss_fn(nnx.view(model, deterministic=True, raise_if_not_found=False), batch)
  n = metrics["num_targets"]
  out = {"ce_sum": metrics["ce"] * n, "num_targets": n, **{k: metrics[k] for k in extra}}
  if "num_bytes" in metrics:  # a token model: bits per byte divide by the bytes predicted
    out["num_bytes"] = metrics["num_bytes"]
  return out


def evaluate(eval_fn, state, batches) -> dict[str, float]:
  """Held-out loss and bits per byte, weighted by the number of targets of each batch, and the
  mean over batches of any extra metric of eval_fn (as val_<name>).

  val_loss is per target (a byte, or a token). Where eval_fn reports `num_bytes` (a token
  model), val_bpb is the summed loss over ln 2 * the bytes the targets spell, and val_bytes
  says how many bytes that was; otherwise one target is one byte.

  Sums stay on the device; the host reads them once, after the last batch.
  """
  outs = [eval_fn(state, batch) for batch in batches]
  totals = jax.device_get(jax.tree.map(lambda *x: sum(x), *outs))
  count = float(totals.pop("num_targets"))
  ce_sum = float(totals.pop("ce_sum"))
  loss = ce_sum / max(count, 1.0)
  bpb = {"val_bpb": loss / math.log(2)}
  if "num_bytes" in totals:
    num_bytes = float(totals.pop("num_bytes"))
    bpb = {"val_bpb": ce_sum / (math.log(2) * max(num_bytes, 1.0)), "val_bytes": num_bytes}
  extra = {f"val_{k}": float(v) / len(outs) for k, v in totals.items()}
  return {"val_loss": loss, **bpb, "val_targets": count, **extra}


def evaluate_model(model, loss_fn, batches, extra=()) -> dict[str, float]:
  """`evaluate` of a module on its own (no optimizer): what the trainer would report for it on
  these batches. Benchmarks score a transformed model (quantized, say) with it."""
  graphdef, state = nnx.split(model)
  eval_fn = jax.jit(lambda state, batch: eval_sums(nnx.merge(graphdef, state), batch, loss_fn,
                                                   extra))
  return evaluate(eval_fn, state, batches)
