"""Dynamic token merging: cutting bytes into segments, and moving between the two.

A segmenter maps a byte sequence to segment start offsets; `segment_ids` turns those into
static shapes: at most `max_segments` segments per sequence, at most `max_segment_bytes` bytes
per segment. A segment longer than that is split into chunks (at UTF-8 character boundaries
where it can), never dropped; bytes after the last segment that fits are reported, not lost, so
the data pipeline can start its next window there.

Segmenters on the host (`Segmenter` runs one of them, then `split_long`):
- "words" (`bytelm.tokenizer.word_starts`; word splitting lives with the tokenizer):
  Unicode-aware words, each with the whitespace before it; punctuation, symbols, unspaced
  scripts and invalid bytes stand alone.
- "entropy" (BLT, Pagnoni et al. 2024): a segment starts where a small byte LM's entropy over
  the next byte crosses a global threshold, or rises by more than a relative one. The small LM
  here is a byte n-gram model fitted on the training text (`EntropyModel`); the global
  threshold is the entropy quantile that gives a target mean segment length.
- "fixed": every n bytes (MEGABYTE's patches, the control).
None of them looks past the character it decides, so a boundary is settled by the character
that starts the next segment (see `context_ids`).

In the model (JAX): "learned" boundaries (H-Net, Hwang et al. 2025): `BoundaryPredictor` on the
byte encoder's causal states, hard boundaries where its probability is >= 0.5 (and wherever a
segment reached max_segment_bytes, `force_max_length`), and `ratio_loss` toward a target
compression; `ids_from_starts` gives the same segment and context ids as the host path.

Pooling (`pool`: mean, last or first byte; `QueryPool`: a learned query attending within the
segment) turns byte states B T D into segment states B N D; `unpool` hands each byte
the backbone state of the last segment whose end was already known before that byte
(`context_ids`), so that predicting byte t never depends on byte t or later (tested).

Axis legend: B batch, T bytes, N segments, D width, C n-gram contexts.
"""

from __future__ import annotations

from collections.abc import Sequence

import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bytelm.nn import Dense
from bytelm.tokenizer import word_starts

KINDS = ("words", "entropy", "fixed")


def fixed_starts(num_bytes: int, size: int) -> list[int]:
  """Every `size` bytes: 0, size, 2 size, ..."""
  if size < 1:
    raise ValueError(f"fixed segments need a size >= 1, got {size}")
  return list(range(0, num_bytes, size))


def split_long(data: bytes, starts: Sequence[int], max_segment_bytes: int) -> list[int]:
  """starts with every segment longer than max_segment_bytes cut into chunks that fit,
  at UTF-8 character boundaries unless one character is longer (it cannot be: 4 bytes)."""
  if max_segment_bytes < 4:
    raise ValueError(f"max_segment_bytes must be at least 4 (one UTF-8 character), got "
                     f"{max_segment_bytes}")
  out = []
  ends = list(starts[1:]) + [len(data)]
  for start, end in zip(starts, ends):
    out.append(start)
    position = start
    while end - position > max_segment_bytes:
      cut = position + max_segment_bytes
      # Back off continuation bytes (10xxxxxx) so a character is not cut in two.
      while cut > position + 1 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
      out.append(cut)
      position = cut
  return out


def segment_ids(num_bytes: int, starts: Sequence[int], max_segments: int,
                length: int | None = None) -> tuple[np.ndarray, int]:
  """(ids_T, covered): the segment of each byte (int32, -1 past the last kept segment and on
  padding up to `length`), and how many bytes the first max_segments segments cover."""
  length = num_bytes if length is None else length
  if num_bytes > length:
    raise ValueError(f"{num_bytes} bytes do not fit a row of length {length}")
  ids_T = np.full((length,), -1, np.int32)
  starts = list(starts)
  if num_bytes and (not starts or starts[0] != 0):
    raise ValueError("segment starts must begin at offset 0")
  kept = starts[:max_segments]
  covered = starts[max_segments] if len(starts) > max_segments else num_bytes
  for n, (start, end) in enumerate(zip(kept, kept[1:] + [covered])):
    ids_T[start:end] = n
  return ids_T, covered


def _settled(data: bytes, starts_M: np.ndarray) -> np.ndarray:
  """settled_at for many boundaries at once (int64 [M])."""
  x = np.frombuffer(data, np.uint8)
  # Where each byte's character ends, as the byte's bit pattern declares (itself for ASCII and
  # for bytes that cannot start a character).
  end_T = np.arange(len(x)) + np.select([x < 0xC0, x < 0xE0, x < 0xF0], [0, 1, 2], 3)
  settled_M = end_T[starts_M]
  for back in (1, 2, 3):
    earlier_M = np.where(starts_M >= back, end_T[np.maximum(starts_M - back, 0)], -1)
    settled_M = np.maximum(settled_M, earlier_M)
  return settled_M


def settled_at(data: bytes, s: int) -> int:
  """The last byte that can still change a segment boundary at s: the end of the character
  starting at s, or of one before it whose declared bytes reach past s (whether "\\xe6\\x97"
  starts a character or is two invalid bytes, each a segment, depends on the byte after)."""
  return int(_settled(data, np.asarray([s], np.int64))[0])


def context_ids(data: bytes, starts: Sequence[int], max_segments: int,
                length: int | None = None) -> np.ndarray:
  """ctx_T (int32): for each byte t, the last kept segment m whose end was settled before t,
  i.e. segment m + 1 starts at s with `settled_at(data, s)` < t; -1 where there is none.

  Byte t may then read the backbone state of segment ctx_T[t] without that state, or the choice
  of it, depending on byte t or later (tests/test_hierarchical.py changes bytes and checks).
  In ASCII a segment is readable from the byte after the one that starts the next segment.
  """
  length = len(data) if length is None else length
  nexts = np.asarray(list(starts)[1:max_segments + 1], np.int64)  # each kept segment's end
  if not len(nexts):
    return np.full((length,), -1, np.int32)
  settled_M = _settled(data, nexts)
  # ctx[t] = the largest m with settled_M[m] < t; a suffix minimum makes that a sorted search.
  suffix_min_M = np.minimum.accumulate(settled_M[::-1])[::-1]
  return (np.searchsorted(suffix_min_M, np.arange(length), side="left") - 1).astype(np.int32)


# ---- the entropy segmenter (BLT) ---------------------------------------------------------------


class EntropyModel:
  """A byte n-gram LM reduced to what BLT's patcher needs: the entropy (bits) of the next byte
  after each context of `order` bytes, and the global threshold above which a segment starts.

  Probabilities are interpolated down the orders (each order's counts plus `pseudo` counts of
  the order below; the unigram gets add-one), so every context has a finite entropy. Contexts
  before the start of the data are filled with 0xFF, the pipeline's document separator.
  """

  def __init__(self, entropy_C: np.ndarray, order: int, threshold: float,
               relative: float = 0.0):
    if entropy_C.shape != (256**order,):
      raise ValueError(f"an order-{order} entropy table has {256**order} entries, got "
                       f"{entropy_C.shape}")
    self.entropy_C, self.order = entropy_C.astype(np.float32), int(order)
    self.threshold, self.relative = float(threshold), float(relative)

  @classmethod
  def fit(cls, stream: np.ndarray, *, order: int = 2, target_segment_bytes: float = 5.0,
          relative: float = 0.0, pseudo: float = 4.0) -> "EntropyModel":
    """Counts of the uint8 `stream`; the threshold makes a segment start at a fraction
    1 / target_segment_bytes of its positions (before max_segment_bytes cuts)."""
    if order not in (1, 2):
      raise ValueError(f"entropy model order must be 1 or 2 (a table of 256**order "
                       f"contexts), got {order}")
    if target_segment_bytes <= 1:
      raise ValueError(f"target_segment_bytes must be above 1, got {target_segment_bytes}")
    x = np.asarray(stream, np.uint8).astype(np.int64)
    if x.size <= order:
      raise ValueError(f"{x.size} bytes are too few to fit an order-{order} entropy model")
    probs_V = (np.bincount(x, minlength=256) + 1.0) / (x.size + 256.0)
    probs_CV = probs_V[None]
    for k in range(1, order + 1):
      context = np.zeros(x.size - k, np.int64)
      for j in range(k):  # the k bytes before each position, oldest first
        context = context * 256 + x[j: x.size - k + j]
      counts_CV = np.bincount(context * 256 + x[k:], minlength=256**(k + 1)).reshape(-1, 256)
      # The order below is indexed by the newest k - 1 bytes: context % 256**(k-1).
      lower_CV = probs_CV[np.arange(256**k) % probs_CV.shape[0]]
      probs_CV = (counts_CV + pseudo * lower_CV) / (counts_CV.sum(1, keepdims=True) + pseudo)
    entropy_C = -(probs_CV * np.log2(probs_CV)).sum(axis=1)
    model = cls(entropy_C, order, threshold=0.0, relative=relative)
    entropy_T = model.entropies(np.asarray(stream, np.uint8).tobytes())
    model.threshold = float(np.quantile(entropy_T, 1.0 - 1.0 / target_segment_bytes))
    return model

  def entropies(self, data: bytes) -> np.ndarray:
    """entropy_T: bits of uncertainty about byte t given the `order` bytes before it."""
    x = np.concatenate([np.full(self.order, 0xFF, np.int64),
                        np.frombuffer(data, np.uint8).astype(np.int64)])
    context = np.zeros(len(data), np.int64)
    for j in range(self.order):
      context = context * 256 + x[j: j + len(data)]
    return self.entropy_C[context]

  def starts(self, data: bytes) -> list[int]:
    """Segment starts: 0, and each t whose entropy is above the threshold or (with a relative
    threshold) above the entropy at t - 1 by more than it. Reads only bytes before t."""
    entropy_T = self.entropies(data)
    cut_T = entropy_T > self.threshold
    if self.relative > 0:
      cut_T[1:] |= np.diff(entropy_T) > self.relative
    return [0] + [int(t) for t in np.flatnonzero(cut_T) if t > 0] if len(data) else []

  def save(self, path) -> None:
    """An .npz (no pickle), written to a temporary name and renamed."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, entropy_C=self.entropy_C, order=self.order, threshold=self.threshold,
             relative=self.relative)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path) -> "EntropyModel":
    try:
      with np.load(path, allow_pickle=False) as f:
        return cls(f["entropy_C"], int(f["order"]), float(f["threshold"]), float(f["relative"]))
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f"{path} is not a readable entropy model ({e}); delete it and the "
                       "trainer fits a new one from the training text") from e


@dataclasses.dataclass(frozen=True)
class Segmenter:
  """A host segmenter with the static bounds: bytes -> starts, long segments split."""

  kind: str = "words"
  max_segment_bytes: int = 16
  fixed_size: int = 4
  entropy_model: EntropyModel | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"segmenter kind must be one of {KINDS}, got {self.kind!r}")
    if self.kind == "entropy" and self.entropy_model is None:
      raise ValueError("the entropy segmenter needs an EntropyModel (EntropyModel.fit on the "
                       "training bytes, or .load of the workdir's entropy_model.npz)")

  @classmethod
  def from_settings(cls, settings) -> "Segmenter":
    """From a config's data.segments (a dict or ConfigDict): kind, max_segment_bytes,
    fixed_size and, for "entropy", entropy_model, the path of a saved EntropyModel."""
    kind = settings.get("kind")
    model = None
    if kind == "entropy":
      if not settings.get("entropy_model"):
        raise ValueError("entropy segments need segments.entropy_model, the path of a fitted "
                         "model (the trainer fits one: pipeline.fit_entropy_model)")
      model = EntropyModel.load(settings["entropy_model"])
    return cls(kind, int(settings.get("max_segment_bytes", 16)),
               int(settings.get("fixed_size", 4)), model)

  def __call__(self, data: bytes) -> list[int]:
    if self.kind == "words":
      starts = word_starts(data)
    elif self.kind == "entropy":
      starts = self.entropy_model.starts(data)
    else:
      starts = fixed_starts(len(data), self.fixed_size)
    return split_long(data, starts, self.max_segment_bytes)


# ---- pooling (JAX) -------------------------------------------------------------------------------


def pool(x_BTD: jax.Array, ids_BT: jax.Array, num_segments: int, how: str = "mean") -> jax.Array:
  """Segment states x_BND from byte states: the mean of each segment's bytes, or its "last" or
  "first" byte; empty segment slots are zeros. ids_BT as from `segment_ids` (-1: no segment)."""
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
  return jnp.einsum("btn,btd->bnd", weights_BTN, x_BTD)


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
    return jnp.einsum("btn,btd->bnd", weights_BTN.astype(x_BTD.dtype), x_BTD)


def unpool(h_BND: jax.Array, context_BT: jax.Array, start_D: jax.Array) -> jax.Array:
  """Per byte, the backbone state context_BT names (`context_ids`); start_D where it is -1."""
  index_BT = jnp.maximum(context_BT, 0)
  gathered_BTD = jnp.take_along_axis(h_BND, index_BT[..., None], axis=1)
  return jnp.where((context_BT >= 0)[..., None], gathered_BTD, start_D.astype(h_BND.dtype))


# ---- learned boundaries (JAX) --------------------------------------------------------------------


class BoundaryPredictor(nnx.Module):
  """H-Net's routing module: a segment starts at byte t with probability
  p_t = (1 - cos(q_t, k_{t-1})) / 2, q = W_q e, k = W_k e of the byte encoder's (causal) states:
  where consecutive states disagree, a new unit begins. p_0 = 1."""

  def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(std=dim**-0.5, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
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
  bytes, and at t = 0. Depends on past decisions only."""
  def step(run_B, start_B):
    start_B = start_B | (run_B >= max_segment_bytes)
    return jnp.where(start_B, 1, run_B + 1), start_B

  first_B = jnp.full(starts_BT.shape[:1], max_segment_bytes, jnp.int32)  # forces t = 0
  _, starts_TB = jax.lax.scan(step, first_B, starts_BT.T)
  return starts_TB.T


def ids_from_starts(starts_BT: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
  """(segment_ids_BT, context_ids_BT) as `segment_ids` / `context_ids` give them on the host,
  for boundaries decided from bytes 0..t alone: byte t reads the segment before the one byte
  t - 1 is in. Segments past max_segments get id -1 (their bytes read segment N - 1). Positions
  where starts_BT is False after the last valid byte stay in the last segment."""
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
