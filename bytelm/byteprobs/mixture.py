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


def along(lm, text: bytes, **kwargs) -> np.ndarray:
  """[len(text) + 1, 257]: row t is lm's log P(next byte | text[:t]); from the model's
  `next_byte_logprobs_along` (one pass or one batch) where it has one."""
  text = bytes(text)
  if hasattr(lm, "next_byte_logprobs_along"):
    return lm.next_byte_logprobs_along(text, **kwargs)
  return np.stack([lm.next_byte_logprobs(text[:t], **kwargs) for t in range(len(text) + 1)])


def chain_logprob(lm, text: bytes, **kwargs) -> float:
  """log P(text, then its end) from next-byte distributions, one byte at a time (kwargs go to
  the lm's next_byte_logprobs)."""
  steps = along(lm, text, **kwargs)
  return float(steps[np.arange(len(text) + 1), list(bytes(text)) + [END]].sum())


def mix(member_logprobs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
  """log sum_m w_m exp(member_logprobs[m]), elementwise: a mixture of next-byte
  log-probabilities (arrays of one shape, e.g. [257] or [T, 257]; weights summing to 1)."""
  with np.errstate(divide="ignore"):
    z_M = np.log(np.asarray(weights, np.float64)).reshape(
        (-1,) + (1,) * np.ndim(member_logprobs[0]))
  return np.logaddexp.reduce(z_M + np.stack(member_logprobs), axis=0)


class Ensemble:
  """A mixture of byte LMs: P(b | x) = sum_m w_m P_m(b | x), weights normalised to sum to 1."""

  def __init__(self, members: Sequence, weights: Sequence[float] | None = None):
    if not members:
      raise ValueError("an ensemble needs at least one member")
    weights = np.ones(len(members)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(members),) or np.any(weights < 0) or weights.sum() <= 0:
      raise ValueError(f"need one non-negative weight per member ({len(members)}), not all "
                       f"zero; got {weights.tolist()}")
    self.members, self.weights = list(members), weights / weights.sum()

  def next_byte_logprobs(self, prefix: bytes) -> np.ndarray:
    return mix([m.next_byte_logprobs(prefix) for m in self.members], self.weights)

  def next_byte_logprobs_along(self, text: bytes) -> np.ndarray:
    return mix([along(m, text) for m in self.members], self.weights)

  def logprob(self, text: bytes) -> float:
    return chain_logprob(self, text)

  def bits_per_byte(self, texts: Sequence[bytes]) -> float:
    """-sum log2 P(text) / bytes, the end of each text counted as one byte."""
    bits = -sum(self.logprob(t) for t in texts) / math.log(2)
    return bits / sum(len(t) + 1 for t in texts)


def ensemble(members: Sequence, weights: Sequence[float] | None = None) -> Ensemble:
  """`Ensemble(members, weights)`: the mixture of byte LMs' next-byte distributions."""
  return Ensemble(members, weights)
