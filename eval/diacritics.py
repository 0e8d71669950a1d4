"""Diacritics restoration on the held-out text of each embedded language, against baselines.

  python eval/diacritics.py [--model DIR] [--languages lt,cs,...] [--max-lines 1000]

For every language of `embedded:diacritics`, the held-out (validation) lines are stripped of
their diacritics (`noise.strip_diacritics`) and restored three ways, all in this run:
  model    the corrector (default: the one shipped in bytelm/demos/diacritics/);
  lexicon  each word -> its most frequent diacritised form in that language's training text;
  copy     the stripped input unchanged.
Metrics are Stankevičius et al.'s (bytelm.demos.metrics): alpha-word accuracy, diacritic-word
accuracy, and unseen-word accuracy (words absent from that language's training text). Means
are over languages. Prints a table, draws eval/results/diacritics.png, and ends with
  alpha_acc_mean=... lexicon_acc_mean=... unseen_acc_mean=... lexicon_unseen_acc_mean=...
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bytelm.data import noise, sources  # noqa: E402
from bytelm.demos import metrics  # noqa: E402
from bytelm.demos.correct import Corrector  # noqa: E402

LANGUAGES = {"lt": "l10n_lt", "cs": "l10n_cs", "vi": "l10n_vi", "ro": "l10n_ro",
             "pl": "l10n_pl", "fr": "l10n_fr", "es": "bible_es"}
SYSTEMS = ("model", "lexicon", "copy")


def lines_of(texts) -> list[str]:
  """The non-empty lines of some documents, without surrounding spaces."""
  return [line.strip() for text in texts for line in text.split("\n") if line.strip()]


def evaluate_language(corrector: Corrector, source: str, max_lines: int) -> dict:
  train = lines_of(sources.load_text(f"embedded:{source}", "train")["text"])
  gold = lines_of(sources.load_text(f"embedded:{source}", "validation")["text"])[:max_lines]
  inputs = [noise.strip_diacritics(line) for line in gold]
  seen, lexicon = metrics.vocabulary(train), metrics.Lexicon(train)
  start = time.perf_counter()
  restored = corrector(inputs, "diacritics")
  seconds = time.perf_counter() - start
  outputs = {"model": restored, "lexicon": [lexicon(x) for x in inputs], "copy": inputs}
  counts = {name: metrics.corpus_counts(gold, out, seen) for name, out in outputs.items()}
  example = max(range(len(gold)), key=lambda i: (gold[i] != inputs[i], -abs(len(gold[i]) - 60)))
  return {"counts": counts, "lines": len(gold), "bytes": sum(len(x.encode()) for x in inputs),
          "seconds": seconds, "example": (inputs[example], restored[example], gold[example])}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=None, help="workdir or export (default: the shipped model)")
  p.add_argument("--languages", default=",".join(LANGUAGES))
  p.add_argument("--max-lines", type=int, default=1000, help="held-out lines per language")
  p.add_argument("--plot", default=str(ROOT / "eval" / "results" / "diacritics.png"))
  args = p.parse_args()
  languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
  unknown = [lang for lang in languages if lang not in LANGUAGES]
  if unknown:
    p.error(f"unknown languages {unknown}; choose from {','.join(LANGUAGES)}")

  corrector = Corrector.load(args.model)
  results = {}
  for lang in languages:
    results[lang] = evaluate_language(corrector, LANGUAGES[lang], args.max_lines)
    r = results[lang]
    acc = {s: r["counts"][s].accuracy() for s in SYSTEMS}
    print(f"{lang}: {r['lines']} lines, model {acc['model']:.4f} lexicon {acc['lexicon']:.4f} "
          f"copy {acc['copy']:.4f} ({r['bytes'] / r['seconds']:,.0f} bytes/s)", flush=True)

  print(f"\nDiacritics restoration, held-out lines of embedded:diacritics; model "
        f"{args.model or 'shipped (bytelm/demos/diacritics)'}; "
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores\n")
  print("| language | lines | alpha: model | lexicon | copy | diacritic words: model | lexicon "
        "| unseen: model | lexicon | copy |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for lang, r in results.items():
    c = r["counts"]
    print(f"| {lang} | {r['lines']} | **{c['model'].accuracy():.4f}** | "
          f"{c['lexicon'].accuracy():.4f} | {c['copy'].accuracy():.4f} | "
          f"**{c['model'].accuracy('diacritic'):.4f}** | {c['lexicon'].accuracy('diacritic'):.4f}"
          f" | **{c['model'].accuracy('unseen'):.4f}** | {c['lexicon'].accuracy('unseen'):.4f} | "
          f"{c['copy'].accuracy('unseen'):.4f} |")
  mean = {(s, kind): float(np.mean([r["counts"][s].accuracy(kind) for r in results.values()]))
          for s in SYSTEMS for kind in ("alpha", "diacritic", "unseen")}
  print(f"| **mean** | | **{mean['model', 'alpha']:.4f}** | {mean['lexicon', 'alpha']:.4f} | "
        f"{mean['copy', 'alpha']:.4f} | **{mean['model', 'diacritic']:.4f}** | "
        f"{mean['lexicon', 'diacritic']:.4f} | **{mean['model', 'unseen']:.4f}** | "
        f"{mean['lexicon', 'unseen']:.4f} | {mean['copy', 'unseen']:.4f} |")
  beats = [lang for lang, r in results.items()
           if r["counts"]["model"].accuracy() > r["counts"]["lexicon"].accuracy()]
  print(f"\nmodel beats the lexicon on alpha words in {len(beats)}/{len(results)} languages "
        f"({', '.join(beats)})")
  print("\nExamples (input -> model | gold):")
  for lang, r in results.items():
    source, restored, gold = r["example"]
    print(f"  {lang}: {source}\n   -> {restored}\n    | {gold}")
  if args.plot:
    plot(results, args.plot)
    print(f"\nplot: {args.plot}")
  print(f"alpha_acc_mean={mean['model', 'alpha']:.4f} "
        f"lexicon_acc_mean={mean['lexicon', 'alpha']:.4f} "
        f"unseen_acc_mean={mean['model', 'unseen']:.4f} "
        f"lexicon_unseen_acc_mean={mean['lexicon', 'unseen']:.4f} "
        f"copy_acc_mean={mean['copy', 'alpha']:.4f} "
        f"diacritic_acc_mean={mean['model', 'diacritic']:.4f}")


def plot(results: dict, path: str) -> None:
  """Bars per language: alpha-word and unseen-word accuracy of each system."""
  import matplotlib  # noqa: PLC0415  (only this script draws)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  langs = list(results)
  x = np.arange(len(langs))
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  for ax, kind, title in zip(axes, ("alpha", "unseen"), ("alpha words", "unseen words")):
    for k, system in enumerate(SYSTEMS):
      values = [results[lang]["counts"][system].accuracy(kind) for lang in langs]
      ax.bar(x + (k - 1) * 0.27, values, 0.27, label=system)
    ax.set_xticks(x, langs)
    ax.set_ylim(0.0 if kind == "unseen" else 0.5, 1.0)
    ax.set_title(f"Diacritics restoration: {title}")
    ax.set_ylabel("word accuracy")
    ax.grid(axis="y", alpha=0.3)
  axes[0].legend(loc="lower left")
  fig.tight_layout()
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.tmp.png")
  fig.savefig(tmp, dpi=120)
  os.replace(tmp, out)


if __name__ == "__main__":
  main()
