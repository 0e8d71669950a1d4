"""T5 attention: multi-head attention with relative position bias, key bias and a KV cache.

Axis legend: B batch, T query positions, S key positions, D d_model, H heads, K head dim.

T5 details that decide parity with Hugging Face:
- no 1/sqrt(K) score scaling (it is folded into the initialisation of the query matrix);
- scores are turned into probabilities in fp32;
- the relative position bias lives in the first layer of each stack and is shared by all layers;
  bidirectional in the encoder, causal in the decoder, absent in cross-attention.
Biases are additive fp32: a position bias (H, T, S) that also carries causal masking, and a key
bias (B, S) that carries padding and MrT5's delete gate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from bytelm.nn import attention_kernel, precision
from bytelm.nn.batching import attention_loop_is_faster, map_over_batch
from bytelm.nn.layers import Dense, RMSNorm, normal_init

# Additive bias for a forbidden key. HF uses finfo(float32).min; adding finite biases to it stays
# finite, so fully masked rows give a uniform distribution instead of NaN.
MASK_VALUE = float(np.finfo(np.float32).min)
# Who computes attention without dropout: this package's kernel, or jax.nn.dot_product_attention
# with that implementation (attention_kernel.library_attention).
KERNELS = ("bytelm", "xla", "cudnn")


def bucket_table(num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's log-spaced bucket for every distance 0..max_distance (one sign).

  Distances below num_buckets // 2 get their own bucket; larger ones share log-spaced buckets up
  to max_distance, beyond which everything falls into the last bucket. Computed once in float32
  numpy, as PyTorch does, so bucket edges match Hugging Face exactly.
  """
  max_exact = num_buckets // 2
  dist = np.arange(max_distance + 1)
  # Distances below max_exact never use `large`; clamp them to 1 so log(0) is never taken.
  ratio = np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(max_exact)) / np.float32(
      np.log(max_distance / max_exact))
  large = max_exact + (ratio * np.float32(num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return np.where(dist < max_exact, dist, large).astype(np.int32)


def relative_position_bucket(rel_pos, *, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """Bucket index for relative positions `key_pos - query_pos` (any integer array)."""
  rel_pos = jnp.asarray(rel_pos, jnp.int32)
  if bidirectional:
    half = num_buckets // 2
    table = jnp.asarray(bucket_table(half, max_distance))
    offset = jnp.where(rel_pos > 0, half, 0)  # keys to the right get the upper half
    return offset + table[jnp.minimum(jnp.abs(rel_pos), max_distance)]
  table = jnp.asarray(bucket_table(num_buckets, max_distance))
  return table[jnp.minimum(jnp.maximum(-rel_pos, 0), max_distance)]  # future keys -> bucket 0


class RelativePositionBias(nnx.Module):
  """A learned bias per (bucket, head), looked up by relative position."""

  def __init__(self, num_heads: int, *, bidirectional: bool, num_buckets: int = 32,
               max_distance: int = 128, std: float = 1.0, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
    self.embedding = nnx.Param(normal_init(std)(rngs.params(), (num_buckets, num_heads), param_dtype))

  def __call__(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
    """Bias (..., H, T, S) in fp32 for query positions (..., T) and key positions (..., S).

    Positions are explicit (not arange) so a decoding step and MrT5's compacted sequences can
    ask for the bias at their true positions.
    """
    # Every distance of max_distance (M) or more shares its side's last bucket, so the bias
    # at each relative position in [-M, M] is every value there is: one gather per pair from
    # that small table is ~40% cheaper than bucketing each pair and then gathering.
    m = self.max_distance
    buckets_R = relative_position_bucket(jnp.arange(-m, m + 1), bidirectional=self.bidirectional,
                                         num_buckets=self.num_buckets, max_distance=m)
    table_HR = self.embedding[...].astype(jnp.float32)[buckets_R].T
    index_TS = jnp.clip(k_pos[..., None, :] - q_pos[..., :, None], -m, m) + m
    # One gather per head, stacked heads-first: neither the bias nor its gradient (a
    # scatter-add per head) is ever transposed. XLA's gather over all heads at once puts the
    # heads last, and on a CPU the transpose of its (T*S, H) gradient to (H, T, S) cost 0.5 s
    # of a 6 s `mini` train step.
    return jnp.stack([row_R[index_TS] for row_R in table_HR], axis=-3)


def softmax1(x: jax.Array, axis: int = -1) -> jax.Array:
  """exp(x_i) / (1 + sum_j exp(x_j)): softmax with an implicit zero logit (attention may abstain).

  MrT5 uses it in both its baseline and its gated model.
  """
  m = jnp.maximum(jnp.max(x, axis=axis, keepdims=True), 0.0)
  e = jnp.exp(x - m)
  return e / (jnp.exp(-m) + jnp.sum(e, axis=axis, keepdims=True))


class Attention(nnx.Module):
  """T5 multi-head attention; inner width H*K may differ from D (ByT5-small: 384 vs 1472)."""

  def __init__(self, d_model: int, num_heads: int, d_kv: int, *, dropout_rate: float,
               softmax: str = "softmax", kernel: str = "bytelm", dtype=jnp.float32,
               param_dtype=jnp.float32, quant: str | None = None, statistic: str = "mean",
               rngs: nnx.Rngs):
    if softmax not in ("softmax", "softmax1"):
      raise ValueError(f"attention_softmax must be 'softmax' or 'softmax1', got {softmax!r}")
    if kernel not in KERNELS or (kernel != "bytelm" and softmax != "softmax"):
      raise ValueError(f"attention kernel {kernel!r} with {softmax}: give one of {KERNELS} "
                       "('bytelm' for softmax1)")
    self.num_heads, self.d_kv, self.softmax, self.dtype = num_heads, d_kv, softmax, dtype
    self.kernel = kernel
    inner = num_heads * d_kv
    kw = dict(dtype=dtype, param_dtype=param_dtype, quant=quant, statistic=statistic, rngs=rngs)
    # HF's initialisation; the query's extra 1/sqrt(K) replaces the missing score scaling.
    self.q = Dense(d_model, inner, std=(d_model * d_kv) ** -0.5, **kw)
    self.k = Dense(d_model, inner, std=d_model**-0.5, **kw)
    self.v = Dense(d_model, inner, std=d_model**-0.5, **kw)
    self.o = Dense(inner, d_model, std=inner**-0.5, **kw)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    # BitNet's SubLN: the heads' output is normalised before a ternary output projection.
    self.sub_norm = (RMSNorm(inner, dtype=dtype, param_dtype=param_dtype)
                     if quant == "ternary" else None)

  def project_kv(self, kv_BSD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values, k_BHSK and v_BHSK (what a KV cache stores)."""
    return self._heads(self.k(kv_BSD)), self._heads(self.v(kv_BSD))

  def _heads(self, x_BTI: jax.Array) -> jax.Array:
    return rearrange(x_BTI, "B T (H K) -> B H T K", H=self.num_heads)

  def attend(self, x_BTD: jax.Array, k_BHSK: jax.Array, v_BHSK: jax.Array,
             pos_bias_HTS: jax.Array | None = None,
             key_bias_BS: jax.Array | None = None) -> jax.Array:
    """Attention of queries from x_BTD over given keys/values.

    Args:
      pos_bias_HTS: additive fp32 bias (H, T, S) shared by the batch, or (B, H, T, S): relative
        positions and causal masking.
      key_bias_BS: additive fp32 bias per key (padding mask, MrT5's delete gate).
    """
    q_BHTK = self._heads(self.q(x_BTD))
    k_BHSK, v_BHSK = k_BHSK.astype(self.dtype), v_BHSK.astype(self.dtype)
    if (self.dropout.rate == 0 or self.dropout.deterministic) and self.kernel != "bytelm":
      return self._out(attention_kernel.library_attention(
          q_BHTK, k_BHSK, v_BHSK, pos_bias_HTS, key_bias_BS, self.kernel))
    if self.dropout.rate == 0 or self.dropout.deterministic:
      abstain = self.softmax == "softmax1"
      own_bias = pos_bias_HTS is not None and pos_bias_HTS.ndim == 4  # (B, H, T, S)
      shared_bias = None if own_bias else pos_bias_HTS

      def kernel(q_BHTK, k_BHSK, v_BHSK, key_bias_BS, bias_BHTS):
        bias = shared_bias if bias_BHTS is None else bias_BHTS
        return attention_kernel.attention(q_BHTK, k_BHSK, v_BHSK, bias, key_bias_BS, abstain)
      # Scores of a few queries (a generation step) are small enough batched.
      loop = attention_loop_is_faster(min(q_BHTK.shape[2], k_BHSK.shape[2]))
      return self._out(map_over_batch(kernel, q_BHTK, k_BHSK, v_BHSK, key_bias_BS,
                                      pos_bias_HTS if own_bias else None, loop=loop))
    # With dropout on the probabilities, plain autodiff (it must see the dropped probabilities).
    probs_fn = jax.nn.softmax if self.softmax == "softmax" else softmax1
    scores_BHTS = attention_kernel.scores(q_BHTK, k_BHSK, pos_bias_HTS, key_bias_BS)
    probs_BHTS = self.dropout(probs_fn(scores_BHTS, axis=-1).astype(self.dtype))  # fp32 softmax
    out_BHTK = precision.einsum("BHTS,BHSK->BHTK", probs_BHTS, v_BHSK)
    return self._out(out_BHTK)

  def _out(self, out_BHTK: jax.Array) -> jax.Array:
    out_BTI = rearrange(out_BHTK, "B H T K -> B T (H K)")
    if self.sub_norm is not None:
      out_BTI = self.sub_norm(out_BTI)
    return self.o(out_BTI)

  def score_excess(self, x_BTD: jax.Array, k_BHSK: jax.Array, pos_bias_HTS=None,
                   key_bias_BS=None, *, above: float) -> jax.Array:
    """excess_B: per example, mean over heads, queries and keys of relu(score - above).

    MrT5's attention-score regulariser (its appendix D): scores that grow without bound could
    overpower the bounded delete-gate bias, so training from scratch penalises them. Scores
    include the position bias and the padding mask (masked keys contribute 0), as in attend.
    """
    q_BHTK = self._heads(self.q(x_BTD))
    s_BHTS = attention_kernel.scores(q_BHTK, k_BHSK.astype(self.dtype), pos_bias_HTS, key_bias_BS)
    return jnp.mean(jax.nn.relu(s_BHTS - above), axis=(-3, -2, -1))

  def __call__(self, x_BTD: jax.Array, kv_BSD: jax.Array, pos_bias_HTS=None,
               key_bias_BS=None) -> jax.Array:
    k_BHSK, v_BHSK = self.project_kv(kv_BSD)
    return self.attend(x_BTD, k_BHSK, v_BHSK, pos_bias_HTS, key_bias_BS)


def key_mask_bias(mask_BS: jax.Array) -> jax.Array:
  """Additive key_bias_BS: 0 where mask_BS is true, MASK_VALUE where it is false."""
  return jnp.where(mask_BS.astype(bool), 0.0, MASK_VALUE).astype(jnp.float32)
