"""MrT5 against its ByT5 baseline: loss, deletion and inference time for several deletion targets.

  python eval/mrt5.py [--deltas 0.3,0.5,0.7] [--steps 600] [--root workdirs/eval_mrt5]

Trains, with the same budget (configs/mrt5.py's default: model, optimizer, steps, batch), a
ByT5 baseline (the same model without the gate, softmax1 like MrT5) and one MrT5 per target
deletion delta on the embedded multilingual corpus, then measures on held-out bytes:
- validation loss and bits per byte with hard deletion (what inference computes);
- the deletion ratio, overall and per language / source of the corpus;
- encoder and whole-model (teacher-forced encoder + decoder) inference time at --time-bytes
  input bytes, as a ratio to the baseline, all models timed in alternation in this one run.
A finished run in --root is reused (delete it to retrain). Writes a PNG of loss against
runtime (--plot). The last line holds delta 0.5's figures: deletion, encoder_speedup,
model_speedup, loss_increase (relative to the baseline's validation loss).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
import bytelm
from bytelm import timing
from bytelm.data import sources
from bytelm.models import mrt5, t5
from bytelm.nn.compiled import Compiled, jit_call
from bytelm.runs import data as run_data
from bytelm.training import budget, reuse, train_unless_finished


def _mrt5_config(delta: float | None, steps: int | None, data: str):
  c = common.config("mrt5")
  c.data.train = data
  if steps:
    budget.set_steps(c, steps)  # warmup, evaluation and checkpoints fitted to the steps
    c.model.regularizer_delay = min(c.model.regularizer_delay, steps // 3)
  if delta is not None:
    c.model.target_deletion = delta
    return c
  # The baseline: the same config without the gate (T5Config's fields only, softmax1 kept).
  t5_fields = {f.name for f in dataclasses.fields(t5.T5Config)}
  c.model_family = "t5"
  c.model = ml_collections.ConfigDict({k: v for k, v in c.model.items() if k in t5_fields})
  c.opt.lr_scale = ml_collections.ConfigDict()
  c.opt.sgd = ml_collections.ConfigDict()
  return c


def _held_out(config, workdir, data: str, batch_size: int, input_length: int):
  """The validation batches of `data` as the run's objective makes them, at another size."""
  c = copy.deepcopy(config)
  c.data.train, c.data.validation = data, ""
  c.data.input_length, c.data.target_length = input_length, None  # targets from the noise
  c.train.batch_size = batch_size
  return run_data.sources(c, workdir, splits=("validation",))["validation"]


def _deleted(model, inputs_BT) -> float:
  mask_BT = inputs_BT != 0
  _, gate_BT = jit_call(model, "gate_prefix", inputs_BT, mask_BT)
  return float(mrt5.deleted_fraction(gate_BT, mask_BT, model.config.threshold))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--deltas", default="0.3,0.5,0.7")
  p.add_argument("--steps", type=int, default=None, help="default: configs/mrt5.py's")
  p.add_argument("--data", default="embedded:multilingual")
  p.add_argument("--root", default=str(common.ROOT / "workdirs" / "eval_mrt5"))
  p.add_argument("--time-bytes", type=int, default=1024)
  p.add_argument("--time-batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--bucket-multiple", type=int, default=None,
                 help="hard deletion's bucket size at inference (default: each run's own)")
  p.add_argument("--plot", default=str(common.RESULTS / "mrt5_loss_vs_runtime.png"))
  args = p.parse_args()
  deltas = [float(d) for d in args.deltas.split(",")]
  root = pathlib.Path(args.root)
  common.start()

  # -- train (or reuse) every run with the same budget --
  runs = {"byt5": None, **{f"mrt5_{d:g}": d for d in deltas}}
  results, models = {}, {}
  for name, delta in runs.items():
    config = _mrt5_config(delta, args.steps, args.data)
    print(f"== {name}: {config.train.steps} steps, {config.data.train}", flush=True)
    try:
      workdir = train_unless_finished(config, root / name)
    except reuse.TrainingStopped as e:  # Ctrl-C / SIGTERM: the checkpoint is saved
      sys.exit(f"{name}: {e}")
    last = reuse.last_evaluation(workdir)  # MrT5's report adds the hard-deletion loss
    results[name] = {"val_loss": last.get("hard_val_loss", last["val_loss"]),
                     "soft_val_loss": last["val_loss"]}
    runtime = ({} if delta is None or args.bucket_multiple is None else
               {"bucket_multiple": args.bucket_multiple})
    models[name] = bytelm.load(workdir, **runtime).module

  # -- deletion per language, on held-out bytes of the trained length --
  langs = sources.embedded_names().get(args.data.removeprefix("embedded:"), [])
  for name, delta in runs.items():
    if delta is None:
      continue
    per_lang = {}
    for lang in langs:
      src = _held_out(config, root / name, f"embedded:{lang}", config.train.batch_size,
                      config.data.input_length)
      fracs = [_deleted(models[name], jnp.asarray(b["inputs"])) for b in src.eval_batches(4)]
      per_lang[lang] = float(np.mean(fracs))
    results[name]["per_language"] = per_lang

  # -- inference time at --time-bytes, all models in alternation --
  src = _held_out(config, root / "byt5", args.data, args.time_batch, args.time_bytes)
  batch = next(iter(src.eval_batches(1)))
  inputs_BT = jnp.asarray(batch["inputs"])
  mask_BT = inputs_BT != 0
  dec_BS = t5.shift_right(jnp.asarray(batch["targets"]))

  # Each model split once (as bytelm.generate does), so no timed call pays for a split.
  compiled = {name: Compiled(m) for name, m in models.items()}

  def encoder(name):
    model, c = models[name], compiled[name]
    return lambda: jax.block_until_ready(model.encode_for_inference(inputs_BT, mask_BT, c))

  def whole(name):
    model, c = models[name], compiled[name]

    def run():
      enc, bias = model.encode_for_inference(inputs_BT, mask_BT, c)
      return jax.block_until_ready(c("decode_memory", dec_BS, enc, bias))
    return run

  enc_times = timing.compare({n: encoder(n) for n in models}, args.repeats)
  model_times = timing.compare({n: whole(n) for n in models}, args.repeats)
  for name, delta in runs.items():
    r = results[name]
    r["encoder_ms"] = 1e3 * enc_times[name] / args.time_batch
    r["model_ms"] = 1e3 * model_times[name] / args.time_batch
    r["encoder_speedup"] = enc_times["byt5"] / enc_times[name]
    r["model_speedup"] = model_times["byt5"] / model_times[name]
    r["deletion"] = 0.0 if delta is None else _deleted(models[name], inputs_BT)
    r["loss_increase"] = r["val_loss"] / results["byt5"]["val_loss"] - 1

  # -- report --
  cfg = models["byt5"].config
  print(f"\nMrT5 vs ByT5, same budget ({args.steps or 'config'} steps), data {args.data}; "
        f"d_model {cfg.d_model}, {cfg.num_encoder_layers}/{cfg.num_decoder_layers} layers; "
        f"timing: batch {args.time_batch} x {args.time_bytes} input bytes, "
        f"{dec_BS.shape[1]} target bytes, median of {args.repeats}")
  header = ("| model | val loss (hard) | bpb | loss vs ByT5 | deletion @1024 | encoder ms/ex | "
            "encoder speed-up | model ms/ex | model speed-up |")
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  for name, r in results.items():
    print(f"| {name} | {r['val_loss']:.4f} | {r['val_loss'] / np.log(2):.3f} | "
          f"{100 * r['loss_increase']:+.1f}% | {r['deletion']:.3f} | {r['encoder_ms']:.1f} | "
          f"{r['encoder_speedup']:.2f}x | {r['model_ms']:.1f} | {r['model_speedup']:.2f}x |")
  if langs:
    print("\nDeletion per source (held-out, trained length):\n")
    print("| model | " + " | ".join(langs) + " |")
    print("|" + "---|" * (len(langs) + 1))
    for name, r in results.items():
      if "per_language" in r:
        print(f"| {name} | " + " | ".join(f"{r['per_language'][l]:.2f}" for l in langs) + " |")

  _plot(results, args.plot)
  key = "mrt5_0.5" if "mrt5_0.5" in results else next(n for n in results if n != "byt5")
  r = results[key]
  common.last_line({"deletion": f"{r['deletion']:.3f}",
                    "encoder_speedup": f"{r['encoder_speedup']:.3f}",
                    "model_speedup": f"{r['model_speedup']:.3f}",
                    "loss_increase": f"{r['loss_increase']:.4f}"})


def _plot(results, path):
  plt = common.pyplot()
  if plt is None:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, r in results.items():
    ax.scatter(r["model_ms"], r["val_loss"], color="k" if name == "byt5" else "C0")
    label = name if name == "byt5" else f"{name} (deletes {r['deletion']:.0%})"
    ax.annotate(label, (r["model_ms"], r["val_loss"]), textcoords="offset points", xytext=(5, 5))
  ax.set_xlabel("inference time, encoder + decoder (ms per example)")
  ax.set_ylabel("validation loss, hard deletion (nats)")
  ax.set_title("MrT5 vs ByT5: loss against runtime")
  common.save_figure(fig, path)


if __name__ == "__main__":
  main()
