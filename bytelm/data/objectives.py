"""Training objectives on byte ids: ByT5 span corruption and causal LM (numpy, host side).

Span corruption (Raffel et al., 2020, T5 section 3.1.4; ByT5: Xue et al., 2022) hides spans
of the input and asks the decoder to produce them. With the ByT5 settings, noise density 0.15
and mean noise span 20 bytes, 1193 raw bytes give exactly 1024 input ids and 189 target ids:

  raw:      a b c d e f g h i j
  mask:     . . X X . . . X X .      spans alternate, non-noise first, as in T5
  inputs:   a b <258> e f g <257> j </s>
  targets:  <258> c d <257> h i </s>

Each noise span is one sentinel in the inputs; the targets give each span preceded by its
sentinel and end with eos. Like T5 (noise_span_to_unique_sentinel applied to the inverted
mask), there is no sentinel after the last span. Sentinels count down from 258
(`tokenizer.sentinel_id`), as in ByT5 pretraining.

The trap: sentinel i is the id of byte 0xFF - i. Bytes 0xF5..0xFF never occur in valid UTF-8,
so up to 11 spans per example (inputs up to ~1400 bytes at the defaults) are unambiguous; more
spans reuse ids of real bytes (0xF4 and below), exactly as ByT5 pretraining did.

Everything is deterministic given a `np.random.Generator`; no global random state is used.
"""

import functools

import numpy as np

from bytelm.data import noise
from bytelm.text.tokenizer import EOS_ID, MAX_SENTINELS, NUM_BYTE_IDS, OFFSET

NOISE_DENSITY = 0.15  # T5/ByT5: fraction of raw ids that are masked
MEAN_NOISE_SPAN_LENGTH = 20.0  # ByT5 (T5 uses 3 for subwords): mean masked span, in bytes


def _check_noise(noise_density: float, mean_noise_span_length: float) -> None:
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f"noise_density must be in (0, 1), got {noise_density}; ByT5 uses 0.15")
  if not mean_noise_span_length >= 1.0:
    raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}; "
                     "ByT5 uses 20")


@functools.lru_cache(maxsize=256)  # called per example with the run's few settings
def _noise_counts(length: int, noise_density: float, mean_noise_span_length: float
                  ) -> tuple[int, int]:
  """(noise ids, noise spans) for `length` raw ids; the single rule both mask and lengths use.

  As T5: noise = round(length * density), spans = round(noise / mean_span), with Python's
  round (half to even, like tf.round). Clipped so that every span is non-empty: at least one
  noise and one non-noise id, and 1 <= spans <= min(noise, non-noise). T5 only clips spans
  from below in the mask; the extra clip matters only for lengths far below a span.
  """
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = int(round(num_noise / mean_noise_span_length))
  num_spans = max(1, min(num_spans, num_noise, length - num_noise))
  return num_noise, num_spans


def span_corruption_lengths(input_length: int, noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                            ) -> tuple[int, int]:
  """(raw_length, target_length): raw ids to corrupt so the inputs fill `input_length`.

  T5's `compute_input_and_target_lengths`: inputs = non-noise + spans + eos and targets =
  noise + spans + eos; raw_length is the largest length whose inputs fit. ByT5: 1024 ->
  (1193, 189). The targets then have exactly target_length ids, and the inputs exactly
  input_length for any practical setting (every length at density 0.15); a degenerate one
  (e.g. density 0.5 with 1-byte spans) can leave the inputs one id short, where no raw length
  fits exactly. (T5's extra adjustment for noise_density 0.5 is not reproduced.)
  """
  _check_noise(noise_density, mean_noise_span_length)
  if isinstance(input_length, bool) or not isinstance(input_length, (int, np.integer)):
    raise TypeError(f"input_length must be an int, got {type(input_length).__name__}")
  if input_length < 3:
    raise ValueError(f"input_length must be >= 3 for span corruption (one kept id, one "
                     f"sentinel, eos), got {input_length}")

  def lengths(raw: int) -> tuple[int, int]:
    noise, spans = _noise_counts(raw, noise_density, mean_noise_span_length)
    return raw - noise + spans + 1, noise + spans + 1

  # inputs(raw) never decreases as raw grows, and inputs(input_length - 1) <= input_length
  # because spans <= noise; so walk up from there (a handful of steps at ByT5 densities).
  raw = max(2, input_length - 1)
  while lengths(raw + 1)[0] <= input_length:
    raw += 1
  return raw, lengths(raw)[1]


_MAX_ALTERNATING = 512  # spans; above it (never at ByT5's settings) the pattern is tiled per call
_ALTERNATING = np.tile([False, True], _MAX_ALTERNATING)  # keep, noise, keep, noise, ...


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator
                         ) -> np.ndarray:
  """Lengths of `num_segments` non-empty segments summing to `num_items`, cut uniformly."""
  bounds = np.empty(num_segments + 1, np.int64)
  bounds[0], bounds[-1] = 0, num_items
  bounds[1:-1] = np.sort(rng.choice(num_items - 1, size=num_segments - 1, replace=False)) + 1
  return np.diff(bounds)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
  """bool[length], True on noise: round(length * density) noise ids in alternating spans.

  T5's scheme: the noise count and the non-noise count are each cut at random into the same
  number of non-empty spans, then interleaved starting with non-noise (so the sequence ends
  with a noise span). See `_noise_counts` for the exact counts.
  """
  _check_noise(noise_density, mean_noise_span_length)
  if length < 2:
    raise ValueError(f"span corruption needs at least 2 ids (one kept, one masked), got "
                     f"{length}")
  num_noise, num_spans = _noise_counts(length, noise_density, mean_noise_span_length)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  keep_lengths = _random_segmentation(length - num_noise, num_spans, rng)
  span_lengths = np.empty(2 * num_spans, np.int64)
  span_lengths[0::2], span_lengths[1::2] = keep_lengths, noise_lengths
  return np.repeat(_ALTERNATING[: 2 * num_spans] if num_spans <= _MAX_ALTERNATING
                   else np.tile([False, True], num_spans), span_lengths)


def span_corruption_from_mask(ids, noise_mask) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets), int32, from ids (no eos) and any noise mask; see the module docstring.

  Each maximal run of True in `noise_mask` is one span, numbered left to right: span i
  becomes sentinel 258 - i in the inputs, and "sentinel 258 - i, then the span" in the targets.
  """
  ids = np.asarray(ids)
  mask = np.asarray(noise_mask, dtype=bool)
  if ids.ndim != 1 or mask.shape != ids.shape:
    raise ValueError(f"ids and noise_mask must be 1-D of one length, got shapes {ids.shape} "
                     f"and {mask.shape}")
  ids = ids.astype(np.int32)
  starts = mask & ~np.concatenate([[False], mask[:-1]])  # first id of each noise span
  num_spans = int(starts.sum())
  if num_spans > MAX_SENTINELS:
    raise ValueError(f"{num_spans} noise spans need more than the {MAX_SENTINELS} sentinel "
                     "ids; use a shorter input_length or a longer mean_noise_span_length")
  sentinels = (NUM_BYTE_IDS - 1 - np.arange(num_spans)).astype(np.int32)  # 258, 257, ...
  eos = np.array([EOS_ID], dtype=np.int32)

  inputs = ids.copy()
  inputs[starts] = sentinels
  inputs = np.concatenate([inputs[~mask | starts], eos])
  # The targets are the noise ids with span i's sentinel before its first id, and eos.
  noise = ids[mask]
  targets = np.empty(len(noise) + num_spans + 1, np.int32)
  sentinel_at = np.flatnonzero(starts[mask]) + np.arange(num_spans)
  is_sentinel = np.zeros(len(targets) - 1, bool)
  is_sentinel[sentinel_at] = True
  targets[:-1][is_sentinel], targets[:-1][~is_sentinel], targets[-1] = sentinels, noise, EOS_ID
  return inputs, targets


def span_corruption(ids, rng: np.random.Generator, noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                    ) -> tuple[np.ndarray, np.ndarray]:
  """ByT5 span corruption of 1-D byte ids (no eos) -> (inputs, targets), int32, eos-terminated.

  With len(ids) = span_corruption_lengths(T)[0] the inputs have exactly T ids and the targets
  exactly span_corruption_lengths(T)[1].
  """
  ids = np.asarray(ids)
  mask = random_spans_noise_mask(ids.shape[-1] if ids.ndim else 0, noise_density,
                                 mean_noise_span_length, rng)
  return span_corruption_from_mask(ids, mask)


def causal_lm(ids) -> tuple[np.ndarray, np.ndarray]:
  """Next-byte prediction for decoder-only models: (ids[..., :-1], ids[..., 1:]), int32.

  Pass T + 1 ids to get T inputs and T targets; targets[t] is the id after inputs[t].
  """
  ids = np.asarray(ids)
  if ids.ndim < 1 or ids.shape[-1] < 2:
    raise ValueError(f"causal_lm needs at least 2 ids along the last axis, got shape "
                     f"{ids.shape}")
  ids = ids.astype(np.int32)
  return ids[..., :-1], ids[..., 1:]


def correction(text: str, rng: np.random.Generator, *, task: str, input_length: int,
               target_length: int, typo_rate: float = 0.02,
               layout: str = "qwerty") -> tuple[np.ndarray, np.ndarray]:
  """A text-correction pair: inputs = the text corrupted for `task` (bytelm.data.noise),
  targets = the text, both as ids ending in eos. Words are dropped from the end of the text
  until both fit (input_length and target_length ids, eos included); the noise seed is drawn
  from rng, so the pair is deterministic given it."""
  seed = int(rng.integers(2**31))
  words = text.split(" ")
  while True:
    target = " ".join(words)
    source = noise.corrupt(target, task, rate=typo_rate, layout=layout, seed=seed)
    x, y = source.encode("utf-8"), target.encode("utf-8")
    if (len(x) < input_length and len(y) < target_length) or len(words) <= 1:
      break
    words = words[:-1]
  # One word longer than a row is cut (at worst mid-character: the model reads bytes).
  return _ids_with_eos(x[:input_length - 1]), _ids_with_eos(y[:target_length - 1])


def _ids_with_eos(data: bytes) -> np.ndarray:
  return np.append(np.frombuffer(data, np.uint8).astype(np.int32) + OFFSET, EOS_ID)
