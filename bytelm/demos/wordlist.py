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

HERE = pathlib.Path(__file__).parent / "wordlists"
SCALE = 1e9  # count = frequency * SCALE


def languages() -> tuple[str, ...]:
  """The languages a list is shipped for."""
  return tuple(sorted(p.name.split(".")[0] for p in HERE.glob("*.tsv.xz")))


@functools.cache
def load(lang: str) -> dict[str, int]:
  """{word: count} of lang's shipped list, commonest first (a ValueError names the languages
  shipped where lang is not one)."""
  path = HERE / f"{lang}.tsv.xz"
  if not path.is_file():
    raise ValueError(f"no word list for language {lang!r}; shipped: {', '.join(languages())} "
                     "(tools/build_wordlists.py builds more from wordfreq)")
  words = {}
  with lzma.open(path, "rt", encoding="utf-8") as f:
    for line in f:
      word, count = line.rstrip("\n").split("\t")
      words[word] = int(count)
  return words


@functools.cache
def total(lang: str) -> int:
  """The sum of lang's counts (a word's probability is its count over it)."""
  return sum(load(lang).values())
