"""Generation from a decoder-only LM (models/decoder.py: bytes or BPE tokens), one id per step.

The loop runs on the host: each step is one compiled call (`DecoderLM.step`) that reads one id
and the KV cache, and `choose` picks the next id from its logits with numpy (the hierarchical
model's byte loop picks the same way). A prompt is fed one id per step too, which keeps one
compiled shape for the whole run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bytelm.nn.compiled import Compiled


def choose(logits_V: np.ndarray, temperature: float, rng: np.random.Generator,
           pad_id: int = 0) -> int:
  """The next id from one row of logits: the argmax at temperature 0, else a sample of
  softmax(logits / temperature). Pad is never chosen."""
  logits_V = np.asarray(logits_V, np.float64).copy()
  logits_V[pad_id] = -np.inf
  if temperature <= 0:
    return int(np.argmax(logits_V))
  z = logits_V / temperature
  p = np.exp(z - z.max())
  return int(rng.choice(len(p), p=p / p.sum()))


def decoder_ids(model, prompt_ids: Sequence[int], max_new: int, *, temperature: float = 0.0,
                seed: int = 0, eos_id: int = 1) -> list[int]:
  """The continuation ids of a decoder-only LM after prompt_ids (at least one id: start a byte
  model with eos), up to max_new or eos; KV-cached, one jitted step per id."""
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
