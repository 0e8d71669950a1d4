"""Throughput of bytelm's T5 against Hugging Face's PyTorch T5 at the same config, in one run.

  python eval/speed.py --what forward     # encoder-decoder forward: input bytes/s
  python eval/speed.py --what generate    # greedy generation with the KV cache: new bytes/s
  python eval/speed.py --what train_step  # one AdamW step, 192 target bytes: bytes/s

Defaults are the issue's benchmark shape: preset `mini` (d_model 256, d_ff 640, 4 heads x 64,
6 encoder / 2 decoder layers), batch 8, 1024 input bytes, 128 target / new bytes, fp32;
`--bf16` (or `--hf-bf16`) runs both sides in bfloat16: bytelm's compute dtype, Hugging Face
under `torch.autocast("cpu", dtype=torch.bfloat16)`, float32 weights on both.
Hugging Face runs when `torch` and `transformers` are installed (`--no-hf` skips it); both sides
get the same weights (through `bytelm.convert.save_hf`), and timings alternate between the two
sides so machine noise hits both alike. Generation is forced to produce exactly `--new-bytes`
bytes on both sides (eos suppressed until then), so the work is identical. A train step is the
trainer's own jitted `train_step` (loss, gradients, AdamW update) against HF's forward with
labels, backward and `torch.optim.AdamW.step`; its bytes/s counts input plus target bytes.

Each figure is also read against the machine's own limit, measured in the same run: the product
of two 2048 x 2048 matrices compiled by XLA in the run's dtype (`bytelm.machine.matmul_peak`;
all three dtypes are printed). `peak_fraction` is the model's FLOP/s over that peak: the one
figure that compares across hosts. Model FLOPs are counted from the config (`model_flops`: every
matmul of the teacher-forced forward, 2 per multiply-add, attention over all positions; a train
step 3x the forward; greedy generation the forward over the new bytes, which the KV cache
computes once), the same count for both sides.

The last line holds the headline figures as key=value pairs, ratio_vs_hf = bytelm / HF, and
the machine (cpu=, amx=, avx512_bf16=).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
from bytelm import convert, generation, machine
from bytelm.models import calibration, t5
from bytelm.nn import batching, cpu_attention
from bytelm.training import trainer

LR = 1e-4  # AdamW learning rate on both sides (the value does not change the cost)


def _timed(fn, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def model_flops(cfg, what: str, batch: int, input_bytes: int, new_bytes: int) -> float:
  """FLOPs of one call of `what` on a T5 config (see the module docstring)."""
  d, hd, ff, vocab = cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size
  t, s = input_bytes, new_bytes
  mlp = 3 * d * ff  # gated GELU: two input projections and one output, multiply-adds a token
  encoder = t * (4 * d * hd + mlp + 2 * t * hd)  # projections, MLP, scores and values
  decoder = (s * (4 * d * hd + 2 * d * hd + mlp + 2 * s * hd + 2 * t * hd)  # self, cross q/o
             + t * 2 * d * hd)  # cross-attention keys and values of the encoder's output
  forward = 2 * batch * (cfg.num_encoder_layers * encoder + cfg.num_decoder_layers * decoder
                         + s * d * vocab)
  return 3 * forward if what == "train_step" else forward


def _bytelm_runner(model, what, inputs_BT, targets_BS, new_bytes):
  if what == "train_step":
    optimizer = nnx.Optimizer(model, optax.adamw(LR), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    step = jax.jit(functools.partial(trainer.train_step, graphdef=graphdef, loss_fn=t5.loss_fn,
                                     schedule=lambda _: LR, z_loss=0.0), donate_argnums=0)
    batch = {"inputs": inputs_BT, "targets": targets_BS}
    holder = {"state": jax.tree.map(jnp.copy, state)}  # the model keeps its own arrays

    def run():
      holder["state"], metrics = step(holder["state"], batch)
      return float(metrics["loss"])  # waits for the whole step
    return run
  if what == "forward":
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, x, y: nnx.merge(graphdef, st)(x, t5.shift_right(y)))
    return lambda: fwd(state, inputs_BT, targets_BS).block_until_ready()
  return lambda: np.asarray(generation.encoder_decoder_ids(  # np.asarray waits for the result
      model, inputs_BT, max_new_bytes=new_bytes, min_new_bytes=new_bytes, method="greedy"))


def _hf_runner(model, cfg, what, inputs_BT, targets_BS, new_bytes, bf16: bool = False):
  """The same weights in Hugging Face's T5ForConditionalGeneration, or None without torch;
  with bf16, every call under torch.autocast("cpu", bfloat16) (weights stay float32, as ours)."""
  try:
    import torch
    import transformers
  except ImportError:
    return None, None
  with tempfile.TemporaryDirectory() as tmp:
    convert.save_hf(model, dataclasses.replace(cfg, dtype="float32"), tmp)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp).eval()
  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
  x = torch.from_numpy(np.array(inputs_BT)).long()
  mask = (x != cfg.pad_id).long()
  if what == "train_step":
    hf.train()  # dropout is 0 in the preset, as on our side
    optimizer = torch.optim.AdamW(hf.parameters(), lr=LR)
    labels = torch.from_numpy(np.array(targets_BS)).long()

    def run():
      with autocast():
        loss = hf(input_ids=x, attention_mask=mask, labels=labels).loss
      loss.backward()
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)
      return float(loss)
  elif what == "forward":
    y = torch.from_numpy(np.array(t5.shift_right(targets_BS))).long()

    def run():
      with torch.no_grad(), autocast():
        hf(input_ids=x, attention_mask=mask, decoder_input_ids=y)
  else:
    def run():
      with torch.no_grad(), autocast():
        out = hf.generate(input_ids=x, attention_mask=mask, max_new_tokens=new_bytes,
                          min_new_tokens=new_bytes, do_sample=False, num_beams=1)
      return out[:, 1:].numpy()  # drop the decoder start id
  return run, f"torch {torch.__version__}, transformers {transformers.__version__}, " \
              f"{torch.get_num_threads()} threads{', bf16 autocast' if bf16 else ''}"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--what", choices=("forward", "generate", "train_step"), default="generate")
  p.add_argument("--preset", default="mini", choices=sorted(t5.PRESETS))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--input-bytes", type=int, default=1024)
  p.add_argument("--new-bytes", type=int, default=None,
                 help="new bytes (generate) or target bytes; default 128, 192 for train_step")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face side")
  p.add_argument("--bf16", "--hf-bf16", action="store_true",
                 help="both sides in bfloat16: bytelm's compute dtype (parameters float32), "
                      "Hugging Face under torch.autocast('cpu', bfloat16); like with like")
  args = p.parse_args()
  if args.new_bytes is None:
    args.new_bytes = 192 if args.what == "train_step" else 128  # the issues' benchmark shapes

  common.start()
  peaks = {d: machine.matmul_peak(d) for d in ("float32", "bfloat16", "int8")}
  print("machine peak (XLA, 2048 x 2048 products): " + ", ".join(
      f"{d} {v / 1e9:,.0f} G{'OP' if d == 'int8' else 'FLOP'}/s" for d, v in peaks.items()))
  # this machine's choices, before compiling: the attention kernels, then the batching
  print(cpu_attention.describe())
  print(batching.prepare(calibration.t5_gradients, calibration.t5_forward))
  dtype = "bfloat16" if args.bf16 else "float32"
  cfg = dataclasses.replace(t5.preset(args.preset), dtype=dtype)
  model = t5.T5(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  # Random bytes 3..258, no padding: the worst case for both sides.
  inputs_BT = jnp.asarray(rng.integers(3, 259, (args.batch, args.input_bytes)), jnp.int32)
  targets_BS = jnp.asarray(rng.integers(3, 259, (args.batch, args.new_bytes)), jnp.int32)
  unit, unit_name = {
      "forward": (args.batch * args.input_bytes, "input bytes/s"),
      "generate": (args.batch * args.new_bytes, "new bytes/s"),
      "train_step": (args.batch * (args.input_bytes + args.new_bytes), "input+target bytes/s"),
  }[args.what]

  ours = _bytelm_runner(model, args.what, inputs_BT, targets_BS, args.new_bytes)
  hf, hf_desc = (None, None) if args.no_hf else _hf_runner(
      model, cfg, args.what, inputs_BT, targets_BS, args.new_bytes, bf16=args.bf16)

  start = time.perf_counter()
  ours_out = ours()  # compile + first run
  compile_s = time.perf_counter() - start
  if hf is not None:
    hf_out = hf()  # warm-up; with the same weights greedy outputs must agree
    if args.what == "generate":
      agree = float(np.mean(ours_out == hf_out))
    elif args.what == "train_step":  # same weights, same batch: the first losses must agree
      loss_diff = abs(ours_out - hf_out)
  times_ours, times_hf = [], []
  for _ in range(args.repeats):  # alternate so machine noise hits both sides alike
    times_ours += _timed(ours, 1)
    if hf is not None:
      # PyTorch's OpenMP workers keep spinning for a while after an op and would steal the
      # cores from whatever runs next; a pause lets them sleep before either side is timed.
      time.sleep(1.0)
      times_hf += _timed(hf, 1)
      time.sleep(1.0)

  print(f"bytelm speed: {args.what}, preset {args.preset} (d_model {cfg.d_model}, d_ff {cfg.d_ff}, "
        f"{cfg.num_heads}x{cfg.d_kv} heads, {cfg.num_encoder_layers}/{cfg.num_decoder_layers} "
        f"layers), batch {args.batch}, {args.input_bytes} input bytes, {args.new_bytes} "
        f"{'new' if args.what == 'generate' else 'target'} bytes, {dtype}")
  t_ours = statistics.median(times_ours)
  print(f"bytelm: {t_ours:.3f} s/call (median of {args.repeats}; first call with compile "
        f"{compile_s:.1f} s) -> {unit / t_ours:,.0f} {unit_name}")
  flops = model_flops(cfg, args.what, args.batch, args.input_bytes, args.new_bytes)
  peak = peaks[dtype]  # each dtype against the machine's limit in that dtype
  print(f"model: {flops / 1e9:.1f} GFLOP a call; bytelm {flops / t_ours / 1e9:.1f} GFLOP/s, "
        f"{flops / t_ours / peak:.1%} of the {dtype} peak")
  fields = {"what": args.what, "preset": args.preset, "batch": args.batch, "dtype": dtype,
            "bytelm_bytes_per_s": round(unit / t_ours, 1),
            "peak_fraction": round(flops / t_ours / peak, 4),
            "peak_gflops": round(peak / 1e9, 1)}
  if hf is not None:
    t_hf = statistics.median(times_hf)
    print(f"hf ({hf_desc}): {t_hf:.3f} s/call -> {unit / t_hf:,.0f} {unit_name}")
    print(f"ratio bytelm / hf: {t_hf / t_ours:.2f}x")
    fields.update(hf_bytes_per_s=round(unit / t_hf, 1), ratio_vs_hf=round(t_hf / t_ours, 3),
                  hf_peak_fraction=round(flops / t_hf / peak, 4))
    if args.what == "generate":
      print(f"greedy outputs identical to hf's for {agree:.1%} of the generated bytes")
      fields["agree_with_hf"] = round(agree, 4)
    elif args.what == "train_step":
      print(f"first-step loss: bytelm {ours_out:.6f}, hf {hf_out:.6f}")
      fields["first_loss_diff"] = float(f"{loss_diff:.2e}")
  else:
    print("hf: skipped (install torch and transformers for the side-by-side)")
  common.last_line(fields, digits=None)


if __name__ == "__main__":
  main()
