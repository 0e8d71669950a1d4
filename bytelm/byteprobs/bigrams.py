"""Which tokens a byte-level BPE can put right after a given token, for the whole vocabulary at
once: the bigram test that makes exact byte probabilities cheap (`byte_lm.ByteLM`).

Within a pre-tokenization piece, a token sequence is BPE's own tokenization of the bytes it
spells exactly when every adjacent pair is (Berglund and van der Merwe 2023; Vieira et al.
2025), for merges as training makes them: in the order they were learned, each token made by
one merge (`Bigrams.exact` checks both). Why: BPE merges the lowest-ranked adjacent pair first
(the leftmost of equal ones), so
until a merge joins bytes of two neighbouring tokens, each token's bytes evolve as they would
alone; the first merge across a junction is one that the two tokens alone would make too.

And a pair (a, v) is BPE's tokenization of a's bytes then v's, a token each, exactly when
(1) each token is its own bytes' tokenization (`alone`), and (2) no merge joins the two sides
before they are done. While a's bytes are merged, its last token runs up the right edge of a's
merge tree (its right spine): the last byte, then the token that byte was merged into, ...,
up to a. Each element x lives from the rank of the merge that made it (bytes: from the start)
to the rank of the merge that takes it into its parent. v's first token likewise runs up v's
left spine. A merge (x, y) of rank r joins the sides if x is alive on a's spine and y on v's at
rank r: made before r, not yet merged into its parent. At equal rank, the leftmost merge goes
first: a merge (x, y) that has the rank of the one taking y into its parent (the same pair,
y y) goes before it, while one with the rank of the merge taking x into its parent comes after
it. So the test per pair is a few spine lookups, and for one a against every v a few array
operations over an index from each token to the tokens whose left spine holds it.
`tests/test_byteprobs.py` checks it against BPE on the pairs' bytes.

Axis legend: V vocabulary (ids).
"""

from __future__ import annotations

import math

import numpy as np

CACHED = 256  # tokens whose `after` row is kept (V bools each)


class Bigrams:
  """alone[v]: the BPE tokenization of v's bytes is v itself; after(a)[v]: the tokenization of
  a's bytes followed by v's is [a, v] (as one pre-tokenization piece). Both hold where
  `exact`: the merges come in the order they were learned, each token made by one of them
  (as BPE training makes them); callers take another way where not."""

  def __init__(self, token_bytes, ids: dict[bytes, int], ranks: dict[tuple[bytes, bytes], int],
               merge, base=lambda x: len(x) == 1):
    """token_bytes[i]: the bytes of id i (b"" for specials); ids: bytes -> id; ranks: merge
    pair -> rank; merge(piece, ranks) -> (BPE's tokens of the piece, the last pair it merged)
    (`tokenization.merge`); base(x): whether x is a symbol merges start from (a byte, or a
    character where merges start from characters)."""
    size = len(token_bytes)
    self.alone = np.zeros(size, bool)
    rank = np.full(size, -1, np.int64)  # the rank of the merge that makes the token; bytes: -1
    left = np.full(size, -1, np.int64)  # the two tokens that merge makes it of
    right = np.full(size, -1, np.int64)
    for i, t in enumerate(token_bytes):
      if not t:
        continue
      parts, last = merge(t, ranks)
      if parts != (t,):
        continue  # a token BPE never makes from its own bytes: it is in no valid pair
      self.alone[i] = True
      if last is not None:
        rank[i], left[i], right[i] = ranks[last], ids[last[0]], ids[last[1]]
    self._rank, self._left, self._right = rank, left, right
    # The spines stand for BPE's run only where the merges are in the order they were learned
    # (each made of tokens that earlier merges or single bytes make) and each token is made
    # by one merge: a hand-made or reordered list may break either.
    made = {}
    for (x, y), r in sorted(ranks.items(), key=lambda item: item[1]):
      made_x, made_y = made.get(x, -1 if base(x) else math.inf), \
          made.get(y, -1 if base(y) else math.inf)
      if x + y in made or not (made_x < r and made_y < r):
        self.exact = False
        break
      made[x + y] = r
    else:
      self.exact = True
    # Merges by their left token: x -> [(y, rank)].
    self._merges_of: dict[int, list[tuple[int, int]]] = {}
    for (x, y), r in ranks.items():
      if x in ids and y in ids:
        self._merges_of.setdefault(ids[x], []).append((ids[y], r))
    # y -> (tokens v whose left spine holds y, when y appears there, when it is merged on).
    spine: dict[int, list[tuple[int, int, float]]] = {}
    for v in np.flatnonzero(self.alone):
      y, hi = int(v), math.inf
      while y >= 0:
        spine.setdefault(y, []).append((int(v), int(rank[y]), hi))
        y, hi = int(left[y]), float(rank[y])
    self._left_spines = {y: (np.asarray([e[0] for e in es], np.int64),
                             np.asarray([e[1] for e in es], np.float64),
                             np.asarray([e[2] for e in es], np.float64))
                         for y, es in spine.items()}
    self._after: dict[int, np.ndarray] = {}

  def right_spine(self, a: int) -> list[tuple[int, int, float]]:
    """(x, made at, merged on at) up a's right edge: a itself (never merged on), ..., its
    last byte."""
    out, x, hi = [], a, math.inf
    while x >= 0:
      out.append((x, int(self._rank[x]), hi))
      x, hi = int(self._right[x]), float(self._rank[x])
    return out

  def after(self, a: int) -> np.ndarray:
    """bool [V]: whether BPE tokenizes a's bytes then v's as [a, v]. Read-only; the last
    CACHED tokens' answers are kept."""
    a = int(a)
    if a in self._after:
      return self._after[a]
    ok = self.alone.copy()
    if not self.alone[a]:
      ok[:] = False
    else:
      for x, lo_x, hi_x in self.right_spine(a):
        for y, r in self._merges_of.get(x, ()):
          if not lo_x < r < hi_x or y not in self._left_spines:
            continue
          vs, lo_y, hi_y = self._left_spines[y]
          ok[vs[(lo_y < r) & (r <= hi_y)]] = False
    ok.setflags(write=False)
    if len(self._after) >= CACHED:
      del self._after[next(iter(self._after))]  # the oldest
    self._after[a] = ok
    return ok
