"""Word lists with frequencies, per language, shipped with the package: what the typo corrector
proposes words from (and what eval/correction.py gives the spell checkers it is compared with).

The lists in bytelm/demos/wordlists/ are derived from `wordfreq` (Robyn Speer et al.), whose
data is licensed CC-BY-SA 4.0; the derived lists carry that license (README.md and the license
notice beside them). `tools/build_wordlists.py` rebuilds them from an installed wordfreq.

A list holds the commonest words of a language in lower case, with a count proportional to
the word's frequency in wordfreq's sources (films' subtitles, Wikipedia, news, books, web text):
`count = round(frequency * 1e9)`, so a word seen once per million words counts 1000.
"""

from __future__ import annotations

import functools
import lzma
import pathlib

from bytelm import user_cache
from bytelm.text.diacritics import strip_diacritics

HERE = pathlib.Path(__file__).parent / "wordlists"
SCALE = 1e9  # count = frequency * SCALE


def languages() -> tuple[str, ...]:
  """The languages a list is shipped for."""
  return tuple(sorted(p.name.split(".")[0] for p in HERE.glob("*.tsv.xz")))


# The commonest words of a list: what the typo corrector proposes (the rest it leaves alone) and
# what the diacritics restorer chooses among. Chosen on dev text: the restorer read 0.934 of
# Spanish everyday dev words right with 60,000, 0.931 with the whole 200,000.
COMMON_WORDS = 60_000


@functools.cache
def load(lang: str, top: int | None = None) -> dict[str, int]:
  """{word: count} of lang's shipped list (its `top` commonest words, or all), commonest
  first (a ValueError names the languages shipped where lang is not one)."""
  path = HERE / f"{lang}.tsv.xz"
  if not path.is_file():
    raise ValueError(f"no word list for language {lang!r}; shipped: {', '.join(languages())} "
                     "(tools/build_wordlists.py builds more from wordfreq)")
  words = {}
  with lzma.open(path, "rt", encoding="utf-8") as f:
    for line in f:
      if top is not None and len(words) >= top:
        break
      word, count = line.rstrip("\n").split("\t")
      words[word] = int(count)
  return words


def plain_counts(lang: str) -> dict[str, int]:
  """{word without diacritics: summed count} of lang's list: what tells a language by its
  words, typed with their accents or without."""
  tables = _plain_tables()
  if lang not in tables:
    load(lang)  # the error naming the languages shipped
  return tables[lang]


def total(lang: str) -> int:
  """The sum of lang's counts (a word's probability is its count over it)."""
  return _plain_totals()[lang]


@functools.cache
def _plain_totals() -> dict[str, int]:
  return {lang: sum(counts.values()) for lang, counts in _plain_tables().items()}


@functools.cache
def _plain_tables() -> dict[str, dict[str, int]]:
  """plain_counts of every shipped list, kept in the user's cache (`bytelm.user_cache`) once
  built: a command that tells each line's language reads one file instead of decompressing
  and stripping eight lists (0.2 s instead of 0.7)."""
  return user_cache.cached_json("wordlists", "plain", sorted(HERE.glob("*.tsv.xz")), _plain,
                                version=2)


def _plain() -> dict[str, dict[str, int]]:
  tables = {}
  for lang in languages():  # the common words tell a language (and keep the table small)
    plain = tables[lang] = {}
    for word, count in load(lang, top=COMMON_WORDS).items():
      key = strip_diacritics(word)
      plain[key] = plain.get(key, 0) + count
  return tables
