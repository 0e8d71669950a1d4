"""The inference side of a quantized Dense: weights stored as integers, used as integers.

  int8_weight  int8 [K, N] + float32 scale [N]; dequantized into a float matmul. It saves
               memory, not time: on this CPU XLA does not fuse the dequantization into its
               GEMM, so it runs *slower* than float32.
  int8         the same weights, activations quantized per row at run time, one int8 x int8
               -> int32 GEMM (YNNPACK on XLA:CPU) with LLM.int8's outlier columns in float.
  ternary      codes {-1, 0, 1} packed 4 to a byte (uint8 [ceil(K / 4), N]) + one float32
               scale; unpacked inside the jitted call and run as an int8 GEMM.

`QuantWeight` variables are not `nnx.Param`s: optimizers (wrt=nnx.Param) leave them alone, and
an export stores them with their integer dtypes.

Axis legend: B batch, T positions, I inputs (K), O outputs (N).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.nn import precision
from bytelm.nn import quant as qn
from bytelm.nn.layers import Dense

MODES = ("int8_weight", "int8", "ternary")


class QuantWeight(nnx.Variable):
  """A frozen quantized weight or its scale."""


class QuantDense(nnx.Module):
  """y = x @ W with W stored quantized (see the module docstring for the modes)."""

  def __init__(self, in_features: int, out_features: int, mode: str, *, dtype=jnp.float32,
               threshold: float = 6.0, outlier_columns: int = 16, outliers: str = "dynamic",
               out_dtype=None):
    """outliers ("int8"): "dynamic", the outlier_columns largest input columns of each call,
    those reaching threshold; or "calibrated", columns fixed beforehand (`bytelm.quant.quantize`
    with a `calibrate` function). out_dtype: as Dense's (float32 for an LM head)."""
    if mode not in MODES:
      raise ValueError(f"quantized mode must be one of {MODES}, got {mode!r}")
    if outliers not in ("dynamic", "calibrated"):
      raise ValueError(f"outliers must be 'dynamic' or 'calibrated', got {outliers!r}")
    self.in_features, self.out_features, self.mode, self.dtype = (
        in_features, out_features, mode, dtype)
    self.threshold, self.outlier_columns = float(threshold), int(outlier_columns)
    self.outliers = outliers
    self.out_dtype = out_dtype or dtype
    self.recording = None  # while calibrating: a callback receiving each call's column maxima
    if mode == "int8" and outliers == "calibrated":
      k = min(self.outlier_columns, in_features)
      self.outlier_idx = QuantWeight(jnp.zeros((k,), jnp.int32))
      self.outlier_use = QuantWeight(jnp.zeros((k,), jnp.int8))
    if mode == "ternary":
      self.packed = QuantWeight(jnp.zeros((-(-in_features // 4), out_features), jnp.uint8))
      self.scale = QuantWeight(jnp.ones((), jnp.float32))
    else:
      self.qvalue = QuantWeight(jnp.zeros((in_features, out_features), jnp.int8))
      self.scale = QuantWeight(jnp.ones((out_features,), jnp.float32))

  @classmethod
  def from_dense(cls, dense: Dense, mode: str, **kw) -> "QuantDense":
    """The quantized twin of a trained Dense (its ternary scale statistic is kept)."""
    out = cls(dense.in_features, dense.out_features, mode, dtype=dense.dtype,
              out_dtype=dense.out_dtype, **kw)
    w_IO = jnp.asarray(dense.kernel[...], jnp.float32)
    if mode == "ternary":
      scale = qn.ternary_scale(w_IO, dense.statistic)
      out.packed[...] = qn.pack_ternary(qn.ternary_codes(w_IO, scale))
      out.scale[...] = scale
    else:
      out.qvalue[...], out.scale[...] = qn.quantize_weight(w_IO)
    return out

  def weight(self) -> jax.Array:
    """The dequantized weight, float32 [I, O] (what the integers stand for)."""
    if self.mode == "ternary":
      codes_IO = qn.unpack_ternary(self.packed[...], self.in_features)
      return codes_IO.astype(jnp.float32) * self.scale[...]
    return qn.dequantize_weight(self.qvalue[...], self.scale[...])

  def __call__(self, x_BTI: jax.Array) -> jax.Array:
    lead = x_BTI.shape[:-1]
    x_MI = x_BTI.reshape(-1, self.in_features)
    if self.mode == "int8_weight":
      y_MO = precision.product("MI,IO->MO", x_MI.astype(self.dtype),
                               self.weight().astype(self.dtype), self.out_dtype)
    elif self.mode == "int8":
      if self.recording is not None:
        jax.debug.callback(self.recording, jnp.max(jnp.abs(x_MI.astype(jnp.float32)), axis=0))
      if self.outliers == "calibrated":
        y_MO = qn.int8_matmul_fixed(x_MI, self.qvalue[...], self.scale[...],
                                    self.outlier_idx[...], self.outlier_use[...])
      else:
        y_MO = qn.int8_matmul(x_MI, self.qvalue[...], self.scale[...], self.threshold,
                              self.outlier_columns)
    else:
      codes_IO = qn.unpack_ternary(self.packed[...], self.in_features)
      y_MO = qn.ternary_matmul(x_MI, codes_IO, self.scale[...])
    return y_MO.reshape(*lead, self.out_features).astype(self.out_dtype)
