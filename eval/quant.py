"""int8 and ternary MrT5 against float32: quality, bytes and speed (bytelm.quant).

  python eval/quant.py [--root workdirs/eval_quant] [--speed-layers 12] [--speed-repeats 5]
  python eval/quant.py --speed-only [--speed-batch 64]     # part 4 alone (e.g. on a GPU)

1. Post-training quantization of the float32 MrT5 of `configs/mrt5.py` (trained into
   ROOT/mrt5 if missing): for int8_weight, int8 (W8A8 with LLM.int8's outlier decomposition,
   the columns searched per call; int8_calibrated: fixed per layer from two training batches)
   and ternary (rounded after the fact: the lower-quality option), validation bits per byte
   (the trainer's measure, soft deletion, on the trainer's validation batches) and its change
   from float32; the quantized layers' weight bytes in memory and the whole model's bytes on
   disk (a float32 export vs the quantized export), as ratios to float32.
2. Outliers: per quantized layer of the int8 model, the fraction of input features with a
   value of magnitude >= 6.0 on the validation batches, and of calls that had any.
3. Quantization-aware ternary training with the same budget: `configs/mrt5.py:ternary` (the
   same steps, batch and data; BitNet's schedule), its validation bits per byte against the
   float32 run's, and its packed export.
4. Speed: the encoder of byt5-small's shape (d_model 1472, d_ff 3584, 6 heads, --speed-layers
   layers; random weights, 8 x 512 bytes) in float32, bfloat16, int8_weight, int8,
   int8_calibrated (outlier columns from another random batch) and ternary, timed in
   alternation (bytelm.timing); ratios to float32 and to bfloat16.
Writes eval/results/quant.json. Last line: int8_bpb_delta, int8_bytes_ratio,
ternary_bytes_ratio, int8_speedup, ternary_bpb_delta (deltas relative).
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
import bytelm
from bytelm import models, timing
from bytelm.models import t5
from bytelm.quant import quantize
from bytelm.nn.quant_dense import QuantDense
from bytelm.runs import data as run_data
from bytelm.runs import workdir as run_dir
from bytelm.training import evaluation, train_unless_finished

MODES = ("int8_weight", "int8", "ternary")


def batches_of(c, workdir, split: str, n: int) -> list[dict]:
  """n batches of the run's data: the trainer's validation batches ("validation") or the first
  training batches ("train")."""
  source = run_data.sources(c, workdir, splits=(split,))[split]
  if split == "validation":
    return list(source.eval_batches(n))
  return [{k: jnp.asarray(v) for k, v in source.batch(i).items()} for i in range(n)]


def validation(model, family, batches) -> dict[str, float]:
  """The trainer's evaluation of model on batches: val_loss, val_bpb."""
  return evaluation.evaluate_model(model, family.loss_fn, batches)


def layer_bytes(model) -> tuple[int, int]:
  """(bytes of the quantized layers' stored weights, float32 bytes of the same weights)."""
  stored = full = 0
  for _, node in nnx.iter_graph(model):
    if isinstance(node, QuantDense):
      arrays = [node.packed[...]] if node.mode == "ternary" else [node.qvalue[...]]
      stored += sum(a.nbytes for a in arrays) + node.scale[...].nbytes
      full += 4 * node.in_features * node.out_features
  return stored, full


def outliers(model, family, batches, threshold: float = 6.0) -> dict[str, dict[str, float]]:
  """Per quantized layer: the fraction of input features that reach threshold in some call,
  and the fraction of calls with any (two validation batches, through QuantDense's calibration
  hook; a call is an example where the encoder maps over the batch, a batch elsewhere)."""
  seen: dict[str, list[np.ndarray]] = {}
  layers = [("/".join(map(str, path)), node) for path, node in nnx.iter_graph(model)
            if isinstance(node, QuantDense)]
  for name, layer in layers:
    layer.recording = lambda colmax_K, name=name: seen.setdefault(name, []).append(
        np.asarray(colmax_K) >= threshold)
  try:
    for batch in batches[:2]:
      jax.block_until_ready(family.loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()}))
    jax.effects_barrier()
  finally:
    for _, layer in layers:
      layer.recording = None
  return {name: {"features": float(np.mean(np.any(masks, axis=0))),
                 "calls": float(np.mean([m.any() for m in masks]))}
          for name, masks in seen.items()}


def speed(layers: int, repeats: int, batch: int = 8) -> dict[str, float]:
  """Median seconds of the byt5-small-shaped encoder's forward per variant."""
  cfg = t5.byt5_small(num_encoder_layers=layers, num_decoder_layers=1)
  ids = jnp.asarray(np.random.default_rng(0).integers(3, 259, (batch, 512)), jnp.int32)
  other = jnp.asarray(np.random.default_rng(1).integers(3, 259, (batch, 512)), jnp.int32)
  fns = {}
  for name in ("float32", "bfloat16") + MODES + ("int8_calibrated",):
    model = t5.T5(cfg.replace(dtype="bfloat16") if name == "bfloat16" else cfg,
                  rngs=nnx.Rngs(0))
    if name == "int8_calibrated":  # outlier columns from another batch
      quantize(model, "int8", calibrate=lambda m: m.encode(other))
    elif name in MODES:
      quantize(model, name)
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, ids, g=graphdef: nnx.merge(g, state).encode(ids))
    fns[name] = lambda fn=fn, state=state: jax.block_until_ready(fn(state, ids))
  return timing.compare(fns, repeats)


def report_speed(args, results: dict) -> dict[str, float]:
  """Part 4: times the variants, prints the table, records it in results."""
  sec = speed(args.speed_layers, args.speed_repeats, args.speed_batch)
  results["speed_seconds"] = sec
  print(f"\nencoder forward on {results['device']}, byt5-small shape, {args.speed_layers} "
        f"layers, {args.speed_batch} x 512 bytes (median of {args.speed_repeats}, alternating):")
  for name, s in sec.items():
    print(f"  {name:15s} {1000 * s:8.1f} ms   x float32 {sec['float32'] / s:.2f}   "
          f"x bfloat16 {sec['bfloat16'] / s:.2f}")
  return sec


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="workdirs/eval_quant")
  p.add_argument("--variant", default="", help="of configs/mrt5.py ('tiny': a smoke test)")
  p.add_argument("--speed-layers", type=int, default=12)
  p.add_argument("--speed-repeats", type=int, default=5)
  p.add_argument("--speed-batch", type=int, default=8, help="examples of 512 bytes")
  p.add_argument("--speed-only", action="store_true",
                 help="only part 4 (no training or data; for an accelerator)")
  p.add_argument("--out", default=str(common.RESULTS / "quant.json"))
  args = p.parse_args()
  root = pathlib.Path(args.root)
  machine = common.start()
  results = {**machine, "args": vars(args), "device": jax.devices()[0].device_kind}
  if args.speed_only:
    sec = report_speed(args, results)
    common.write_json(args.out, results)
    common.last_line({"int8_speedup": sec["float32"] / sec["int8"],
                      "ternary_speedup": sec["float32"] / sec["ternary"],
                      "int8_vs_bf16": sec["bfloat16"] / sec["int8"]}, digits=3)
    return

  # 1. post-training quantization of the float32 run
  c = common.config("mrt5", args.variant)
  workdir = train_unless_finished(c, root / "mrt5")
  family = models.family(c.model_family)
  batches = batches_of(c, workdir, "validation", c.train.eval_batches)
  saved = run_dir.read_config(workdir)
  base = bytelm.load(workdir).module
  fp32_bpb = validation(base, family, batches)["val_bpb"]
  fp32_disk = common.export_bytes(base, saved)
  calibration = batches_of(c, workdir, "train", 2)

  def calibrate(model):  # two training batches through the quantized model
    return [family.loss_fn(model, b)[0] for b in calibration]

  ptq = {}
  for mode in MODES + ("int8_calibrated",):
    kw = {"calibrate": calibrate} if mode == "int8_calibrated" else {}
    model = quantize(bytelm.load(workdir).module, mode.replace("_calibrated", ""), **kw)
    stored, full = layer_bytes(model)
    bpb = validation(model, family, batches)["val_bpb"]
    ptq[mode] = {"val_bpb": bpb, "bpb_delta": bpb / fp32_bpb - 1,
                 "layer_bytes_ratio": stored / full,
                 "disk_bytes_ratio": common.export_bytes(model, saved) / fp32_disk}
  results["ptq"] = {"float32_val_bpb": fp32_bpb, **ptq}
  print(f"\npost-training, MrT5 of configs/mrt5.py (validation bpb, float32 {fp32_bpb:.4f}):")
  print(f"{'mode':12s} {'val bpb':>8s} {'change':>8s} {'layer bytes':>12s} {'disk':>8s}")
  for mode, r in ptq.items():
    print(f"{mode:12s} {r['val_bpb']:8.4f} {100 * r['bpb_delta']:+7.2f}% "
          f"{r['layer_bytes_ratio']:11.4f}x {r['disk_bytes_ratio']:7.3f}x")

  # 2. outliers
  found = outliers(quantize(bytelm.load(workdir).module, "int8"), family, batches)
  results["outliers"] = found
  print("\nint8 outliers (|x| >= 6): fraction of input features / of calls, per layer")
  for name, r in found.items():
    print(f"  {name:40s} {r['features']:.4f} / {r['calls']:.2f}")

  # 3. ternary, trained with quantization
  ct = common.config("mrt5", f"{args.variant}_ternary" if args.variant else "ternary")
  tdir = train_unless_finished(ct, root / "mrt5_ternary")
  ternary = quantize(bytelm.load(tdir).module, "ternary")
  t_bpb = validation(ternary, family, batches)["val_bpb"]
  stored, full = layer_bytes(ternary)
  results["ternary_qat"] = {"val_bpb": t_bpb, "bpb_delta": t_bpb / fp32_bpb - 1,
                            "layer_bytes_ratio": stored / full,
                            "disk_bytes_ratio": common.export_bytes(
                                ternary, run_dir.read_config(tdir)) / fp32_disk,
                            "steps": ct.train.steps, "lr": ct.opt.lr}
  r = results["ternary_qat"]
  print(f"\nternary MrT5 trained with quantization ({ct.train.steps} steps, peak lr {ct.opt.lr}): "
        f"validation bpb {t_bpb:.4f} vs float32 {fp32_bpb:.4f} ({100 * r['bpb_delta']:+.2f}%); "
        f"packed layers {r['layer_bytes_ratio']:.4f}x, on disk {r['disk_bytes_ratio']:.3f}x")

  sec = report_speed(args, results)
  common.write_json(args.out, results)
  common.last_line({"int8_bpb_delta": f"{ptq['int8']['bpb_delta']:.5f}",
                    "int8_bytes_ratio": f"{ptq['int8']['layer_bytes_ratio']:.4f}",
                    "ternary_bytes_ratio": f"{results['ternary_qat']['layer_bytes_ratio']:.4f}",
                    "int8_speedup": f"{sec['float32'] / sec['int8']:.3f}",
                    "ternary_bpb_delta": f"{results['ternary_qat']['bpb_delta']:.5f}"})


if __name__ == "__main__":
  main()
