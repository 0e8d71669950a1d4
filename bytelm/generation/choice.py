"""Picking the next id from logits: greedy (the argmax) or a sample of softmax(logits / T).

Two forms of one rule. `choose_B` runs inside the compiled generation loops (decoder.py,
hierarchical_loop.py) on a batch of rows, sampling with `jax.random`; `choose` is the host
form, one row in numpy, which the host loops (the references the tests compare with) use.
At temperature 0 both are the first argmax, so greedy generation gives the same ids either way;
a sample is drawn from the same distribution but not from the same random stream (numpy's
Generator on the host, a `jax.random` key folded with the position on the device), so a seed
gives different text on the two.

Axis legend: B rows, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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


def choose_B(logits_BV: jax.Array, t, *, sample: bool, key: jax.Array,
             temperature: jax.Array) -> jax.Array:
  """next_B (int32): each row's argmax, or (sample, static) a draw of softmax(logits /
  temperature) with key folded with position t. Ids whose logit is -inf are never chosen.

  fold_in(t) rather than a key split in the loop's carry: position t's draw depends on the key
  and t alone, not on how many steps the loop ran before (a prompt's length, other rows).
  """
  logits_BV = logits_BV.astype(jnp.float32)
  if not sample:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(jax.random.fold_in(key, t),
                                logits_BV / temperature).astype(jnp.int32)
