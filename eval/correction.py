"""Typo correction on held-out everyday text, against the spell checkers people know.

  python eval/correction.py [--languages en,es,fr] [--model DIR] [--max-sentences N]

Gold text, per language: the everyday sentences of eval/data/everyday/<lang>.txt (written for
this benchmark and committed before any corrector was trained) and the sample texts of the
`gflanguages` package (UDHR excerpts and others), cut into sentences. Neither is ever trained
on or used to build a word list. Each sentence is noised three ways, every way keeping the
number of words:
  typos      the typo model (`bytelm.data.noise`) at 0.05 a letter, with this benchmark's own
             seeds (training never draws them), on the language's keyboard;
  realmiss   real misspellings people make: codespell's dictionary of common misspellings
             (installed with this script's extra, never shipped), each word that is the
             correction of one replaced by it (English; codespell has no Spanish or French);
  realword   real-word errors: one word of a confusable set (their/there, form/from, a/à, ...)
             replaced by another member, so that no dictionary can see the error.
Sentences that a kind of noise cannot touch are left out of that kind.

Systems, all given the same word list (`bytelm.demos.wordlist`, from wordfreq: 200,000
words for en, es and fr):
  bytelm     the shipped typo corrector (`Corrector.load(task="typos")`), where one is shipped:
             it proposes only the list's 60,000 commonest words and leaves the rarer ones
             alone (unless a common word outnumbers one 300 times: a common misspelling);
  symspell   symspellpy's lookup_compound (max edit distance 2, transfer_casing=True,
             ignore_non_words=True);
  pyspell    pyspellchecker, each word corrected alone (its case put back);
  copy       the noisy text unchanged.
Each spell checker runs twice: over the whole list (symspell, pyspell) and over its 60,000
commonest words (symspell60k, pyspell60k): a checker proposes every word it knows, so a
longer list lets it leave more rare words alone but also proposes rare words for typos.
The bars compare the shipped corrector with each checker at its best: its better accuracy and
its lower false-change rate of the two lists.
Metrics (`bytelm.demos.metrics.EditCounts`), per language and noise kind: corrected-word
accuracy, false-change rate on clean words, sentence exact match, F0.5 of word edits; words are
compared without the punctuation around them. Prints the tables, writes
eval/results/correction.json and .png, and ends with
  typo_acc_en= typo_acc_es= typo_acc_fr= typo_acc_mean= realword_acc_mean= realmiss_acc_mean=
  false_change_rate= symspell_acc_mean= pyspell_acc_mean= symspell_false= pyspell_false=
(accuracies of the bytelm corrector, means over languages; *_acc_mean of a baseline is over the
typo and real-misspelling sets, like the bar it is compared with, of the better of its two
lists; false rates over every set, of the lower of its two lists).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import random
import re
import time

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
from bytelm.data import noise
from bytelm.demos import metrics, wordlist
from bytelm.demos import typos as typos_lib
from bytelm.demos.typos import recase

EVERYDAY = common.ROOT / "eval" / "data" / "everyday"
GF_LANGUAGES = {"en": "en_Latn", "es": "es_Latn", "fr": "fr_Latn"}
KINDS = ("typos", "realmiss", "realword")
EVAL_SEED = 7_777_777  # this benchmark's seeds start here; no recipe draws them
EVAL_RATE = 0.05
# Real-word confusions: each word of a set is replaced by another of the same set. Common
# confusions of writers of each language (homophones, a missing accent that makes another word).
CONFUSABLE = {
    "en": [("their", "there", "they're"), ("your", "you're"), ("its", "it's"), ("then", "than"),
           ("to", "too"), ("from", "form"), ("lose", "loose"), ("where", "were"),
           ("of", "off"), ("quiet", "quite"), ("accept", "except"), ("weather", "whether"),
           ("now", "know"), ("by", "buy"), ("new", "knew"), ("here", "hear")],
    "es": [("a", "ha"), ("hay", "ahí", "ay"), ("echo", "hecho"), ("si", "sí"), ("el", "él"),
           ("tu", "tú"), ("mas", "más"), ("se", "sé"), ("te", "té"), ("esta", "está"),
           ("de", "dé"), ("mi", "mí"), ("vaya", "valla"), ("tubo", "tuvo")],
    "fr": [("a", "à"), ("ou", "où"), ("ses", "ces"), ("et", "est"), ("son", "sont"),
           ("on", "ont"), ("la", "là"), ("ce", "se"), ("peu", "peut"), ("leur", "leurs"),
           ("mes", "mais"), ("sa", "ça"), ("du", "dû"), ("sur", "sûr"), ("ni", "n'y")],
}


DEV_SOURCES = {"en": "bible_en", "es": "bible_es", "fr": "l10n_fr"}


EVERYDAY_DEV = common.ROOT / "eval" / "data" / "everyday_dev"


def dev_sentences(lang: str, n: int = 300) -> list[str]:
  """Text to tune on, never the held-out sets: the everyday sentences kept for tuning
  (eval/data/everyday_dev), then the first n lines (or sentences) of 4 to 30 words of the
  embedded corpus's validation split of lang."""
  from bytelm.data import sources
  everyday = [s for s in (EVERYDAY_DEV / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
              if s.strip()]
  texts = sources.load_text(f"embedded:{DEV_SOURCES[lang]}", "validation")["text"]
  lines = [" ".join(x.split()) for t in texts for x in re.split(r"\n|(?<=[.!?;:])\s+", t)]
  return everyday + [x for x in lines if 4 <= len(x.split()) <= 30][:n]


def sentences(lang: str) -> list[str]:
  """The gold sentences: everyday ones, then gflanguages' sample texts cut at sentence ends."""
  everyday = [s for s in (EVERYDAY / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
              if s.strip()]
  return everyday + gf_sentences(lang)


def gf_sentences(lang: str) -> list[str]:
  """The distinct sentences of gflanguages' sample texts of lang (none if not installed)."""
  try:
    from gflanguages import LoadLanguages
  except ImportError:
    print("(gflanguages is not installed: everyday sentences only; pip install 'bytelm[eval]')")
    return []
  sample = LoadLanguages()[GF_LANGUAGES[lang]].sample_text
  out = []
  for field in sorted(f.name for f, _ in sample.ListFields()):
    for piece in re.split(r"(?<=[.!?])\s+|\n", getattr(sample, field)):
      piece = " ".join(piece.split())
      if len(piece.split()) >= 4 and piece not in out:
        out.append(piece)
  return out


# -- noise -------------------------------------------------------------------------------------

def typos(gold: list[str], lang: str) -> list[str]:
  return [noise.add_typos(s, rate=EVAL_RATE, layout=typos_lib.LAYOUTS.get(lang, "qwerty"), seed=EVAL_SEED + i)
          for i, s in enumerate(gold)]


def codespell_misspellings() -> dict[str, list[str]]:
  """{correct word: [common misspellings of it]} from codespell's main dictionary."""
  try:
    import codespell_lib
  except ImportError:
    print("(codespell is not installed: no real-misspelling set; pip install 'bytelm[eval]')")
    return {}
  path = pathlib.Path(codespell_lib.__file__).parent / "data" / "dictionary.txt"
  out: dict[str, list[str]] = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    wrong, _, rights = line.partition("->")
    rights = [r.strip() for r in rights.split(",") if r.strip()]
    if len(rights) == 1 and rights[0].isalpha() and wrong.isalpha():  # unambiguous, one word
      out.setdefault(rights[0], []).append(wrong)
  return out


def replace_words(sentence: str, pick, rng: random.Random, at_most: int | None = None) -> str:
  """sentence with words (punctuation around them kept) replaced where pick(word) gives a list
  of replacements: one drawn from it, case put back; at most `at_most` words (drawn)."""
  tokens = sentence.split(" ")
  where = [i for i, t in enumerate(tokens) if pick(_core(t)[1].lower())]
  if at_most is not None and len(where) > at_most:
    where = sorted(rng.sample(where, at_most))
  for i in where:
    before, core, after = _core(tokens[i])
    tokens[i] = before + recase(rng.choice(pick(core.lower())), core) + after
  return " ".join(tokens)


def _core(token: str) -> tuple[str, str, str]:
  """(punctuation before, the word, punctuation after) of a space-separated token."""
  m = re.fullmatch(r"(\W*)(.*?)(\W*)", token)
  return m.group(1), m.group(2), m.group(3)


def realmiss(gold: list[str], misspelled: dict[str, list[str]]) -> list[str]:
  return [replace_words(s, misspelled.get, random.Random(EVAL_SEED + i)) for i, s in
          enumerate(gold)]


def realword(gold: list[str], lang: str) -> list[str]:
  others = {w: [o for o in group if o != w] for group in CONFUSABLE[lang] for w in group}
  return [replace_words(s, others.get, random.Random(EVAL_SEED + i), at_most=1)
          for i, s in enumerate(gold)]


# -- baselines ---------------------------------------------------------------------------------

class SymSpellBaseline:
  """symspellpy's compound lookup over the word list."""

  def __init__(self, words: dict[str, int]):
    from symspellpy import SymSpell
    self.sym = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
    for word, count in words.items():
      self.sym.create_dictionary_entry(word, count)

  def __call__(self, text: str) -> str:
    found = self.sym.lookup_compound(text, max_edit_distance=2, transfer_casing=True,
                                     ignore_non_words=True)
    return found[0].term if found else text


class PySpellBaseline:
  """pyspellchecker (Norvig's method) over the word list, one word at a time."""

  def __init__(self, words: dict[str, int]):
    from spellchecker import SpellChecker
    self.spell = SpellChecker(language=None, distance=2, case_sensitive=False)
    self.spell.word_frequency.load_json(words)

  def __call__(self, text: str) -> str:
    out = []
    for token in text.split(" "):
      before, core, after = _core(token)
      if core.isalpha() and core.lower() not in self.spell:
        fixed = self.spell.correction(core.lower())
        core = recase(fixed, core) if fixed else core
      out.append(before + core + after)
    return " ".join(out)


def bytelm_corrector(model):
  """What `bytelm-correct --task typos --lang LANG` runs (with --model, that model), as
  corrector(texts, lang) -> texts; None where it cannot fix typos."""
  from bytelm.demos.correct import Corrector
  try:
    corrector = Corrector.load(model, task="typos")
  except (ValueError, FileNotFoundError) as e:
    print(f"(no bytelm typo corrector: {e})")
    return None
  return lambda texts, lang: corrector(texts, "typos", lang)


# -- the run -----------------------------------------------------------------------------------

def evaluate(systems: dict, gold: list[str], noisy: list[str]) -> dict[str, metrics.EditCounts]:
  kept = [(g, n) for g, n in zip(gold, noisy) if g != n]
  gold, noisy = [g for g, _ in kept], [n for _, n in kept]
  out = {}
  for name, correct in systems.items():
    outputs = correct(noisy)
    total = metrics.EditCounts()
    for g, n, o in zip(gold, noisy, outputs, strict=True):
      total = total + metrics.edit_counts(g, n, o)
    out[name] = total
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--languages", default="en,es,fr")
  p.add_argument("--model", default=None, help="a typo corrector (default: the shipped one)")
  p.add_argument("--max-sentences", type=int, default=0, help="per language; 0: all")
  p.add_argument("--out", default=str(common.RESULTS / "correction"))
  p.add_argument("--dev", action="store_true",
                 help="tune on eval/data/everyday_dev and the embedded corpus's validation "
                      "lines instead of the held-out sets (writes nothing to eval/results)")
  args = p.parse_args()
  machine = common.start()
  languages = args.languages.split(",")
  misspelled = codespell_misspellings()
  ours = bytelm_corrector(args.model)
  results, examples, counted = {}, {}, {}
  for lang in languages:
    gold = (dev_sentences(lang) if args.dev else sentences(lang))[:args.max_sentences or None]
    counted[lang] = len(gold)
    words = wordlist.load(lang)
    top = wordlist.load(lang, top=wordlist.COMMON_WORDS)  # what the corrector proposes
    singles = {"symspell": SymSpellBaseline(words), "pyspell": PySpellBaseline(words),
               "symspell60k": SymSpellBaseline(top), "pyspell60k": PySpellBaseline(top)}
    systems = {name: (lambda texts, f=f: [f(t) for t in texts]) for name, f in singles.items()}
    systems["copy"] = list
    if ours is not None:
      systems = {"bytelm": lambda texts, lang=lang: ours(texts, lang), **systems}
    noised = {"typos": typos(gold, lang), "realword": realword(gold, lang)}
    if lang == "en" and misspelled:
      noised["realmiss"] = realmiss(gold, misspelled)
    for kind, noisy in noised.items():
      start = time.perf_counter()
      results[(lang, kind)] = evaluate(systems, gold, noisy)
      print(f"{lang} {kind}: {sum(g != n for g, n in zip(gold, noisy))} sentences, "
            f"{time.perf_counter() - start:.0f} s", flush=True)
      changed = [i for i, (g, n) in enumerate(zip(gold, noisy)) if g != n]
      if changed:
        i = changed[0]
        examples[f"{lang}|{kind}"] = {"gold": gold[i], "noisy": noisy[i],
                                      **{n: s([noisy[i]])[0] for n, s in systems.items()}}
  names = list(next(iter(results.values())))
  report(results, names)
  figures = summary(results, names, languages)
  if args.dev:
    common.last_line(figures)
    return
  common.write_json(pathlib.Path(args.out).with_suffix(".json"), {
      **machine, "sentences": counted,
      "counts": {f"{l}|{k}|{n}": vars(c) for (l, k), r in results.items() for n, c in r.items()},
      "examples": examples, "figures": figures})
  plot(results, names, pathlib.Path(args.out).with_suffix(".png"))
  common.last_line(figures)


def report(results, names) -> None:
  print("\n| language | noise | system | accuracy | false changes | exact | F0.5 |")
  print("|---|---|---|---|---|---|---|")
  for (lang, kind), r in results.items():
    for n in names:
      c = r[n]
      print(f"| {lang} | {kind} | {n} | {c.accuracy:.3f} | {c.false_change_rate:.3f} | "
            f"{c.exact_match:.3f} | {c.f_beta(0.5):.3f} |")


def _mean(xs) -> float:
  xs = [x for x in xs if not math.isnan(x)]
  return sum(xs) / len(xs) if xs else math.nan


def summary(results, names, languages) -> dict:
  """The last line's figures (see the module docstring)."""
  def acc(system, kind, lang=None):
    return _mean([r[system].accuracy for (l, k), r in results.items()
                  if k == kind and (lang is None or l == lang) and system in r])

  def mean_lang(system, kind):
    return _mean([acc(system, kind, lang) for lang in languages])

  def false(system):
    total = sum((r[system] for r in results.values() if system in r), metrics.EditCounts())
    return total.false_change_rate

  ours = "bytelm" if "bytelm" in names else None
  figures = {f"typo_acc_{lang}": acc(ours, "typos", lang) if ours else math.nan
             for lang in languages}
  for kind in KINDS:
    key = {"typos": "typo"}.get(kind, kind)
    figures[f"{key}_acc_mean"] = mean_lang(ours, kind) if ours else math.nan
  figures["false_change_rate"] = false(ours) if ours else math.nan
  for base in ("symspell", "pyspell"):  # each at its best of the two lists
    lists = [n for n in (base, f"{base}60k") if n in names]
    figures[f"{base}_acc_mean"] = max(
        _mean([mean_lang(n, "typos"), mean_lang(n, "realmiss")]) for n in lists)
    figures[f"{base}_false"] = min(false(n) for n in lists)
  return figures


def plot(results, names, path: pathlib.Path) -> None:
  """Corrected-word accuracy per set and system, and each system's false-change rate."""
  plt = common.pyplot()
  if plt is None:
    return
  import numpy as np
  sets = [f"{l} {k}" for l, k in results]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
  width = 0.8 / len(names)
  for j, n in enumerate(names):
    ax.bar(np.arange(len(sets)) + j * width, [r[n].accuracy for r in results.values()],
           width, label=n)
    total = sum((r[n] for r in results.values()), metrics.EditCounts())
    bx.bar(j, total.false_change_rate)
  ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2, sets, rotation=30, ha="right")
  ax.set_ylabel("corrected-word accuracy")
  ax.legend()
  bx.set_xticks(range(len(names)), names, rotation=30, ha="right")
  bx.set_ylabel("false-change rate (clean words)")
  fig.suptitle("Typo correction on held-out everyday text (eval/correction.py)")
  common.save_figure(fig, path)


if __name__ == "__main__":
  main()
