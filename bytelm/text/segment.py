"""Cutting bytes into segments on the host (numpy): the segmenters, and their static shapes.

A segmenter maps a byte sequence to segment start offsets; `segment_ids` turns those into
static shapes: at most `max_segments` segments per sequence, at most `max_segment_bytes` bytes
per segment. A segment longer than that is split into chunks (at UTF-8 character boundaries
where it can), never dropped; bytes after the last segment that fits are reported, not lost, so
the data pipeline can start its next window there.

Segmenters (`Segmenter` runs one of them, then `split_long`):
- "words" (`word_starts`): a word is a run of characters between whitespace, with the
  whitespace before it; letters, marks, digits, punctuation and symbols all belong to it
  ("don't", "3.14" and "Hello," are one word each). A letter of a script written without
  spaces (CJK, kana, Thai, ...) and a byte that is not valid UTF-8 each stand alone, and so
  does the punctuation after such a letter ("日本。" is three words).
- "entropy" (BLT, Pagnoni et al. 2024): a segment starts where a small byte LM's entropy over
  the next byte crosses a global threshold, or rises by more than a relative one. The small LM
  here is a byte n-gram model fitted on the training text (`EntropyModel`); the global
  threshold is the entropy quantile that gives a target mean segment length.
- "fixed": every n bytes (MEGABYTE's patches, the control).
None of them looks past the character it decides, so a boundary is settled by the character
that starts the next segment (see `context_ids`). The model side (pooling byte states into
segment states, learned boundaries) is `bytelm.models.pooling`; `context_ids` is what it reads
to keep byte predictions causal.

Axis legend: T bytes, M boundaries, C n-gram contexts.
"""

from __future__ import annotations

from collections.abc import Sequence

import dataclasses
import functools
import os
import pathlib
import unicodedata

import numpy as np

KINDS = ("words", "entropy", "fixed")


# ---- words (the "words" segmenter) ---------------------------------------------------------------

# Unicode name prefixes of letters of scripts written without spaces between words.
_NO_SPACE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR",
                     "TIBETAN")


SPACE, WORD, ALONE = 0, 1, 2  # character kinds


@functools.lru_cache(maxsize=1 << 16)
def char_kind(cp: int) -> int:
  """SPACE | WORD (letters, marks, digits, punctuation, symbols) | ALONE (a character of a
  script written without spaces) of the character cp."""
  ch = chr(cp)
  if ch.isspace():
    return SPACE
  if unicodedata.category(ch)[0] in "LM" and unicodedata.name(ch, "").startswith(
      _NO_SPACE_SCRIPTS):
    return ALONE
  return WORD


_ASCII_KIND = np.array([char_kind(b) for b in range(128)], np.int8)


def _word_starts_rows(bytes_BT: np.ndarray, lengths_B: np.ndarray) -> np.ndarray:
  """bool [B, T]: word_starts of each row's first lengths_B[r] bytes, for all rows at once.

  UTF-8 is decoded as Python's decoder does (RFC 3629: no overlong forms, no surrogates, at
  most U+10FFFF): a byte starts a character unless it is inside a valid sequence that starts
  before it, and a byte outside any valid sequence is a character of its own (kind alone)."""
  B, T = bytes_BT.shape
  inside = np.arange(T) < lengths_B[:, None]
  if (bytes_BT < 0x80).all():  # ASCII: every byte a character, of its table kind
    kind = _ASCII_KIND[bytes_BT]
    prev_kind = np.full((B, T), -1, np.int8)
    prev_kind[:, 1:] = kind[:, :-1]
    return starts_from_kinds(kind, prev_kind) & inside
  x = bytes_BT.astype(np.int32)

  def at(k):  # byte t + k of each position (0 past the row's end: no continuation byte)
    out = np.zeros_like(x)
    if k < T:  # (rows shorter than k + 1 bytes have no byte t + k anywhere)
      out[:, : T - k] = np.where(inside[:, k:], x[:, k:], 0)
    return out

  b1, b2, b3 = at(1), at(2), at(3)
  cont1, cont2, cont3 = ((b & 0xC0) == 0x80 for b in (b1, b2, b3))
  lo1 = np.where(x == 0xE0, 0xA0, np.where(x == 0xF0, 0x90, 0x80))  # no overlong forms
  hi1 = np.where(x == 0xED, 0x9F, np.where(x == 0xF4, 0x8F, 0xBF))  # no surrogates, <= 10FFFF
  second = cont1 & (b1 >= lo1) & (b1 <= hi1)
  width = np.where(x < 0x80, 1, 0)
  width = np.where((x >= 0xC2) & (x <= 0xDF) & cont1, 2, width)
  width = np.where((x >= 0xE0) & (x <= 0xEF) & second & cont2, 3, width)
  width = np.where((x >= 0xF0) & (x <= 0xF4) & second & cont2 & cont3, 4, width)
  width = np.where(inside, width, 0)
  covered = np.zeros((B, T), bool)  # inside a valid sequence that starts before
  for k in (1, 2, 3):
    covered[:, k:] |= width[:, :-k] > k
  is_char = inside & ~covered
  cp = np.where(width == 2, ((x & 0x1F) << 6) | (b1 & 0x3F), x)
  cp = np.where(width == 3, ((x & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F), cp)
  cp = np.where(width == 4, ((x & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6)
                | (b3 & 0x3F), cp)
  kind = np.full((B, T), ALONE, np.int8)  # a byte outside valid UTF-8 stands alone
  ascii_ = is_char & (x < 0x80)
  kind[ascii_] = _ASCII_KIND[x[ascii_]]
  multi = is_char & (width >= 2)
  if multi.any():
    others, inverse = np.unique(cp[multi], return_inverse=True)
    kind[multi] = np.asarray([char_kind(int(c)) for c in others], np.int8)[inverse]
  # The character before each: the last character start before t.
  last = np.maximum.accumulate(np.where(is_char, np.arange(T, dtype=np.int32), -1), axis=1)
  prev = np.full((B, T), -1, np.int32)
  prev[:, 1:] = last[:, :-1]
  prev_kind = np.where(prev >= 0, np.take_along_axis(kind, np.maximum(prev, 0), axis=1), -1)
  return is_char & starts_from_kinds(kind, prev_kind)


def starts_from_kinds(kind: np.ndarray, prev_kind: np.ndarray) -> np.ndarray:
  """Whether each character starts a word, from its kind and the kind of the character before
  it (-1: none): where a whitespace run begins (it belongs to the word after it, or is the
  text's tail), at the first character, and at a non-space character after another non-space
  one unless both are word characters."""
  space, word = kind == SPACE, kind == WORD
  prev_space, prev_word = prev_kind == SPACE, prev_kind == WORD
  # Operators only (no np.where): bytelm.text.segment_jax applies the same rule to jnp arrays.
  return (prev_kind < 0) | (~prev_space & (space | ~(word & prev_word)))


def word_starts(data: bytes) -> list[int]:
  """Byte offsets where the words of data begin: the "words" segmenter (see the module docstring).

  A word is a run of characters between whitespace, with the whitespace before it (" world,",
  as whitespace splitting does, the space on the word that follows): letters, marks, digits,
  punctuation and symbols all belong to it, so "don't", "3.14" and "2026-11-26" are one word
  each and "Hello," is not two. Scripts written without spaces give one word per character
  (a punctuation mark after one starts a word of its own); whitespace at the end of the text
  is a word of its own; each byte that is not valid UTF-8 stands alone. Every rule looks only
  at the character it decides and the one before, so a boundary is settled by the character
  that starts the next word.

  One row of `_word_starts_rows`, which decodes the UTF-8 of a whole batch at once.
  """
  data = bytes(data)
  if not data:
    return []
  row = np.frombuffer(data, np.uint8)[None]
  return np.flatnonzero(_word_starts_rows(row, np.asarray([len(data)]))[0]).tolist()


# ---- fixed segments, long segments cut, static shapes --------------------------------------------


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
  starts = list(starts)
  ends = starts[1:] + [len(data)]
  if not starts or max(np.subtract(ends, starts)) <= max_segment_bytes:
    return starts  # nothing to cut (the common case: words are short)
  out = []
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
  if kept:  # segment n over [kept[n], next start)
    ids_T[:covered] = np.repeat(np.arange(len(kept), dtype=np.int32),
                                np.diff(np.asarray(kept + [covered])))
  return ids_T, covered


# Bytes after a lead byte that its bit pattern declares: 110xxxxx 1, 1110xxxx 2, 11110xxx+ 3.
DECLARED_EXTRA = np.repeat(np.arange(4), [0xC0, 0x20, 0x10, 0x10])
_BACK = np.arange(3, -1, -1)  # offsets into end_T (3 places of padding) of s, s-1, s-2, s-3


def _split_long_rows(bytes_BT: np.ndarray, lengths_B: np.ndarray, start_BT: np.ndarray,
                     max_segment_bytes: int) -> np.ndarray:
  """split_long of each row (start_BT: bool [B, T] of its starts), for all rows at once: each
  round cuts every segment still too long once, max_segment_bytes after its start, backed off
  continuation bytes as split_long does."""
  if max_segment_bytes < 4:
    raise ValueError(f"max_segment_bytes must be at least 4 (one UTF-8 character), got "
                     f"{max_segment_bytes}")
  t_T = np.arange(start_BT.shape[1])
  inside = t_T < lengths_B[:, None]
  continuation = (bytes_BT & 0xC0) == 0x80
  start_BT = start_BT.copy()
  while True:
    segment_start = np.maximum.accumulate(np.where(start_BT, t_T, 0), axis=1)
    rows, cut = np.nonzero(inside & (t_T - segment_start == max_segment_bytes))
    if not len(rows):
      return start_BT
    position = segment_start[rows, cut]
    while True:  # not inside a character: back to its first byte (not to the segment's)
      back = continuation[rows, cut] & (cut > position + 1)
      if not back.any():
        break
      cut = cut - back
    start_BT[rows, cut] = True


def _settled(data: bytes, starts_M: np.ndarray) -> np.ndarray:
  """settled_at for many boundaries at once (int64 [M])."""
  x = np.frombuffer(data, np.uint8)
  # Where each byte's character ends, as the byte's bit pattern declares (itself for ASCII and
  # for bytes that cannot start a character), after 3 places of -1 standing before the data.
  end_T = np.full(len(x) + 3, -1, np.int64)
  end_T[3:] = np.arange(len(x)) + DECLARED_EXTRA[x]
  # The latest end among the byte at s and the 3 before it.
  return end_T[np.asarray(starts_M, np.int64)[None, :] + _BACK[:, None]].max(axis=0)


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


def row_ids(bytes_BT: np.ndarray, lengths_B: np.ndarray, start_BT: np.ndarray,
            max_segments: int) -> tuple[np.ndarray, np.ndarray]:
  """(segment_ids, context_ids), int32 [B, T], of each row's first lengths_B[r] bytes with
  segments starting where start_BT is set: what `segment_ids` and `context_ids` give row by
  row (padding past a row's length gets segment -1), for the whole batch at once."""
  B, T = bytes_BT.shape
  t_T = np.arange(T)
  valid_BT = t_T < lengths_B[:, None]
  start_BT = start_BT & valid_BT
  seg_BT = np.cumsum(start_BT, axis=1) - 1  # the segment each byte is in
  ids_BT = np.where(valid_BT & (seg_BT < max_segments), seg_BT, -1).astype(np.int32)
  # Each kept segment's end (the start of segment m + 1, m < max_segments) is settled where
  # the latest character among its byte and the 3 before it ends (`_settled`).
  end_BT = np.full((B, T + 3), -1, np.int64)
  end_BT[:, 3:] = np.where(valid_BT, t_T + DECLARED_EXTRA[bytes_BT], -1)
  settled_BT = np.maximum.reduce([end_BT[:, 3 - k: 3 - k + T] for k in range(4)])
  next_BT = start_BT & (seg_BT >= 1) & (seg_BT <= max_segments)
  big = np.iinfo(np.int64).max
  suffix_BT = np.minimum.accumulate(np.where(next_BT, settled_BT, big)[:, ::-1], axis=1)[:, ::-1]
  # ctx[t] = (how many kept ends have suffix minimum < t) - 1: count each at its value + 1.
  rows, cols = np.nonzero(next_BT)
  at = suffix_BT[rows, cols] + 1
  inside = at < T
  count_BT = np.bincount(rows[inside] * T + at[inside], minlength=B * T).reshape(B, T)
  return ids_BT, (np.cumsum(count_BT, axis=1) - 1).astype(np.int32)


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
      raise ValueError(f"{path} is not a readable entropy model ({e}). In a run's workdir, "
                       "delete it and the trainer fits a new one from the training text; in an "
                       "export, export the run again") from e


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

  def rows(self, bytes_BT: np.ndarray, lengths_B: np.ndarray) -> np.ndarray:
    """bool [B, T]: where segments start in each row's first lengths_B[r] bytes, as `self`
    gives them row by row; word segments for the whole batch at once."""
    B, T = bytes_BT.shape
    if self.kind == "words" and T:
      return _split_long_rows(bytes_BT, lengths_B, _word_starts_rows(bytes_BT, lengths_B),
                              self.max_segment_bytes)
    start_BT = np.zeros((B, T), bool)
    for r in range(B):
      start_BT[r, self(bytes_BT[r, : lengths_B[r]].tobytes())] = True
    return start_BT

  def __call__(self, data: bytes) -> list[int]:
    if self.kind == "words":
      starts = word_starts(data)
    elif self.kind == "entropy":
      starts = self.entropy_model.starts(data)
    else:
      starts = fixed_starts(len(data), self.fixed_size)
    return split_long(data, starts, self.max_segment_bytes)
