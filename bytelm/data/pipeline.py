"""Static-shape batches whose content is a pure function of (seed, step).

There is no iterator state: `batch(step)` draws a random window of the byte stream for every
row of global batch `step` at once, from one `np.random.Generator` seeded by (seed, step), and
the noise of row i (span corruption's mask, correction's typos) from
`np.random.default_rng([seed, step, i])`. Resuming needs only the step, which the trainer
already saves (as in levanter, a restart reproduces the data exactly): `state(step)` is
`{"step", "seed"}`.
Calls may come in any order, and any process can build its slice of any batch.

The byte stream (bytelm.data.stream). Documents are UTF-8 encoded and joined with an eos
between them, in an order shuffled once by `shuffle_seed` (fixed by default, independent of
the training `seed`, so evaluation windows are the same bytes in every run). A text stream holds
uint8 bytes with 0xFF (never a byte of valid UTF-8) standing for eos, 1 byte per position: in
memory for the embedded corpus (~15 MB), memmapped from disk for any other source
(bytelm.data.prepare: a corpus of any size costs the memory of its windows); raw bytes keep their
boundaries beside the stream. Ids (byte + 3, eos 1) are made per window. Windows may span
document boundaries; the eos between documents is then part of the window. A mixture of
streams (`sources.parse_mixture`) draws each row's stream by weight, before the windows.

Shapes, per process: inputs [B, T] and targets [B, S], int32, B = batch_size / process_count.
Span corruption: T = input_length, S = target_length, both exact (no padding) because every
window holds raw_length = span_corruption_lengths(T)[0] ids (only degenerate noise settings
leave the inputs one id short, padded with 0; see span_corruption_lengths). Causal LM:
windows of T + 1 ids, inputs = window[:-1], targets = window[1:], S = T. Correction and
diacritics tagging: whole words of a window of S - 1 text bytes (`_window_text`), their noised
form as inputs; rows are padded with 0. Tagging's targets are labels (bytelm.text.tags), S = T.

Evaluation: `eval_batches()` cuts the stream into consecutive, non-overlapping windows in
stream order (causal LM windows share one boundary id, so each id is predicted once), with
noise masks from a fixed seed. The last batch is padded with rows of zeros (pad id 0 in inputs
and targets, so a loss that ignores target 0 ignores them); the tail of the stream shorter than
one window is not evaluated. `eval_bytes` counts the text bytes the windows cover.

Subword tokens (`tokenizer=`, causal LM only; a byte-level BPE of bytelm.data.bpe): the stream
holds the same documents in the same order, each encoded to token ids and joined by the eos id;
a position is a token, a window T + 1 tokens, and batches also hold `target_bytes` [B, T], the
UTF-8 bytes each target spells (eos 1, as the byte stream's eos marker is one position that the
byte models predict; pad 0). Bits per byte are then the total log-loss over the targets divided
by ln 2 * the sum of target_bytes: the bytes actually predicted. The evaluation windows walk the
same held-out documents in the same order as the byte models' windows, so `eval_batches(n)`
covers a prefix of the same text; its length matches theirs only as far as T tokens hold the
bytes of a byte window (token windows end at token boundaries).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from bytelm.data import bpe, noise, objectives, prepare, sources
from bytelm.data.stream import EOS_BYTE as _EOS_BYTE
from bytelm.data.stream import ByteStream, build_stream
from bytelm.data.stream import stream_to_ids  # noqa: F401 (public here too, as before)
from bytelm.text import segment, segment_jax, tags
from bytelm.text.tokenizer import EOS_ID, OFFSET, PAD_ID

if TYPE_CHECKING:  # not imported here: `import bytelm` stays light (datasets takes ~1 s)
  import datasets

Objective = Literal["span_corruption", "causal_lm", "correction", "diacritics_tagging"]
OBJECTIVES = ("span_corruption", "causal_lm", "correction", "diacritics_tagging")
_EVAL_SALT = 0x5EEDE7A1  # fixed seed of evaluation noise masks, whatever `seed` is
# The fourth word of a batch's window seed, [seed, step, 0, salt]: SeedSequence pads a shorter
# seed with zeros, so [seed, step] would give the same stream as row 0's noise, [seed, step, 0].
_WINDOWS_SALT = 0x57A27


def eval_rng(window: int) -> np.random.Generator:
  """The rng of evaluation window `window`'s noise: the same in every run, whatever `seed` is,
  so that anything that rebuilds an evaluation window (bytelm.load's score) gets its mask."""
  return np.random.default_rng([_EVAL_SALT, window])


class BatchSource:
  """Deterministic, resumable batches of byte ids: `batch(step)` is a pure function of step."""

  def __init__(self, texts: datasets.Dataset | Sequence[str] | ByteStream
               | Sequence[tuple[ByteStream, float]], *,
               objective: Objective = "span_corruption", batch_size: int, input_length: int,
               target_length: int | None = None, seed: int = 0,
               noise_density: float = objectives.NOISE_DENSITY,
               mean_noise_span_length: float = objectives.MEAN_NOISE_SPAN_LENGTH,
               process_index: int = 0, process_count: int = 1,
               shuffle_seed: int | None = 0, correction_task: str = "diacritics",
               typo_rate: float = 0.02, keyboard: str = "qwerty",
               segments: dict | None = None, tokenizer=None):
    """Args:
      texts: documents (a Dataset with a "text" column, or a sequence of str), or their
        stream (bytelm.data.stream: in memory or prepared on disk), or a mixture: a sequence
        of (stream, weight), each training row drawn from stream k with probability
        weight k / sum of weights (evaluation walks the streams one after another).
      objective: "span_corruption" (encoder-decoder, ByT5) or "causal_lm" (decoder-only).
      batch_size: global batch, over all processes.
      input_length: T, ids per input row (eos included for span corruption).
      target_length: S. None derives it (span corruption: span_corruption_lengths;
        causal LM: T); a given value must equal the derived one.
      seed: training randomness (window positions, noise masks); a non-negative int.
      noise_density, mean_noise_span_length: span corruption settings (ByT5: 0.15, 20).
      process_index, process_count: this process's slice of each global batch.
      shuffle_seed: the one-time document order of documents given as text (see module
        docstring); None keeps the given order. A stream comes in the order it was made in.
      correction_task, typo_rate, keyboard: the "correction" objective's noise
        (objectives.correction): inputs are whole words of a window of S - 1 bytes, corrupted;
        targets are the words themselves. S defaults to T. ("diacritics_tagging" needs no
        settings: inputs are stripped of diacritics, targets are bytelm.text.tags labels.)
      segments: for hierarchical models (causal LM only): {"kind": "words" | "entropy" |
        "fixed", "max_segments": N, "max_segment_bytes": L, "fixed_size": n, "entropy_model":
        path (see `fit_entropy_model`)}. `device_segmenter` then computes `segment_ids`
        and `context_ids` [B, T] of the targets inside the compiled step
        (bytelm.text.segment_jax); batches hold inputs and targets only.
      tokenizer: a byte-level BPE `tokenizers.Tokenizer` (bytelm.data.bpe), causal LM only:
        positions are its tokens instead of bytes, and batches also hold `target_bytes`
        (module docstring). input_length then counts tokens.
    """
    if objective not in OBJECTIVES:
      raise ValueError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    for name, value, low in (("batch_size", batch_size, 1), ("input_length", input_length, 1),
                             ("seed", seed, 0), ("process_count", process_count, 1)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} is not divisible by process_count "
                       f"{process_count}; make the global batch a multiple of it")

    self.objective = objective
    self.batch_size = int(batch_size)
    self.local_batch_size = self.batch_size // process_count
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.seed = int(seed)
    self.noise_density = float(noise_density)
    self.mean_noise_span_length = float(mean_noise_span_length)
    self.input_length = int(input_length)
    self.correction = dict(task=correction_task, typo_rate=float(typo_rate), layout=keyboard)
    self.segments = segment_settings(segments, objective)
    self.device_segmenter = (None if self.segments is None
                             else segment_jax.DeviceSegmenter(**self.segments))
    if tokenizer is not None and (objective != "causal_lm" or segments is not None):
      raise ValueError(f"a tokenizer is for the causal_lm objective without segments (a subword "
                       f"decoder), not {objective!r}" + (" with segments" if segments else ""))

    # ---- shapes
    if objective == "span_corruption":
      raw, derived = objectives.span_corruption_lengths(
          self.input_length, noise_density, mean_noise_span_length)
      self.raw_length, self.stride = raw, raw  # ids per window; eval step between windows
      what = (f"span corruption of {raw} raw bytes (noise_density {noise_density}, "
              f"mean_noise_span_length {mean_noise_span_length})")
    elif objective == "correction":
      derived = self.input_length if target_length is None else int(target_length)
      if derived < 2:
        raise ValueError(f"target_length must be at least 2 for correction, got {derived}")
      self.raw_length = self.stride = derived - 1  # text bytes of a window; eos is added
      what = "correction"
      noise.check_settings(correction_task, typo_rate, keyboard)
    elif objective == "diacritics_tagging":
      derived = self.input_length
      self.raw_length = self.stride = derived - 1
      what = "diacritics tagging (one label per input id)"
    else:
      derived = self.input_length
      self.raw_length, self.stride = self.input_length + 1, self.input_length
      what = "causal LM (targets are the inputs shifted by one)"
    if target_length is not None and target_length != derived:
      raise ValueError(f"target_length {target_length} is inconsistent with input_length "
                       f"{input_length}: {what} gives {derived} targets; pass "
                       f"target_length={derived} or None")
    self.target_length = derived

    # ---- streams (of bytes, or of token ids under a tokenizer)
    parts, weights = _parts(texts, shuffle_seed)
    self.tokenizer, self._token_bytes = tokenizer, None
    self.num_documents = sum(p.num_documents for p in parts)
    byte_length = sum(len(p) for p in parts)
    if tokenizer is not None:
      tokenizer = bpe.check(tokenizer)
      parts = [_token_stream(p, tokenizer) for p in parts]
      self._token_bytes = _spelled_lengths(tokenizer)
    self._parts = parts
    self.sources = [p.name for p in parts]
    self.content_hashes = [p.content_hash for p in parts]
    self.weights = None if weights is None else weights / weights.sum()
    self._cum_weights = None if weights is None else np.cumsum(self.weights)
    unit = "bytes" if tokenizer is None else "tokens"
    for part in parts:
      if len(part) < self.raw_length:
        raise ValueError(
            f"the dataset is too small: {part.name or 'its stream'} has {len(part)} {unit} "
            f"(with document separators), fewer than the {self.raw_length} one window needs "
            f"for input_length {self.input_length}; add text or lower input_length")
    self.stream_length = sum(len(p) for p in parts)
    self._window_counts = np.array([len(p) - self.raw_length + 1 for p in parts], np.int64)
    # Bytes per position (1 for bytes; the stream's mean for tokens, separators counting 1).
    self.bytes_per_token = byte_length / self.stream_length
    # Bytes of stream one example consumes (span corruption) or predicts (causal LM), and a
    # global batch (for throughput reports). Over tokens they are expected values: training
    # windows start anywhere, so a window holds the stream's mean bytes per token.
    self.bytes_per_example = round(self.stride * self.bytes_per_token)
    self.bytes_per_batch = round(self.batch_size * self.stride * self.bytes_per_token)
    windows = [(len(p) - self.raw_length) // self.stride + 1 for p in parts]
    self._first_window = np.concatenate([[0], np.cumsum(windows)])  # of each part
    self.eval_windows = int(self._first_window[-1])
    self.eval_num_batches = -(-self.eval_windows // self.batch_size)  # ceil: last is padded

  @functools.cached_property
  def eval_bytes(self) -> int:
    """Text bytes the evaluation windows cover (computed when asked: it reads the stream)."""
    return self.covered_bytes(self.eval_num_batches)

  # ---- training batches

  def state(self, step: int) -> dict:
    """The whole pipeline position; resume with `batch(state["step"])`."""
    return {"step": int(step), "seed": self.seed}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `step`: {"inputs": [B, T], "targets": [B, S]}."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"step must be an int >= 0, got {step!r}")
    first = self.process_index * self.local_batch_size
    mine = slice(first, first + self.local_batch_size)
    parts, starts = (a[mine] for a in self._windows(step))
    if self.objective != "causal_lm":
      return self._stack([self._example(int(k), int(start), self._noise_rng(step, first + r))
                          for r, (k, start) in enumerate(zip(parts, starts))],
                         self.local_batch_size)
    ids = np.empty((self.local_batch_size, self.raw_length), np.int32)
    for k in np.unique(parts):
      ids[parts == k] = self._parts[k].windows(starts[parts == k], self.raw_length)
    inputs, targets = (np.ascontiguousarray(a) for a in objectives.causal_lm(ids))
    return self._with_token_bytes({"inputs": inputs, "targets": targets})

  def row_sources(self, step: int) -> np.ndarray:
    """[batch_size]: the mixture source (an index into `sources`) of each row of global batch
    `step`, over all processes; all zeros for a single source."""
    return self._windows(step)[0].astype(np.int32)

  def _windows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(parts, starts), each [batch_size]: the stream of each row of global batch `step` (drawn
    by weight) and where its window starts in it."""
    # One Generator for the whole batch: a Generator per row cost ~15 us to seed, 4 ms of a
    # 256-row batch's host time, which the compiled step waits for on a CPU.
    rng = np.random.default_rng([self.seed, int(step), 0, _WINDOWS_SALT])
    if self._cum_weights is None:
      parts = np.zeros(self.batch_size, np.intp)
    else:
      parts = np.searchsorted(self._cum_weights, rng.random(self.batch_size), side="right")
      parts = np.minimum(parts, len(self._parts) - 1)
    return parts, rng.integers(0, self._window_counts[parts])

  def _noise_rng(self, step: int, i: int) -> np.random.Generator:
    """The rng of row i's noise (span corruption's mask, correction's typos)."""
    # default_rng's stream (the same Generator of a PCG64), without its argument checks.
    return np.random.Generator(np.random.PCG64([self.seed, int(step), i]))

  # ---- evaluation batches

  def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each evaluation batch, identical in every call and run."""
    n = self.eval_num_batches if max_batches is None else min(max_batches,
                                                               self.eval_num_batches)
    for b in range(n):
      first = b * self.batch_size + self.process_index * self.local_batch_size
      rows = []
      for w in range(first, min(first + self.local_batch_size, self.eval_windows)):
        k = int(np.searchsorted(self._first_window, w, side="right")) - 1
        rows.append(self._example(k, (w - int(self._first_window[k])) * self.stride,
                                  eval_rng(w)))
      yield self._stack(rows, self.local_batch_size)

  def covered_bytes(self, num_batches: int | None = None) -> int:
    """Text bytes (separators excluded) whose prediction the first eval batches cover."""
    n = self.eval_num_batches if num_batches is None else num_batches
    left = min(n * self.batch_size, self.eval_windows)
    # Causal LM predicts ids 1 .. windows*T; span corruption reads ids 0 .. windows*raw - 1.
    lo = 1 if self.objective == "causal_lm" else 0
    total = 0
    for part in self._parts:
      windows = min(left, (len(part) - self.raw_length) // self.stride + 1)
      if windows <= 0:
        break
      left -= windows
      hi = lo + windows * self.stride
      if self._token_bytes is not None:
        covered = part.ids(lo, hi - lo)
        total += int(self._token_bytes[covered].sum() - np.count_nonzero(covered == EOS_ID))
      else:
        total += hi - lo - part.count_eos(lo, hi)
    return total

  # ---- helpers

  def _example(self, part: int, start: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    if self.objective == "correction":
      return objectives.correction(self._window_text(part, start), rng,
                                   input_length=self.input_length,
                                   target_length=self.target_length, **self.correction)
    if self.objective == "diacritics_tagging":
      return tags.example(self._window_text(part, start), self.input_length)
    ids = self._parts[part].ids(start, self.raw_length)
    if self.objective == "causal_lm":
      return objectives.causal_lm(ids)
    return objectives.span_corruption(ids, rng, self.noise_density,
                                      self.mean_noise_span_length)

  def _window_text(self, part: int, start: int) -> str:
    """The whole words of one document in the window at start: its longest document piece,
    without a word cut by the window's edges."""
    stream = self._parts[part]
    end = start + self.raw_length
    before = stream.markers(max(start - 1, 0), start) if start > 0 else np.zeros(0, np.uint8)
    after = stream.markers(end, end + 1) if end < len(stream) else np.zeros(0, np.uint8)
    pieces = stream.markers(start, end).tobytes().split(bytes([_EOS_BYTE]))
    k = max(range(len(pieces)), key=lambda j: len(pieces[j]))
    words = pieces[k].decode("utf-8", errors="ignore").split(" ")
    boundary = (_EOS_BYTE, ord(" "), ord("\n"))
    if k == len(pieces) - 1 and len(after) and after[0] not in boundary:
      words = words[:-1]  # runs on past the window
    if k == 0 and len(before) and before[0] not in boundary:
      words = words[1:]  # began before the window
    return " ".join(words)

  def _stack(self, rows, num_rows: int) -> dict[str, np.ndarray]:
    inputs = np.full((num_rows, self.input_length), PAD_ID, dtype=np.int32)
    targets = np.full((num_rows, self.target_length), PAD_ID, dtype=np.int32)
    for r, (x, y) in enumerate(rows):
      # Exact by construction, except inputs one short in degenerate noise settings
      # (see span_corruption_lengths): those are padded with 0.
      # Correction and tagging rows are shorter than the row: padded with 0 too.
      assert len(x) <= self.input_length and len(y) <= self.target_length, (x.shape, y.shape)
      assert self.objective in ("correction", "diacritics_tagging") \
          or len(y) == self.target_length
      inputs[r, : len(x)], targets[r, : len(y)] = x, y
    return self._with_token_bytes({"inputs": inputs, "targets": targets})

  def _with_token_bytes(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if self._token_bytes is not None:  # a token model's bits per byte divide by these
      batch["target_bytes"] = self._token_bytes[batch["targets"]]
    return batch

  def __repr__(self) -> str:
    unit = "bytes" if self._token_bytes is None else (
        f"tokens ({self.bytes_per_token:.2f} bytes each)")
    return (f"BatchSource({self.objective}, batch {self.batch_size} "
            f"(local {self.local_batch_size}), inputs {self.input_length}, targets "
            f"{self.target_length}, raw {self.raw_length}, {self.num_documents} documents, "
            f"{self.stream_length} stream {unit}, seed {self.seed})")


def _parts(texts, shuffle_seed) -> tuple[list[ByteStream], np.ndarray | None]:
  """(streams, weights or None) of BatchSource's texts argument."""
  if isinstance(texts, ByteStream):
    return [texts], None
  if isinstance(texts, (list, tuple)) and texts and all(
      isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], ByteStream) for t in texts):
    weights = np.asarray([w for _, w in texts], np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
      raise ValueError(f"mixture weights must be positive numbers, got {weights.tolist()}")
    return [t for t, _ in texts], (weights if len(texts) > 1 else None)
  return [ByteStream.from_array(*build_stream(texts, shuffle_seed))], None


class _Tokens:
  """A stream of token ids (the byte stream's documents, each BPE-encoded, joined by the eos
  id), read as ByteStream is."""

  def __init__(self, tokens: np.ndarray, stream: ByteStream):
    self.tokens, self.num_documents, self.name = tokens, stream.num_documents, stream.name
    self.content_hash = stream.content_hash

  def __len__(self) -> int:
    return len(self.tokens)

  def ids(self, start: int, length: int) -> np.ndarray:
    return self.tokens[start: start + length].astype(np.int32)

  def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    return self.tokens[np.asarray(starts, np.int64)[:, None] + np.arange(length)].astype(np.int32)

  def count_eos(self, lo: int, hi: int) -> int:
    return int(np.count_nonzero(self.tokens[lo:hi] == EOS_ID))


_TOKEN_CHUNK_DOCS, _TOKEN_CHUNK_BYTES = 4096, 1 << 24  # documents encoded (and held) at a time


def _token_stream(stream: ByteStream, tokenizer) -> _Tokens:
  """The byte stream's documents, in order, encoded and joined by the eos id, as uint16 where
  the vocabulary fits (half of int32's memory). A prepared stream's tokens are written beside
  it once (keyed by the tokenizer) and memmapped after; an in-memory stream's are kept."""
  bpe.check_text(stream)
  dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.int32
  if stream.directory is None:
    return _Tokens(np.frombuffer(b"".join(_encoded(stream, tokenizer, dtype)), dtype), stream)
  tag = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]
  path = stream.directory / f"{stream.split}-tokens-{tag}.{np.dtype(dtype).name}"
  if not path.is_file():  # each process writes its own temporary file; the first rename wins
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
      with open(tmp, "wb") as f:
        for piece in _encoded(stream, tokenizer, dtype):
          f.write(piece)
      os.replace(tmp, path)
    finally:
      tmp.unlink(missing_ok=True)
  return _Tokens(np.memmap(path, dtype, "r"), stream)


def _encoded(stream: ByteStream, tokenizer, dtype) -> Iterator[bytes]:
  """The token stream's bytes, a chunk of documents at a time (bounded by count and bytes)."""
  chunk, first, size = [], True, 0
  for doc in itertools.chain(stream.documents(), [None]):
    if doc is not None:
      chunk.append(doc.decode("utf-8"))
      size += len(doc)
    if len(chunk) == _TOKEN_CHUNK_DOCS or size >= _TOKEN_CHUNK_BYTES or (doc is None and chunk):
      for ids in bpe.encode_documents(tokenizer, chunk):
        if not first:
          yield np.asarray([EOS_ID], dtype).tobytes()
        yield ids.astype(dtype).tobytes()
        first = False
      chunk, size = [], 0


def _spelled_lengths(tokenizer) -> np.ndarray:
  """Bytes each id spells; eos counts 1 (one position of the byte stream, one byte-model
  target)."""
  lengths = np.asarray([len(b) for b in bpe.token_bytes(tokenizer)], np.int32)
  lengths[EOS_ID] = 1
  return lengths


_SEGMENT_KEYS = {"kind", "max_segments", "max_segment_bytes", "fixed_size", "entropy_model",
                 "entropy_order", "target_segment_bytes", "entropy_relative"}


def segment_settings(segments: dict | None, objective: str) -> dict | None:
  """{"segmenter": segment.Segmenter, "max_segments": N}, what `segment_rows` takes, from a
  run's `data.segments` setting (checked); None for none."""
  if segments is None:
    return None
  segments = dict(segments)
  unknown = set(segments) - _SEGMENT_KEYS
  if unknown or segments.get("kind") not in segment.KINDS:
    raise ValueError(f"segments must be a dict with kind one of {segment.KINDS} and keys from "
                     f"{sorted(_SEGMENT_KEYS)}; got {segments!r}")
  if objective != "causal_lm":
    raise ValueError(f"segments are for the causal_lm objective, not {objective!r}")
  return {"segmenter": segment.Segmenter.from_settings(segments),
          "max_segments": int(segments.get("max_segments", 64))}


ENTROPY_SAMPLE_BYTES = 1 << 26  # the entropy model is fitted on the first 64 MiB of the stream


def fit_entropy_model(spec: str, path, *, entropy_order: int = 2,
                      target_segment_bytes: float = 5.0, entropy_relative: float = 0.0,
                      invalid_utf8: str = "error", **unused) -> pathlib.Path:
  """The entropy segmenter's n-gram model of the training split of `spec`, saved at `path`;
  an existing file is kept (a resumed run segments as before). Returns the path.

  Fitted on the stream's first ENTROPY_SAMPLE_BYTES (64 MiB; of a mixture, each source's share
  by weight): its documents are in a shuffled order, so that is a sample of the whole corpus,
  and an order-2 table of 65,536 contexts is well estimated long before it (the embedded
  corpus, 15 MB, is read whole)."""
  path = pathlib.Path(path)
  if not path.exists():
    mixture = sources.parse_mixture(spec)
    total = sum(w for _, w in mixture)
    pieces = []  # of each source its share of the sample (a mixture's by weight)
    for source, weight in mixture:
      stream = prepare.open_split(source, "train", invalid_utf8)
      pieces.append(stream.ids(0, min(len(stream), int(ENTROPY_SAMPLE_BYTES * weight / total))))
    sample = np.concatenate([np.concatenate([[EOS_ID], p]) if k else p
                             for k, p in enumerate(pieces)]) - OFFSET
    sample = np.where(sample < 0, _EOS_BYTE, sample).astype(np.uint8)  # eos as 0xFF
    segment.EntropyModel.fit(sample, order=entropy_order,
                             target_segment_bytes=target_segment_bytes,
                             relative=entropy_relative).save(path)
  return path


def segment_rows(targets: np.ndarray, *, segmenter: segment.Segmenter,
                  max_segments: int) -> dict[str, np.ndarray]:
  """segment_ids and context_ids [B, T] of each row of target ids, on the host: the eos
  between documents stands as byte 0xFF (never valid UTF-8: a segment of its own), padding gets
  -1. The reference that `device_segmenter` (what training, scoring and generation run) is
  tested against."""
  bytes_BT = np.where(targets == EOS_ID, _EOS_BYTE, targets - OFFSET).astype(np.uint8)
  lengths_B = np.count_nonzero(targets != PAD_ID, axis=1)  # padding only ends a row
  start_BT = segmenter.rows(bytes_BT, lengths_B)
  ids, ctx = segment.row_ids(bytes_BT, lengths_B, start_BT, max_segments)
  return {"segment_ids": ids, "context_ids": ctx}


def make_source(spec: str, split: str = "train", *, invalid_utf8: str = "error",
                whole: bool = False, **kwargs) -> BatchSource:
  """The BatchSource of a split of spec, e.g. make_source("embedded:en", "validation",
  batch_size=8, input_length=1024). spec may be a mixture, `spec@weight,spec@weight`
  (`sources.parse_mixture`). The embedded corpus is read into memory; any other source is
  prepared on disk once and memmapped (bytelm.data.prepare). whole: read all of a source
  without splits of its own, not its held-out tail (a run's separate validation data)."""
  mixture = sources.parse_mixture(spec)
  if whole:  # another run's validation data: all of its held-out text (prepare.open_whole)
    parts = [(stream, w) for s, w in mixture for stream in prepare.open_whole(s, invalid_utf8)]
  else:
    parts = [(prepare.open_split(s, split, invalid_utf8), w) for s, w in mixture]
  return BatchSource(parts, **kwargs)


