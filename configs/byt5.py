"""ByT5 span-corruption pretraining on the embedded English corpus.

  python train.py --config configs/byt5.py [--workdir /tmp/byt5] [--config.train.steps=100]

Default: a 5M-parameter ByT5 (d_model 256, 4 encoder / 2 decoder layers) trained for 600 steps
of 16 x 256-byte inputs on the embedded English corpus (`embedded:en`). About 7 minutes on the
2-core CI CPU (measured 6m58s, 2026-11-26). Expected result: validation loss about 2.56 nats,
3.7 bits per target byte of the span-corruption targets, against a unigram entropy of 4.8
bits/byte for the same corpus (`group_unigram_bpb_validation` in
bytelm/data/corpus/manifest.json); an untrained model scores about 6 nats.

Variants: `--config configs/byt5.py:small` is google/byt5-small's shape and the paper's recipe
(inputs 1024 / targets 189, Adafactor, inverse-sqrt schedule, batch 128) for accelerators;
`:tiny` is what the tests use.
"""

import dataclasses

import ml_collections

from bytelm.models import t5
from bytelm.quant import recipe
from bytelm.training import config_file


# What --config configs/byt5.py:VARIANT accepts ("default": no variant); README lists them.
VARIANTS = ("default", "small", "tiny", "ternary", "small_ternary", "tiny_ternary")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config_file.check_variant(arg, VARIANTS, __file__)
  variant, ternary = recipe.split_variant(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameters, dropout and data order all derive from it
  c.init_from = ""  # a Hugging Face ByT5 directory or a bytelm workdir to start from
  # A workdir that already holds a run: resume it (only with that run's config, up to
  # bytelm.runs.workdir.SAFE_TO_CHANGE); False: refuse it instead (nothing is ever deleted).
  c.resume = True
  c.model_family = "t5"

  # Model: every T5Config field, overridable as --config.model.d_model=128.
  preset = {"default": "mini", "small": "byt5_small", "tiny": "tiny"}[variant]
  model = dataclasses.asdict(t5.preset(preset))
  if variant == "default":
    model.update(num_encoder_layers=4, num_decoder_layers=2)  # fits the 10-minute CPU budget
  c.model = ml_collections.ConfigDict(model)

  c.data = ml_collections.ConfigDict()
  c.data.train = "embedded:en"  # embedded:<group|name>, file:<glob>, bytes:<glob>,
  # hf:<dataset>[:<config>], or a mixture "embedded:en@0.3,file:web/*.txt@0.7" (README)
  c.data.validation = ""  # empty: the validation split of data.train
  # Text that is not valid UTF-8: "error" (names the file and offset), "replace" (U+FFFD) or
  # "raw" (trained on as bytes, like a bytes: source).
  c.data.invalid_utf8 = "error"
  c.data.objective = "span_corruption"  # or "causal_lm"
  c.data.input_length = 256  # bytes per encoder input, eos included
  c.data.target_length = ml_collections.config_dict.placeholder(int)  # None: from the noise
  c.data.noise_density = 0.15  # T5 / ByT5
  c.data.mean_noise_span_length = 20.0  # ByT5: longer spans than T5's 3, bytes are short

  c.opt = ml_collections.ConfigDict()
  c.opt.name = "adamw"  # or "adafactor"
  c.opt.lr = 2e-3
  c.opt.schedule = "cosine"  # cosine | linear | constant | rsqrt
  c.opt.warmup_steps = 50
  c.opt.final_lr_fraction = 0.1  # cosine / linear decay down to lr * this
  c.opt.b1 = 0.9
  c.opt.b2 = 0.98
  c.opt.eps = 1e-9
  c.opt.weight_decay = 0.01
  c.opt.grad_clip = 1.0  # global norm; 0 turns clipping off
  c.opt.z_loss = 0.0  # t5x uses 1e-4
  c.opt.lr_scale = ml_collections.ConfigDict()  # {module name: multiplier of its updates}
  c.opt.sgd = ml_collections.ConfigDict()  # {module name: peak lr}: trained by plain SGD

  c.train = ml_collections.ConfigDict()
  c.train.steps = 600
  c.train.batch_size = 16  # global; must divide by the number of devices
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 16  # validation batches per evaluation (fixed bytes, same every time)
  c.train.prefetch = 2  # batches built ahead in a thread while the device steps; 0: in the loop
  c.train.steps_per_call = 1  # optimizer steps per compiled call (lax.scan); >1 where launch-bound

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 200  # steps; also saved at the end and on SIGTERM / Ctrl-C
  c.ckpt.keep = 2

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})  # -1: all remaining devices
  # Several processes as one run (jax.distributed); each value unset here falls back to
  # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. May change on resume.
  c.distributed = ml_collections.ConfigDict(
      {"coordinator_address": "", "num_processes": 0, "process_id": -1})  # "", 0, -1: unset

  if variant == "small":
    c.data.input_length = 1024  # -> targets 189
    c.opt.update(name="adafactor", lr=1e-2, schedule="rsqrt", warmup_steps=10_000,
                 weight_decay=0.0, z_loss=1e-4)
    c.train.update(steps=1_000_000, batch_size=128, log_every=100, eval_every=5000)
    c.ckpt.every = 5000
    c.model.dtype = "bfloat16"
  elif variant == "tiny":
    c.data.input_length = 64
    c.opt.warmup_steps = 2
    c.train.update(steps=8, batch_size=4, log_every=2, eval_every=4, eval_batches=2)
    c.ckpt.every = 4
  if ternary:
    recipe.make_ternary(c)
  return c
