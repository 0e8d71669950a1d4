"""Word-pair context for the typo corrector: how likely a word is between the words around it.

A real-word error ("form" for "from", "there" for "their") is a listed word, so a word list
alone cannot see it; the words around it can. `Bigrams` scores a candidate c between the words
p and n as a bigram model does,

    log P(c | p) + log P(n | c),    P(w | p) = (1 - weight) * pair(p, w) / pair(p, *) + weight * P(w)

with pair counts from a table of word pairs and P(w) the word list's frequency (so a pair the
table lacks still has the word's own probability). English pairs come with symspellpy, a
dependency: its frequency_bigramdictionary_en_243_342.txt (242,342 pairs of lower-case words
with their counts in Google Books Ngrams; symspellpy is MIT-licensed), read where the package is
installed, not shipped by bytelm. For other languages there is no such table: the corrector
then goes on word frequencies alone.
"""

from __future__ import annotations

import collections
import math
import pathlib

UNKNOWN_LOGP = -24.0  # a word neither the pairs nor the list know


class Bigrams:
  """Pair counts {(p, w): count} and word counts {w: count}; see the module docstring."""

  def __init__(self, pairs: dict[tuple[str, str], int], words: dict[str, int],
               weight: float = 0.2):
    self.pairs = pairs
    self.left = collections.Counter()  # pair(p, *)
    for (p, _), count in pairs.items():
      self.left[p] += count
    self.words = words
    self.total = float(sum(words.values()))
    self.weight = weight

  @classmethod
  def english(cls, words: dict[str, int]) -> "Bigrams | None":
    """The pairs symspellpy ships for English, with words' frequencies from `words`; None
    where the installed symspellpy has no such file."""
    import symspellpy
    path = pathlib.Path(symspellpy.__file__).parent / "frequency_bigramdictionary_en_243_342.txt"
    if not path.is_file():
      return None
    pairs = {}
    with open(path, encoding="utf-8") as f:
      for line in f:
        first, second, count = line.split()
        pairs[first, second] = int(count)
    return cls(pairs, words)

  def logp(self, word: str, before: str | None) -> float:
    """log P(word | before) (lower case; before None: at a sentence's or clause's start, or
    after a word the table does not know: the word's own probability)."""
    unigram = self.words.get(word, 0) / self.total
    left = self.left.get(before) if before is not None else None
    if not left:
      return math.log(unigram) if unigram else UNKNOWN_LOGP
    p = (1 - self.weight) * self.pairs.get((before, word), 0) / left + self.weight * unigram
    return math.log(p) if p else UNKNOWN_LOGP

  def around(self, before: str | None, word: str, after: str | None) -> float:
    """log P(word | before) + log P(after | word): what word adds to a bigram model's score of
    the line (after None: nothing follows it within the clause)."""
    score = self.logp(word, before)
    if after is not None:
      score += self.logp(after, word)
    return score
