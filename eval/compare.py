"""Every bytelm recipe on the same bytes: one table, trained at the same budget on this machine.

  python eval/compare.py --budget-minutes 5 [--root workdirs/compare] [--variant tiny]

1. Training throughput: each recipe's train step timed from a fresh model, in alternation
   (bytelm.training.budget, bytelm.timing).
2. The same budget: --budget-minutes of training at each recipe's measured bytes/s (so every
   recipe reads about as many bytes as it can in that time), then `train_and_evaluate`. A
   finished run in --root/<recipe> is reused as it is (delete it to retrain).
   Post-training int8 (W8A8 with LLM.int8's outlier columns, bytelm.quant) of the trained MrT5
   and byte decoder joins as two more rows; the ternary MrT5 is trained at the same budget.
3. Through the public API only (`bytelm.load(workdir)`: .score, .continuation_bits, .info):
   - bits per byte on the same held-out bytes of embedded:en's validation split (pieces of up
     to --piece-bytes), clean and perturbed (characters swapped with the next or deleted at
     2% and 5%, case flips at 5%, extra spaces after 5% of characters), and per language of
     the embedded corpus;
   - inference bytes/s: `.score` over the clean pieces (batched forward, host rows included),
     timed in alternation;
   - parameters and bytes on disk (a float32 export; int8 rows store integers);
   - compression: bytes per position the big model sees (1 for flat byte models; MrT5: after
     hard deletion; word/entropy/learned segments; BPE tokens), from the trainer's evaluation;
   - character tasks made from held-out words, every model prompted the same way (multiple
     choice by `.continuation_bits`): restore a misspelled word (4 options, one typo each:
     `noise.one_typo`), count a letter in a word (1, 2 or 3, as many items of each), reverse a
     word (4 options).
Decoders (byte, BPE, hierarchical) are scored on every byte of a text read from its start; the
encoder-decoders (ByT5, MrT5) were trained on span corruption, and their bits are its bits per
target id (the trainer's measure), marked "span": a different task, not comparable with the
causal rows.
Writes eval/results/compare.{json,md,png} (and compare_noise.png). Last line: bpb_<recipe>=
(held-out, clean) for each recipe, then best_causal=<recipe>.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import random

import numpy as np

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
import bytelm
from bytelm import timing
from bytelm.data import noise, sources
from bytelm.quant import quantize
from bytelm.runs import workdir as run_dir
from bytelm.training import budget

# name -> (config file, variant suffix): what is trained
TRAINED = {"byt5": ("byt5", ""), "mrt5": ("mrt5", ""), "mrt5_ternary": ("mrt5", "ternary"),
           "bytes_decoder": ("bytes_decoder", ""), "hat": ("hat", ""), "blt": ("blt", ""),
           "hnet": ("hnet", ""), "bpe_decoder": ("bpe_decoder", "")}
# name -> the trained row it quantizes after training
POST_TRAINING = {"mrt5_int8": "mrt5", "bytes_decoder_int8": "bytes_decoder"}
WHAT = {"byt5": "ByT5 (flat bytes)", "mrt5": "MrT5 (delete gate)",
        "mrt5_ternary": "MrT5, ternary (QAT)", "mrt5_int8": "MrT5, int8 (post-training)",
        "bytes_decoder": "byte decoder", "bytes_decoder_int8": "byte decoder, int8 (PTQ)",
        "hat": "word-pooled (HAT)", "blt": "entropy patches (BLT)",
        "hnet": "learned boundaries (H-Net)", "bpe_decoder": "BPE decoder, read as bytes"}
NOISES = (("swap_delete", 0.02), ("swap_delete", 0.05), ("case_flip", 0.05),
          ("whitespace", 0.05))
LANGUAGES = {"en": "embedded:en", "es": "embedded:bible_es", "fr": "embedded:l10n_fr",
             "cs": "embedded:l10n_cs", "pl": "embedded:l10n_pl", "lt": "embedded:l10n_lt",
             "ro": "embedded:l10n_ro", "vi": "embedded:l10n_vi", "code": "embedded:python_docs"}


# ---- training -----------------------------------------------------------------------------------


def config_of(name: str, variant: str):
  file, suffix = TRAINED[name]
  return common.config(file, "_".join(a for a in (variant, suffix) if a))


def train_all(names, variant, root, minutes, timing_steps, fixed_steps=0) -> dict:
  """Train each recipe for `minutes` at its measured bytes/s, or for fixed_steps steps each where
  that is set (a smoke test: the same steps on any machine). A finished run is reused at the
  steps it has (its budget was measured when it was trained)."""
  configs = {n: budget.prepare(config_of(n, variant), root / n) for n in names}
  timers = {n: budget.step_timer(configs[n], root / n) for n in names}
  seconds = timing.compare({n: t.call for n, t in timers.items()}, timing_steps)
  train_bps = {n: timers[n].bytes_per_call / seconds[n] for n in names}
  for t in timers.values():
    t.close()
  del timers
  runs = {}
  for n in names:
    runs[n] = budget.train_within(configs[n], root / n, minutes * 60 * train_bps[n],
                                  steps=fixed_steps)
    print(f"{n}: " + ("reused" if runs[n]["reused"] else f"trained in {runs[n]['seconds']:.0f} s") +
          f" ({runs[n]['steps']} steps), trainer's validation bpb {runs[n]['val_bpb']:.3f}",
          flush=True)
  return {"train_bytes_per_s": train_bps, "runs": runs}


# ---- measures -----------------------------------------------------------------------------------


def disk_bytes(lm) -> int:
  """Bytes of a float32 export of the model (integers stay integers), with the tokenizer or
  entropy model it reads text with."""
  return common.export_bytes(lm.module, run_dir.read_config(lm.path), lm.path)


def positions(run: dict) -> float:
  """Bytes per position of the model's big part, from the trainer's evaluation."""
  if "hard_deletion" in run:  # MrT5: encoder positions left after hard deletion
    return 1.0 / max(1e-9, 1.0 - run["hard_deletion"])
  if "val_bytes_per_segment" in run:
    return run["val_bytes_per_segment"]
  if "val_bytes" in run:  # BPE: bytes per token
    return run["val_bytes"] / run["val_targets"]
  return 1.0


def held_out_words(pieces: list[str]) -> list[str]:
  """The distinct lower-case ASCII words of 4-10 letters in the pieces, sorted."""
  words = {w.strip(".,;:!?\"'()").lower() for p in pieces for w in p.split()}
  return sorted(w for w in words if w.isascii() and w.isalpha() and 4 <= len(w) <= 10)


def tasks(words: list[str], n: int, seed: int = 0) -> dict[str, list[tuple[str, list[str], int]]]:
  """(prompt, options, index of the right one) for n items of each character task, made from
  words: 4 options
  (chance 25%) for spelling and reversing; counting asks for 1, 2 or 3 (chance 33%), with as
  many items of each answer, so that always answering the commonest count earns only chance."""
  rng = random.Random(seed)
  out = {"spelling": [], "counting": [], "reversing": []}
  by_count = {k: [(w, c) for w in words for c in sorted(set(w)) if w.count(c) == k]
              for k in (1, 2, 3)}
  per_count = min(n // 3, *(len(v) for v in by_count.values()))
  for k, pairs in by_count.items():
    for w, letter in rng.sample(pairs, per_count):
      out["counting"].append((f"The word '{w}' has this many '{letter}': ",
                              [f"{j}." for j in (1, 2, 3)], k - 1))
  rng.shuffle(out["counting"])
  for w in rng.sample(words, min(n, len(words))):
    wrong = set()
    while len(wrong) < 3:
      wrong.add(noise.one_typo(w, rng))
    options = [w] + sorted(wrong)
    out["spelling"].append((f"The word '{noise.one_typo(w, rng)}' is spelled correctly as '",
                            [o + "'" for o in options], 0))
    shuffles = set()
    while len(shuffles) < 3 and len(set(w)) > 2:
      s = "".join(rng.sample(w, len(w)))
      if s != w[::-1]:
        shuffles.add(s)
    if len(shuffles) == 3:
      out["reversing"].append((f"The word '{w}' reversed is '",
                               [w[::-1] + "'"] + [s + "'" for s in sorted(shuffles)], 0))
  return out


def accuracy(lm, items) -> float:
  right = sum(int(np.argmin(lm.continuation_bits(prompt, options))) == answer
              for prompt, options, answer in items)
  return right / max(1, len(items))


# ---- the run ------------------------------------------------------------------------------------


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--budget-minutes", type=float, default=5.0, help="training per recipe")
  p.add_argument("--root", default="workdirs/compare")
  p.add_argument("--variant", default="", help="of every config ('tiny': a smoke test)")
  p.add_argument("--steps", type=int, default=0,
                 help="train every recipe this many steps instead of the budget (a smoke test)")
  p.add_argument("--recipes", default=",".join(list(TRAINED) + list(POST_TRAINING)))
  p.add_argument("--timing-steps", type=int, default=4, help="alternating timed calls each")
  p.add_argument("--piece-bytes", type=int, default=240)
  p.add_argument("--eval-bytes", type=int, default=32768)
  p.add_argument("--language-bytes", type=int, default=4096)
  p.add_argument("--task-items", type=int, default=60, help="words per character task")
  p.add_argument("--out", default=str(common.RESULTS / "compare"))
  args = p.parse_args()
  names = args.recipes.split(",")
  for n in names:
    if n not in TRAINED and n not in POST_TRAINING:
      raise SystemExit(f"unknown recipe {n!r}; choose from {list(TRAINED) + list(POST_TRAINING)}")
  trained = [n for n in TRAINED if n in names or
             any(POST_TRAINING.get(m) == n for m in names)]
  root = pathlib.Path(args.root)
  machine = common.start()

  # 1-2. the same budget
  done = train_all(trained, args.variant, root, args.budget_minutes, args.timing_steps,
                   args.steps)
  train_bps, runs = done["train_bytes_per_s"], done["runs"]
  models = {n: bytelm.load(root / n) for n in trained}
  for n, base in POST_TRAINING.items():
    if n in names:
      lm = bytelm.load(root / base)  # its own copy: quantize converts a module in place
      models[n] = dataclasses.replace(lm, module=quantize(lm.module, "int8"),
                                      quantized={"mode": "int8"})
      train_bps[n], runs[n] = train_bps[base], runs[base]
  models = {n: models[n] for n in names}

  # 3. held-out bytes, clean and perturbed, and per language
  pieces = sources.held_out_pieces("embedded:en", args.piece_bytes, args.eval_bytes)
  variants = {"clean": pieces}
  for kind, rate in NOISES:
    variants[f"{kind} {rate:.0%}"] = [noise.perturb(t, kind, rate, seed=i)
                                      for i, t in enumerate(pieces)]
  bpb = {(n, v): lm.score(texts, total=True) for n, lm in models.items()
         for v, texts in variants.items()}
  languages = {lang: sources.held_out_pieces(spec, args.piece_bytes, args.language_bytes)
               for lang, spec in LANGUAGES.items()}
  per_language = {(n, lang): lm.score(texts, total=True) for n, lm in models.items()
                  for lang, texts in languages.items()}
  size = sum(len(t.encode("utf-8")) for t in pieces)
  seconds = timing.compare({n: (lambda lm=lm: lm.score(pieces)) for n, lm in models.items()},
                           repeats=3)
  infer_bps = {n: size / seconds[n] for n in names}

  # character tasks
  items = tasks(held_out_words(pieces), args.task_items)
  task_acc = {(n, t): accuracy(lm, its) for n, lm in models.items() for t, its in items.items()}

  info = {n: {**lm.info(), "disk_bytes": disk_bytes(lm)} for n, lm in models.items()}
  compression = {n: positions(runs[n]) for n in names}

  # report
  header = ("| recipe | scored on | params | disk MB | train kB/s | infer kB/s | bytes/position "
            "| trainer val bpb | held-out bpb | " + " | ".join(v for v in variants if v != "clean")
            + " | spelling | counting | reversing |")
  lines = [header, "|" + "---|" * (header.count("|") - 1)]
  for n in names:
    kind = "span" if models[n].encoder_decoder else "causal"
    lines.append(
        f"| {WHAT[n]} | {kind} | {info[n]['parameters'] / 1e6:.2f}M | "
        f"{info[n]['disk_bytes'] / 1e6:.2f} | {train_bps[n] / 1e3:.1f} | "
        f"{infer_bps[n] / 1e3:.1f} | {compression[n]:.2f} | {runs[n].get('val_bpb', float('nan')):.3f}"
        f" | **{bpb[n, 'clean']:.3f}** | "
        + " | ".join(f"{bpb[n, v]:.3f}" for v in variants if v != "clean")
        + " | " + " | ".join(f"{task_acc[n, t]:.2f}" for t in items) + " |")
  lang_lines = ["| recipe | " + " | ".join(LANGUAGES) + " |", "|---|" + "---|" * len(LANGUAGES)]
  for n in names:
    lang_lines.append(f"| {WHAT[n]} | " + " | ".join(f"{per_language[n, l]:.3f}"
                                                     for l in LANGUAGES) + " |")
  budget_line = (f"Budget: {args.budget_minutes:g} minutes of training per recipe on "
                 f"{machine['cores']} cores ({machine['machine']}, jax {machine['jax']} on "
                 f"{machine['backend']}), {machine['date']}. Held-out: {size:,} bytes "
                 f"of embedded:en validation ({len(pieces)} pieces); tasks: "
                 + ", ".join(f"{len(v)} {k}" for k, v in items.items()) + " items.")
  table = "\n".join([budget_line, "", *lines, "", "Bits per byte per language (held-out):", "",
                     *lang_lines])
  print("\n" + table + "\n")

  out = pathlib.Path(args.out)
  results = {**machine, "args": vars(args), "train_bytes_per_s": train_bps,
             "inference_bytes_per_s": infer_bps, "runs": runs, "info": info,
             "bytes_per_position": compression,
             "bpb": {f"{n}|{v}": x for (n, v), x in bpb.items()},
             "bpb_per_language": {f"{n}|{l}": x for (n, l), x in per_language.items()},
             "tasks": {f"{n}|{t}": x for (n, t), x in task_acc.items()}}
  common.write_json(out.with_suffix(".json"), results)
  common.write_text(out.with_suffix(".md"), table + "\n")
  plot(names, models, bpb, infer_bps, variants, out)

  causal = [n for n in names if not models[n].encoder_decoder]
  best = min(causal, key=lambda n: bpb[n, "clean"]) if causal else "none"
  common.last_line({**{f"bpb_{n}": bpb[n, "clean"] for n in names}, "best_causal": best})


def plot(names, models, bpb, infer_bps, variants, out: pathlib.Path) -> None:
  plt = common.pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(7.5, 5))
  for n in names:
    marker = "s" if models[n].encoder_decoder else "o"
    ax.scatter(infer_bps[n] / 1e3, bpb[n, "clean"], marker=marker, s=50)
    ax.annotate(n, (infer_bps[n] / 1e3, bpb[n, "clean"]), textcoords="offset points",
                xytext=(5, 4), fontsize=8)
  ax.set_xscale("log")
  ax.set_xlabel("inference kB/s (scoring, this machine)")
  ax.set_ylabel("held-out bits per byte (squares: span corruption)")
  ax.set_title("Same training budget: quality vs speed")
  common.save_figure(fig, out.with_suffix(".png"))

  fig, ax = plt.subplots(figsize=(7.5, 5))
  levels = ["clean", "swap_delete 2%", "swap_delete 5%"]
  for n in names:
    style = "--" if models[n].encoder_decoder else "-"
    ax.plot([0, 2, 5], [bpb[n, v] for v in levels], style, marker="o", label=n)
  ax.set_xlabel("characters swapped or deleted (%)")
  ax.set_ylabel("held-out bits per byte")
  ax.set_title("Robustness to character noise (dashed: span corruption)")
  ax.legend(fontsize=8)
  common.save_figure(fig, out.with_name(out.name + "_noise.png"))


if __name__ == "__main__":
  main()
