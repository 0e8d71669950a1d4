"""Word accuracies of a text corrector, as Stankevičius et al. (2022) define them, and the
dictionary baseline they beat.

Words are the space-separated pieces of a sentence, compared position by position with exact,
case-sensitive matches. Only gold words with at least one alphabetic character count ("alpha
words"). If the prediction has a different number of words than the gold sentence, every alpha
word of that sentence counts as wrong. Of the alpha words:
- diacritic words carry at least one diacritic (`noise.strip_diacritics` changes them);
- unseen words do not occur in the training text.
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
  c = WordCounts()
  for i, word in enumerate(gold_words):
    if not any(ch.isalpha() for ch in word):
      continue
    right = int(aligned and predicted_words[i] == word)
    c.alpha += right
    c.alpha_total += 1
    if noise.strip_diacritics(word) != word:
      c.diacritic += right
      c.diacritic_total += 1
    if seen is not None and word not in seen:
      c.unseen += right
      c.unseen_total += 1
  return c


def corpus_counts(golds: Iterable[str], predictions: Iterable[str],
                  seen: set[str] | None = None) -> WordCounts:
  """WordCounts summed over sentence pairs."""
  total = WordCounts()
  for gold, predicted in zip(golds, predictions, strict=True):
    total = total + word_counts(gold, predicted, seen)
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
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for text in texts:
      for word in _WORD.findall(text):
        counts[noise.strip_diacritics(word)][word] += 1
        counts[noise.strip_diacritics(word.lower())][word.lower()] += 1
    # Most frequent form; ties go to the form seen first (Counter keeps insertion order).
    self.forms = {key: c.most_common(1)[0][0] for key, c in counts.items()}

  def restore_word(self, word: str) -> str:
    if word in self.forms:
      return self.forms[word]
    lower = self.forms.get(word.lower())
    if lower is None:
      return word
    if word.isupper() and len(word) > 1:
      return lower.upper()
    return lower[:1].upper() + lower[1:] if word[:1].isupper() else lower

  def __call__(self, text: str) -> str:
    """text with every word restored."""
    return _WORD.sub(lambda m: self.restore_word(m.group(0)), text)
