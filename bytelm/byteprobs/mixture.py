"""Mixing byte LMs with different vocabularies through their next-byte distributions, and
what every byte LM shares: bits per byte (one definition, `bits_per_byte`).

Every member exposes `next_byte_logprobs(prefix) -> [257]` (256 bytes, then the end of text;
prefix str or bytes): a tokenized LM read exactly as bytes (`ByteLM`) or a byte model. At the
byte level they share one vocabulary, so a mixture is a weighted average of probabilities at
every byte.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from bytelm.text.tokenizer import as_bytes

END = 256  # the end of text, after the 256 bytes


def along(lm, text: str | bytes, **kwargs) -> np.ndarray:
  """[len(text) + 1, 257]: row t is lm's log P(next byte | text[:t]); from the model's
  `next_byte_logprobs_along` (one pass or one batch) where it has one."""
  text = as_bytes(text)
  if hasattr(lm, "next_byte_logprobs_along"):
    return lm.next_byte_logprobs_along(text, **kwargs)
  return np.stack([lm.next_byte_logprobs(text[:t], **kwargs) for t in range(len(text) + 1)])


def chain_logprob(lm, text: str | bytes, **kwargs) -> float:
  """log P(text, then its end) from next-byte distributions, one byte at a time (kwargs go to
  the lm's next_byte_logprobs)."""
  text = as_bytes(text)
  steps = along(lm, text, **kwargs)
  return float(steps[np.arange(len(text) + 1), list(text) + [END]].sum())


def bytes_logprob(lm, text: str | bytes, **kwargs) -> float:
  """log P(the text starts with `text`) from next-byte distributions: the chain over its bytes,
  its end not predicted (kwargs go to the lm's next_byte_logprobs)."""
  text = as_bytes(text)
  steps = along(lm, text, **kwargs)
  return float(steps[np.arange(len(text)), list(text)].sum())


def bits_per_byte(logprob: Callable[[bytes], float], texts: Sequence[str | bytes]) -> float:
  """Bits per byte, the one definition (docs/api.md): -sum log2 P(text) / their bytes, where
  logprob(text) is the log-probability the model gives the text's bytes, each text read from
  a document start; its end is not predicted (a text may be a piece of a longer one), as
  `bytelm.load(path).score` and the training loop's evaluation count."""
  if isinstance(texts, (str, bytes, bytearray)):
    raise TypeError("pass a list of texts; wrap a single one: [text]")
  texts = [as_bytes(t, f"text {i}") for i, t in enumerate(texts)]
  count = sum(len(t) for t in texts)
  if not count:
    raise ValueError("the texts hold no bytes: there is nothing to score")
  return -sum(logprob(t) for t in texts) / math.log(2) / count


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

  def next_byte_logprobs(self, prefix: str | bytes) -> np.ndarray:
    """log P(next byte | prefix), float64 [257]: the members' probabilities, mixed."""
    prefix = as_bytes(prefix, "prefix")
    return mix([m.next_byte_logprobs(prefix) for m in self.members], self.weights)

  def next_byte_logprobs_along(self, text: str | bytes) -> np.ndarray:
    """[len(text) + 1, 257]: row t is next_byte_logprobs(text[:t])."""
    text = as_bytes(text)
    return mix([along(m, text) for m in self.members], self.weights)

  def logprob(self, text: str | bytes) -> float:
    """log P(the text is exactly `text`): its bytes, then its end."""
    return chain_logprob(self, text)

  def bits_per_byte(self, texts: Sequence[str | bytes]) -> float:
    """Bits per byte of the texts (`bits_per_byte`: each from a document start, its end not
    predicted), by the chain of the mixed next-byte distributions."""
    return bits_per_byte(lambda t: bytes_logprob(self, t), texts)


def ensemble(members: Sequence, weights: Sequence[float] | None = None) -> Ensemble:
  """`Ensemble(members, weights)`: the mixture of byte LMs' next-byte distributions."""
  return Ensemble(members, weights)
