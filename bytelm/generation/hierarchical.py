"""Byte-by-byte generation from a hierarchical model (models/hierarchical.py), with caches.

Each new byte costs one `Hierarchical.generation_step`: a step of the byte encoder and one of
the byte decoder (local layers: a ring of the last `window` keys per layer), and, once per
completed segment, a step of the backbone (a cache of up to max_segments keys per layer).
Segments come from the model's learned boundary predictor, or from a host segmenter
(`segment.Segmenter`: words, entropy, fixed) applied to the bytes so far; either way only
settled boundaries are used, as in training, so cached generation computes what the full model
computes on the same bytes. `hierarchical_bytes(..., cached=False)` is that reference: the whole
model on the whole prefix for every new byte (`prefix_logits`).

By default the loop is one compiled call (hierarchical_loop.py: the segmenter cut on the device
by `segment_jax`). `on_host=True` runs the loop it replaced, kept as a reference: the host calls
one compiled step per byte, re-runs the host segmenter on the bytes so far (`_HostPlan`) and
picks each byte in numpy. At position t, the encoder reads byte t - 1 (chosen by the previous
step), the backbone adds a segment that byte settled, and the decoder predicts byte t from byte
t - 1 and the last settled segment's state. Greedy, all three give the same bytes; sampled, the
compiled loop draws with `jax.random`, the host loops with numpy (choice.py).

Axis legend: B batch (copies of one prompt), T bytes, d byte width, V vocab.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bytelm.generation.choice import choose
from bytelm.generation.hierarchical_loop import hierarchical_rows
from bytelm.models import hierarchical
from bytelm.text import segment
from bytelm.nn.compiled import Compiled
from bytelm.text.tokenizer import EOS_ID, NUM_BYTE_IDS, OFFSET, ByteTokenizer


class _HostPlan:
  """What a host segmenter settles before each position: which segments the backbone must add
  (in order, one per step), and which segment the position reads."""

  def __init__(self, segmenter: segment.Segmenter, max_segments: int):
    self.segmenter, self.max_segments = segmenter, max_segments
    self.done = 0  # segments 0 .. done - 1 are in the backbone cache

  def pending(self, data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """([(segment, its first byte, its last byte)] newly settled, the context of position
    len(data))."""
    t = len(data)
    starts = self.segmenter(data)
    context = int(segment.context_ids(data, starts, self.max_segments, t + 1)[t])
    new = [(n, starts[n], starts[n + 1] - 1) for n in range(self.done, context + 1)]
    self.done = max(self.done, context + 1)
    return new, context


def hierarchical_bytes(model: hierarchical.Hierarchical, prompt: str | bytes,
                       max_new_bytes: int = 64, *, segmenter: segment.Segmenter | None = None,
                       temperature: float = 0.0, seed: int = 0, cached: bool = True,
                       stop_at_eos: bool = True, return_logits: bool = False,
                       on_host: bool = False):
  """The prompt's continuation (bytes, up to max_new_bytes, stopping at eos unless
  stop_at_eos is False: then eos is never chosen); greedy at temperature 0, else sampled.
  segmenter: the host segmenter the model was trained with (not for learned boundaries).
  return_logits: also the logits [new bytes, V] of each choice.
  cached=False or on_host=True: a host loop (the references; see the module docstring)."""
  if cached and not on_host:
    out = hierarchical_rows(model, [prompt], max_new_bytes, segmenter=segmenter,
                            temperature=temperature, seed=seed, stop_at_eos=stop_at_eos,
                            return_logits=return_logits)
    return (out[0][0], out[1][0]) if return_logits else out[0]
  data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
  if max_new_bytes < 0:
    raise ValueError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
  if model.config.segmenter == "given" and segmenter is None:
    raise ValueError("this model reads segments from its data: pass the segmenter it was "
                     "trained with (segment.Segmenter, as configs/hat.py's data.segments)")
  rng = np.random.default_rng(seed)
  step = (_cached_steps(model, len(data) + max_new_bytes + 1, segmenter) if cached
          else _uncached_step(model, segmenter))
  out, chosen_logits = b"", []
  for t in range(len(data) + max_new_bytes):
    logits_V = step(data[:t] if t < len(data) else data + out, t >= len(data))
    if t < len(data):
      continue
    chosen_logits.append(logits_V)
    allowed_V = logits_V.copy()
    allowed_V[:OFFSET] = -np.inf  # pad, eos, unk
    allowed_V[NUM_BYTE_IDS:] = -np.inf  # embedding rows that are no byte
    if stop_at_eos:
      allowed_V[EOS_ID] = logits_V[EOS_ID]
    new = choose(allowed_V, temperature, rng)
    if new == EOS_ID:
      break
    out += bytes([new - OFFSET])
  return (out, np.stack(chosen_logits) if chosen_logits else None) if return_logits else out


def _ids(data: bytes) -> np.ndarray:
  return ByteTokenizer().encode(data, add_eos=False)


def _cached_steps(model, max_len: int, segmenter):
  """step(bytes so far, need logits) -> logits of the next byte (or None): one compiled call
  per byte (`Hierarchical.generation_step`), and one more for each extra segment that settles
  at the same byte."""
  compiled = Compiled(model)
  cache = model.init_cache(1, max_len)
  plan = None if model.config.segmenter == "learned" else _HostPlan(
      segmenter, model.config.max_segments)
  none = np.array([-1], np.int32)

  def step(data: bytes, need: bool):
    nonlocal cache
    t = len(data)
    plan_B = {"segment_B": none, "first_B": none, "last_B": none, "context_B": none}
    if plan is not None:
      new, context = plan.pending(data)
      for settled in new[:-1]:  # rare (several boundaries settled by one byte)
        cache = compiled("backbone_step", *(np.array([i], np.int32) for i in settled), cache)
      if new:
        plan_B.update(zip(("segment_B", "first_B", "last_B"),
                          (np.array([i], np.int32) for i in new[-1])))
      plan_B["context_B"] = np.array([context], np.int32)
    previous = _ids(data[-1:]) if t else np.array([EOS_ID], np.int32)  # a document start
    logits_BV, cache = compiled("generation_step", previous, np.int32(t), cache, plan_B)
    return np.asarray(logits_BV[0]) if need else None

  return step


def _uncached_step(model, segmenter):
  """The reference: the whole model on the bytes so far, read at position len(bytes). One
  compiled call per step (the model split once; a compile per distinct length, lengths being
  a power of two of windows), not an eager op-by-op run of the whole model per byte."""
  compiled = Compiled(model)

  def step(data: bytes, need: bool):
    return (np.asarray(prefix_logits(model, data, segmenter, compiled=compiled)[len(data)])
            if need else None)

  return step


def prefix_logits(model: hierarchical.Hierarchical, data: bytes,
                  segmenter: segment.Segmenter | None = None, *, compiled: Compiled | None = None):
  """The whole model on data from a document start: logits [T, V] (T >= len(data) + 1, a
  multiple of the window), row t predicting byte t from data[:t]. Only segments settled by
  position t are read there, so each row is what the model gives that prefix alone.
  compiled: `Compiled(model)`, to run the model compiled (dropout off) instead of eagerly."""
  cfg, t = model.config, len(data)
  run = model if compiled is None else (lambda *arrays: compiled("__call__", *arrays))
  length = -(-(t + 1) // cfg.window) * cfg.window
  if compiled is not None:  # a power of two of windows: few lengths, so few compiles
    length = cfg.window * (1 << (length // cfg.window - 1).bit_length())
  targets = np.zeros((1, length), np.int32)
  targets[0, :t] = _ids(data)
  inputs = np.concatenate([[[EOS_ID]], targets[:, :-1]], axis=1)  # a document start
  if cfg.segmenter == "learned":
    return run(jnp.asarray(inputs), jnp.asarray(targets))[0]
  starts = segmenter(data)
  ids, _ = segment.segment_ids(t, starts, cfg.max_segments, length)
  ctx = segment.context_ids(data, starts, cfg.max_segments, length)
  return run(jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(ids[None]),
             jnp.asarray(ctx[None]))[0]
