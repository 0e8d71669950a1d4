"""A tokenized LM read as a byte LM, exactly (Phan et al. 2024, the Byte-Token Representation
Lemma).

A tokenized LM gives probabilities to token sequences; its tokenizer maps each byte string to
one of them (the canonical tokenization, `tokenization.BPE`). If the LM puts its mass on
canonical sequences only, the probability that the text starts with the bytes x is

    P(x...) = sum over cover encodings t of x of P_tok(t...),

where a cover encoding is a canonical token sequence whose bytes, all but the last token's, lie
inside x, and whose last token reaches to or past the end of x. Canonical tokens of a prefix of
x are the tokenization of that prefix, so there is one candidate per position `pos` where the
last token can start (at most max_token_bytes of them) and one per token that begins with
x[pos:]: P(x...) = sum_pos P_tok(enc(x[:pos])...) * sum_v P_tok(v | enc(x[:pos])), over v with
enc(x[:pos]) + [v] canonical. Then P(b | x) = P(x b...) / P(x...), and the end of text after x
is P(enc(x), eot) / P(x...).

Works in progress (issue 7): tokenizers with GPT-2's pre-tokenization regex are refused for now.
The regex's look-ahead makes the tokenization of a prefix differ from the start of the
tokenization of the whole text, so the one-candidate-per-position argument above needs a
treatment of its own.

token_lm: a callable taking a list of token-id prefixes and returning their next-token
log-probabilities, float [len(prefixes), V]. Results are cached per prefix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from bytelm.byteprobs.tokenization import BPE

END = 256  # index of the end of text in next_byte_logprobs


class ByteLM:
  """next_byte_logprobs / prefix_logprob / logprob of a tokenized LM, over bytes."""

  def __init__(self, token_lm: Callable[[list[tuple[int, ...]]], np.ndarray], bpe: BPE,
               eot_id: int):
    if bpe.use_regex:
      raise ValueError("exact byte probabilities under a pre-tokenization regex are not "
                       "supported yet (issue 7 in progress); use a ByteLevel BPE trained "
                       "with use_regex=False")
    self.token_lm, self.bpe, self.eot_id = token_lm, bpe, int(eot_id)
    self._next: dict[tuple[int, ...], np.ndarray] = {}
    self._starts_with: dict[bytes, np.ndarray] = {}
    self.calls = 0  # prefixes sent to token_lm

  def _token_logprobs(self, prefixes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    todo = [p for p in dict.fromkeys(prefixes) if p not in self._next]
    if todo:
      out = np.asarray(self.token_lm(todo), np.float64)
      self.calls += len(todo)
      for p, row in zip(todo, out):
        self._next[p] = row
    return [self._next[p] for p in prefixes]

  def _tokens_starting_with(self, tail: bytes) -> np.ndarray:
    if tail not in self._starts_with:
      self._starts_with[tail] = np.asarray(
          [i for i, t in enumerate(self.bpe.token_bytes) if t.startswith(tail) and t], np.int64)
    return self._starts_with[tail]

  def _sequence_logprob(self, ids: Sequence[int]) -> float:
    prefixes = [tuple(ids[:i]) for i in range(len(ids))]
    rows = self._token_logprobs(prefixes)
    return float(sum(row[t] for row, t in zip(rows, ids)))

  def prefix_logprob(self, x: bytes) -> float:
    """log P(the text starts with x)."""
    x = bytes(x)
    if not x:
      return 0.0
    terms = []
    for pos in range(max(0, len(x) - self.bpe.max_token_bytes), len(x)):
      head = self.bpe.encode(x[:pos])
      candidates = [v for v in self._tokens_starting_with(x[pos:])
                    if self.bpe.encode(x[:pos] + self.bpe.token_bytes[v]) == head + [int(v)]]
      if not candidates:
        continue
      row = self._token_logprobs([tuple(head)])[0]
      terms.append(self._sequence_logprob(head) + _logsumexp(row[candidates]))
    return _logsumexp(np.asarray(terms)) if terms else -math.inf

  def logprob(self, text: bytes) -> float:
    """log P(the text is exactly `text`): its canonical tokenization, then the end of text."""
    ids = self.bpe.encode(bytes(text))
    return self._sequence_logprob(ids + [self.eot_id])

  def next_byte_logprobs(self, prefix: bytes) -> np.ndarray:
    """log P(next byte | prefix) for the 256 bytes, and the end of text at index END (257).

    One pass over the covers of prefix: a cover whose last token reaches past the prefix puts
    its mass on the token's next byte; one that ends exactly at the prefix's end puts it on
    the tokens that start there (and on the end of text). At most max_token_bytes + 1 token
    prefixes are scored, in one batch.
    """
    x = bytes(prefix)
    positions = range(max(0, len(x) + 1 - self.bpe.max_token_bytes), len(x) + 1)
    heads = [self.bpe.encode(x[:pos]) for pos in positions]
    rows = self._token_logprobs([tuple(h) for h in heads])
    mass = np.zeros(257)
    for pos, head, row in zip(positions, heads, rows):
      base = self._sequence_logprob(head)
      if not np.isfinite(base):
        continue
      tail = x[pos:]
      for v in self._tokens_starting_with(tail):
        token = self.bpe.token_bytes[v]
        if len(token) <= len(tail) or not np.isfinite(row[v]):
          continue  # ends inside the prefix: a cover of it, counted at a later position
        if self.bpe.encode(x[:pos] + token) == head + [int(v)]:
          mass[token[len(tail)]] += math.exp(base + row[v])
      if pos == len(x):
        mass[END] = math.exp(base + row[self.eot_id])
    total = mass.sum()
    if total <= 0:
      raise ValueError(f"the model gives the prefix {x[-20:]!r} no probability")
    with np.errstate(divide="ignore"):
      return np.log(mass / total)

  def sample(self, prefix: bytes, max_bytes: int, seed: int = 0,
             temperature: float = 1.0) -> bytes:
    """Bytes sampled one at a time from next_byte_logprobs (softmax of logprobs / temperature)
    after prefix, until the end of text or max_bytes; reproducible for a seed."""
    if temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(seed)
    out = b""
    for _ in range(max_bytes):
      logp = self.next_byte_logprobs(bytes(prefix) + out) / temperature
      p = np.exp(logp - logp.max())
      b = int(rng.choice(257, p=p / p.sum()))
      if b == END:
        break
      out += bytes([b])
    return out

  def bits_per_byte(self, texts: Sequence[bytes]) -> float:
    """-sum log2 P(text) / bytes, each text with its end (counted as one byte, as bytelm's
    byte models count the eos they predict)."""
    bits = -sum(self.logprob(t) for t in texts) / math.log(2)
    return bits / sum(len(t) + 1 for t in texts)


def _logsumexp(a: np.ndarray) -> float:
  a = np.asarray(a, np.float64)
  top = np.max(a)
  if not np.isfinite(top):
    return float(top)
  return float(top + np.log(np.exp(a - top).sum()))
