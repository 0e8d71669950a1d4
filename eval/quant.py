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
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bytelm  # noqa: E402
from bytelm import models, timing  # noqa: E402
from bytelm.models import t5  # noqa: E402
from bytelm.quant import quantize  # noqa: E402
from bytelm.nn.quant_dense import QuantDense  # noqa: E402
from bytelm.runs import data as run_data  # noqa: E402
from bytelm.runs import export  # noqa: E402
from bytelm.runs import workdir as workdir_lib  # noqa: E402
from bytelm.training import config_file, train_and_evaluate  # noqa: E402

MODES = ("int8_weight", "int8", "ternary")


def trained(arg: str | None, workdir: pathlib.Path):
  """(config, workdir) of configs/mrt5.py[:arg], trained unless it already holds a finished
  run."""
  c = config_file.load(ROOT / "configs" / "mrt5.py", arg)
  if not workdir_lib.evaluated_at(workdir, c.train.steps):
    print(f"training configs/mrt5.py:{arg or ''} into {workdir}", flush=True)
    train_and_evaluate(c, workdir)
  return c, workdir


def batches_of(c, split: str, n: int) -> list[dict]:
  """n batches of the run's data: the trainer's validation batches ("validation") or the first
  training batches ("train")."""
  source = run_data.sources(c, splits=(split,))[split]  # MrT5 fits nothing: no workdir
  if split == "validation":
    return list(source.eval_batches(n))
  return [{k: jnp.asarray(v) for k, v in source.batch(i).items()} for i in range(n)]


def val_bpb(model, family, batches) -> float:
  """The trainer's validation bits per byte: summed cross-entropy / targets / ln 2."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def sums(state, batch):
    _, m = family.loss_fn(nnx.merge(graphdef, state), batch)
    return m["ce"] * m["num_targets"], m["num_targets"]

  ce, n = zip(*(jax.device_get(sums(state, b)) for b in batches))
  return float(sum(ce) / sum(n) / np.log(2))


def layer_bytes(model) -> tuple[int, int]:
  """(bytes of the quantized layers' stored weights, float32 bytes of the same weights)."""
  stored = full = 0
  for _, node in nnx.iter_graph(model):
    if isinstance(node, QuantDense):
      arrays = [node.packed[...]] if node.mode == "ternary" else [node.qvalue[...]]
      stored += sum(a.nbytes for a in arrays) + node.scale[...].nbytes
      full += 4 * node.in_features * node.out_features
  return stored, full


def disk_bytes(model, config: dict) -> int:
  with tempfile.TemporaryDirectory() as tmp:
    out = export.export(model, config, pathlib.Path(tmp) / "m", dtype="float32")
    return sum(p.stat().st_size for p in out.iterdir())


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


def write(results: dict, path: str) -> None:
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
  tmp.replace(out)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="workdirs/eval_quant")
  p.add_argument("--variant", default="", help="of configs/mrt5.py ('tiny': a smoke test)")
  p.add_argument("--speed-layers", type=int, default=12)
  p.add_argument("--speed-repeats", type=int, default=5)
  p.add_argument("--speed-batch", type=int, default=8, help="examples of 512 bytes")
  p.add_argument("--speed-only", action="store_true",
                 help="only part 4 (no training or data; for an accelerator)")
  p.add_argument("--out", default=str(ROOT / "eval" / "results" / "quant.json"))
  args = p.parse_args()
  root = pathlib.Path(args.root)
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.default_backend()}; {datetime.date.today()}")
  results = {"date": str(datetime.date.today()), "args": vars(args),
             "device": jax.devices()[0].device_kind}
  if args.speed_only:
    sec = report_speed(args, results)
    write(results, args.out)
    print(f"int8_speedup={sec['float32'] / sec['int8']:.3f} "
          f"ternary_speedup={sec['float32'] / sec['ternary']:.3f} "
          f"int8_vs_bf16={sec['bfloat16'] / sec['int8']:.3f}")
    return

  # 1. post-training quantization of the float32 run
  c, workdir = trained(args.variant or None, root / "mrt5")
  family = models.family(c.model_family)
  batches = batches_of(c, "validation", c.train.eval_batches)
  saved = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  base = bytelm.load_module(workdir)
  fp32_bpb = val_bpb(base, family, batches)
  fp32_disk = disk_bytes(base, saved)
  calibration = batches_of(c, "train", 2)

  def calibrate(model):  # two training batches through the quantized model
    return [family.loss_fn(model, b)[0] for b in calibration]

  ptq = {}
  for mode in MODES + ("int8_calibrated",):
    kw = {"calibrate": calibrate} if mode == "int8_calibrated" else {}
    model = quantize(bytelm.load_module(workdir), mode.replace("_calibrated", ""), **kw)
    stored, full = layer_bytes(model)
    bpb = val_bpb(model, family, batches)
    ptq[mode] = {"val_bpb": bpb, "bpb_delta": bpb / fp32_bpb - 1,
                 "layer_bytes_ratio": stored / full,
                 "disk_bytes_ratio": disk_bytes(model, saved) / fp32_disk}
  results["ptq"] = {"float32_val_bpb": fp32_bpb, **ptq}
  print(f"\npost-training, MrT5 of configs/mrt5.py (validation bpb, float32 {fp32_bpb:.4f}):")
  print(f"{'mode':12s} {'val bpb':>8s} {'change':>8s} {'layer bytes':>12s} {'disk':>8s}")
  for mode, r in ptq.items():
    print(f"{mode:12s} {r['val_bpb']:8.4f} {100 * r['bpb_delta']:+7.2f}% "
          f"{r['layer_bytes_ratio']:11.4f}x {r['disk_bytes_ratio']:7.3f}x")

  # 2. outliers
  found = outliers(quantize(bytelm.load_module(workdir), "int8"), family, batches)
  results["outliers"] = found
  print("\nint8 outliers (|x| >= 6): fraction of input features / of calls, per layer")
  for name, r in found.items():
    print(f"  {name:40s} {r['features']:.4f} / {r['calls']:.2f}")

  # 3. ternary, trained with quantization
  ct, tdir = trained(f"{args.variant}_ternary" if args.variant else "ternary",
                     root / "mrt5_ternary")
  ternary = quantize(bytelm.load_module(tdir), "ternary")
  t_bpb = val_bpb(ternary, family, batches)
  stored, full = layer_bytes(ternary)
  tsaved = json.loads((tdir / "config.json").read_text(encoding="utf-8"))
  results["ternary_qat"] = {"val_bpb": t_bpb, "bpb_delta": t_bpb / fp32_bpb - 1,
                            "layer_bytes_ratio": stored / full,
                            "disk_bytes_ratio": disk_bytes(ternary, tsaved) / fp32_disk,
                            "steps": ct.train.steps, "lr": ct.opt.lr}
  r = results["ternary_qat"]
  print(f"\nternary MrT5 trained with quantization ({ct.train.steps} steps, peak lr {ct.opt.lr}): "
        f"validation bpb {t_bpb:.4f} vs float32 {fp32_bpb:.4f} ({100 * r['bpb_delta']:+.2f}%); "
        f"packed layers {r['layer_bytes_ratio']:.4f}x, on disk {r['disk_bytes_ratio']:.3f}x")

  sec = report_speed(args, results)
  write(results, args.out)
  print(f"int8_bpb_delta={ptq['int8']['bpb_delta']:.5f} "
        f"int8_bytes_ratio={ptq['int8']['layer_bytes_ratio']:.4f} "
        f"ternary_bytes_ratio={results['ternary_qat']['layer_bytes_ratio']:.4f} "
        f"int8_speedup={sec['float32'] / sec['int8']:.3f} "
        f"ternary_bpb_delta={results['ternary_qat']['bpb_delta']:.5f}")


if __name__ == "__main__":
  main()
