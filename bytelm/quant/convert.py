"""`quantize(model, mode)`: a trained bytelm model with its blocks' matmuls stored quantized.

Post-training for "int8_weight" and "int8"; for "ternary" it stores the codes a ternary
model learned with quantization-aware training (config quant="ternary"), or, from a float
model, rounds its weights to ternary after the fact: a clearly lower-quality option (BitNet's
quality comes from training with the rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bytelm.nn.attention import Attention
from bytelm.nn.layers import Dense, GatedGeluMLP
from bytelm.nn.quant_dense import MODES, QuantDense


def quantize(model: nnx.Module, mode: str, *, head: bool = False, threshold: float = 6.0,
             outlier_columns: int = 16, outliers: str = "dynamic",
             calibrate: Callable[[nnx.Module], object] | None = None) -> nnx.Module:
  """Replace, in place, every Dense of an attention or feed-forward block (and the LM head if
  head) by a `QuantDense` of the given mode; returns the model. Embeddings, norms, MrT5's
  gate and the hierarchical models' width projections stay as they are. threshold and
  outlier_columns: LLM.int8's outlier decomposition ("int8" mode), searched per call
  (outliers="dynamic") or fixed beforehand: calibrate(model) runs the quantized model on
  calibration text, and each layer keeps, of the outlier_columns input columns that were
  largest there, those that reached the threshold (outliers="calibrated", no per-call search).
  """
  if calibrate is not None:
    outliers = "calibrated"
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  done = quantization_of(model)
  if done:  # its Dense layers are QuantDense already: nothing left to convert
    raise ValueError(f"{type(model).__name__} is already quantized ({done['mode']}); to "
                     f"quantize it as {mode}, start from the float model (load its workdir or "
                     "float export again)")
  targets = []
  for path, node in nnx.iter_graph(model):
    if not path or not isinstance(node, Dense):
      continue
    parent = _walk(model, path[:-1])
    if isinstance(parent, (Attention, GatedGeluMLP)) or (head and path[-1] == "lm_head"):
      targets.append((parent, path[-1], node))
  if not targets:
    raise ValueError(f"{type(model).__name__} has no attention or feed-forward Dense to quantize")
  for parent, name, dense in targets:
    q = QuantDense.from_dense(dense, mode, threshold=threshold, outlier_columns=outlier_columns,
                              outliers=outliers)
    if isinstance(name, int):
      parent[name] = q
    else:
      setattr(parent, name, q)
  if calibrate is not None and mode == "int8":
    _calibrate(model, calibrate)
  return model


def _calibrate(model: nnx.Module, run: Callable[[nnx.Module], object]) -> None:
  """Fix each int8 layer's outlier columns from the input column maxima seen during run."""
  layers = [node for _, node in nnx.iter_graph(model) if isinstance(node, QuantDense)]
  maxima = {id(q): np.zeros(q.in_features, np.float32) for q in layers}

  def recorder(key):
    def record(colmax_K):
      maxima[key][:] = np.maximum(maxima[key], np.asarray(colmax_K))
    return record

  for q in layers:
    q.recording = recorder(id(q))
  try:
    jax.block_until_ready(run(model))
    jax.effects_barrier()
  finally:
    for q in layers:
      q.recording = None
  for q in layers:
    idx_k = np.argsort(-maxima[id(q)], kind="stable")[:q.outlier_idx[...].shape[0]]
    q.outlier_idx[...] = jnp.asarray(idx_k, jnp.int32)
    q.outlier_use[...] = jnp.asarray(maxima[id(q)][idx_k] >= q.threshold, jnp.int8)


def _walk(node, path):
  for p in path:
    node = node[p] if isinstance(p, int) else getattr(node, p)
  return node


def quantization_of(model: nnx.Module) -> dict | None:
  """The `quantize` arguments that made model (None if it has no QuantDense): what an export
  records so that loading rebuilds the same structure before reading the integers back."""
  found = [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, QuantDense)]
  if not found:
    return None
  modes = {node.mode for _, node in found}
  if len(modes) > 1:
    raise ValueError(f"the model mixes quantized modes {sorted(modes)}; quantize it with one")
  node = found[0][1]
  return dict(mode=node.mode, head=any(path[-1] == "lm_head" for path, _ in found),
              threshold=node.threshold, outlier_columns=node.outlier_columns,
              outliers=node.outliers)
