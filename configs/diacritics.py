"""Diacritics restoration: a byte tagger on the embedded lt, cs, vi, ro, pl, fr and es text.

  python train.py --config configs/diacritics.py [--workdir workdirs/diacritics]
  python -m bytelm.demos.correct --model workdirs/diacritics "Laba diena, as esu is Lietuvos"
  python eval/diacritics.py --model workdirs/diacritics

Default: the ByT5 encoder (d_model 256, 6 layers) with a 7-byte window layer before it and a
label head (bytelm.models.tagger), trained for TRAIN_STEPS steps of 32 x 128-byte windows of
`embedded:diacritics` whose diacritics were stripped; at each ASCII letter it picks "keep" or a
decorated letter that strips to it. 26m34s on the 2-core CI CPU (2026-11-26). This is the model
shipped in bytelm/demos/diacritics/ (its README has the figures).

Why a tagger and not the paper's seq2seq: a from-scratch ByT5 encoder-decoder first has to
learn to copy its input through cross-attention, which has no position information. On this
CPU it had not (loss 1.66 nats per target byte after 650 steps, 8 minutes; the tagger needs no
alignment and its output can only differ from its input by diacritics).

Variants:
  `:seq2seq` the Stankevičius et al. (2022) recipe with this toolkit's ByT5 (objective
             "correction", task "diacritics"); set --config.init_from to a pretrained ByT5
             (a Hugging Face directory or a bytelm workdir) and train on an accelerator.
  `:typos`, `:both` the same seq2seq for typo correction, or diacritics and typos together.
  `:tiny`   what the tests use.
Any variant reads other text with --config.data.train=file:my/*.txt (or hf:<dataset>).
"""

import dataclasses

import ml_collections

from bytelm.models import t5, tagger
from bytelm.training import config_file

TRAIN_STEPS = 1800
VARIANTS = ("default", "seq2seq", "typos", "both", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_file.check_variant(arg, VARIANTS, __file__)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""  # a bytelm workdir or a Hugging Face ByT5 directory to start from
  # A workdir that already holds a run: resume it (only with that run's config, up to
  # bytelm.runs.workdir.SAFE_TO_CHANGE); False: refuse it instead (nothing is ever deleted).
  c.resume = True
  seq2seq = variant in ("seq2seq", "typos", "both")
  c.model_family = "t5" if seq2seq else "tagger"

  size = "tiny" if variant == "tiny" else "mini"
  shape = dataclasses.asdict(t5.preset(size))
  if seq2seq:
    model = shape
  else:
    # A window of 3 bytes each side before the encoder (tagger.LocalContext): without it the
    # tagger had learned 19% of the restorations after 400 steps, with it 72% after 250.
    model = dataclasses.asdict(tagger.TaggerConfig(context_width=3))
    model.update({k: v for k, v in shape.items() if k != "num_decoder_layers"})
  c.model = ml_collections.ConfigDict(model)

  c.data = ml_collections.ConfigDict()
  c.data.train = "embedded:diacritics"  # embedded:<group|name>, file:<glob>, bytes:<glob>,
  # hf:<dataset>[:<config>], or a mixture "embedded:en@0.3,file:web/*.txt@0.7" (README)
  c.data.validation = ""  # empty: the validation split of data.train
  # Text that is not valid UTF-8: "error" (names the file and offset), "replace" (U+FFFD) or
  # "raw" (trained on as bytes, like a bytes: source).
  c.data.invalid_utf8 = "error"
  c.data.objective = "correction" if seq2seq else "diacritics_tagging"
  c.data.input_length = 128  # bytes per input, eos included
  c.data.target_length = ml_collections.config_dict.placeholder(int)  # None: input_length
  c.data.noise_density = 0.15  # unused here; the trainer's data contract
  c.data.mean_noise_span_length = 20.0
  if seq2seq:
    c.data.correction_task = {"typos": "typos", "both": "both"}.get(variant, "diacritics")
    c.data.typo_rate = 0.02  # of characters (the paper's default)
    c.data.keyboard = "qwerty"  # qwerty | qwertz | azerty

  c.opt = ml_collections.ConfigDict()
  c.opt.name = "adamw"
  c.opt.lr = 1e-3
  c.opt.schedule = "cosine"
  c.opt.warmup_steps = 100
  c.opt.final_lr_fraction = 0.05
  c.opt.b1 = 0.9
  c.opt.b2 = 0.98
  c.opt.eps = 1e-9
  c.opt.weight_decay = 0.01
  c.opt.grad_clip = 1.0
  c.opt.z_loss = 0.0
  # T5's position bias starts near zero (std d_model**-0.5) and, at the shared learning rate,
  # takes thousands of steps to grow; until it does, no byte knows its neighbours. A tagger
  # needs them from the start: its bias learns 30x faster (a toy "a before s -> á" rule: not
  # learned in 400 steps at 1x, learned in 100 at 30x).
  c.opt.lr_scale = ml_collections.ConfigDict({"rel_bias": 30.0})
  c.opt.sgd = ml_collections.ConfigDict()

  c.train = ml_collections.ConfigDict()
  c.train.steps = TRAIN_STEPS
  c.train.batch_size = 32
  c.train.log_every = 50
  c.train.eval_every = 400
  c.train.eval_batches = 16
  c.train.prefetch = 2  # batches built ahead while the device steps
  c.train.steps_per_call = 1  # optimizer steps per compiled call (lax.scan); >1 where launch-bound

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 400
  c.ckpt.keep = 1

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  c.distributed = ml_collections.ConfigDict(  # "", 0, -1: unset (configs/byt5.py says more)
      {"coordinator_address": "", "num_processes": 0, "process_id": -1})

  if variant == "tiny":
    c.data.input_length = 32
    c.train.update(steps=4, batch_size=4, log_every=2, eval_every=4, eval_batches=1)
    c.opt.warmup_steps = 1
    c.ckpt.every = 4
  return c
