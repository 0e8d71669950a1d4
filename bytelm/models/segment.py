"""Dynamic token merging, part 1: cutting bytes into segments, and moving between the two.

A segmenter maps a byte sequence to segment start offsets; `segment_ids` turns those into
static shapes: at most `max_segments` segments per sequence, at most `max_segment_bytes` bytes
per segment. A segment longer than that is split into chunks (at UTF-8 character boundaries
where it can), never dropped; bytes after the last segment that fits are reported, not lost, so
the data pipeline can start its next window there.

Segmenters (the entropy and learned ones come with the hierarchical model):
- `bytelm.tokenizer.word_starts` (word splitting lives with the tokenizer): Unicode-aware
  words, each with the whitespace before it; punctuation, symbols, unspaced scripts and invalid
  bytes stand alone. It never looks past the character it decides, so a boundary is settled by
  the character that starts the next segment (see `context_ids`).
- `fixed_starts`: every n bytes (MEGABYTE's patches, the control).

Pooling (`pool`) turns byte states B T D into segment states B N D; `unpool` hands each byte
the backbone state of the last segment whose end was already known before that byte
(`context_ids`), so that predicting byte t never depends on byte t or later (tested).

Axis legend: B batch, T bytes, N segments, D width.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def _declared_width(byte: int) -> int:
  """Bytes of the character a byte starts, as its bit pattern declares (1 for ASCII and for
  bytes that cannot start one)."""
  return 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4


def settled_at(data: bytes, s: int) -> int:
  """The last byte that can still change a segment boundary at s: the end of the character
  starting at s, or of one before it whose declared bytes reach past s (whether "\\xe6\\x97"
  starts a character or is two invalid bytes, each a segment, depends on the byte after)."""
  last = s + _declared_width(data[s]) - 1
  for q in range(max(0, s - 3), s):
    last = max(last, q + _declared_width(data[q]) - 1)
  return last


def context_ids(data: bytes, starts: Sequence[int], max_segments: int,
                length: int | None = None) -> np.ndarray:
  """ctx_T (int32): for each byte t, the last kept segment m whose end was settled before t,
  i.e. segment m + 1 starts at s with `settled_at(data, s)` < t; -1 where there is none.

  Byte t may then read the backbone state of segment ctx_T[t] without that state, or the choice
  of it, depending on byte t or later (tests/test_hierarchical.py changes bytes and checks).
  In ASCII a segment is readable from the byte after the one that starts the next segment.
  """
  length = len(data) if length is None else length
  ctx_T = np.full((length,), -1, np.int32)
  kept = list(starts)[:max_segments + 1]  # the start after the last kept segment ends it
  for m in range(len(kept) - 1):
    ctx_T[settled_at(data, kept[m + 1]) + 1:] = m
  return ctx_T


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


def unpool(h_BND: jax.Array, context_BT: jax.Array, start_D: jax.Array) -> jax.Array:
  """Per byte, the backbone state context_BT names (`context_ids`); start_D where it is -1."""
  index_BT = jnp.maximum(context_BT, 0)
  gathered_BTD = jnp.take_along_axis(h_BND, index_BT[..., None], axis=1)
  return jnp.where((context_BT >= 0)[..., None], gathered_BTD, start_D.astype(h_BND.dtype))
