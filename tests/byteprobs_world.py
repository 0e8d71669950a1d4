"""A brute-force world for exact byte probabilities (tests/test_byteprobs*.py): a token model
whose answers are known from a distribution over every short text."""

import itertools
import math

import numpy as np

from bytelm.byteprobs.byte_lm import ByteLM


def world(ours, alphabet, max_chars: int, eot: int = 1):
  """A token model defined from a random distribution over every text of up to max_chars
  characters of alphabet, for the tokenizer `ours` (a `BPE`): P(next token | tokens) is the
  mass of the texts whose canonical tokenization (then eot) continues that way. So the model
  puts mass on canonical sequences only, and the exact answer for a prefix is the mass of the
  texts that start with it. Returns (the ByteLM, {text bytes: probability}). The alphabet's
  characters may be bytes (any, UTF-8 or not) rather than str."""
  rng = np.random.default_rng(0)
  alphabet = [c if isinstance(c, bytes) else c.encode() for c in alphabet]
  texts = [b""] + [b"".join(c) for n in range(1, max_chars + 1)
                   for c in itertools.product(alphabet, repeat=n)]
  weights = rng.random(len(texts)) ** 3
  weights /= weights.sum()
  mass, children = {}, {}
  for text, w in zip(texts, weights):
    seq = tuple(ours.encode(text)) + (eot,)
    for k in range(len(seq) + 1):
      mass[seq[:k]] = mass.get(seq[:k], 0.0) + w
      if k:
        children.setdefault(seq[:k - 1], set()).add(seq[k - 1])
  size = len(ours.token_bytes)

  def token_lm(prefixes):
    out = np.full((len(prefixes), size), -np.inf)
    for row, p in zip(out, prefixes):
      for v in children.get(p, ()):
        row[v] = math.log(mass[p + (v,)] / mass[p])
    return out

  truth = dict(zip(texts, weights))
  return ByteLM(token_lm, ours, eot), truth


def assert_bulk_is_brute_force(lm, truth, count: int = 6, seed: int = 0):
  """Every row of `next_byte_logprobs_along` over count texts of the world (the likeliest
  half, the rest at random), normalised and not, against the brute force: the next byte b
  after x has mass(x b...) / mass(x...), the end P(x) / mass(x...). (The world's model puts
  no mass outside canonical sequences, so both ways agree.)"""
  mass = {}
  for text, w in truth.items():
    for k in range(len(text) + 1):
      mass[text[:k]] = mass.get(text[:k], 0.0) + w
  likeliest = sorted(truth, key=truth.get)[-(count // 2):]
  rest = sorted(set(truth) - set(likeliest))
  rng = np.random.default_rng(seed)
  texts = likeliest + [rest[i] for i in rng.choice(len(rest), count - len(likeliest), False)]
  for normalize in (True, False):
    rows = lm.next_byte_logprobs_along(texts, normalize=normalize)
    for text, got in zip(texts, rows):
      for k in range(len(text) + 1):
        x = text[:k]
        want = [mass.get(x + bytes([b]), 0.0) for b in range(256)] + [truth.get(x, 0.0)]
        np.testing.assert_allclose(np.exp(got[k]), np.asarray(want) / mass[x], rtol=0,
                                   atol=1e-9, err_msg=f"{x!r} in {text!r}, {normalize=}")
