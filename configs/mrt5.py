"""MrT5: ByT5 with a learned delete gate, trained to drop half of the encoder's byte positions.

  python train.py --config configs/mrt5.py [--workdir DIR] [--config.model.target_deletion=0.3]

Default: the small ByT5 of configs/byt5.py (d_model 256, 4 encoder / 2 decoder layers; 16 x
256-byte span-corruption inputs of the embedded English corpus, 600 steps) with the delete gate
after encoder block 1 (ByT5-small: 3 of 12, the same quarter of the encoder) and a target
deletion of 0.5, on 2 CPU cores in about 8 minutes. At the end it prints the validation loss
and bits per byte (soft deletion, as trained, and hard deletion, as used), the deletion ratio
reached, and the measured encoder speed-up of hard deletion over the same model without it
(BENCHMARKS.md has the figures of a run). Trained from scratch, the gate needs three changes
to the paper's recipe to hold its target (centered gate, SGD for the gate, a stronger integral
term; see get_config).
Its matched ByT5 baseline is `configs/byt5.py --config.model.attention_softmax=softmax1`
(MrT5 uses softmax1 in every attention, and so did its ByT5 baseline).

Variants:
  `:small`  the paper's continued pre-training (Kallini et al. 2025): byt5-small given with
            --config.init_from=/path/to/byt5-small, AdamW lr 1e-4 linear decay, 5,000 steps of
            1024 x 1024-byte inputs, dropout 0.1, bf16; for accelerators.
  `:tiny`   what the tests use: the default's gate on a tiny model, controlled from step 0.
"""

import dataclasses
import pathlib

import ml_collections

from bytelm.models import mrt5
from bytelm.quant import recipe
from bytelm.training import config_file


# What --config configs/mrt5.py:VARIANT accepts ("default": no variant); README lists them.
VARIANTS = ("default", "small", "tiny", "ternary", "small_ternary", "tiny_ternary")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config_file.check_variant(arg, VARIANTS, __file__)
  variant, ternary = recipe.split_variant(arg)
  # The same data, optimizer and training budget as the baseline.
  c = config_file.load(pathlib.Path(__file__).with_name("byt5.py"), variant)
  c.model_family = "mrt5"
  gate_fields = {f.name: f.default for f in dataclasses.fields(mrt5.MrT5Config)
                 if not hasattr(c.model, f.name)}
  c.model.update(gate_fields)  # every MrT5Config field, overridable from the command line
  c.model.attention_softmax = "softmax1"
  if variant in ("default", "tiny"):
    c.model.gate_layer = 1  # 1 of 4 encoder blocks see every byte, as 3 of 12 in ByT5-small
    # Trained from scratch, the encoder matters little to the loss yet (removing it entirely
    # costs ~5%), so cross-entropy hardly tells the gate which bytes to keep: the gate's
    # gradient is ~1e-4 of the regulariser's. What it learns, it learns from the deletion
    # pressure, and three choices make that pressure something the controller can steer
    # (BENCHMARKS.md lists what failed without them):
    # - a centered gate: w scores a byte against its sequence's mean, so w cannot shift every
    #   byte at once and the deleted fraction is a smooth function of b, not a step;
    c.model.gate_centering = True
    # - plain SGD for the gate: its step is proportional to alpha, where Adam's is the same
    #   size whatever alpha is (a relay, which swung between keeping and deleting everything);
    c.opt.sgd.gate = 0.2
    # - a stronger integral term than the reference's 1e-5 (5,000 steps at batch 1024 there),
    #   so alpha settles where it balances the drift of the hidden states below the gate.
    c.model.controller_ki = 3e-3
    c.model.gate_init_bias = 4.0  # start by keeping ~all bytes, unattenuated (G near -0.5)
    # First learn to use the encoder at all; then let the pressure move only the gate.
    c.model.regularizer_delay = 100
    c.model.regularizer_scope = "gate"
    # The controller may push back (alpha >= -1) when cross-entropy deletes on its own.
    c.model.controller_alpha_min = -1.0
    # The paper's attention-score regulariser for training from scratch: without it the
    # scores grow to offset the gate bias and G loses its meaning as "keep" / "delete".
    c.model.score_reg_weight = 0.5
    # Finer buckets than the model's default 64: less padding per compacted example, for a
    # compile per bucket that costs about a second on a CPU.
    c.model.bucket_multiple = 32
  if variant == "small":
    c.model.update(gate_layer=3, dropout_rate=0.1)  # the gate as the paper's, with AdamW
    c.data.train = "embedded:multilingual"  # the paper: mC4 in 15 languages (hf:... if you have it)
    c.opt.update(name="adamw", lr=1e-4, schedule="linear", warmup_steps=0, final_lr_fraction=0.0,
                 b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0, z_loss=0.0)
    c.train.update(steps=5000, batch_size=1024, log_every=10, eval_every=50)
    c.ckpt.every = 500
  if variant == "tiny":  # the default's gate, controlled from the first step
    c.model.regularizer_delay = 0
  if ternary:
    recipe.make_ternary(c)
  return c
