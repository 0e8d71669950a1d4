"""The number formats of bytelm's quantized matmuls, as pure functions.

- int8, vector-wise absmax (LLM.int8, Dettmers et al. 2022): one scale per activation row and
  one per weight column; the product runs as int8 x int8 -> int32 (`lax.dot_general` with
  preferred_element_type=int32, which XLA:CPU hands to its YNNPACK integer GEMM) and is rescaled
  by the outer product of the scales. Outliers: the input columns holding a value of magnitude
  >= threshold are taken out of the int8 product and multiplied in floating point. Shapes must
  be static under jit, so a fixed budget of the largest-magnitude columns (`outlier_columns`) is
  gathered per call and only those over the threshold are used.
- ternary, BitNet b1.58 (Ma et al. 2024): W~ = round-clip(W / s, -1, 1) with s the mean (or
  median, Nielsen & Schneider-Kamp 2024) of |W|; 8-bit absmax activations per row; straight-
  through estimators (the forward sees quantized values, the backward the identity).
- packing: ternary codes as 2 bits, 4 per byte, in planes along the input axis, so unpacking
  is one shift and mask per plane and a reshape.

Axis legend: M rows (tokens), K inputs (contracted), N outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-5  # the smallest scale: an all-zero row or matrix quantizes to zeros, not NaN


# ---- int8 ---------------------------------------------------------------------------------------


def absmax_int8(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """(q, scale): q = round(x / scale) in int8 [-127, 127], scale = max|x| / 127 along axis
  (kept as a size-1 axis), so x ~ q * scale with error at most scale / 2."""
  x = x.astype(jnp.float32)
  return _to_int8(x, jnp.max(jnp.abs(x), axis=axis, keepdims=True))


def _to_int8(x: jax.Array, absmax: jax.Array) -> tuple[jax.Array, jax.Array]:
  absmax = jnp.maximum(absmax, EPS)
  # A multiply by 127 / max per row, not a division per element (several times cheaper).
  q = jnp.clip(jnp.round(x * (127.0 / absmax)), -127, 127).astype(jnp.int8)
  return q, absmax / 127.0


def quantize_weight(w_KN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-output-column int8 weights: (q int8 [K, N], scale float32 [N])."""
  q_KN, scale_1N = absmax_int8(w_KN, axis=0)
  return q_KN, scale_1N[0]


def dequantize_weight(q_KN: jax.Array, scale_N: jax.Array) -> jax.Array:
  return q_KN.astype(jnp.float32) * scale_N


def int8_dot(q_MK: jax.Array, w_KN: jax.Array) -> jax.Array:
  """int8 x int8 -> int32 matrix product (the integer GEMM; never int8 -> float)."""
  return jax.lax.dot_general(q_MK, w_KN, (((1,), (0,)), ((), ())),
                             preferred_element_type=jnp.int32)


def int8_matmul(x_MK: jax.Array, q_KN: jax.Array, scale_N: jax.Array,
                threshold: float = 6.0, outlier_columns: int = 16) -> jax.Array:
  """x @ W for W = q * scale (per column), W8A8 with LLM.int8's outlier decomposition.

  The outlier_columns input columns of largest magnitude are gathered (a static budget); those
  holding a value >= threshold are zeroed before the rows are quantized (so they do not inflate
  the row scales) and multiplied in float32 against their dequantized weight rows. The rest
  goes through the int8 product. outlier_columns=0 or threshold=inf: plain vector-wise W8A8.
  Returns float32 [M, N].
  """
  x_MK = x_MK.astype(jnp.float32)
  absmax_M1 = jnp.max(jnp.abs(x_MK), axis=1, keepdims=True)
  if not outlier_columns or outlier_columns <= 0:
    return _w8a8(x_MK, absmax_M1, q_KN, scale_N)
  k = min(outlier_columns, x_MK.shape[1])
  # A value over the threshold shows in the row maxima the quantization needs anyway. Only the
  # search for outlier columns and the float product of those sit behind branches; the
  # quantization and the int8 product stay outside, where XLA fuses them with their neighbours
  # and quantizes an input once for all the layers that read it (q, k, v; wi_0, wi_1).
  # any(rows >= t), not max(rows) >= t: XLA folds a max of row maxima into one max over x, a
  # second pass over x that also makes it write |x| out for both reductions. Together: the
  # byt5-small int8 encoder on an AMX Xeon 1.30 -> 1.15 s (eval/quant.py --speed-only).
  has_outliers = jnp.any(absmax_M1 >= threshold)

  def search(x_MK):
    top_k, idx_k = jax.lax.top_k(jnp.max(jnp.abs(x_MK), axis=0), k)
    use_k = top_k >= threshold
    # Zeroed by a mask on K (one multiply fused into the quantization), not a scatter on [M, K].
    keep_K = jnp.ones(x_MK.shape[1], jnp.float32).at[idx_k].min(jnp.where(use_k, 0.0, 1.0))
    return jnp.max(jnp.abs(x_MK * keep_K), axis=1, keepdims=True), keep_K, idx_k, use_k

  def none(x_MK):
    return (absmax_M1, jnp.ones(x_MK.shape[1], jnp.float32), jnp.zeros(k, jnp.int32),
            jnp.zeros(k, bool))
  rows_M1, keep_K, idx_k, use_k = jax.lax.cond(has_outliers, search, none, x_MK)
  y_MN = _w8a8(x_MK * keep_K, rows_M1, q_KN, scale_N)

  def add_outliers(y_MN):
    xo_Mk = jnp.where(use_k, x_MK[:, idx_k], 0.0)
    return y_MN + jnp.dot(xo_Mk, dequantize_weight(q_KN[idx_k], scale_N))
  return jax.lax.cond(has_outliers, add_outliers, lambda y_MN: y_MN, y_MN)


def int8_matmul_fixed(x_MK: jax.Array, q_KN: jax.Array, scale_N: jax.Array, idx_k: jax.Array,
                      use_k: jax.Array) -> jax.Array:
  """int8_matmul with the outlier columns chosen beforehand (`bytelm.quant.quantize` with a
  `calibrate` function: the columns that reached the threshold on calibration text; LLM.int8
  finds outlier features systematic, the same few dimensions in every sequence): idx_k int32
  [k] columns, use_k [k] nonzero where a column is an outlier. No per-call search (no
  column-maximum pass, no top-k, no branch). A large value in another column goes through int8, with a coarser row scale."""
  x_MK = x_MK.astype(jnp.float32)
  use_k = use_k.astype(bool)
  keep_K = jnp.ones(x_MK.shape[1], jnp.float32).at[idx_k].min(jnp.where(use_k, 0.0, 1.0))
  xm_MK = x_MK * keep_K
  y_MN = _w8a8(xm_MK, jnp.max(jnp.abs(xm_MK), axis=1, keepdims=True), q_KN, scale_N)
  xo_Mk = jnp.where(use_k, x_MK[:, idx_k], 0.0)
  return jax.lax.cond(jnp.any(use_k),
                      lambda: y_MN + jnp.dot(xo_Mk, dequantize_weight(q_KN[idx_k], scale_N)),
                      lambda: y_MN)


def _w8a8(x_MK, absmax_M1, q_KN, scale_N) -> jax.Array:
  """The int8 product with rows scaled by their given absolute maxima."""
  q_MK, scale_M1 = _to_int8(x_MK, absmax_M1)
  return int8_dot(q_MK, q_KN).astype(jnp.float32) * scale_M1 * scale_N


def outlier_mask(x_MK: jax.Array, threshold: float = 6.0) -> jax.Array:
  """bool [K]: the input columns holding a value of magnitude >= threshold (LLM.int8's outlier
  feature dimensions; `int8_matmul` decomposes those among its outlier_columns largest)."""
  return jnp.max(jnp.abs(x_MK.astype(jnp.float32)), axis=0) >= threshold


# ---- ternary ------------------------------------------------------------------------------------


def ternary_scale(w: jax.Array, statistic: str = "mean") -> jax.Array:
  """BitNet b1.58's per-matrix scale: the mean (or median) of |w|, at least EPS."""
  a = jnp.abs(w.astype(jnp.float32))
  if statistic == "mean":
    s = jnp.mean(a)
  elif statistic == "median":
    s = jnp.median(a)
  else:
    raise ValueError(f"ternary statistic must be 'mean' or 'median', got {statistic!r}")
  return jnp.maximum(s, EPS)


def ternary_codes(w: jax.Array, scale: jax.Array) -> jax.Array:
  """round-clip(w / scale, -1, 1) as int8 codes in {-1, 0, 1}."""
  return jnp.clip(jnp.round(w.astype(jnp.float32) / scale), -1, 1).astype(jnp.int8)


def ste(x: jax.Array, quantized: jax.Array) -> jax.Array:
  """Straight-through: the value of `quantized`, the gradient of the identity in x."""
  return x + jax.lax.stop_gradient(quantized.astype(x.dtype) - x)


def fake_quant_ternary(w: jax.Array, statistic: str = "mean") -> jax.Array:
  """The ternary weight codes * scale, with a straight-through gradient (training)."""
  scale = jax.lax.stop_gradient(ternary_scale(w, statistic))
  return ste(w, ternary_codes(w, scale).astype(jnp.float32) * scale)


def fake_quant_int8_rows(x_MK: jax.Array) -> jax.Array:
  """8-bit absmax per row, dequantized, with a straight-through gradient (training)."""
  q_MK, scale_M1 = absmax_int8(x_MK, axis=-1)
  return ste(x_MK, q_MK.astype(jnp.float32) * jax.lax.stop_gradient(scale_M1))


def ternary_matmul(x_MK: jax.Array, codes_KN: jax.Array, scale: jax.Array) -> jax.Array:
  """Inference: 8-bit rows x ternary codes as one int8 GEMM, rescaled. float32 [M, N]."""
  q_MK, scale_M1 = absmax_int8(x_MK, axis=1)
  return int8_dot(q_MK, codes_KN.astype(jnp.int8)).astype(jnp.float32) * scale_M1 * scale


# ---- packing ------------------------------------------------------------------------------------


def pack_ternary(codes_KN: jax.Array) -> jax.Array:
  """Ternary codes {-1, 0, 1} [K, N] -> uint8 [ceil(K / 4), N]: code + 1 in 2 bits; byte j of
  a column holds rows j, j + K4, j + 2 K4, j + 3 K4 (K4 = ceil(K / 4)) at bits 0, 2, 4, 6, so
  unpacking is a shift and a mask per plane (rows past K are padding, code 0)."""
  k, n = codes_KN.shape
  k4 = -(-k // 4)
  c = jnp.zeros((4 * k4, n), jnp.uint8).at[:k].set(
      (codes_KN.astype(jnp.int32) + 1).astype(jnp.uint8))
  planes_4kN = c.reshape(4, k4, n)
  shifts = jnp.arange(4, dtype=jnp.uint8)[:, None, None] * 2
  return (planes_4kN << shifts).sum(axis=0, dtype=jnp.uint8)  # the bits do not overlap


def unpack_ternary(packed_kN: jax.Array, k: int) -> jax.Array:
  """The inverse of pack_ternary: int8 codes [k, N] (k, the unpadded rows, is static)."""
  shifts = jnp.arange(4, dtype=jnp.uint8)[:, None, None] * 2
  planes_4kN = (packed_kN[None] >> shifts) & jnp.uint8(3)
  n = packed_kN.shape[1]
  return (planes_4kN.reshape(-1, n)[:k].astype(jnp.int8) - 1).astype(jnp.int8)
