"""Between bytes and segments inside a model (JAX): pooling, unpooling, learned boundaries.

The segments come from the host (`bytelm.text.segment`: `segment_ids` and `context_ids` of a
`Segmenter`'s starts) or are decided by the model itself.

Pooling (`pool`: mean, last or first byte; `QueryPool`: a learned query attending within the
segment) turns byte states B T D into segment states B N D; `unpool` hands each byte
the backbone state of the last segment whose end was already known before that byte
(`context_ids`), so that predicting byte t never depends on byte t or later (tested).

Learned boundaries (H-Net, Hwang et al. 2025): `BoundaryPredictor` on the byte encoder's causal
states, hard boundaries where its probability is >= 0.5 (and wherever a segment reached
max_segment_bytes, `force_max_length`), and `ratio_loss` toward a target compression;
`ids_from_starts` gives the same segment and context ids as the host path.

Axis legend: B batch, T bytes, N segments, D width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.nn import Dense, precision


# ---- pooling -------------------------------------------------------------------------------------


def pool(x_BTD: jax.Array, ids_BT: jax.Array, num_segments: int, how: str = "mean") -> jax.Array:
  """Segment states x_BND from byte states: the mean of each segment's bytes, or its "last" or
  "first" byte; empty segment slots are zeros. ids_BT as from
  `bytelm.text.segment.segment_ids` (-1: no segment)."""
  onehot_BTN = (ids_BT[..., None] == jnp.arange(num_segments)).astype(x_BTD.dtype)
  if how == "mean":
    weights_BTN = onehot_BTN / jnp.maximum(onehot_BTN.sum(axis=1, keepdims=True), 1)
  elif how in ("last", "first"):
    # A segment's last byte is followed by another segment's (or none); its first, preceded.
    if how == "last":
      neighbour_BT = jnp.pad(ids_BT, ((0, 0), (0, 1)), constant_values=-1)[:, 1:]
    else:
      neighbour_BT = jnp.pad(ids_BT, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    weights_BTN = onehot_BTN * (ids_BT != neighbour_BT)[..., None].astype(x_BTD.dtype)
  else:
    raise ValueError(f"pool how must be 'mean', 'last' or 'first', got {how!r}")
  return precision.einsum("btn,btd->bnd", weights_BTN, x_BTD)


class QueryPool(nnx.Module):
  """Pooling by a learned query attending over each segment's bytes (its keys: a projection
  of the byte states); the query starts at zero, so pooling starts as the segment's mean."""

  def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.key = Dense(dim, dim, std=dim**-0.5, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = nnx.Param(jnp.zeros((dim,), param_dtype))

  def __call__(self, x_BTD: jax.Array, ids_BT: jax.Array, num_segments: int) -> jax.Array:
    """x_BND as `pool` gives it, weighted by softmax(query . key) within each segment."""
    dim = x_BTD.shape[-1]
    score_BT = (self.key(x_BTD).astype(jnp.float32) @ self.query[...].astype(jnp.float32)
                * dim**-0.5)
    inside_BTN = ids_BT[..., None] == jnp.arange(num_segments)
    score_BTN = jnp.where(inside_BTN, score_BT[..., None], -jnp.inf)
    top_BN = jnp.max(score_BTN, axis=1, keepdims=True)
    e_BTN = jnp.where(inside_BTN, jnp.exp(score_BTN - jnp.where(jnp.isfinite(top_BN), top_BN,
                                                                 0.0)), 0.0)
    weights_BTN = e_BTN / jnp.maximum(e_BTN.sum(axis=1, keepdims=True), 1e-30)
    return precision.einsum("btn,btd->bnd", weights_BTN.astype(x_BTD.dtype), x_BTD)


def unpool(h_BND: jax.Array, context_BT: jax.Array, start_D: jax.Array) -> jax.Array:
  """Per byte, the backbone state context_BT names (`bytelm.text.segment.context_ids`); start_D
  where it is -1."""
  index_BT = jnp.maximum(context_BT, 0)
  gathered_BTD = jnp.take_along_axis(h_BND, index_BT[..., None], axis=1)
  return jnp.where((context_BT >= 0)[..., None], gathered_BTD, start_D.astype(h_BND.dtype))


# ---- learned boundaries --------------------------------------------------------------------------


class BoundaryPredictor(nnx.Module):
  """H-Net's routing module: a segment starts at byte t with probability
  p_t = (1 - cos(q_t, k_{t-1})) / 2, q = W_q e, k = W_k e of the byte encoder's (causal) states:
  where consecutive states disagree, a new unit begins. p_0 = 1."""

  def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    # q and k come out in float32 (the matmul's accumulator, whatever dtype computes it):
    # p >= 0.5 is a hard decision, and q, k rounded to bf16 would move p by ~2^-9.
    kw = dict(std=dim**-0.5, dtype=dtype, param_dtype=param_dtype, out_dtype=jnp.float32,
              rngs=rngs)
    self.q, self.k = Dense(dim, dim, **kw), Dense(dim, dim, **kw)

  @staticmethod
  def probability(q_BTD: jax.Array, k_prev_BTD: jax.Array) -> jax.Array:
    """(1 - cos(q_t, k_{t-1})) / 2 in fp32 (also what one cached generation step computes)."""
    q_BTD, k_prev_BTD = q_BTD.astype(jnp.float32), k_prev_BTD.astype(jnp.float32)
    cos_BT = (q_BTD * k_prev_BTD).sum(-1) * jax.lax.rsqrt(
        (q_BTD**2).sum(-1) * (k_prev_BTD**2).sum(-1) + 1e-12)
    return jnp.clip((1.0 - cos_BT) / 2.0, 0.0, 1.0)

  def __call__(self, e_BTD: jax.Array) -> jax.Array:
    """p_BT (fp32) from the states e_BTD."""
    k_prev_BTD = jnp.pad(self.k(e_BTD), ((0, 0), (1, 0), (0, 0)))[:, :-1]  # k_{t-1}
    return self.probability(self.q(e_BTD), k_prev_BTD).at[:, 0].set(1.0)


def force_max_length(starts_BT: jax.Array, max_segment_bytes: int) -> jax.Array:
  """starts_BT (bool) with a start wherever the running segment already has max_segment_bytes
  bytes, and at t = 0. Depends on past decisions only.

  The rule reads as a scan over t (a running count, reset at each start, forcing a start when
  it reaches max_segment_bytes), which is how a cached generation step applies it; but forced
  starts never move the given ones, so they fall every max_segment_bytes after the last given
  start: one cumulative max instead of a loop of T steps (a few kernel launches each, on an
  accelerator)."""
  T = starts_BT.shape[1]
  t_T = jnp.arange(T)
  given_BT = starts_BT | (t_T == 0)
  last_BT = jax.lax.cummax(jnp.where(given_BT, t_T, 0), axis=1)  # the last given start <= t
  return given_BT | ((t_T - last_BT) % max_segment_bytes == 0)


def ids_from_starts(starts_BT: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
  """(segment_ids_BT, context_ids_BT) as `segment_ids` / `context_ids` (bytelm.text.segment)
  give them on the host, for boundaries decided from bytes 0..t alone: byte t reads the segment
  before the one byte t - 1 is in. Segments past max_segments get id -1 (their bytes read
  segment N - 1). Positions where starts_BT is False after the last valid byte stay in the last
  segment."""
  seg_BT = jnp.cumsum(starts_BT.astype(jnp.int32), axis=1) - 1
  ids_BT = jnp.where(seg_BT < max_segments, seg_BT, -1)
  before_BT = jnp.pad(seg_BT, ((0, 0), (1, 0)), constant_values=0)[:, :-1]
  ctx_BT = jnp.minimum(before_BT - 1, max_segments - 1)
  return ids_BT, ctx_BT.at[:, 0].set(-1)


def ratio_loss(p_BT: jax.Array, starts_BT: jax.Array, valid_BT: jax.Array,
               target_segment_bytes: float) -> jax.Array:
  """H-Net's ratio loss, N/(N-1) ((N-1) F G + (1-F)(1-G)) with F the fraction of bytes that
  start a segment (hard), G the mean probability and N the target bytes per segment: 1 at
  F = G = 1/N, and its gradient in G pushes F toward 1/N from either side."""
  w_BT = valid_BT.astype(jnp.float32)
  count = jnp.maximum(w_BT.sum(), 1.0)
  f = (starts_BT.astype(jnp.float32) * w_BT).sum() / count
  g = (p_BT * w_BT).sum() / count
  n = target_segment_bytes
  return n / (n - 1.0) * ((n - 1.0) * f * g + (1.0 - f) * (1.0 - g))


def bytes_per_segment(ids_BT: jax.Array, valid_BT: jax.Array) -> jax.Array:
  """Mean bytes per segment over a batch: bytes in a segment / segments."""
  inside_BT = (ids_BT >= 0) & valid_BT
  previous_BT = jnp.pad(ids_BT, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  firsts = (inside_BT & (ids_BT != previous_BT)).sum()
  return inside_BT.sum() / jnp.maximum(firsts, 1)
