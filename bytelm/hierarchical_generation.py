"""Byte-by-byte generation from a hierarchical model (models/hierarchical.py), with caches.

Each new byte costs one step of the byte encoder and one of the byte decoder (local layers:
a ring of the last `window` keys per layer), and the backbone runs once per completed segment
(a cache of up to max_segments keys per layer). Segments come from the model's learned
boundary predictor, or from a host segmenter (`segment.Segmenter`: words, entropy, fixed)
applied to the bytes so far; either way only settled boundaries are used, as in training, so
cached generation computes what the full model computes on the same bytes. `generate(...,
cached=False)` is that reference: the whole model on the whole prefix for every new byte.

The loop runs on the host (a segmenter is Python), one jitted call per byte and layer stack.
Position t of the decoder reads byte t - 1 and the backbone state of the last segment settled
before t; the encoder reads byte t once it is chosen.

Axis legend: B batch (copies of one prompt), T bytes, d byte width, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bytelm import generation
from bytelm.models import hierarchical, segment
from bytelm.tokenizer import EOS_ID, OFFSET, PAD_ID


@nnx.jit
def _encoder_step(model, ids_B, t, cache):
  return model.encoder_step(ids_B, t, cache)


@nnx.jit
def _backbone_step(model, e_Bd, n_B, cache):
  return model.backbone_step(e_Bd, n_B, cache)


@nnx.jit
def _decoder_step(model, ids_B, t, context_Bd, cache):
  return model.decoder_step(ids_B, t, context_Bd, cache)


class _Segments:
  """Where one row's segments start, as far as the bytes so far settle it."""

  def __init__(self, model: hierarchical.Hierarchical, segmenter: segment.Segmenter | None):
    cfg = model.config
    if cfg.segmenter == "given" and segmenter is None:
      raise ValueError("this model reads segments from its data: pass the segmenter it was "
                       "trained with (segment.Segmenter, as configs/hat.py's data.segments)")
    self.segmenter, self.max_segments = segmenter, cfg.max_segments
    self.max_segment_bytes = cfg.max_segment_bytes
    self.learned_starts: list[int] = []  # the learned segmenter's decisions so far

  def add_learned(self, t: int, p: float) -> None:
    run = t - self.learned_starts[-1] if self.learned_starts else self.max_segment_bytes
    if t == 0 or p >= 0.5 or run >= self.max_segment_bytes:
      self.learned_starts.append(t)

  def context_and_starts(self, data: bytes) -> tuple[int, list[int]]:
    """(the segment position len(data) reads, -1 for none; the segment starts)."""
    t = len(data)
    if self.segmenter is None:
      starts = self.learned_starts
      before = sum(1 for s in starts if s <= t - 1) - 1  # the segment byte t - 1 is in
      return (min(before - 1, self.max_segments - 1) if t else -1), starts
    starts = self.segmenter(data)
    return int(segment.context_ids(data, starts, self.max_segments, t + 1)[t]), starts


def generate(model: hierarchical.Hierarchical, prompt: str | bytes, max_new_bytes: int = 64, *,
             segmenter: segment.Segmenter | None = None, temperature: float = 0.0,
             seed: int = 0, cached: bool = True, return_logits: bool = False):
  """The prompt's continuation (bytes, up to max_new_bytes, stopping at eos); greedy at
  temperature 0, else sampled. segmenter: the host segmenter the model was trained with (not
  for learned boundaries). return_logits: also the logits [new bytes, V] of each choice."""
  data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
  if max_new_bytes < 0:
    raise ValueError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
  segments = _Segments(model, segmenter)
  rng = np.random.default_rng(seed)
  step = _cached_steps(model, segments) if cached else _uncached_step(model, segments)
  out, chosen_logits = b"", []
  for t in range(len(data) + max_new_bytes):
    logits_V = step(data[:t] if t < len(data) else data + out, t >= len(data))
    if t < len(data):
      continue
    chosen_logits.append(logits_V)
    new = generation.choose(logits_V, temperature, rng)
    if new == EOS_ID:
      break
    out += bytes([min(max(new - OFFSET, 0), 255)])
  return (out, np.stack(chosen_logits) if chosen_logits else None) if return_logits else out


def _ids(data: bytes) -> np.ndarray:
  return np.frombuffer(data, np.uint8).astype(np.int32) + OFFSET


def _cached_steps(model, segments: _Segments):
  """step(bytes so far, need logits) -> logits of the next byte (or None)."""
  cfg = model.config
  cache = model.init_cache(1)
  e_Td: list[jax.Array] = []  # encoder states of the bytes read so far
  done = [0]  # backbone states computed for segments 0 .. done - 1
  h_Nd: list[jax.Array] = []

  def step(data: bytes, need: bool):
    nonlocal cache
    t = len(data)
    if t:  # the encoder reads byte t - 1 (the decoder's input at t)
      e_Bd, p_B, cache = _encoder_step(model, jnp.asarray(_ids(data[-1:])), t - 1, cache)
      e_Td.append(e_Bd)
      if cfg.segmenter == "learned":
        segments.add_learned(t - 1, float(p_B[0]))
    ctx, starts = segments.context_and_starts(data)
    while done[0] <= ctx:  # segments newly settled: one backbone step each
      n = done[0]
      last = starts[n + 1] - 1  # settled: the next segment has started
      h_Bd, cache = _backbone_step(model, e_Td[last], jnp.asarray([n]), cache)
      h_Nd.append(h_Bd)
      done[0] += 1
    context_Bd = h_Nd[ctx] if ctx >= 0 else model.start[...][None]
    previous = jnp.asarray(_ids(data[-1:]) if t else np.array([PAD_ID], np.int32))
    logits_BV, cache = _decoder_step(model, previous, t, context_Bd, cache)
    return np.asarray(logits_BV[0]) if need else None

  return step


def _uncached_step(model, segments: _Segments):
  """The reference: the whole model on the bytes so far, read at position len(bytes)."""
  cfg = model.config

  def step(data: bytes, need: bool):
    if not need:
      return None
    t = len(data)
    length = -(-(t + 1) // cfg.window) * cfg.window
    targets = np.zeros((1, length), np.int32)
    targets[0, :t] = _ids(data)
    inputs = np.concatenate([[[PAD_ID]], targets[:, :-1]], axis=1)
    if cfg.segmenter == "learned":
      logits = model(jnp.asarray(inputs), jnp.asarray(targets))
    else:
      starts = segments.segmenter(data)
      ids, _ = segment.segment_ids(t, starts, cfg.max_segments, length)
      ctx = segment.context_ids(data, starts, cfg.max_segments, length)
      logits = model(jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(ids[None]),
                     jnp.asarray(ctx[None]))
    return np.asarray(logits[0, t])

  return step
