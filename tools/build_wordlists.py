"""Rebuild the shipped word lists (bytelm/demos/wordlists/) from an installed wordfreq.

    pip install wordfreq
    python tools/build_wordlists.py [--languages en,es,fr,lt,cs,vi,ro,pl] [--words N]

Per language, the commonest words of wordfreq's "best" list that are words a spell checker
should know: letters, with apostrophes or hyphens only between letters (no numbers, no
symbols, no stray punctuation), in lower case, written in the language's alphabet (the
letters of its 10,000 commonest such words: no Cyrillic or Greek names in the French list).
200,000 words for the languages whose typos the demo fixes (en, es, fr: a rarer word it does
not know would be "corrected"), 60,000 for the others (the diacritics restorer's), unless
--words says otherwise. Each is written with its count, round(frequency * 1e9), one
`word<TAB>count` line each, commonest first, xz-compressed. The same wordfreq release gives
byte-identical files; each is written to a temporary path, then renamed.

wordfreq's data is CC-BY-SA 4.0, so the lists are too (README.md beside them says so, and
records the wordfreq release they came from).
"""

import argparse
import json
import lzma
import os
import pathlib
import re

OUT = pathlib.Path(__file__).resolve().parents[1] / "bytelm" / "demos" / "wordlists"
WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


WORDS = {"en": 200_000, "es": 200_000, "fr": 200_000}  # else DEFAULT_WORDS
DEFAULT_WORDS = 60_000
ALPHABET_WORDS = 10_000  # the alphabet: the letters of this many commonest words


def build(lang: str, n: int) -> tuple[list[tuple[str, int]], dict]:
  import wordfreq
  out, seen, alphabet = [], set(), set("'-")
  for word in wordfreq.top_n_list(lang, 4 * n):
    plain = word.replace("’", "'")  # one apostrophe, as people type it
    if not WORD.fullmatch(word) or word != word.lower() or plain in seen:
      continue
    if len(out) >= ALPHABET_WORDS and not alphabet.issuperset(plain):
      continue  # another script's word, or a loan word's letters
    count = round(wordfreq.word_frequency(word, lang) * 1e9)
    if count > 0:
      out.append((plain, count))
      seen.add(plain)
      if len(out) <= ALPHABET_WORDS:
        alphabet.update(plain)
    if len(out) == n:
      break
  return out, {"wordfreq": wordfreq.__version__ if hasattr(wordfreq, "__version__") else
               _version("wordfreq"), "words": len(out)}


def _version(dist: str) -> str:
  from importlib import metadata
  return metadata.version(dist)


def write(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(data)
  os.replace(tmp, path)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--languages", default="en,es,fr,lt,cs,vi,ro,pl")
  p.add_argument("--words", type=int, default=None,
                 help=f"words per list (default: {WORDS}, else {DEFAULT_WORDS})")
  args = p.parse_args()
  OUT.mkdir(parents=True, exist_ok=True)
  built = {lang: build(lang, args.words or WORDS.get(lang, DEFAULT_WORDS))
           for lang in args.languages.split(",")}
  for lang, (words, _) in built.items():
    text = "".join(f"{w}\t{c}\n" for w, c in words)
    write(OUT / f"{lang}.tsv.xz", lzma.compress(text.encode("utf-8"), preset=9))
  manifest = {lang: info for lang, (_, info) in built.items()}
  write(OUT / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
  print(json.dumps(manifest))


if __name__ == "__main__":
  main()
