"""Cutting bytes into segments inside a compiled step (jnp): `bytelm.text.segment`'s rules on
the device.

The hierarchical models read, for each row of target bytes, `segment_ids` and `context_ids`
(see `bytelm.text.segment`). Computing them on the host costs milliseconds a batch and a
transfer; here they are computed from the [B, T] batch itself, under static shapes, in the same
compiled program as the model (training, evaluation, `LanguageModel.score` and generation all
call `DeviceSegmenter`). `bytelm.text.segment` stays the reference: the tests check that both
give the same ids, byte for byte, on random bytes, multilingual text and invalid UTF-8. The
UTF-8 decoding here reads like the host's on purpose, but is written apart (functional jnp, not
numpy's in-place updates): a reference that shared the code would share its bugs.

How the rules become array operations:
- UTF-8 is decoded at every position at once: each byte's width as a lead byte (RFC 3629, as
  Python's decoder: no overlong forms, no surrogates, at most U+10FFFF), then which bytes are
  covered by a valid sequence starting before them. A byte outside any valid sequence is a
  character of its own.
- A character's kind (space, word, alone) is looked up in a table of code-point ranges: the
  kind changes only ~130 times over all of Unicode, so the table is ~130 boundaries built once
  from `unicodedata` (the host's rules, the same Python), searched by binary search.
- Segments longer than max_segment_bytes are cut in rounds (`lax.while_loop`): each round cuts
  every segment still too long once, backed off continuation bytes; natural text needs 0-2.
- segment and context ids come from starts by cumulative sums, a reversed cumulative minimum
  and a scatter-add (`ids`).

Axis legend: B rows, T bytes, R kind ranges.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from bytelm.text import segment
from bytelm.text.tokenizer import EOS_ID, OFFSET, PAD_ID

EOS_BYTE = 0xFF  # the eos between documents stands as this byte (never valid UTF-8)


@functools.cache
def _kind_ranges() -> tuple[np.ndarray, np.ndarray]:
  """(first code point of each run of equal kind, that kind): `segment.char_kind` over all of
  Unicode, as runs (~0.3 s once per process)."""
  firsts, kinds, previous = [], [], None
  for cp in range(0x110000):
    if 0xD800 <= cp <= 0xDFFF:  # surrogates never decode from UTF-8: any kind will do
      continue
    kind = segment.char_kind.__wrapped__(cp)  # (not through its cache: 1.1M entries)
    if kind != previous:
      firsts.append(cp)
      kinds.append(kind)
      previous = kind
  return np.asarray(firsts, np.int32), np.asarray(kinds, np.int8)


def decode(bytes_BT: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(is_char_BT, cp_BT): whether byte t starts a character of the row's first lengths_B[r]
  bytes, and its code point where it starts a valid sequence (the byte itself elsewhere)."""
  B, T = bytes_BT.shape
  inside_BT = jnp.arange(T) < lengths_B[:, None]
  x = jnp.where(inside_BT, bytes_BT.astype(jnp.int32), 0)

  def at(k):  # byte t + k (0 past the row's end: no continuation byte)
    return jnp.pad(x, ((0, 0), (0, k)))[:, k:]

  b1, b2, b3 = at(1), at(2), at(3)
  cont1, cont2, cont3 = ((b & 0xC0) == 0x80 for b in (b1, b2, b3))
  lo1 = jnp.where(x == 0xE0, 0xA0, jnp.where(x == 0xF0, 0x90, 0x80))  # no overlong forms
  hi1 = jnp.where(x == 0xED, 0x9F, jnp.where(x == 0xF4, 0x8F, 0xBF))  # no surrogates
  second = cont1 & (b1 >= lo1) & (b1 <= hi1)
  width = jnp.where(x < 0x80, 1, 0)
  width = jnp.where((x >= 0xC2) & (x <= 0xDF) & cont1, 2, width)
  width = jnp.where((x >= 0xE0) & (x <= 0xEF) & second & cont2, 3, width)
  width = jnp.where((x >= 0xF0) & (x <= 0xF4) & second & cont2 & cont3, 4, width)
  width = jnp.where(inside_BT, width, 0)
  covered = jnp.zeros((B, T), bool)  # inside a valid sequence that starts before
  for k in (1, 2, 3):
    covered = covered | jnp.pad(width > k, ((0, 0), (k, 0)))[:, :T]
  is_char = inside_BT & ~covered
  cp = jnp.where(width == 2, ((x & 0x1F) << 6) | (b1 & 0x3F), x)
  cp = jnp.where(width == 3, ((x & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F), cp)
  cp = jnp.where(width == 4, ((x & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6)
                 | (b3 & 0x3F), cp)
  return is_char, jnp.where(width >= 1, cp, -1)


def char_kinds(cp: jax.Array) -> jax.Array:
  """int32 of cp's shape: `segment.char_kind` of each code point; a negative cp (a byte outside
  valid UTF-8) is a character that stands alone."""
  firsts_R, kinds_R = (jnp.asarray(a) for a in _kind_ranges())
  # Unrolled binary search: ~8 gathers, where the default scan is a loop (slower on CPU).
  run = jnp.searchsorted(firsts_R, jnp.maximum(cp, 0), side="right", method="scan_unrolled")
  return jnp.where(cp >= 0, kinds_R[run - 1].astype(jnp.int32), segment.ALONE)


def word_starts(bytes_BT: jax.Array, lengths_B: jax.Array) -> jax.Array:
  """bool [B, T]: `segment.word_starts` of each row's first lengths_B[r] bytes."""
  T = bytes_BT.shape[1]
  is_char, cp = decode(bytes_BT, lengths_B)
  kind = char_kinds(cp)
  # The character before each: the last character start before t.
  last = jax.lax.cummax(jnp.where(is_char, jnp.arange(T), -1), axis=1)
  prev = jnp.pad(last, ((0, 0), (1, 0)), constant_values=-1)[:, :T]
  prev_kind = jnp.where(prev >= 0, jnp.take_along_axis(kind, jnp.maximum(prev, 0), axis=1), -1)
  return is_char & segment.starts_from_kinds(kind, prev_kind)


def fixed_starts(lengths_B: jax.Array, T: int, size: int) -> jax.Array:
  """bool [B, T]: every `size` bytes of each row's first lengths_B[r]."""
  t_T = jnp.arange(T)
  return (t_T % size == 0) & (t_T < lengths_B[:, None])


def entropy_starts(bytes_BT: jax.Array, lengths_B: jax.Array, entropy_C: jax.Array,
                   order: int, threshold: float, relative: float) -> jax.Array:
  """bool [B, T]: `segment.EntropyModel.starts` of each row (contexts before the row's first
  byte are 0xFF), in float32 as the host compares."""
  B, T = bytes_BT.shape
  x = jnp.pad(bytes_BT.astype(jnp.int32), ((0, 0), (order, 0)), constant_values=EOS_BYTE)
  context = jnp.zeros((B, T), jnp.int32)
  for j in range(order):  # the order bytes before each position, oldest first
    context = context * 256 + x[:, j: j + T]
  entropy_BT = entropy_C[context]
  cut = entropy_BT > jnp.float32(threshold)
  if relative > 0:
    rise = jnp.diff(entropy_BT, axis=1) > jnp.float32(relative)
    cut = cut | jnp.pad(rise, ((0, 0), (1, 0)))
  t_T = jnp.arange(T)
  return (cut | (t_T == 0)) & (t_T < lengths_B[:, None])


def split_long(bytes_BT: jax.Array, lengths_B: jax.Array, start_BT: jax.Array,
               max_segment_bytes: int) -> jax.Array:
  """start_BT with every segment longer than max_segment_bytes cut, as `segment.split_long`:
  max_segment_bytes after its start, backed off to the first byte of the character there
  (never to the segment's own first byte)."""
  B, T = start_BT.shape
  t_T = jnp.arange(T)
  inside_BT = t_T < lengths_B[:, None]
  # The nearest byte at or before t that is not a continuation byte: where a cut at t lands.
  lead_BT = jax.lax.cummax(jnp.where((bytes_BT & 0xC0) != 0x80, t_T, -1), axis=1)
  rows_B1 = jnp.arange(B)[:, None]

  def cuts(start_BT):
    segment_start = jax.lax.cummax(jnp.where(start_BT, t_T, 0), axis=1)
    due_BT = inside_BT & (t_T - segment_start == max_segment_bytes)
    cut_BT = jnp.maximum(segment_start + 1, lead_BT)
    return due_BT, jnp.where(due_BT, cut_BT, T)  # T: out of bounds, dropped

  def cond(carry):
    return carry[1].any()

  def body(carry):
    start_BT, due_BT, cut_BT = carry
    start_BT = start_BT.at[rows_B1, cut_BT].set(True, mode="drop")
    return (start_BT,) + cuts(start_BT)

  start_BT, _, _ = jax.lax.while_loop(cond, body, (start_BT,) + cuts(start_BT))
  return start_BT


def ids(bytes_BT: jax.Array, lengths_B: jax.Array, start_BT: jax.Array,
        max_segments: int) -> tuple[jax.Array, jax.Array]:
  """(segment_ids, context_ids), int32 [B, T], as `segment.row_ids` gives them."""
  B, T = bytes_BT.shape
  t_T = jnp.arange(T)
  valid_BT = t_T < lengths_B[:, None]
  start_BT = start_BT & valid_BT
  seg_BT = jnp.cumsum(start_BT, axis=1, dtype=jnp.int32) - 1
  ids_BT = jnp.where(valid_BT & (seg_BT < max_segments), seg_BT, -1)
  # A kept segment's end (the start of segment m + 1) is settled where the latest character
  # among its byte and the 3 before it ends, as the bytes' bit patterns declare.
  declared = jnp.asarray(segment.DECLARED_EXTRA, jnp.int32)
  end_BT = jnp.where(valid_BT, t_T + declared[bytes_BT.astype(jnp.int32)], -1)
  settled_BT = end_BT
  for k in (1, 2, 3):
    settled_BT = jnp.maximum(settled_BT,
                             jnp.pad(end_BT, ((0, 0), (k, 0)), constant_values=-1)[:, :T])
  next_BT = start_BT & (seg_BT >= 1) & (seg_BT <= max_segments)
  never = 2 * T + 8  # above any settled position: its count lands past the row
  suffix_BT = jax.lax.cummin(jnp.where(next_BT, settled_BT, never), axis=1, reverse=True)
  # ctx[t] = (how many kept ends have suffix minimum < t) - 1: count each at its value + 1.
  at_BT = jnp.where(next_BT, suffix_BT + 1, T)
  count_BT = jnp.zeros((B, T), jnp.int32).at[jnp.arange(B)[:, None], at_BT].add(1, mode="drop")
  return ids_BT, jnp.cumsum(count_BT, axis=1, dtype=jnp.int32) - 1


def bytes_of_targets(targets_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(bytes_BT uint8, lengths_B) of rows of target ids: the eos between documents stands as
  0xFF, padding (which only ends a row) is not counted."""
  bytes_BT = jnp.where(targets_BT == EOS_ID, EOS_BYTE, targets_BT - OFFSET) & 0xFF
  return bytes_BT.astype(jnp.uint8), jnp.sum(targets_BT != PAD_ID, axis=1, dtype=jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceSegmenter:
  """A `segment.Segmenter` and the backbone's max_segments, as a jnp function of the batch:
  `self(targets_BT)` -> {"segment_ids", "context_ids"} int32 [B, T]; `self.add(batch)` adds
  them to a batch that lacks them. Call it inside a jitted function."""

  segmenter: segment.Segmenter
  max_segments: int

  def starts(self, bytes_BT: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """bool [B, T]: where segments start (long ones cut), as `segment.Segmenter.rows`."""
    s = self.segmenter
    if s.kind == "words":
      start_BT = word_starts(bytes_BT, lengths_B)
    elif s.kind == "fixed":
      start_BT = fixed_starts(lengths_B, bytes_BT.shape[1], s.fixed_size)
    else:
      m = s.entropy_model
      start_BT = entropy_starts(bytes_BT, lengths_B, jnp.asarray(m.entropy_C), m.order,
                                m.threshold, m.relative)
    return split_long(bytes_BT, lengths_B, start_BT, s.max_segment_bytes)

  def __call__(self, targets_BT: jax.Array) -> dict[str, jax.Array]:
    bytes_BT, lengths_B = bytes_of_targets(targets_BT)
    segment_ids, context_ids = ids(bytes_BT, lengths_B, self.starts(bytes_BT, lengths_B),
                                   self.max_segments)
    return {"segment_ids": segment_ids, "context_ids": context_ids}

  def add(self, batch: dict) -> dict:
    """batch with its targets' segment_ids and context_ids (kept where it has them)."""
    if "segment_ids" in batch:
      return batch
    return {**batch, **self(batch["targets"])}


def with_segments(loss_fn, segmenter: DeviceSegmenter | None):
  """loss_fn(model, batch, **kw) that first adds the batch's segment ids (`segmenter.add`),
  inside whatever compiles it; loss_fn itself where segmenter is None."""
  if segmenter is None:
    return loss_fn
  return lambda model, batch, **kw: loss_fn(model, segmenter.add(batch), **kw)
