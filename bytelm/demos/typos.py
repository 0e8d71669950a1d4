"""Typo correction by a noisy channel: candidate words from a word list, weighed by how likely
the typo model makes the typed word from each, and by context.

For a typed word t, the corrector picks the candidate c that maximises

    log P(c in its line)  +  log P(t | c)
    context                  channel

- Candidates: the words within edit distance 2 of t among `words` (SymSpell's symmetric
  deletes, `symspellpy`), or within 1 where t is itself one of them (a real-word error: "form"
  for "from"), at most `max_candidates`, and t itself. `rare_words` (the shipped en, es and fr
  lists' words beyond their 60,000 commonest) are never proposed; a typed one is left alone as
  a rare word typed right (*Cochez*, *descansara*), unless a candidate outnumbers it
  `misspelling_ratio` times: wordfreq's tail holds common misspellings too (*tommorow*, 204
  per billion words, against *tomorrow*'s 105,000). The ratio was chosen on the dev text:
  false changes 0.0131 / 0.0122 / 0.0094 at 100 / 300 / 1000, real misspellings corrected
  0.952 / 0.951 / 0.909 (0.0165 and 0.951 with no rare words).
- Channel: `channel_cost`, the typo model of `bytelm.data.noise` read backwards: each edit costs
  -log of how often the model makes it (a neighbouring key typed instead: 5.8 nats; a letter
  left out: 4.4; a transposition: 4.7; ...), an accent left out costs little (people do it all
  the time), and each letter typed right -log(1 - rate).
- Context: with a byte LM (any decoder `bytelm.load` gives), the bits of the whole line with c
  in place, plus a light word-frequency prior; else, with word pairs (`bytelm.demos.bigrams`,
  English), log P(c | the word before) + log P(the word after | c); else the word's frequency.

Policy, so that it leaves alone what it does not know:
- only words are touched (letters, with an apostrophe or hyphen inside); digits, words holding
  digits, e-mail addresses and URLs, whitespace, punctuation and every other byte of the line
  are passed through as they are;
- a word the list knows is changed only where a neighbour beats it by `real_word_margin` nats
  with context (a byte LM or word pairs), or, without, by `known_margin` nats on frequency and
  channel alone (the lists hold common misspellings too: "recieve" 562 times per billion words,
  "receive" 70,800);
- an unknown word that is capitalised inside a sentence (a name, most likely) is changed only
  where its best candidate wins by `name_margin` nats; an acronym or brand, listed or not
  (OLE, CR: capitals, 4 letters at most, in a line not all in capitals; dBase, iPhone: capitals
  after a small letter), never is;
- the case of the typed word is put back on the candidate (all capitals, or a capital first).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import math
import re
import unicodedata
from collections.abc import Sequence

from bytelm.data import noise
from bytelm.demos import wordlist
from bytelm.text.diacritics import strip_diacritics

WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_JOINER = re.compile(r"['’-]")


# -- the channel: how likely the typo model turns the intended word into the typed one -----------

@functools.cache
def _costs(layout: str, rate: float) -> dict[str, float]:
  """-log probability of each kind of edit under the typo model (bytelm.data.noise)."""
  w = noise.KIND_WEIGHTS
  return {
      "match": -math.log(1 - rate),
      "near": -math.log(rate * w["substitute"] / 6),  # ~6 neighbouring keys
      "accent": 2.0,  # an accent left out or put on: common, and outside the typo model
      "far": -math.log(rate * w["substitute"] / 60),  # another letter (a phonetic slip)
      "delete": -math.log(rate * w["delete"]),
      "double": -math.log(rate * w["double"]),
      # one of a doubled letter left out: an undoubling, or either letter deleted
      "undouble": -math.log(rate * (w["undouble"] + 2 * w["delete"])),
      "insert": -math.log(rate * (w["insert_before"] + w["insert_after"]) / 6),
      "transpose": -math.log(rate * w["transpose"]),
  }


def channel_cost(intended: str, typed: str, layout: str = "qwerty",
                 rate: float = noise.DEFAULT_TYPO_RATE) -> float:
  """-log P(typed | intended) under the typo model, by the cheapest alignment (an optimal string
  alignment distance with each edit weighted by how often the model makes it). Lower case in."""
  cost, near = _costs(layout, rate), noise.neighbours(layout)

  def sub(a: str, b: str) -> float:
    if a == b:
      return cost["match"]
    if strip_diacritics(a) == strip_diacritics(b):
      return cost["accent"]
    key = strip_diacritics(a)
    return cost["near"] if key in near and strip_diacritics(b) in near[key] else cost["far"]

  def inserted(j: int) -> float:  # typed[j] has no intended letter
    if j > 0 and typed[j] == typed[j - 1]:
      return cost["double"]
    return cost["insert"]

  n, m = len(intended), len(typed)
  d = [[0.0] * (m + 1) for _ in range(n + 1)]
  for i in range(1, n + 1):
    d[i][0] = d[i - 1][0] + cost["delete"]
  for j in range(1, m + 1):
    d[0][j] = d[0][j - 1] + inserted(j - 1)
  for i in range(1, n + 1):
    for j in range(1, m + 1):
      left_out = cost["undouble"] if i > 1 and intended[i - 1] == intended[i - 2] else cost["delete"]
      best = min(d[i - 1][j] + left_out, d[i][j - 1] + inserted(j - 1),
                 d[i - 1][j - 1] + sub(intended[i - 1], typed[j - 1]))
      if (i > 1 and j > 1 and intended[i - 1] == typed[j - 2] and intended[i - 2] == typed[j - 1]
          and intended[i - 1] != intended[i - 2]):
        best = min(best, d[i - 2][j - 2] + cost["transpose"])
      d[i][j] = best
  return d[n][m]


# -- the corrector ------------------------------------------------------------------------------

@dataclasses.dataclass
class _Slot:
  """One word of a line and what it may become."""
  start: int
  end: int
  typed: str
  options: dict[str, float]  # candidate (lower case) -> prior + channel score, nats
  margin: float  # what a candidate other than the typed word must win by


class TypoCorrector:
  """Corrects typos in lines of text (see the module docstring).

  words: {word: count} (lower case), e.g. `bytelm.demos.wordlist.load("en")`. lm: a decoder
  `LanguageModel` scoring lines for context, or None. bigrams: a `bigrams.Bigrams` for context
  where there is no lm, or None (word frequencies only). The margins and the unknown-word
  prior were chosen on eval/correction.py's dev text (`--dev`), never its held-out sets.
  rare_words: {word: count} of rarer words, known but never proposed (see the module
  docstring)."""

  def __init__(self, words: dict[str, int], lm=None, *, bigrams=None, layout: str = "qwerty",
               rare_words: dict[str, int] | None = None, misspelling_ratio: float = 300.0,
               max_candidates: int = 6, real_word_margin: float = 3.0,
               known_margin: float = 1.0, name_margin: float = 8.0,
               unknown_logp: float = -24.0, prior_weight: float = 0.3, lm_batch: int = 32):
    from symspellpy import SymSpell  # the candidates: symmetric deletes over the list
    self.words, self.lm, self.bigrams, self.layout = words, lm, bigrams, layout
    self.total = float(sum(words.values()))
    self.max_candidates = max_candidates
    self.real_word_margin, self.name_margin = real_word_margin, name_margin
    self.known_margin = known_margin
    self.rare_words, self.misspelling_ratio = rare_words or {}, misspelling_ratio
    self.unknown_logp, self.prior_weight, self.lm_batch = unknown_logp, prior_weight, lm_batch
    self._cache: dict[str, dict[str, float]] = {}  # _options of the words seen
    # A prefix of 4 letters finds the same candidates as SymSpell's default 7 (they are checked
    # on the whole word), with fewer deletes a word: the index of 60,000 words builds in 0.3 s
    # instead of 1.9 (at every start), a lookup takes 5 ms instead of 1 (a few per line).
    self._sym = SymSpell(max_dictionary_edit_distance=2, prefix_length=4)
    for word, count in words.items():
      self._sym.create_dictionary_entry(word, count)

  def __call__(self, lines: Sequence[str]) -> list[str]:
    return [self.correct(line) for line in lines]

  def log_prior(self, word: str) -> float:
    """log P(word) from the list's counts (lower case); unknown_logp for a word it lacks."""
    count = self.words.get(word)
    return math.log(count / self.total) if count else self.unknown_logp

  def candidates(self, typed: str) -> list[str]:
    """The list's words the typed word may stand for (lower case, commonest first; the typed
    word itself not included)."""
    from symspellpy import Verbosity
    lower = typed.lower()
    distance = 1 if lower in self.words else 2
    found = self._sym.lookup(lower, Verbosity.ALL, max_edit_distance=distance)
    found = [s.term for s in sorted(found, key=lambda s: (s.distance, -s.count))
             if s.term != lower]
    return found[:self.max_candidates]

  def slots(self, line: str) -> list[_Slot]:
    """The line's words that may change, with their options scored without context."""
    protected = [m.span() for m in noise.PROTECTED.finditer(line)]  # in order, disjoint
    starts = [a for a, _ in protected]
    out = []
    shouted = not any(ch.islower() for ch in line)  # a line in capitals: its short words too
    for start, end in self._words(line):
      typed = line[start:end]
      k = bisect.bisect_right(starts, start) - 1  # the last protected span starting before
      if (len(typed) < 2 or (k >= 0 and protected[k][1] > start)
          or not all(_latin(ch) for ch in typed if ch.isalpha())):
        continue  # too short to tell, an address or a number, or another script
      lower = _plain_apostrophe(typed.lower())
      known = lower in self.words
      options = self._options(lower)
      if not options:
        continue
      if _acronym_or_brand(typed, shouted):
        continue  # OLE, dBase, iPhone: meant as typed, whether the list knows them or not
      if self._rare_typed_right(lower, options):
        continue  # Cochez, descansara: a rare word, not a common one misspelled
      # Capitalised inside a sentence and unknown: a name, most likely.
      name = typed[:1].isupper() and _inside_sentence(line, start)
      if known:  # a listed word: changed only on strong evidence
        margin = self.real_word_margin if self._has_context else self.known_margin
      else:
        margin = self.name_margin if name else 0.0
      out.append(_Slot(start, end, typed, options, margin))
    return out

  def _rare_typed_right(self, lower: str, options: dict[str, float]) -> bool:
    """Whether lower is one of the rare words and no candidate outnumbers it
    misspelling_ratio times."""
    count = self.rare_words.get(lower)
    return count is not None and all(self.words[c] < self.misspelling_ratio * count
                                     for c in options if c != lower)

  def _options(self, lower: str) -> dict[str, float]:
    """{candidate: log prior - channel cost} of a typed word (lower case), the word itself
    included; empty where the list offers nothing. Cached: text repeats its words."""
    options = self._cache.get(lower)
    if options is None:
      options = {c: self.log_prior(c) - channel_cost(c, lower, self.layout)
                 for c in self.candidates(lower)}
      if options:
        # The typed word as meant: a listed word typed right, or an unknown one (a name, a
        # rare word) that the list cannot speak for.
        options[lower] = self.log_prior(lower) - channel_cost(lower, lower, self.layout)
      if len(self._cache) >= 100_000:
        self._cache.clear()
      self._cache[lower] = options
    return options

  def _words(self, line: str):
    """(start, end) of each word of line: a WORD match the list knows, or else each of its
    pieces between apostrophes and hyphens (l'école, week-end, Dis-moi), as words of their own."""
    for m in WORD.finditer(line):
      if _plain_apostrophe(m.group(0).lower()) in self.words or not _JOINER.search(m.group(0)):
        yield m.span()
        continue
      for piece in re.finditer(r"[^'’-]+", m.group(0)):
        yield m.start() + piece.start(), m.start() + piece.end()

  def correct(self, line: str) -> str:
    """line with its typos corrected; every byte outside the changed words as it was."""
    slots = self.slots(line)
    if not slots:
      return line
    choice = [self._best(slot) for slot in slots]
    if self.lm is not None:
      choice = self._in_context(line, slots, choice)
    elif self.bigrams is not None:
      choice = self._between_neighbours(line, slots, choice)
    return _rebuild(line, slots, choice)

  @property
  def _has_context(self) -> bool:
    return self.lm is not None or self.bigrams is not None

  def _best(self, slot: _Slot, context: dict[str, float] | None = None,
            prior_weight: float = 0.0) -> str:
    """The option with the best score, if it beats the typed word by the slot's margin, else
    the typed word. context: each option's log-probability in the line (a byte LM's of the
    whole line, or the bigrams' around the word), in place of the word-list prior, which then
    weighs prior_weight."""
    lower = _plain_apostrophe(slot.typed.lower())
    if context is None:
      score = slot.options
    else:
      score = {c: prior_weight * self.log_prior(c) - channel_cost(c, lower, self.layout)
               + context[c] for c in slot.options}
    best = max(score, key=score.get)
    if best != lower and score[best] - score[lower] < slot.margin:
      return lower
    return best

  def _in_context(self, line: str, slots: list[_Slot], choice: list[str]) -> list[str]:
    """Each slot's choice re-scored with the LM: the line with every option in turn (the other
    slots at their current choice), by its bits; one pass left to right."""
    for k, slot in enumerate(slots):
      options = list(slot.options)
      variants = [_rebuild(line, slots, choice[:k] + [o] + choice[k + 1:]) for o in options]
      nats = self._line_nats(variants)
      choice[k] = self._best(slot, {o: -n for o, n in zip(options, nats)}, self.prior_weight)
    return choice

  def _between_neighbours(self, line: str, slots: list[_Slot], choice: list[str]) -> list[str]:
    """Each slot's choice re-scored by the bigrams with the words next to it (as chosen so
    far), left to right; a neighbour counts only where nothing but spaces lies between."""
    spans = list(self._words(line))
    words = [_plain_apostrophe(line[a:b].lower()) for a, b in spans]
    at = {a: j for j, (a, _) in enumerate(spans)}
    for slot, word in zip(slots, choice):
      words[at[slot.start]] = word

    def neighbour(j: int, i: int) -> str | None:  # word i, if only spaces part it from word j
      if not 0 <= i < len(spans):
        return None
      gap = line[spans[min(i, j)][1]:spans[max(i, j)][0]]
      return words[i] if gap and gap.isspace() else None

    for k, slot in enumerate(slots):
      j = at[slot.start]
      before, after = neighbour(j, j - 1), neighbour(j, j + 1)
      choice[k] = words[j] = self._best(
          slot, {o: self.bigrams.around(before, o, after) for o in slot.options})
    return choice

  def _line_nats(self, texts: list[str]) -> list[float]:
    """-log P(text) of each text under the LM (every byte of it), nats."""
    bits_per_byte = self.lm.score(texts, batch_size=self.lm_batch)
    return [b * len(t.encode("utf-8")) * math.log(2) for b, t in zip(bits_per_byte, texts)]


def _inside_sentence(line: str, i: int) -> bool:
  """Whether line[i] follows something other than a sentence end (the line's start, or . ! ?
  … and spaces)."""
  j = i - 1
  while j >= 0 and line[j].isspace():
    j -= 1
  return j >= 0 and line[j] not in ".!?…"


def _acronym_or_brand(word: str, shouted: bool = False) -> bool:
  """All capitals and at most 4 letters (OLE, UNO, CR) in a line that is not all capitals, or
  capitals after a small letter (dBase, iPhone). A longer word in capitals, or any word of a
  line in capitals, is shouted, and may hold a typo (TOMMOROW, TEH)."""
  if word.isupper():
    return len(word) <= 4 and not shouted
  return any(ch.isupper() for ch in word[1:])


def _plain_apostrophe(word: str) -> str:
  """word with the typographic apostrophe (’) as the lists write it ('): wasn’t is wasn't."""
  return word.replace("’", "'")


@functools.cache
def _latin(ch: str) -> bool:
  return unicodedata.name(ch, "").startswith("LATIN")


def _rebuild(line: str, slots: list[_Slot], choice: list[str]) -> str:
  """line with each slot's word replaced by its choice (in the typed word's case)."""
  out, last = [], 0
  for slot, word in zip(slots, choice):
    out.append(line[last:slot.start])
    out.append(slot.typed if word == _plain_apostrophe(slot.typed.lower())
               else recase(word, slot.typed))
    last = slot.end
  out.append(line[last:])
  return "".join(out)


def recase(word: str, like: str) -> str:
  """word (lower case) in the case of `like`: all capitals, a capital first, or as it is."""
  if like.isupper() and len(like) > 1:
    return word.upper()
  return word[:1].upper() + word[1:] if like[:1].isupper() else word


LAYOUTS = {"fr": "azerty"}  # the keyboard a language is typed on, where it is not qwerty
# The languages whose typos the demo fixes: those eval/correction.py measures. The other shipped
# word lists (lt, cs, vi, ro, pl) serve diacritics restoration.
LANGUAGES = ("en", "es", "fr")


def for_language(lang: str, lm=None, context: bool = True) -> TypoCorrector:
  """The corrector of lang's shipped word list (`bytelm.demos.wordlist`), on its keyboard,
  with the word pairs of `bytelm.demos.bigrams` where there are some for lang (English) and
  context is True."""
  from bytelm.demos import bigrams
  words = wordlist.load(lang, top=wordlist.COMMON_WORDS)
  rare = dict(itertools.islice(wordlist.load(lang).items(), len(words), None))
  pairs = bigrams.Bigrams.english(words) if context and lang == "en" and lm is None else None
  return TypoCorrector(words, lm, bigrams=pairs, rare_words=rare,
                       layout=LAYOUTS.get(lang, "qwerty"))
