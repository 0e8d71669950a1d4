"""One split's byte stream: documents joined by an end-of-document mark, in memory or on disk.

The pipeline (bytelm.data.pipeline) reads windows of a stream by position. A position is a byte
of a document or the eos between two documents, so a stream of n documents holding N bytes has
N + n - 1 positions, whichever way it is stored:

  text    the positions themselves as uint8, eos written in band as 0xFF (a byte valid UTF-8
          never holds). The in-memory stream of `from_texts` and a prepared text source.
  bytes   the documents' bytes only, and the eos positions in a sorted int64 array beside
          them (`boundaries`): raw bytes may hold 0xFF, so no byte value can mark a boundary.

On disk (bytelm.data.prepare) a stream is a few shard files of bounded size read through
np.memmap, so a run touches only the pages of the windows it reads: a corpus far larger than
memory costs the memory of its batches. Reading never copies more than the window asked for.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from bytelm.text.tokenizer import EOS_ID, OFFSET

EOS_BYTE = 0xFF  # a text stream's in-band eos; never a byte of valid UTF-8
KINDS = ("text", "bytes")
MANIFEST = "manifest.json"
FORMAT = 1  # of prepared folders (bytelm.data.prepare); bumped when their layout changes
_BLOCK = 1 << 24  # bytes a scan of the stream reads at a time
_SHUFFLE_SALT = 0x5EED0D0C  # keeps the document-order rng apart from the example rngs


def document_order(n: int, shuffle_seed: int | None = 0) -> np.ndarray:
  """The order documents are joined in: a permutation of n fixed by shuffle_seed (independent
  of a run's seed, so evaluation windows are the same bytes in every run); None keeps the
  given order. In memory and on disk alike."""
  if shuffle_seed is None:
    return np.arange(n)
  return np.random.default_rng([shuffle_seed, _SHUFFLE_SALT]).permutation(n)


def build_stream(texts: Sequence[str], shuffle_seed: int | None = 0
                 ) -> tuple[np.ndarray, int]:
  """(uint8 stream, number of documents): UTF-8 documents (a sequence of str, or a
  `datasets.Dataset` with a "text" column) joined by 0xFF (eos), in `document_order`.

  Empty documents are skipped. shuffle_seed=None keeps the given order.
  """
  datasets = sys.modules.get("datasets")  # a Dataset exists only if datasets was imported
  if datasets is not None and isinstance(texts, datasets.Dataset):
    if "text" not in texts.column_names:
      raise ValueError(f"the Dataset has no \"text\" column, only {texts.column_names}; "
                       "rename the text column: ds.rename_column('<col>', 'text')")
    texts = texts["text"]
  elif isinstance(texts, (str, bytes)):
    raise TypeError("texts must be a sequence of documents, not one string; wrap it: [text]")
  encoded = []
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f"document {i} is {type(text).__name__}, not str; decode it first")
    try:
      if text:
        encoded.append(text.encode("utf-8"))
    except UnicodeEncodeError as e:
      raise ValueError(f"document {i} is not encodable as UTF-8 at character {e.start} "
                       f"({e.reason}, e.g. a lone surrogate from a JSON \\ud800 escape); "
                       "clean the source text") from e
  if not encoded:
    raise ValueError("no text: every document is empty (or there are none); load a source "
                     "with text")
  encoded = [encoded[j] for j in document_order(len(encoded), shuffle_seed)]
  stream = np.frombuffer(bytes([EOS_BYTE]).join(encoded), dtype=np.uint8)
  return stream, len(encoded)


def stream_to_ids(window: np.ndarray) -> np.ndarray:
  """int32 ids of a slice of the uint8 stream: byte b -> b + 3, the eos marker -> 1."""
  ids = window.astype(np.int32) + OFFSET
  ids[window == EOS_BYTE] = EOS_ID
  return ids


class ByteStream:
  """Positions of one split's documents (module docstring): `ids`, `markers`, `documents`."""

  def __init__(self, shards: Sequence[np.ndarray], *, documents: int,
               boundaries: np.ndarray | None = None, content_hash: str = "", name: str = "",
               directory: pathlib.Path | None = None, split: str = ""):
    """shards: uint8 arrays (or memmaps) that concatenate to the stored bytes. boundaries:
    None for a text stream (eos in band); for a bytes stream, the eos positions, sorted.
    content_hash: the prepared stream's hash ("" in memory). name: its source's spec, for
    messages and logs. directory,
    split: where a prepared stream lies (None in memory), for what is derived from it."""
    self._shards = [np.asarray(s, np.uint8) for s in shards]  # a memmap stays mapped
    sizes = np.asarray([len(s) for s in self._shards], np.int64)
    self._starts = np.concatenate([[0], np.cumsum(sizes)])  # stored offset of each shard
    self.kind = "text" if boundaries is None else "bytes"
    self.boundaries = None if boundaries is None else np.asarray(boundaries, np.int64)
    self.num_documents = int(documents)
    self.content_hash = content_hash
    self.name = name
    self.directory, self.split = directory, split
    # The shards' files, where they are on disk: a scan of the whole stream (documents) reads
    # them, so that it does not leave gigabytes of mapped pages resident in the process.
    self._files = [getattr(sh, "filename", None) for sh in shards]
    stored = int(self._starts[-1])
    self.length = stored + (0 if self.boundaries is None else len(self.boundaries))

  def __len__(self) -> int:
    return self.length

  @classmethod
  def from_array(cls, stream: np.ndarray, documents: int, name: str = "") -> ByteStream:
    """A text stream held in memory (pipeline.build_stream's array)."""
    return cls([stream], documents=documents, name=name)

  # ---- reading

  def _stored(self, lo: int, hi: int) -> np.ndarray:
    """Stored bytes [lo, hi): a view where they lie in one shard, else a joined copy."""
    first = int(np.searchsorted(self._starts, lo, side="right")) - 1
    s0 = int(self._starts[first])
    if hi <= self._starts[first + 1]:
      return self._shards[first][lo - s0: hi - s0]
    parts, k = [], first
    while lo < hi:
      s, e = int(self._starts[k]), int(self._starts[k + 1])
      parts.append(self._shards[k][lo - s: min(hi, e) - s])
      lo, k = min(hi, e), k + 1
    return np.concatenate(parts)

  def _read(self, lo: int, hi: int) -> bytes:
    """Stored bytes [lo, hi) as a copy, read from the shard files where there are any."""
    if not all(self._files):
      return self._stored(lo, hi).tobytes()
    out, k = [], int(np.searchsorted(self._starts, lo, side="right")) - 1
    while lo < hi:
      s, e = int(self._starts[k]), int(self._starts[k + 1])
      with open(self._files[k], "rb") as f:
        f.seek(lo - s)
        out.append(f.read(min(hi, e) - lo))
      lo, k = min(hi, e), k + 1
    return b"".join(out)

  def _eos_in(self, lo: int, hi: int) -> tuple[int, np.ndarray]:
    """(eos positions before lo, eos positions in [lo, hi)) of a bytes stream."""
    a, b = np.searchsorted(self.boundaries, [lo, hi])
    return int(a), self.boundaries[a:b]

  def ids(self, start: int, length: int) -> np.ndarray:
    """int32 ids of positions [start, start + length): byte b -> b + 3, eos -> 1."""
    if self.boundaries is None:
      return stream_to_ids(self._stored(start, start + length))
    before, eos = self._eos_in(start, start + length)
    lo = start - before  # stored offset of the first byte at or after start
    ids = np.full(length, EOS_ID, np.int32)
    keep = np.ones(length, bool)
    keep[eos - start] = False
    ids[keep] = self._stored(lo, lo + length - len(eos)).astype(np.int32) + OFFSET
    return ids

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """int32 [R, length]: `ids(start, length)` of each start, gathered at once where they
    all lie in one shard of a text stream (training batches: one gather, not R slices)."""
    starts = np.asarray(starts, np.int64)
    if not len(starts):
      return np.zeros((0, length), np.int32)
    shard = np.searchsorted(self._starts, starts, side="right") - 1
    if (self.boundaries is not None or (shard != shard[0]).any()
        or starts.max() + length > self._starts[shard[0] + 1]):
      return np.stack([self.ids(int(s), length) for s in starts])
    offset = starts - self._starts[shard[0]]
    return stream_to_ids(self._shards[shard[0]][offset[:, None] + np.arange(length)])

  def markers(self, start: int, stop: int) -> np.ndarray:
    """uint8 positions [start, stop) of a text stream, eos as 0xFF."""
    if self.boundaries is not None:
      raise ValueError(f"{self.name or 'this stream'} holds raw bytes (its document boundaries "
                       "are kept apart), so it has no text to read words from; use a text "
                       "source for this objective")
    return self._stored(start, stop)

  def count_eos(self, lo: int, hi: int) -> int:
    """Eos positions in [lo, hi)."""
    if self.boundaries is not None:
      return len(self._eos_in(lo, hi)[1])
    return sum(int(np.count_nonzero(self._stored(a, min(a + _BLOCK, hi)) == EOS_BYTE))
               for a in range(lo, hi, _BLOCK))  # a block at a time: bounded temporaries

  def documents(self, block_bytes: int = _BLOCK) -> Iterator[bytes]:
    """Each document's bytes, in stream order, reading block_bytes of the stream at a time
    (so a stream on disk is never held in memory whole; a document is)."""
    if self.boundaries is not None:
      edges = np.concatenate([[0], self.boundaries - np.arange(len(self.boundaries)),
                              [self._starts[-1]]])  # stored offsets where documents start/end
      for lo, hi in zip(edges[:-1], edges[1:]):
        yield self._read(int(lo), int(hi))
      return
    carry = b""
    for lo in range(0, self.length, block_bytes):
      pieces = self._read(lo, min(lo + block_bytes, self.length)).split(bytes([EOS_BYTE]))
      pieces[0] = carry + pieces[0]
      yield from pieces[:-1]
      carry = pieces[-1]
    yield carry

  # ---- on disk

  @classmethod
  def open(cls, directory, split: str) -> ByteStream:
    """The prepared split of `directory` (bytelm.data.prepare), memmapped; a clear error
    where a file is missing, truncated or not what the manifest says."""
    directory = pathlib.Path(directory)
    fix = (f"prepare it again (delete {directory} and rerun, or `bytelm-prepare SRC "
           f"{directory} --force`)")
    try:
      manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
      info = manifest["splits"][split]
      kind, documents, sha256 = manifest["kind"], int(info["documents"]), str(info["sha256"])
      listed = [(str(shard["file"]), int(shard["bytes"])) for shard in info["shards"]]
    except FileNotFoundError:
      raise FileNotFoundError(f"{directory} holds no prepared stream ({MANIFEST} is missing); "
                              f"{fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{directory / MANIFEST} is corrupt or has no split {split!r} "
                       f"({type(e).__name__}: {e}); {fix}") from None
    if manifest.get("format") != FORMAT:
      raise ValueError(f"{directory} was prepared in format {manifest.get('format')}, this "
                       f"bytelm reads format {FORMAT}; {fix}")
    shards = []
    for name, expected in listed:
      path = directory / name
      size = path.stat().st_size if path.is_file() else -1
      if size != expected:
        state = "missing" if size < 0 else f"{size} bytes, not {expected}"
        raise ValueError(f"{path} is {state}: the prepared stream is truncated or damaged; "
                         f"{fix}")
      shards.append(np.memmap(path, np.uint8, "r") if size else np.zeros(0, np.uint8))
    boundaries = None
    if kind == "bytes":
      path = directory / str(info.get("boundaries"))
      try:
        boundaries = np.load(path, allow_pickle=False)
      except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable ({e}); {fix}") from None
      if len(boundaries) != max(documents - 1, 0):
        raise ValueError(f"{path} holds {len(boundaries)} document boundaries, the manifest "
                         f"{documents - 1}; {fix}")
    return cls(shards, documents=documents, boundaries=boundaries,
               content_hash=sha256, directory=directory, split=split,
               name=str(manifest.get("source", directory)))

