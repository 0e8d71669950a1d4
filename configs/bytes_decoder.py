"""A decoder-only byte LM (the flat baseline of the hierarchical models) on the embedded corpus.

  python train.py --config configs/bytes_decoder.py [--workdir DIR] [--config.train.steps=100]

Default: T5's blocks as a causal stack (d_model 256, d_ff 640, 4 heads x 64, 4 layers,
bytelm.models.decoder), 600 steps of 16 x 256 bytes of `embedded:en` with the "causal_lm"
objective; validation bits per byte on the held-out split. Measured 2026-11-26 on the 2-core CI
CPU: 6m03s alone, validation 2.459 nats = 3.548 bits per byte (the unigram byte model of the same
text: 4.824). `:tiny` is what the tests use.

`:gpu` is the same comparison at a size for one accelerator: d_model 512, d_ff 1280, 8 heads x
64, 8 layers (25M parameters), bf16 matmuls (model.dtype; parameters and optimizer state stay
float32), 1,000 steps of 256 x 256 bytes (64 MB, ~4 passes over embedded:en's 15 MB: give it
more text with --config.data.train for longer runs). configs/bpe_decoder.py, hat.py, blt.py and
hnet.py have a `:gpu` of the same width, depth and batch. Not yet timed on an accelerator.
"""

import dataclasses

import ml_collections

from bytelm.models import decoder, t5
from bytelm.quant import recipe
from bytelm.training import config_file


# What --config configs/bytes_decoder.py:VARIANT accepts ("default": no variant); README lists them.
VARIANTS = ("default", "tiny", "gpu", "ternary", "tiny_ternary", "gpu_ternary")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config_file.check_variant(arg, VARIANTS, __file__)
  variant, ternary = recipe.split_variant(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""  # a bytelm workdir of the same family to start from
  # A workdir that already holds a run: resume it (only with that run's config, up to
  # bytelm.runs.workdir.SAFE_TO_CHANGE); False: refuse it instead (nothing is ever deleted).
  c.resume = True
  c.model_family = "decoder"
  shape = dataclasses.asdict(t5.preset("tiny" if variant == "tiny" else "mini"))
  shape.update(num_encoder_layers=0, num_decoder_layers=2 if variant == "tiny" else 4)
  if variant == "gpu":  # twice the width and depth; bf16 pays on tensor cores, not on a CPU
    shape.update(d_model=512, d_ff=1280, num_heads=8, num_decoder_layers=8, dtype="bfloat16")
  c.model = ml_collections.ConfigDict(dataclasses.asdict(decoder.DecoderConfig(**shape)))

  c.data = ml_collections.ConfigDict()
  c.data.train = "embedded:en"  # embedded:<group|name>, file:<glob>, bytes:<glob>,
  # hf:<dataset>[:<config>], or a mixture "embedded:en@0.3,file:web/*.txt@0.7" (README)
  c.data.validation = ""  # empty: the validation split of data.train
  # Text that is not valid UTF-8: "error" (names the file and offset), "replace" (U+FFFD) or
  # "raw" (trained on as bytes, like a bytes: source).
  c.data.invalid_utf8 = "error"
  c.data.objective = "causal_lm"
  c.data.input_length = 256
  c.data.target_length = ml_collections.config_dict.placeholder(int)
  c.data.noise_density = 0.15  # unused by causal_lm; the trainer's data contract
  c.data.mean_noise_span_length = 20.0

  c.opt = ml_collections.ConfigDict()
  c.opt.name = "adamw"
  c.opt.lr = 2e-3
  c.opt.schedule = "cosine"
  c.opt.warmup_steps = 50
  c.opt.final_lr_fraction = 0.1
  c.opt.b1 = 0.9
  c.opt.b2 = 0.98
  c.opt.eps = 1e-9
  c.opt.weight_decay = 0.01
  c.opt.grad_clip = 1.0
  c.opt.z_loss = 0.0
  c.opt.lr_scale = ml_collections.ConfigDict()
  c.opt.sgd = ml_collections.ConfigDict()

  c.train = ml_collections.ConfigDict()
  c.train.steps = 600
  c.train.batch_size = 16
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 16
  c.train.prefetch = 2  # batches built ahead while the device steps
  # Optimizer steps per compiled call (lax.scan), between log, eval and checkpoint steps: 4 is
  # for a step this small where it is launch-bound (a GPU); on the 2-core CI CPU 4 also took
  # 13-28% less time a step (BENCHMARKS.md, launch overhead). A divisor of log_every.
  c.train.steps_per_call = 1

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 200
  c.ckpt.keep = 2

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  c.distributed = ml_collections.ConfigDict(  # "", 0, -1: unset (configs/byt5.py says more)
      {"coordinator_address": "", "num_processes": 0, "process_id": -1})

  if variant == "tiny":
    c.data.input_length = 32
    c.train.update(steps=4, batch_size=4, log_every=2, eval_every=4, eval_batches=1)
    c.opt.warmup_steps = 1
    c.ckpt.every = 4
  elif variant == "gpu":
    c.opt.update(lr=1e-3, warmup_steps=100)  # half the CPU recipe's: twice as wide and deep
    # 4 x 256 rows: ~40% of the validation split (the default's 16 x 16 rows: 10%).
    c.train.update(steps=1000, batch_size=256, log_every=50, eval_every=250, eval_batches=4)
    c.ckpt.every = 250
  if ternary:
    recipe.make_ternary(c)
  return c
