"""Generation from a decoder-only LM (models/decoder.py: bytes or BPE tokens), one id per step.

The whole generation is one compiled call: a `lax.while_loop` over `DecoderLM.step` (one id and
the KV cache per iteration), the next id picked on the device (`choice.choose_B`), for a batch
of prompts at once (`decoder_rows`). The prompt is fed through the same step, one id per
iteration, with the next id forced to the prompt's until the prompt runs out: a row whose
prompt is shorter starts choosing earlier, and a row that chose eos is done while the others go
on. The loop stops when every row is done.

Shapes are static: the id buffer and the KV cache are [B, L], L the longest prompt plus
max_new rounded up to a multiple of LENGTH_MULTIPLE, and prompt lengths, max_new, the
temperature and eos are traced, so one compilation serves every call of a batch size, sampling
or not, and buffer length.

`on_host=True` runs the loop this replaced, kept as the reference the tests compare with: one
compiled step per id from the host, the id picked in numpy (`choice.choose`). Greedy, both give
the same ids; sampled, the same distribution but not the same stream (choice.py).

Axis legend: B rows, L buffer positions, V vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bytelm.generation.choice import choose, choose_B
from bytelm.nn.compiled import Compiled

# Buffers grow in steps of this many positions: nearby prompt lengths share a compilation. The
# extra positions are masked keys, a little attention work per step.
LENGTH_MULTIPLE = 64


def buffer_length(longest: int) -> int:
  """longest rounded up to a multiple of LENGTH_MULTIPLE."""
  return -(-longest // LENGTH_MULTIPLE) * LENGTH_MULTIPLE


@functools.partial(jax.jit, static_argnames=("graphdef", "sample"))
def _loop(state, ids_BL, prompt_B, max_new, eos_id, key, temperature, *, graphdef, sample):
  """(ids_BL with each row's choices after its prompt, count_B: how many, eos not counted)."""
  model = nnx.merge(graphdef, state)
  B, L = ids_BL.shape
  pad_id = model.config.pad_id

  def cond(carry):
    t, _, _, done_B, _ = carry
    return (t + 1 < L) & ~done_B.all()

  def body(carry):
    t, ids_BL, count_B, done_B, cache = carry
    logits_BV, cache = model.step(ids_BL[:, t], t, cache)
    logits_BV = logits_BV.astype(jnp.float32).at[:, pad_id].set(-jnp.inf)  # never chosen
    new_B = choose_B(logits_BV, t, sample=sample, key=key, temperature=temperature)
    # Position t predicts id t + 1: the prompt's while it lasts, then the row's choice.
    choosing_B = (t + 1 >= prompt_B) & ~done_B
    stop_B = choosing_B & (new_B == eos_id)
    keep_B = choosing_B & ~stop_B
    ids_BL = ids_BL.at[:, t + 1].set(jnp.where(keep_B, new_B, ids_BL[:, t + 1]))
    count_B = count_B + keep_B
    return t + 1, ids_BL, count_B, done_B | stop_B | (count_B >= max_new), cache

  count_B = jnp.zeros((B,), jnp.int32)
  carry = (jnp.int32(0), ids_BL, count_B, count_B >= max_new, model.init_cache(B, L))
  _, ids_BL, count_B, _, _ = jax.lax.while_loop(cond, body, carry)
  return ids_BL, count_B


def decoder_rows(model, prompts: Sequence[Sequence[int]], max_new: int, *,
                 temperature: float = 0.0, seed: int = 0, eos_id: int = 1) -> list[list[int]]:
  """The continuation ids of each prompt (each at least one id: start a byte model with eos),
  up to max_new or eos (not returned; eos_id=-1: never stop); one compiled loop for all rows.
  Sampled at temperature > 0 with `jax.random.key(seed)`."""
  prompts = [[int(i) for i in p] for p in prompts]
  if not prompts or not all(prompts):
    raise ValueError("a decoder needs at least one prompt id per prompt; start from eos (id 1)")
  if max_new < 0:
    raise ValueError(f"max_new must be >= 0, got {max_new}")
  lengths_B = np.asarray([len(p) for p in prompts], np.int32)
  ids_BL = np.zeros((len(prompts), buffer_length(int(lengths_B.max()) + max_new)), np.int32)
  for r, p in enumerate(prompts):
    ids_BL[r, :len(p)] = p
  compiled = Compiled(model)
  ids_BL, count_B = jax.device_get(_loop(
      compiled.state, ids_BL, lengths_B, np.int32(max_new), np.int32(eos_id),
      jax.random.key(seed), np.float32(max(temperature, 1e-6)), graphdef=compiled.graphdef,
      sample=temperature > 0))
  return [ids_BL[r, n: n + c].tolist() for r, (n, c) in enumerate(zip(lengths_B, count_B))]


def decoder_ids(model, prompt_ids: Sequence[int], max_new: int, *, temperature: float = 0.0,
                seed: int = 0, eos_id: int = 1, on_host: bool = False) -> list[int]:
  """The continuation ids of a decoder-only LM after prompt_ids (at least one id: start a byte
  model with eos), up to max_new or eos; KV-cached, one compiled loop (`decoder_rows`).
  on_host: the host loop instead, one compiled step per id (the reference)."""
  if not on_host:
    return decoder_rows(model, [prompt_ids], max_new, temperature=temperature, seed=seed,
                        eos_id=eos_id)[0]
  prompt_ids = [int(i) for i in prompt_ids]
  if not prompt_ids:
    raise ValueError("a decoder needs at least one prompt id; start from eos (id 1)")
  rng = np.random.default_rng(seed)
  compiled = Compiled(model)
  cache = model.init_cache(1, len(prompt_ids) + max_new)
  ids, out = list(prompt_ids), []
  for t in range(len(prompt_ids) + max_new - 1):
    logits_BV, cache = compiled("step", np.array([ids[t]], np.int32), np.int32(t), cache)
    if t + 1 < len(prompt_ids):
      continue
    new = choose(np.asarray(logits_BV[0]), temperature, rng)
    if new == eos_id:
      break
    ids.append(new)
    out.append(new)
  return out
