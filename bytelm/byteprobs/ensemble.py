"""Mixing byte LMs with different vocabularies through their next-byte distributions.

Every member exposes `next_byte_logprobs(prefix: bytes) -> [257]` (256 bytes, then the end of
text): a tokenized LM read exactly as bytes (`ByteLM`) or a byte model. At the byte level they
share one vocabulary, so a mixture is a weighted average of probabilities at every byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

END = 256  # the end of text, after the 256 bytes


def chain_logprob(lm, text: bytes) -> float:
  """log P(text, then its end) from next-byte distributions, one byte at a time."""
  text = bytes(text)
  total = sum(float(lm.next_byte_logprobs(text[:t])[text[t]]) for t in range(len(text)))
  return total + float(lm.next_byte_logprobs(text)[END])


class Ensemble:
  """A mixture of byte LMs: P(b | x) = sum_m w_m P_m(b | x), weights normalised to sum to 1."""

  def __init__(self, members: Sequence, weights: Sequence[float] | None = None):
    if not members:
      raise ValueError("an ensemble needs at least one member")
    weights = np.ones(len(members)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(members),) or np.any(weights < 0) or weights.sum() <= 0:
      raise ValueError(f"need one non-negative weight per member ({len(members)}), not all "
                       f"zero; got {weights.tolist()}")
    self.members, self.log_weights = list(members), np.log(weights / weights.sum())

  def next_byte_logprobs(self, prefix: bytes) -> np.ndarray:
    logp_M257 = np.stack([m.next_byte_logprobs(prefix) for m in self.members])
    z_M257 = self.log_weights[:, None] + logp_M257
    top_257 = np.max(z_M257, axis=0)
    safe_257 = np.where(np.isfinite(top_257), top_257, 0.0)
    with np.errstate(divide="ignore"):
      return safe_257 + np.log(np.exp(z_M257 - safe_257).sum(axis=0))

  def logprob(self, text: bytes) -> float:
    return chain_logprob(self, text)

  def bits_per_byte(self, texts: Sequence[bytes]) -> float:
    """-sum log2 P(text) / bytes, the end of each text counted as one byte."""
    bits = -sum(self.logprob(t) for t in texts) / math.log(2)
    return bits / sum(len(t) + 1 for t in texts)


def ensemble(members: Sequence, weights: Sequence[float] | None = None) -> Ensemble:
  """`Ensemble(members, weights)`: the mixture of byte LMs' next-byte distributions."""
  return Ensemble(members, weights)
