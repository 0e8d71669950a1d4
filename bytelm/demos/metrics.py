"""Word accuracies of a text corrector, as Stankevičius et al. (2022) define them, and the
dictionary baseline they beat.

Words are the space-separated pieces of a sentence, compared position by position with exact,
case-sensitive matches. Only gold words with at least one alphabetic character count ("alpha
words"). If the prediction has a different number of words than the gold sentence, every alpha
word of that sentence counts as wrong. Of the alpha words:
- diacritic words carry at least one diacritic (`noise.strip_diacritics` changes them);
- unseen words do not occur in the training text.
For typo correction, which may merge, split, add or drop words, `aligned_word_counts` aligns the
words by edit distance first (the paper's rule for typos) instead of failing the sentence.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable

from bytelm.data import noise


@dataclasses.dataclass
class WordCounts:
  """Correct / total alpha, diacritic and unseen words; `+` adds counts of several sentences."""
  alpha: int = 0
  alpha_total: int = 0
  diacritic: int = 0
  diacritic_total: int = 0
  unseen: int = 0
  unseen_total: int = 0

  def __add__(self, other: "WordCounts") -> "WordCounts":
    return WordCounts(*(a + b for a, b in zip(dataclasses.astuple(self),
                                                dataclasses.astuple(other))))

  def accuracy(self, kind: str = "alpha") -> float:
    """Fraction correct of one kind ("alpha", "diacritic", "unseen"); nan with no such word."""
    total = getattr(self, f"{kind}_total")
    return getattr(self, kind) / total if total else float("nan")


def words_of(text: str) -> list[str]:
  return text.split()


def word_counts(gold: str, predicted: str, seen: set[str] | None = None) -> WordCounts:
  """WordCounts of one sentence; `seen` is the training text's words (None: no unseen count)."""
  gold_words, predicted_words = words_of(gold), words_of(predicted)
  aligned = len(gold_words) == len(predicted_words)
  right = ([int(p == g) for g, p in zip(gold_words, predicted_words)] if aligned
           else [0] * len(gold_words))
  return _count(gold_words, right, seen)


def aligned_word_counts(gold: str, predicted: str, seen: set[str] | None = None) -> WordCounts:
  """WordCounts for typo correction, where a fix may add or drop a word: the predicted words
  are aligned to the gold words by edit distance over words (one word = one symbol), and a gold
  word is right where it is aligned to an equal word."""
  gold_words = words_of(gold)
  return _count(gold_words, _matched(gold_words, words_of(predicted)), seen)


def _count(gold_words: list[str], right: list[int], seen: set[str] | None) -> WordCounts:
  """Tally alpha / diacritic / unseen words given which gold words were predicted right."""
  c = WordCounts()
  for word, ok in zip(gold_words, right, strict=True):
    if not any(ch.isalpha() for ch in word):
      continue
    c.alpha += ok
    c.alpha_total += 1
    if noise.strip_diacritics(word) != word:
      c.diacritic += ok
      c.diacritic_total += 1
    if seen is not None and word not in seen:
      c.unseen += ok
      c.unseen_total += 1
  return c


def _matched(a: list[str], b: list[str]) -> list[int]:
  """1 for each word of a that a minimal word-level edit script from a to b keeps unchanged."""
  n, m = len(a), len(b)
  cost = [[0] * (m + 1) for _ in range(n + 1)]
  for i in range(n + 1):
    for j in range(m + 1):
      if i == 0 or j == 0:
        cost[i][j] = i + j
      else:
        cost[i][j] = min(cost[i - 1][j] + 1, cost[i][j - 1] + 1,
                         cost[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
  kept, i, j = [0] * n, n, m
  while i and j:  # back from the end, preferring a match where it is optimal
    if a[i - 1] == b[j - 1] and cost[i][j] == cost[i - 1][j - 1]:
      kept[i - 1] = 1
      i, j = i - 1, j - 1
    elif cost[i][j] == cost[i - 1][j - 1] + 1:
      i, j = i - 1, j - 1
    elif cost[i][j] == cost[i - 1][j] + 1:
      i -= 1
    else:
      j -= 1
  return kept


def corpus_counts(golds: Iterable[str], predictions: Iterable[str],
                  seen: set[str] | None = None, aligned: bool = False) -> WordCounts:
  """WordCounts summed over sentence pairs; aligned=True counts with `aligned_word_counts`
  (typos), else position by position (`word_counts`, diacritics)."""
  count = aligned_word_counts if aligned else word_counts
  total = WordCounts()
  for gold, predicted in zip(golds, predictions, strict=True):
    total = total + count(gold, predicted, seen)
  return total


def vocabulary(texts: Iterable[str]) -> set[str]:
  """The space-separated words of the training texts (what "unseen" is measured against)."""
  return {w for text in texts for w in words_of(text)}


_WORD = re.compile(r"\w+")


class Lexicon:
  """The dictionary baseline: each word restored to its most frequent diacritised form in the
  training text. Words are runs of letters and digits (punctuation around them is kept), looked
  up as written, then in lower case with the capitalisation put back; unknown words stay."""

  def __init__(self, texts: Iterable[str]):
    self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    stripped: dict[str, str] = {}  # each distinct word stripped once, not at every occurrence

    def strip(word: str) -> str:
      plain = stripped.get(word)
      if plain is None:
        plain = stripped[word] = noise.strip_diacritics(word)
      return plain

    for text in texts:
      for word in _WORD.findall(text):
        self.counts[strip(word)][word] += 1
        if word.lower() != word:  # also a form of the lower-case word
          self.counts[strip(word.lower())][word.lower()] += 1
    self.counts = dict(self.counts)

  def candidates(self, word: str) -> collections.Counter:
    """The forms of word seen in training, with their counts: its own if word was seen as
    written (without diacritics), else its lower case's with word's capitals put back; empty
    for a word never seen. Ordered as first seen."""
    if word in self.counts:
      return self.counts[word]
    lower = self.counts.get(word.lower())
    if lower is None:
      return collections.Counter()
    return collections.Counter({_recase(form, word): n for form, n in lower.items()})

  def restore_word(self, word: str) -> str:
    """The most frequent form (ties: the first seen); an unknown word stays."""
    forms = self.candidates(word)
    return forms.most_common(1)[0][0] if forms else word

  def __call__(self, text: str) -> str:
    """text with every word restored."""
    return _WORD.sub(lambda m: self.restore_word(m.group(0)), text)


def _recase(lower: str, like: str) -> str:
  """lower with the capitals of `like`: all capitals, or a capital first letter."""
  if like.isupper() and len(like) > 1:
    return lower.upper()
  return lower[:1].upper() + lower[1:] if like[:1].isupper() else lower
