"""Diacritics restoration on the held-out text of each embedded language, against baselines.

  python eval/diacritics.py [--model DIR] [--languages lt,cs,...] [--max-lines 1000]

For every language of `embedded:diacritics`, the held-out (validation) lines are stripped of
their diacritics (`noise.strip_diacritics`) and restored these ways, all in this run:
  model          the corrector alone (default: the one shipped in bytelm/demos/diacritics/);
  model+lexicon  a tagger choosing among the known word forms of a word: those of its own
                 training text pooled with the shipped wordfreq-derived word list of the
                 language (what the demo does; `correct.source_lexicon`, `lexicon_labels`);
  lexicon        each word -> its most frequent diacritised form in that language's training
                 text (the paper's dictionary baseline);
  copy           the stripped input unchanged.
Metrics are Stankevičius et al.'s (bytelm.demos.metrics): alpha-word accuracy, diacritic-word
accuracy, and unseen-word accuracy (words absent from that language's training text). Means
are over languages. A seq2seq corrector trained for typos (configs/diacritics.py:both) is also
scored on typo'd and on typo'd + stripped lines, words aligned by edit distance, against copying.

Everyday text: the same systems restore the everyday sentences of eval/data/everyday/<lang>.txt
(written for this benchmark, committed before any corrector was trained; lt cs vi ro pl fr;
--dev: those of eval/data/everyday_dev, kept for tuning, instead),
beside a dictionary of real-world usage:
  wordfreq       each word -> its most frequent diacritised form among wordfreq's 200,000
                 commonest words of the language (`metrics.Lexicon.from_counts`).
Prints tables, draws eval/results/diacritics.png, and ends with
  alpha_acc_mean=... lexicon_acc_mean=... unseen_acc_mean=... lexicon_unseen_acc_mean=...
  everyday_acc_mean=... everyday_wordfreq_acc_mean=... everyday_acc_<lang>=...
  everyday_wordfreq_acc_<lang>=... (everyday_acc_*: the demo's configuration, model+lexicon)
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
from bytelm.data import noise, sources
from bytelm.demos import metrics
from bytelm.demos.correct import Corrector

LANGUAGES = {"lt": "l10n_lt", "cs": "l10n_cs", "vi": "l10n_vi", "ro": "l10n_ro",
             "pl": "l10n_pl", "fr": "l10n_fr", "es": "bible_es"}
SYSTEMS = ("model", "model+lexicon", "lexicon", "copy")


def lines_of(texts) -> list[str]:
  """The non-empty lines of some documents, without surrounding spaces."""
  return [line.strip() for text in texts for line in text.split("\n") if line.strip()]


def evaluate_language(correctors: dict[str, Corrector], source: str, max_lines: int) -> dict:
  train = lines_of(sources.load_text(f"embedded:{source}", "train")["text"])
  gold = lines_of(sources.load_text(f"embedded:{source}", "validation")["text"])[:max_lines]
  inputs = [noise.strip_diacritics(line) for line in gold]
  seen, lexicon = metrics.vocabulary(train), metrics.Lexicon(train)
  outputs, seconds = {}, {}
  for name, corrector in correctors.items():
    start = time.perf_counter()
    outputs[name] = corrector(inputs, "diacritics")
    seconds[name] = time.perf_counter() - start
  outputs.update({"lexicon": [lexicon(x) for x in inputs], "copy": inputs})
  counts = {name: metrics.corpus_counts(gold, out, seen) for name, out in outputs.items()}
  example = max(range(len(gold)), key=lambda i: (gold[i] != inputs[i], -abs(len(gold[i]) - 60)))
  shown = outputs[list(correctors)[-1]]
  return {"counts": counts, "lines": len(gold), "bytes": sum(len(x.encode()) for x in inputs),
          "seconds": seconds, "example": (inputs[example], shown[example], gold[example])}


EVERYDAY = common.ROOT / "eval" / "data" / "everyday"
EVERYDAY_DEV = common.ROOT / "eval" / "data" / "everyday_dev"  # to tune on (--dev)


def wordfreq_lexicon(lang: str, words: int = 200_000) -> metrics.Lexicon | None:
  """The dictionary of wordfreq's commonest words of lang (None if wordfreq is not installed)."""
  try:
    import wordfreq
  except ImportError:
    print("(wordfreq is not installed: no wordfreq baseline; pip install 'bytelm[eval]')")
    return None
  return metrics.Lexicon.from_counts({w: round(wordfreq.word_frequency(w, lang) * 1e9) + 1
                                      for w in wordfreq.top_n_list(lang, words)})


def evaluate_everyday(correctors: dict[str, Corrector], lang: str, source: str,
                      folder: pathlib.Path = EVERYDAY) -> dict:
  """Word counts of each system on lang's everyday sentences, stripped of their diacritics."""
  gold = lines_of([(folder / f"{lang}.txt").read_text(encoding="utf-8")])
  inputs = [noise.strip_diacritics(line) for line in gold]
  train = lines_of(sources.load_text(f"embedded:{source}", "train")["text"])
  seen = metrics.vocabulary(train)
  outputs = {name: corrector(inputs, "diacritics") for name, corrector in correctors.items()}
  lexicon = metrics.Lexicon(train)
  outputs["lexicon"] = [lexicon(x) for x in inputs]
  dictionary = wordfreq_lexicon(lang)
  if dictionary is not None:
    outputs["wordfreq"] = [dictionary(x) for x in inputs]
  outputs["copy"] = inputs
  counts = {name: metrics.corpus_counts(gold, out, seen) for name, out in outputs.items()}
  worst = min(range(len(gold)), key=lambda i: metrics.word_counts(
      gold[i], outputs[list(correctors)[-1]][i]).accuracy())
  return {"counts": counts, "lines": len(gold),
          "example": (inputs[worst], outputs[list(correctors)[-1]][worst], gold[worst])}


def typo_counts(corrector: Corrector, source: str, max_lines: int, task: str) -> dict:
  """Word counts (aligned by edit distance) of the corrector and of copying, on held-out lines
  noised for `task` ("typos" or "both": typos at the default 2% rate, qwerty), seed = line."""
  train = lines_of(sources.load_text(f"embedded:{source}", "train")["text"])
  gold = lines_of(sources.load_text(f"embedded:{source}", "validation")["text"])[:max_lines]
  inputs = [noise.corrupt(line, task, rate=0.02, seed=i) for i, line in enumerate(gold)]
  seen = metrics.vocabulary(train)
  return {name: metrics.corpus_counts(gold, out, seen, aligned=True)
          for name, out in (("model", corrector(inputs, task)), ("copy", inputs))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default=None, help="workdir or export (default: the shipped model)")
  p.add_argument("--languages", default=",".join(LANGUAGES))
  p.add_argument("--max-lines", type=int, default=1000, help="held-out lines per language")
  p.add_argument("--plot", default=str(common.RESULTS / "diacritics.png"))
  p.add_argument("--dev", action="store_true",
                 help="the everyday sentences kept for tuning (eval/data/everyday_dev) instead "
                      "of the held-out ones; draws no plot")
  args = p.parse_args()
  languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
  unknown = [lang for lang in languages if lang not in LANGUAGES]
  if unknown:
    p.error(f"unknown languages {unknown}; choose from {','.join(LANGUAGES)}")
  machine = common.start()

  demo = Corrector.load(args.model, lexicon=True)  # the model is loaded once, for both
  correctors = {"model": Corrector(demo.model, trained_task=demo.trained_task,
                                   input_length=demo.input_length)}
  if demo.is_tagger:
    correctors["model+lexicon"] = demo
  systems = [s for s in SYSTEMS if s in correctors or s in ("lexicon", "copy")]
  results = {}
  for lang in languages:
    results[lang] = r = evaluate_language(correctors, LANGUAGES[lang], args.max_lines)
    print(f"{lang}: {r['lines']} lines; " + ", ".join(
        f"{s} {r['counts'][s].accuracy():.4f}" for s in systems) + "; " + ", ".join(
        f"{name} {r['bytes'] / sec:,.0f} bytes/s" for name, sec in r["seconds"].items()),
        flush=True)

  print(f"\nDiacritics restoration, held-out lines of embedded:diacritics; model "
        f"{args.model or 'shipped (bytelm/demos/diacritics)'}; "
        f"{machine['date']}, {machine['machine']}, {machine['cores']} cores\n")
  kinds = (("alpha", "alpha words"), ("diacritic", "diacritic words"), ("unseen", "unseen words"))
  mean = {(s, kind): float(np.mean([r["counts"][s].accuracy(kind) for r in results.values()]))
          for s in systems for kind, _ in kinds}
  for kind, title in kinds:
    print(f"\nWord accuracy, {title}:\n")
    print_table(results, systems, "lines", kind)
  shipped = list(correctors)[-1]  # the demo's configuration
  for name in correctors:
    beats = [lang for lang, r in results.items()
             if r["counts"][name].accuracy() > r["counts"]["lexicon"].accuracy()]
    print(f"\n{name} beats the lexicon on alpha words in {len(beats)}/{len(results)} languages "
          f"({', '.join(beats)})")
  print(f"\nExamples (input -> {shipped} | gold):")
  for lang, r in results.items():
    source, restored, gold = r["example"]
    print(f"  {lang}: {source}\n   -> {restored}\n    | {gold}")
  folder = EVERYDAY_DEV if args.dev else EVERYDAY
  everyday = {lang: evaluate_everyday(correctors, lang, LANGUAGES[lang], folder)
              for lang in languages if (folder / f"{lang}.txt").is_file()}
  everyday_systems = [s for s in (*correctors, "lexicon", "wordfreq", "copy")
                      if all(s in r["counts"] for r in everyday.values())]
  if everyday:
    print(f"\nEveryday sentences ({folder.relative_to(common.ROOT)}), alpha-word accuracy:\n")
    print_table(everyday, everyday_systems, "sentences")
    print(f"\nEveryday examples, the worst sentence of each (input -> {shipped} | gold):")
    for lang, r in everyday.items():
      source, restored, gold = r["example"]
      print(f"  {lang}: {source}\n   -> {restored}\n    | {gold}")
  typo_means = {}
  if demo.trained_task in ("typos", "both"):  # a seq2seq corrector trained with typos
    for task in ("typos", "both"):
      counts = {lang: typo_counts(correctors["model"], LANGUAGES[lang], args.max_lines, task)
                for lang in languages}
      print(f"\nTask {task!r}, word accuracy aligned by edit distance (alpha words):\n")
      print("| language | model | copy |\n|---|---|---|")
      for lang, c in counts.items():
        print(f"| {lang} | {c['model'].accuracy():.4f} | {c['copy'].accuracy():.4f} |")
      typo_means[task] = {name: float(np.mean([c[name].accuracy() for c in counts.values()]))
                          for name in ("model", "copy")}
  if args.plot and not args.dev:
    plot(results, systems, args.plot)
  figures = {"alpha_acc_mean": mean[shipped, "alpha"],
             "lexicon_acc_mean": mean["lexicon", "alpha"],
             "unseen_acc_mean": mean[shipped, "unseen"],
             "lexicon_unseen_acc_mean": mean["lexicon", "unseen"],
             "model_alone_acc_mean": mean["model", "alpha"],
             "model_alone_unseen_acc_mean": mean["model", "unseen"],
             "copy_acc_mean": mean["copy", "alpha"],
             "diacritic_acc_mean": mean[shipped, "diacritic"]}
  for task, m in typo_means.items():
    figures.update({f"{task}_acc_mean": m["model"], f"{task}_copy_acc_mean": m["copy"]})
  for name, key in ((shipped, "everyday"), ("wordfreq", "everyday_wordfreq")):
    if everyday and name in everyday_systems:
      per_lang = {lang: r["counts"][name].accuracy() for lang, r in everyday.items()}
      figures[f"{key}_acc_mean"] = float(np.mean(list(per_lang.values())))
      figures.update({f"{key}_acc_{lang}": acc for lang, acc in per_lang.items()})
  common.last_line(figures)


def print_table(results: dict, systems: list[str], unit: str, kind: str = "alpha") -> None:
  """A markdown table of each system's accuracy on `kind` words per language, and their mean."""
  print(f"| language | {unit} | " + " | ".join(systems) + " |")
  print("|---|---|" + "---|" * len(systems))
  for lang, r in results.items():
    print(f"| {lang} | {r['lines']} | " + " | ".join(
        f"{r['counts'][s].accuracy(kind):.4f}" for s in systems) + " |")
  print("| **mean** | | " + " | ".join(
      f"**{np.mean([r['counts'][s].accuracy(kind) for r in results.values()]):.4f}**"
      for s in systems) + " |")


def plot(results: dict, systems: list[str], path: str) -> None:
  """Bars per language: alpha-word and unseen-word accuracy of each system."""
  plt = common.pyplot()
  if plt is None:
    return
  langs = list(results)
  x = np.arange(len(langs))
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  for ax, kind, title in zip(axes, ("alpha", "unseen"), ("alpha words", "unseen words")):
    width = 0.8 / len(systems)
    for k, system in enumerate(systems):
      values = [results[lang]["counts"][system].accuracy(kind) for lang in langs]
      ax.bar(x + (k - (len(systems) - 1) / 2) * width, values, width, label=system)
    ax.set_xticks(x, langs)
    ax.set_ylim(0.0, 1.0)
    ax.set_title(f"Diacritics restoration: {title}")
    ax.set_ylabel("word accuracy")
    ax.grid(axis="y", alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(systems), frameon=False)
  common.save_figure(fig, path, rect=(0, 0.08, 1, 1))  # the legend below the axes


if __name__ == "__main__":
  main()
