"""Generation from a hierarchical model (models/hierarchical.py) as one compiled loop.

The whole generation, for a batch of prompts, is one `lax.while_loop` on the device: at each
position t, `Hierarchical.generation_step` (byte t - 1 through the byte encoder, the decoder's
prediction of byte t, with caches) and the next byte picked on the device (`choice.choose_B`).
Prompt bytes go through the same step with the choice forced to the prompt's; a row that
chose eos, or reached max_new_bytes, is done while the others go on.

Segments are settled as in training and as the host loop (hierarchical.py) settles them:
- the learned segmenter plans inside `generation_step`, as before;
- a given segmenter (`segment.Segmenter`: words, entropy, fixed) is cut on the device from the
  bytes before t (`segment_jax.DeviceSegmenter`, the host segmenter's rules in jnp, over the
  whole [B, L] byte buffer masked at t: O(L) work per byte, which is little next to the
  model's). That gives the segment position t reads and where each segment starts; every
  segment settled before t and not yet in the backbone cache goes through `backbone_step`
  first, in an inner `lax.while_loop`, usually once or not at all, more than once where one
  byte settles several segments (a run of invalid UTF-8 bytes, each a segment of its own).
  The host loop runs the last of them inside `generation_step` instead, after the byte
  encoder's step; a settled segment never holds byte t - 1, so the order changes nothing.

Shapes are static (the buffer length L rounded up as in decoder.py); prompt lengths,
max_new_bytes, the temperature and whether eos may end a row are traced.

Axis legend: B rows, L buffer positions, M segment starts (max_segments + 1), V vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bytelm.generation.choice import choose_B
from bytelm.generation.decoder import buffer_length
from bytelm.models import hierarchical
from bytelm.nn.compiled import Compiled
from bytelm.text import segment, segment_jax
from bytelm.text.tokenizer import EOS_ID, NUM_BYTE_IDS, OFFSET


def _catch_up(model, segmenter: segment_jax.DeviceSegmenter, ids_BL, t, settled_B, cache):
  """(context_B, settled_B, cache): the segment position t reads, from the bytes before t, and
  every segment settled by then run through the backbone (settled_B: how many are in it)."""
  B, L = ids_BL.shape
  N = model.config.max_segments
  t_L = jnp.arange(L)
  bytes_BL = ((ids_BL - OFFSET) & 0xFF).astype(jnp.uint8)  # past t: masked by the lengths
  lengths_B = jnp.full((B,), t, jnp.int32)
  start_BL = segmenter.starts(bytes_BL, lengths_B) & (t_L < t)
  _, context_BL = segment_jax.ids(bytes_BL, lengths_B, start_BL, N)
  context_B = context_BL[:, t]
  # first_BM[n]: where segment n starts (L where it does not); segment n ends before n + 1.
  rank_BL = jnp.cumsum(start_BL, axis=1, dtype=jnp.int32) - 1
  first_BM = jnp.full((B, N + 1), L, jnp.int32).at[
      jnp.arange(B)[:, None], jnp.where(start_BL, rank_BL, N + 1)].set(t_L, mode="drop")

  def cond(carry):
    return (carry[0] <= context_B).any()

  def body(carry):
    settled_B, cache = carry
    n_B = jnp.where(settled_B <= context_B, settled_B, -1)  # -1: this row is caught up
    at_B1 = jnp.maximum(n_B, 0)[:, None]
    first_B = jnp.take_along_axis(first_BM, at_B1, axis=1)[:, 0]
    last_B = jnp.take_along_axis(first_BM, at_B1 + 1, axis=1)[:, 0] - 1
    return settled_B + (n_B >= 0), model.backbone_step(n_B, first_B, last_B, cache)

  settled_B, cache = jax.lax.while_loop(cond, body, (settled_B, cache))
  return context_B, settled_B, cache


@functools.partial(jax.jit, static_argnames=("graphdef", "segmenter", "sample", "keep_logits"))
def _loop(state, ids_BL, prompt_B, max_new, stop_at_eos, key, temperature, *, graphdef,
          segmenter, sample, keep_logits):
  """(ids_BL with each row's bytes after its prompt, count_B: how many, logits_BLV of each
  position's prediction, or [B, 0, V] unless keep_logits)."""
  model = nnx.merge(graphdef, state)
  cfg = model.config
  B, L = ids_BL.shape
  device = (None if cfg.segmenter == "learned"
            else segment_jax.DeviceSegmenter(segmenter, cfg.max_segments))
  none_B = jnp.full((B,), -1, jnp.int32)
  v_V = jnp.arange(cfg.vocab_size)
  # Bytes, and eos where it may end a row: never pad, unk or embedding rows that are no byte.
  allowed_V = ((v_V >= OFFSET) & (v_V < NUM_BYTE_IDS)) | ((v_V == EOS_ID) & stop_at_eos)

  def cond(carry):
    t, _, _, done_B = carry[:4]
    return (t < L) & ~done_B.all()

  def body(carry):
    t, ids_BL, count_B, done_B, settled_B, cache, logits_BLV = carry
    context_B = none_B
    if device is not None:
      context_B, settled_B, cache = _catch_up(model, device, ids_BL, t, settled_B, cache)
    plan = {"segment_B": none_B, "first_B": none_B, "last_B": none_B, "context_B": context_B}
    previous_B = jnp.where(t == 0, EOS_ID, ids_BL[:, jnp.maximum(t - 1, 0)])  # a document start
    logits_BV, cache = model.generation_step(previous_B, t, cache, plan)
    logits_BV = logits_BV.astype(jnp.float32)
    new_B = choose_B(jnp.where(allowed_V, logits_BV, -jnp.inf), t, sample=sample, key=key,
                     temperature=temperature)
    choosing_B = (t >= prompt_B) & ~done_B
    stop_B = choosing_B & (new_B == EOS_ID)
    keep_B = choosing_B & ~stop_B
    ids_BL = ids_BL.at[:, t].set(jnp.where(keep_B, new_B, ids_BL[:, t]))
    if keep_logits:  # rows not choosing write too: the host reads each row's own positions
      logits_BLV = jax.lax.dynamic_update_slice_in_dim(logits_BLV, logits_BV[:, None], t, 1)
    count_B = count_B + keep_B
    done_B = done_B | stop_B | (count_B >= max_new)
    return t + 1, ids_BL, count_B, done_B, settled_B, cache, logits_BLV

  count_B = jnp.zeros((B,), jnp.int32)
  logits_BLV = jnp.zeros((B, L if keep_logits else 0, cfg.vocab_size), jnp.float32)
  carry = (jnp.int32(0), ids_BL, count_B, count_B >= max_new, count_B, model.init_cache(B, L),
           logits_BLV)
  _, ids_BL, count_B, _, _, _, logits_BLV = jax.lax.while_loop(cond, body, carry)
  return ids_BL, count_B, logits_BLV


def hierarchical_rows(model: hierarchical.Hierarchical, prompts: Sequence[str | bytes],
                      max_new_bytes: int = 64, *, segmenter: segment.Segmenter | None = None,
                      temperature: float = 0.0, seed: int = 0, stop_at_eos: bool = True,
                      return_logits: bool = False):
  """Each prompt's continuation (bytes), as `hierarchical.hierarchical_bytes` gives it, all
  rows in one compiled loop; sampled at temperature > 0 with `jax.random.key(seed)`.
  return_logits: also, per row, the logits [new bytes (+ the eos chosen), V] of each choice
  (None where there was none)."""
  if max_new_bytes < 0:
    raise ValueError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
  if model.config.segmenter == "given" and segmenter is None:
    raise ValueError("this model reads segments from its data: pass the segmenter it was "
                     "trained with (segment.Segmenter, as configs/hat.py's data.segments)")
  data = [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in prompts]
  if not data:
    raise ValueError("prompts is empty; pass at least one prompt")
  lengths_B = np.asarray([len(d) for d in data], np.int32)
  ids_BL = np.zeros((len(data), buffer_length(int(lengths_B.max()) + max_new_bytes)), np.int32)
  for r, d in enumerate(data):
    ids_BL[r, :len(d)] = np.frombuffer(d, np.uint8).astype(np.int32) + OFFSET
  compiled = Compiled(model)
  ids_BL, count_B, logits_BLV = jax.device_get(_loop(
      compiled.state, ids_BL, lengths_B, np.int32(max_new_bytes), np.bool_(stop_at_eos),
      jax.random.key(seed), np.float32(max(temperature, 1e-6)), graphdef=compiled.graphdef,
      segmenter=None if model.config.segmenter == "learned" else segmenter,
      sample=temperature > 0, keep_logits=return_logits))
  out = [bytes((ids_BL[r, n: n + c] - OFFSET).astype(np.uint8).tolist())
         for r, (n, c) in enumerate(zip(lengths_B, count_B))]
  if not return_logits:
    return out
  # A row that stopped short chose eos: its logits are one of the choices.
  chosen = [logits_BLV[r, n: n + c + (c < max_new_bytes)]
            for r, (n, c) in enumerate(zip(lengths_B, count_B))]
  return out, [c if len(c) else None for c in chosen]
