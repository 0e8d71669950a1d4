"""Word-pooled, entropy-pooled and learned-pooled byte LMs against flat byte and BPE decoders.

  python eval/hierarchical.py [--minutes 4] [--budget wall|flops] [--root workdirs/eval_hier]

The recipes configs/{bytes_decoder,hat,blt,hnet,bpe_decoder}.py share width, depth, optimizer,
batch and data (embedded:en); they differ in what a backbone position is (a byte, a word, an
entropy patch, a learned segment, a BPE token). In one run:
1. Training throughput, side by side: each recipe's train step (its batch assembly, host
   segmentation included) timed in alternation (bytelm.timing), from a fresh model; bytes/s
   and XLA's count of FLOPs per step.
2. The same budget for each recipe: --minutes of training at its measured bytes/s ("wall"), or
   the FLOPs the flat byte decoder spends in --minutes ("flops"): steps = budget / cost per
   step; then `train_and_evaluate` with that many steps (cosine schedule over them). A finished
   run in --root is reused (delete it to retrain).
3. On the same held-out bytes for every model (pieces of up to --piece-bytes of the validation
   split, each predicted from a document start; a BPE model's bits are its tokens' summed
   log-loss): bits per byte, clean and after perturbations (HAT's robustness study: characters
   swapped with the next or deleted at 2% and 5%, case flips at 5%, extra spaces after 5% of
   characters; bits over the perturbed bytes).
4. Mean bytes per segment (per token for BPE) per language of the embedded corpus, and
   generation bytes/s (cached, greedy, one sequence), timed in alternation.
Writes eval/results/hierarchical.{json,png}. The last line: throughput_ratio (hat / bytes
decoder training bytes/s), bpb_hat, bpb_bytes, bpb_bpe, noise_rise_hat, noise_rise_bpe (relative
bpb rise with 5% swaps/deletions). `--timing-only` stops after step 1 (an accelerator's side).
"""

from __future__ import annotations

import argparse
import math
import pathlib

import jax.numpy as jnp
import numpy as np

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
import bytelm
from bytelm import generation, timing
from bytelm.data import bpe, noise, objectives, sources
from bytelm.text.tokenizer import EOS_ID, ByteTokenizer
from bytelm.training import budget

RECIPES = ("bytes_decoder", "hat", "blt", "hnet", "bpe_decoder")
NOISES = (("swap_delete", 0.02), ("swap_delete", 0.05), ("case_flip", 0.05),
          ("whitespace", 0.05))
LANGUAGES = {"en": "embedded:en", "es": "embedded:bible_es", "fr": "embedded:l10n_fr",
             "cs": "embedded:l10n_cs", "pl": "embedded:l10n_pl", "lt": "embedded:l10n_lt",
             "ro": "embedded:l10n_ro", "vi": "embedded:l10n_vi", "code": "embedded:python_docs"}


# ---- recipes ------------------------------------------------------------------------------------


def recipe_config(name: str, workdir: pathlib.Path, variant: str = ""):
  """The recipe's config, with its fitted parts (entropy model, tokenizer) in its workdir."""
  return budget.prepare(common.config(name, variant), workdir)


# ---- what a backbone position is, and generation -------------------------------------------------


def ids_of(lm, text: str) -> np.ndarray:
  """The ids the model reads for text: its BPE tokens, or its bytes."""
  if lm.tokenizer is not None:
    return bpe.encode_documents(lm.tokenizer, [text])[0]
  return ByteTokenizer().encode(text, add_eos=False)


def bytes_per_position(lm, pieces: list[str]) -> float:
  """Mean bytes per backbone position on pieces: 1 for bytes, per token for BPE, per segment for
  the hierarchical models (given segments: the host segmenter's; learned: the model's own
  boundaries on the pieces, each read from a document start)."""
  data = [p.encode("utf-8") for p in pieces]
  if lm.tokenizer is not None:
    return sum(map(len, data)) / sum(len(ids_of(lm, p)) for p in pieces)
  if lm.family == "decoder":
    return 1.0
  if lm.segments is not None:
    return sum(map(len, data)) / sum(len(lm.segments["segmenter"](d)) for d in data)
  length = int(lm.data["input_length"])
  inputs_BT = np.zeros((len(pieces), length), np.int32)
  targets_BT = np.zeros((len(pieces), length), np.int32)
  for r, p in enumerate(pieces):
    inputs_T, targets_T = objectives.causal_lm(np.concatenate([[EOS_ID], ids_of(lm, p)])
                                               [:length + 1])
    inputs_BT[r, :len(inputs_T)], targets_BT[r, :len(targets_T)] = inputs_T, targets_T
  _, aux = lm.module.forward(jnp.asarray(inputs_BT), jnp.asarray(targets_BT))
  return float(aux["bytes_per_segment"])


def generator(lm, prompt: str, new_bytes: int):
  """A call that generates about new_bytes after prompt (greedy, cached, never stopping early:
  every model generates as many bytes)."""
  if lm.family == "hierarchical":
    segmenter = lm.segments["segmenter"] if lm.segments is not None else None
    return lambda: generation.hierarchical_bytes(lm.module, prompt, new_bytes,
                                                 segmenter=segmenter, stop_at_eos=False)
  prompt_ids = [EOS_ID] + list(ids_of(lm, prompt))
  per_token = 1.0 if lm.tokenizer is None else bytes_per_position(lm, [prompt])
  new = max(1, round(new_bytes / per_token))
  return lambda: generation.decoder_ids(lm.module, prompt_ids, new, eos_id=-1)


# ---- the run ------------------------------------------------------------------------------------


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--minutes", type=float, default=4.0, help="training budget per recipe")
  p.add_argument("--budget", choices=("wall", "flops"), default="wall")
  p.add_argument("--recipes", default=",".join(RECIPES))
  p.add_argument("--root", default="workdirs/eval_hierarchical")
  p.add_argument("--timing-steps", type=int, default=8, help="alternating timed calls each")
  p.add_argument("--steps-per-call", type=int, default=1,
                 help="train steps per timed call, synced after the last, run as the trainer "
                      "runs train.steps_per_call (one compiled lax.scan); an accelerator: 4")
  p.add_argument("--piece-bytes", type=int, default=240)
  p.add_argument("--eval-bytes", type=int, default=65536)
  p.add_argument("--language-bytes", type=int, default=16384)
  p.add_argument("--generate-bytes", type=int, default=128)
  p.add_argument("--out", default=str(common.RESULTS / "hierarchical"))
  p.add_argument("--rows", "--batch-size", type=int, default=0, dest="rows",
                 help="rows per step for every recipe (0: each config's own)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute dtype of every recipe (default: each config's own)")
  p.add_argument("--variant", default="",
                 help="of every recipe's config, e.g. 'gpu' (configs/hat.py:gpu ...)")
  p.add_argument("--timing-only", action="store_true",
                 help="step 1 alone (e.g. on an accelerator); its last line: throughput_ratio, "
                      "host_ms_per_batch_hat, input_wait_hat, rows, dtype")
  args = p.parse_args()
  names = args.recipes.split(",")
  for n in names:
    if n not in RECIPES:
      raise SystemExit(f"unknown recipe {n!r}; choose from {RECIPES}")
  root = pathlib.Path(args.root)
  machine = common.start()

  # 1. throughput
  configs = {n: recipe_config(n, root / n, args.variant) for n in names}
  for c in configs.values():
    c.train.batch_size = args.rows or c.train.batch_size
    c.model.dtype = args.dtype or c.model.dtype
  timers = {n: budget.step_timer(configs[n], root / n, args.steps_per_call) for n in names}
  host_ms = {n: t.host_ms_per_batch() for n, t in timers.items()}  # before any step runs
  seconds = timing.compare({n: t.call for n, t in timers.items()}, args.timing_steps)
  train_bps = {n: timers[n].bytes_per_call / seconds[n] for n in names}
  flops_per_byte = {n: timers[n].flops_per_step * args.steps_per_call / timers[n].bytes_per_call
                    for n in names}
  input_wait = {n: t.input_wait for n, t in timers.items()}
  for t in timers.values():
    t.close()
  del timers
  base = "bytes_decoder" if "bytes_decoder" in names else names[0]
  print(f"\n| recipe | rows | dtype | train bytes/s | x {base} | host ms / batch | input wait | "
        "FLOPs / byte |\n|---|---|---|---|---|---|---|---|")
  for n in names:
    print(f"| {n} | {configs[n].train.batch_size} | {configs[n].model.dtype} | "
          f"{train_bps[n]:,.0f} | {train_bps[n] / train_bps[base]:.2f} | {host_ms[n]:.2f} | "
          f"{input_wait[n]:.1%} | {flops_per_byte[n]:,.0f} |")
  shown = "hat" if "hat" in names else names[0]
  timing_keys = {"throughput_ratio": train_bps.get("hat", math.nan) / train_bps[base],
                 "host_ms_per_batch_hat": host_ms.get("hat", math.nan),
                 "input_wait_hat": input_wait.get("hat", math.nan),
                 "rows": configs[shown].train.batch_size, "dtype": configs[shown].model.dtype}

  if args.timing_only:
    common.write_json(pathlib.Path(args.out + "_timing").with_suffix(".json"), {
        **machine, "rows": {n: c.train.batch_size for n, c in configs.items()},
        "dtype": {n: c.model.dtype for n, c in configs.items()}, "variant": args.variant,
        "steps_per_call": args.steps_per_call, "train_bytes_per_s": train_bps,
        "host_ms_per_batch": host_ms, "input_wait": input_wait,
        "flops_per_byte": flops_per_byte})
    common.last_line(timing_keys)
    return

  # 2. the same budget
  runs = {}
  for n in names:
    if args.budget == "wall":
      budget_bytes = args.minutes * 60 * train_bps[n]
    else:
      budget_bytes = args.minutes * 60 * train_bps[base] * flops_per_byte[base] / flops_per_byte[n]
    runs[n] = budget.train_within(configs[n], root / n, budget_bytes)
    print(f"{n}: " + ("reused" if runs[n]["reused"] else f"trained in {runs[n]['seconds']:.0f} s")
          + f" ({runs[n]['steps']} steps), trainer's val bpb {runs[n]['val_bpb']:.3f}",
          flush=True)

  # 3. held-out bits, clean and perturbed
  pieces = sources.held_out_pieces("embedded:en", args.piece_bytes, args.eval_bytes)
  variants = {"clean": pieces}
  for kind, rate in NOISES:
    # Extra spaces lengthen a piece: cut back to 255 bytes, the same for every model (one row of
    # the byte models' 256, as this benchmark has always read them).
    variants[f"{kind} {rate:.0%}"] = [
        noise.perturb(t, kind, rate, seed=i).encode("utf-8")[:255].decode("utf-8", "ignore")
        for i, t in enumerate(pieces)]
  sizes = {v: sum(len(t.encode("utf-8")) for t in texts) for v, texts in variants.items()}
  lms = {n: bytelm.load(root / n) for n in names}
  bpb = {(n, v): lms[n].score(texts, batch_size=16, total=True) for n in names
         for v, texts in variants.items()}
  print(f"\nHeld-out bits per byte on {sizes['clean']:,} bytes of embedded:en's validation "
        f"split ({len(pieces)} pieces of <= {args.piece_bytes} bytes):\n")
  print("| recipe | " + " | ".join(variants) + " | rise at 5% swaps/deletions |")
  print("|---|" + "---|" * (len(variants) + 1))
  rise = {n: bpb[n, "swap_delete 5%"] / bpb[n, "clean"] - 1 for n in names}
  for n in names:
    print(f"| {n} | " + " | ".join(f"{bpb[n, v]:.3f}" for v in variants) +
          f" | {rise[n]:+.1%} |")

  # 4. bytes per segment per language; generation speed
  per_language = {}
  for lang, spec in LANGUAGES.items():
    texts = sources.held_out_pieces(spec, args.piece_bytes, args.language_bytes)
    for n in names:
      per_language[n, lang] = bytes_per_position(lms[n], texts)
  print("\nMean bytes per backbone position (segment; BPE: token) on held-out text:\n")
  print("| recipe | " + " | ".join(LANGUAGES) + " |\n|---|" + "---|" * len(LANGUAGES))
  for n in names:
    print(f"| {n} | " + " | ".join(f"{per_language[n, l]:.2f}" for l in LANGUAGES) + " |")
  prompt = pieces[0][:64]
  gen_seconds = timing.compare({n: generator(lms[n], prompt, args.generate_bytes)
                                for n in names}, repeats=3)
  gen_bps = {n: args.generate_bytes / gen_seconds[n] for n in names}
  print("\n| recipe | generation bytes/s (greedy, cached, 1 sequence) |\n|---|---|")
  for n in names:
    print(f"| {n} | {gen_bps[n]:,.0f} |")

  results = {**machine, "budget": args.budget, "minutes": args.minutes,
             "train_bytes_per_s": train_bps, "flops_per_byte": flops_per_byte, "runs": runs,
             "bpb": {f"{n}|{v}": x for (n, v), x in bpb.items()},
             "bytes_per_segment": {f"{n}|{l}": x for (n, l), x in per_language.items()},
             "generation_bytes_per_s": gen_bps}
  out = pathlib.Path(args.out)
  common.write_json(out.with_suffix(".json"), results)
  plot(names, variants, bpb, train_bps, out.with_suffix(".png"))

  keys = {**timing_keys,
          "bpb_hat": bpb.get(("hat", "clean"), math.nan),
          "bpb_bytes": bpb.get(("bytes_decoder", "clean"), math.nan),
          "bpb_bpe": bpb.get(("bpe_decoder", "clean"), math.nan),
          "noise_rise_hat": rise.get("hat", math.nan),
          "noise_rise_bpe": rise.get("bpe_decoder", math.nan)}
  common.last_line(keys)


def plot(names, variants, bpb, train_bps, path) -> None:
  plt = common.pyplot()
  if plt is None:
    return
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5),
                                    gridspec_kw={"width_ratios": [3, 1.2]})
  width = 0.8 / len(variants)
  for k, v in enumerate(variants):
    left.bar(np.arange(len(names)) + k * width, [bpb[n, v] for n in names], width, label=v)
  left.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
  left.set_ylabel("held-out bits per byte")
  left.set_title("Same training budget: clean and perturbed text")
  left.set_ylim(0, max(bpb.values()) * 1.25)  # room for the legend above the bars
  left.legend(fontsize=8, loc="upper center", ncol=len(variants))
  right.bar(names, [train_bps[n] / 1000 for n in names], color="tab:gray")
  right.set_ylabel("training kB/s")
  right.set_title("Training throughput")
  right.tick_params(axis="x", rotation=45)
  common.save_figure(fig, path)


if __name__ == "__main__":
  main()
