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
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bytelm  # noqa: E402
from bytelm import generation, hierarchical_generation, models, timing  # noqa: E402
from bytelm.data import bpe, noise, pipeline, sources  # noqa: E402
from bytelm.text import segment  # noqa: E402
from bytelm.text.tokenizer import EOS_ID, ByteTokenizer  # noqa: E402
from bytelm.training import budget, config_file, train_and_evaluate  # noqa: E402

RECIPES = ("bytes_decoder", "hat", "blt", "hnet", "bpe_decoder")
NOISES = (("swap_delete", 0.02), ("swap_delete", 0.05), ("case_flip", 0.05),
          ("whitespace", 0.05))
LANGUAGES = {"en": "embedded:en", "es": "embedded:bible_es", "fr": "embedded:l10n_fr",
             "cs": "embedded:l10n_cs", "pl": "embedded:l10n_pl", "lt": "embedded:l10n_lt",
             "ro": "embedded:l10n_ro", "vi": "embedded:l10n_vi", "code": "embedded:python_docs"}


# ---- recipes ------------------------------------------------------------------------------------


def recipe_config(name: str, workdir: pathlib.Path):
  """The recipe's config, with its fitted parts (entropy model, tokenizer) in its workdir."""
  return budget.prepare(config_file.load(ROOT / "configs" / f"{name}.py"), workdir)


# ---- held-out bits ------------------------------------------------------------------------------


def _rows(pieces_ids: list[np.ndarray], length: int) -> dict[str, np.ndarray]:
  """causal_lm rows: each piece predicted from an eos (a document start)."""
  inputs = np.zeros((len(pieces_ids), length), np.int32)
  targets = np.zeros((len(pieces_ids), length), np.int32)
  for r, ids in enumerate(pieces_ids):
    ids = ids[:length]
    targets[r, :len(ids)] = ids
    inputs[r, :len(ids)] = np.concatenate([[EOS_ID], ids[:-1]])
  return {"inputs": inputs, "targets": targets}


class Scorer:
  """Total bits of a trained recipe on pieces of text."""

  def __init__(self, name, c, workdir, batch_size: int = 16):
    self.name, self.c, self.batch_size = name, c, batch_size
    self.model = bytelm.load_module(workdir)
    self.family = models.family(c.model_family)
    self.tok = budget.tokenizer_of(c, workdir)
    self.segmenter = (segment.Segmenter.from_settings(c.data.segments)
                      if "segments" in c.data else None)
    graphdef, state = nnx.split(self.model)

    @jax.jit
    def ce_sum(state, batch):
      model = nnx.merge(graphdef, state)
      _, metrics = self.family.loss_fn(model, batch)
      return metrics["ce"] * metrics["num_targets"]

    self._ce_sum, self._state = ce_sum, state

  def ids(self, text: str) -> np.ndarray:
    if self.tok is not None:
      return bpe.encode_documents(self.tok, [text])[0]
    return ByteTokenizer().encode(text, add_eos=False)

  def bits(self, pieces: list[str]) -> float:
    all_ids = [self.ids(p) for p in pieces]
    length = self.c.data.input_length
    if self.tok is not None:  # tokens: as long as the longest piece, in steps of 64
      length = -(-max(len(i) for i in all_ids) // 64) * 64
    elif max(len(i) for i in all_ids) > length:
      raise ValueError(f"pieces of {max(len(i) for i in all_ids)} bytes do not fit rows of "
                       f"{length}; lower --piece-bytes")
    total = 0.0
    for lo in range(0, len(all_ids), self.batch_size):
      chunk = all_ids[lo: lo + self.batch_size]
      chunk += [np.zeros(0, np.int32)] * (self.batch_size - len(chunk))  # fixed shapes
      batch = _rows(chunk, length)
      if self.segmenter is not None:
        batch.update(pipeline.segment_rows(batch["targets"], segmenter=self.segmenter,
                                           max_segments=self.c.model.max_segments))
      total += float(self._ce_sum(self._state, {k: jnp.asarray(v) for k, v in batch.items()}))
    return total / math.log(2)

  def bytes_per_segment(self, pieces: list[str]) -> float:
    """Mean bytes per backbone position on pieces: 1 for bytes, per token for BPE."""
    data = [p.encode("utf-8") for p in pieces]
    if self.tok is not None:
      return sum(map(len, data)) / sum(len(self.ids(p)) for p in pieces)
    if self.c.model_family == "decoder":
      return 1.0
    if self.segmenter is not None:
      return sum(map(len, data)) / sum(len(self.segmenter(d)) for d in data)
    batch = _rows([self.ids(p) for p in pieces], self.c.data.input_length)
    _, aux = self.model.forward(jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"]))
    return float(aux["bytes_per_segment"])

  def generator(self, prompt: str, new_bytes: int):
    """A call that generates about new_bytes after prompt (greedy, cached)."""
    if self.c.model_family == "hierarchical":
      return lambda: hierarchical_generation.generate(self.model, prompt, new_bytes,
                                                      segmenter=self.segmenter,
                                                      stop_at_eos=False)
    prompt_ids = [EOS_ID] + list(self.ids(prompt))
    per_token = 1.0 if self.tok is None else self.bytes_per_segment([prompt])
    new = max(1, round(new_bytes / per_token))
    return lambda: generation.generate_decoder_ids(self.model, prompt_ids, new, eos_id=-1)


# ---- the run ------------------------------------------------------------------------------------


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--minutes", type=float, default=4.0, help="training budget per recipe")
  p.add_argument("--budget", choices=("wall", "flops"), default="wall")
  p.add_argument("--recipes", default=",".join(RECIPES))
  p.add_argument("--root", default="workdirs/eval_hierarchical")
  p.add_argument("--timing-steps", type=int, default=8, help="alternating timed calls each")
  p.add_argument("--steps-per-call", type=int, default=1,
                 help="train steps per timed call, synced after the last (an accelerator: 4)")
  p.add_argument("--piece-bytes", type=int, default=240)
  p.add_argument("--eval-bytes", type=int, default=65536)
  p.add_argument("--language-bytes", type=int, default=16384)
  p.add_argument("--generate-bytes", type=int, default=128)
  p.add_argument("--out", default=str(ROOT / "eval" / "results" / "hierarchical"))
  p.add_argument("--batch-size", type=int, default=0,
                 help="rows per step for every recipe (0: each config's own)")
  p.add_argument("--timing-only", action="store_true",
                 help="step 1 alone (e.g. on an accelerator); its last line: throughput_ratio")
  args = p.parse_args()
  names = args.recipes.split(",")
  for n in names:
    if n not in RECIPES:
      raise SystemExit(f"unknown recipe {n!r}; choose from {RECIPES}")
  root = pathlib.Path(args.root)
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.default_backend()}; {datetime.date.today()}")

  # 1. throughput
  configs = {n: recipe_config(n, root / n) for n in names}
  for c in configs.values():
    c.train.batch_size = args.batch_size or c.train.batch_size
  timers = {n: budget.step_timer(configs[n], root / n, args.steps_per_call) for n in names}
  seconds = timing.compare({n: t[0] for n, t in timers.items()}, args.timing_steps)
  train_bps = {n: timers[n][1] / seconds[n] for n in names}
  flops_per_byte = {n: timers[n][2] * args.steps_per_call / timers[n][1] for n in names}
  del timers
  base = "bytes_decoder" if "bytes_decoder" in names else names[0]
  print(f"\n| recipe | train bytes/s | x {base} | FLOPs / byte |\n|---|---|---|---|")
  for n in names:
    print(f"| {n} | {train_bps[n]:,.0f} | {train_bps[n] / train_bps[base]:.2f} | "
          f"{flops_per_byte[n]:,.0f} |")

  if args.timing_only:
    print(f"throughput_ratio={train_bps['hat'] / train_bps[base]:.4f}" if "hat" in names else "")
    return

  # 2. the same budget
  runs = {}
  for n in names:
    c = configs[n]
    if args.budget == "wall":
      budget_bytes = args.minutes * 60 * train_bps[n]
    else:
      budget_bytes = args.minutes * 60 * train_bps[base] * flops_per_byte[base] / flops_per_byte[n]
    steps = budget.steps_for(c, root / n, budget_bytes)
    workdir = root / n
    done = workdir / "eval_summary.json"
    if done.exists() and json.loads(done.read_text())["steps"] == steps:
      runs[n] = json.loads(done.read_text())
    else:
      start = time.perf_counter()
      summary = train_and_evaluate(c, workdir)
      runs[n] = {"steps": steps, "seconds": time.perf_counter() - start,
                 "val_bpb": summary.val_bpb}
      done.write_text(json.dumps(runs[n]))
    print(f"{n}: {steps} steps in {runs[n]['seconds']:.0f} s, trainer's val bpb "
          f"{runs[n]['val_bpb']:.3f}", flush=True)

  # 3. held-out bits, clean and perturbed
  pieces = sources.held_out_pieces("embedded:en", args.piece_bytes, args.eval_bytes)
  variants = {"clean": pieces}
  for kind, rate in NOISES:
    # Extra spaces can push a piece past a byte row (256): cut back, the same for everyone.
    variants[f"{kind} {rate:.0%}"] = [
        noise.perturb(t, kind, rate, seed=i).encode("utf-8")[:255].decode("utf-8", "ignore")
        for i, t in enumerate(pieces)]
  sizes = {v: sum(len(t.encode("utf-8")) for t in texts) for v, texts in variants.items()}
  scorers = {n: Scorer(n, configs[n], root / n) for n in names}
  bpb = {(n, v): scorers[n].bits(texts) / sizes[v] for n in names
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
      per_language[n, lang] = scorers[n].bytes_per_segment(texts)
  print("\nMean bytes per backbone position (segment; BPE: token) on held-out text:\n")
  print("| recipe | " + " | ".join(LANGUAGES) + " |\n|---|" + "---|" * len(LANGUAGES))
  for n in names:
    print(f"| {n} | " + " | ".join(f"{per_language[n, l]:.2f}" for l in LANGUAGES) + " |")
  prompt = pieces[0][:64]
  gen_seconds = timing.compare({n: scorers[n].generator(prompt, args.generate_bytes)
                                for n in names}, repeats=3)
  gen_bps = {n: args.generate_bytes / gen_seconds[n] for n in names}
  print("\n| recipe | generation bytes/s (greedy, cached, 1 sequence) |\n|---|---|")
  for n in names:
    print(f"| {n} | {gen_bps[n]:,.0f} |")

  results = {"date": str(datetime.date.today()), "machine": platform.machine(),
             "cores": os.cpu_count(), "budget": args.budget, "minutes": args.minutes,
             "train_bytes_per_s": train_bps, "flops_per_byte": flops_per_byte, "runs": runs,
             "bpb": {f"{n}|{v}": x for (n, v), x in bpb.items()},
             "bytes_per_segment": {f"{n}|{l}": x for (n, l), x in per_language.items()},
             "generation_bytes_per_s": gen_bps}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(results, indent=1))
  plot(names, variants, bpb, train_bps, out.with_suffix(".png"))

  keys = {"throughput_ratio": train_bps.get("hat", math.nan) / train_bps.get("bytes_decoder",
                                                                            math.nan),
          "bpb_hat": bpb.get(("hat", "clean"), math.nan),
          "bpb_bytes": bpb.get(("bytes_decoder", "clean"), math.nan),
          "bpb_bpe": bpb.get(("bpe_decoder", "clean"), math.nan),
          "noise_rise_hat": rise.get("hat", math.nan),
          "noise_rise_bpe": rise.get("bpe_decoder", math.nan)}
  print(" ".join(f"{k}={v:.4f}" for k, v in keys.items()))


def plot(names, variants, bpb, train_bps, path) -> None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("(matplotlib is not installed: no plot; pip install -e '.[eval]')")
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
  fig.tight_layout()
  tmp = path.with_name(path.stem + ".tmp.png")
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)
  print(f"plot: {path}")


if __name__ == "__main__":
  main()
