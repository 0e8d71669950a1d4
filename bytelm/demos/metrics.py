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

Typo correction is also measured as word edits (`EditCounts`, `edit_counts`): corrected-word
accuracy, the false-change rate on clean words, sentence exact match and F0.5, with words
compared without the punctuation around them.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable

from bytelm.data import noise
from bytelm.demos.typos import recase


def _field_sum(a, b):
  """A count dataclass whose every field is a's plus b's (what `+` does to counts)."""
  return type(a)(*(x + y for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b))))


@dataclasses.dataclass
class WordCounts:
  """Correct / total alpha, diacritic and unseen words; `+` adds counts of several sentences."""
  alpha: int = 0
  alpha_total: int = 0
  diacritic: int = 0
  diacritic_total: int = 0
  unseen: int = 0
  unseen_total: int = 0

  __add__ = _field_sum

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
  return [int(x == y) for x, y in zip(a, align_words(a, b))]


def align_words(a: list[str], b: list[str]) -> list[str | None]:
  """For each word of a, the word of b a minimal word-level edit script (one word = one symbol)
  keeps or puts in its place, or None where the script deletes it; matches preferred."""
  n, m = len(a), len(b)
  cost = [[0] * (m + 1) for _ in range(n + 1)]
  for i in range(n + 1):
    for j in range(m + 1):
      if i == 0 or j == 0:
        cost[i][j] = i + j
      else:
        cost[i][j] = min(cost[i - 1][j] + 1, cost[i][j - 1] + 1,
                         cost[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
  out, i, j = [None] * n, n, m
  while i and j:  # back from the end, preferring a match where it is optimal
    if a[i - 1] == b[j - 1] and cost[i][j] == cost[i - 1][j - 1]:
      out[i - 1] = b[j - 1]
      i, j = i - 1, j - 1
    elif cost[i][j] == cost[i - 1][j - 1] + 1:
      out[i - 1] = b[j - 1]
      i, j = i - 1, j - 1
    elif cost[i][j] == cost[i - 1][j] + 1:
      i -= 1
    else:
      j -= 1
  return out


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

  def __init__(self, texts: Iterable[str] = ()):
    # {word without diacritics: {form: count}}; plain dicts, not Counters: a lexicon of a word
    # list and a training text holds a few hundred thousand of them, built at every start.
    self.counts: dict[str, dict[str, float]] = {}
    self._stripped: dict[str, str] = {}  # each distinct word stripped once
    seen = collections.Counter(word for text in texts for word in _WORD.findall(text))
    for word, n in seen.items():  # each distinct word added once
      self._add(word, n)

  @classmethod
  def from_counts(cls, words: dict[str, int]) -> "Lexicon":
    """The lexicon of a word list with counts ({word: count}, e.g. wordfreq's)."""
    lexicon = cls()
    for word, count in words.items():
      if _WORD.fullmatch(word):
        lexicon._add(word, count)
    return lexicon

  @classmethod
  def from_table(cls, counts: dict[str, dict[str, float]]) -> "Lexicon":
    """The lexicon whose `counts` are these ({word without diacritics: {form: count}})."""
    lexicon = cls()
    lexicon.counts = counts
    return lexicon

  @classmethod
  def pooled(cls, lexicons: Iterable["Lexicon"]) -> "Lexicon":
    """One lexicon of several, each weighing the same: a form's count is the sum of its shares
    of each lexicon's total count (times 1e9), so a small lexicon of one domain (a model's
    training text) and a large one of general usage (a word list) both have their say."""
    lexicon = cls()
    for other in lexicons:
      total = sum(n for forms in other.counts.values() for n in forms.values())
      if not total:  # an empty lexicon has nothing to say
        continue
      scale = 1e9 / total
      for plain, forms in other.counts.items():
        pooled = lexicon.counts.setdefault(plain, {})
        for form, n in forms.items():
          pooled[form] = pooled.get(form, 0) + n * scale
    return lexicon

  def _add(self, word: str, n: float) -> None:
    for form in (word, word.lower()) if word.lower() != word else (word,):
      # A capitalised word is also a form of the lower-case word.
      forms = self.counts.setdefault(self._strip(form), {})
      forms[form] = forms.get(form, 0) + n

  def _strip(self, word: str) -> str:
    plain = self._stripped.get(word)
    if plain is None:
      plain = self._stripped[word] = noise.strip_diacritics(word)
    return plain

  def candidates(self, word: str) -> collections.Counter:
    """The forms of word seen in training, with their counts: its own if word was seen as
    written (without diacritics), else its lower case's with word's capitals put back; empty
    for a word never seen. Ordered as first seen."""
    if word in self.counts:
      return collections.Counter(self.counts[word])
    lower = self.counts.get(word.lower())
    if lower is None:
      return collections.Counter()
    return collections.Counter({recase(form, word): n for form, n in lower.items()})

  def restore_word(self, word: str) -> str:
    """The most frequent form (ties: the first seen); an unknown word stays."""
    forms = self.candidates(word)
    return forms.most_common(1)[0][0] if forms else word

  def __call__(self, text: str) -> str:
    """text with every word restored."""
    return _WORD.sub(lambda m: self.restore_word(m.group(0)), text)


# -- typo correction: word edits -------------------------------------------------------------

_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


def bare_words(text: str) -> list[str]:
  """The space-separated words of text with the punctuation around them removed (case kept):
  what typo metrics compare, so that a spell checker that drops punctuation is judged on its
  spelling alone."""
  return [_EDGE_PUNCTUATION.sub("", w) for w in text.split()]


@dataclasses.dataclass
class EditCounts:
  """Word edits of a typo corrector against the noise it was given; `+` adds sentences.

  For each gold word and the noisy word typed in its place (the noise keeps the word count):
  an *error* is a noisy word that differs from gold, and it is *corrected* where the output's
  word aligned to it equals gold; a *clean* word equals gold, and it is *falsely changed* where
  the output's differs. *Proposed* edits are the output words that differ from the noisy ones.
  """
  errors: int = 0
  corrected: int = 0
  clean: int = 0
  false_changes: int = 0
  proposed: int = 0
  sentences: int = 0
  exact: int = 0

  __add__ = _field_sum

  @property
  def accuracy(self) -> float:
    """Corrected-word accuracy: the share of errors put right."""
    return self.corrected / self.errors if self.errors else float("nan")

  @property
  def false_change_rate(self) -> float:
    """The share of clean words changed."""
    return self.false_changes / self.clean if self.clean else float("nan")

  @property
  def exact_match(self) -> float:
    """The share of sentences whose words all come out right."""
    return self.exact / self.sentences if self.sentences else float("nan")

  def f_beta(self, beta: float = 0.5) -> float:
    """F-beta of the word edits (precision: corrected / proposed; recall: corrected /
    errors); 0.5 weighs precision higher, as grammatical error correction does."""
    precision = self.corrected / self.proposed if self.proposed else 1.0
    recall = self.accuracy if self.errors else 1.0
    if precision + recall == 0:
      return 0.0
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


def edit_counts(gold: str, noisy: str, output: str) -> EditCounts:
  """EditCounts of one sentence (see EditCounts); output's words are aligned to gold's by
  edit distance where their number differs."""
  gold_words, noisy_words = bare_words(gold), bare_words(noisy)
  if len(gold_words) != len(noisy_words):
    raise ValueError(f"the noisy sentence has {len(noisy_words)} words where the gold one has "
                     f"{len(gold_words)}: word-preserving noise is needed ({noisy!r})")
  output_words = bare_words(output)
  if len(output_words) != len(gold_words):
    output_words = align_words(gold_words, output_words)
  c = EditCounts(sentences=1, exact=int(output_words == gold_words))
  for g, n, o in zip(gold_words, noisy_words, output_words):
    if n != g:
      c.errors += 1
      c.corrected += o == g
    else:
      c.clean += 1
      c.false_changes += o != g
    c.proposed += o != n
  return c
