"""A tokenized LM read as a byte LM, exactly (Phan et al. 2024, the Byte-Token Representation
Lemma).

A tokenized LM gives probabilities to token sequences; its tokenizer maps each text to one of
them (the canonical tokenization, `tokenization.BPE`). If the LM puts its mass on canonical
sequences only, the probability that the text starts with the bytes x is

    P(x...) = sum over cover encodings t of x of P_tok(t...),

where a cover encoding starts the canonical tokenization of some text that begins with x, and
its last token, alone, reaches to or past the end of x. The last token starts at one of the
max_token_bytes positions before the end and begins with the rest of x; the tokens before it
(`_heads`) are the ones the tokenizer gives that start of x *inside a longer text*. Without a
pre-tokenization regex that is just the tokenization of that start. With GPT-2's regex it can
differ: "a  " alone is [a]["  "], but in "a  1" the run leaves its last space to what follows,
[a][" "][" "]...; so the heads are read off the tokenization of the start followed by each of a
set of probe continuations (`BPE.probes`). Tests compare every prefix with a brute-force sum
over all texts, with and without the regex.

Then P(b | x) = P(x b...) / P(x...), and the end of text after x is P(enc(x), eot) / P(x...).
The token LM is asked for at most max_token_bytes + 1 distinct prefixes a byte (cached); the
tokenizer runs once per candidate token and probe, in Python, which is the slow part.

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

  def _heads(self, x: bytes, pos: int, v: int) -> set[tuple[int, ...]]:
    """The token sequences h spelling x[:pos] such that h + [v] starts the canonical
    tokenization of some text beginning with x[:pos] + token v (see `_probes`)."""
    y = x[:pos] + self.bpe.token_bytes[v]
    heads = set()
    for r in self.bpe.probes(y):
      ids, n = [], 0
      for t in self.bpe.encode(y + r):
        ids.append(t)
        n += len(self.bpe.token_bytes[t])
        if n >= len(y):
          break
      if n == len(y) and ids[-1] == v:
        heads.add(tuple(ids[:-1]))
    return heads

  def prefix_logprob(self, x: bytes) -> float:
    """log P(the text starts with x): the sum over its cover encodings."""
    x = bytes(x)
    if not x:
      return 0.0
    terms = []
    for pos in range(max(0, len(x) - self.bpe.max_token_bytes), len(x)):
      for v in self._tokens_starting_with(x[pos:]):
        for head in self._heads(x, pos, int(v)):
          terms.append(self._sequence_logprob(head + (int(v),)))
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
    mass = np.zeros(257)
    for pos in range(max(0, len(x) + 1 - self.bpe.max_token_bytes), len(x) + 1):
      tail = x[pos:]
      for v in self._tokens_starting_with(tail):
        token = self.bpe.token_bytes[v]
        if len(token) <= len(tail):
          continue  # ends inside the prefix: a cover of it, counted at a later position
        for head in self._heads(x, pos, int(v)):
          mass[token[len(tail)]] += math.exp(self._sequence_logprob(head + (int(v),)))
    mass[END] = math.exp(self.logprob(x))
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
