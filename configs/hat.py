"""A word-pooled hierarchical byte LM (HAT-style) on the embedded corpus.

  python train.py --config configs/hat.py [--workdir DIR] [--config.train.steps=100]

Default: bytelm.models.hierarchical with configs/bytes_decoder.py's width (d_model 256, d_ff
640, 4 heads x 64): a 1-layer byte encoder and a 1-layer byte decoder, both attending 16 bytes
back, around a 4-layer backbone over up to 64 word segments per 256-byte row
(`models/segment.word_starts`, words longer than 16 bytes cut). Same data, objective and budget
as configs/bytes_decoder.py, so the two compare directly. `:tiny` is what the tests use.
"""

import dataclasses

import ml_collections

from bytelm.models import hierarchical, t5


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/hat.py; use '' or 'tiny'")
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""
  c.model_family = "hierarchical"
  shape = dataclasses.asdict(t5.preset("tiny" if tiny else "mini"))
  shape.update(num_encoder_layers=1, num_decoder_layers=1, num_backbone_layers=2 if tiny else 4,
               window=8 if tiny else 16, max_segments=16 if tiny else 64)
  c.model = ml_collections.ConfigDict(dataclasses.asdict(hierarchical.HierarchicalConfig(**shape)))

  c.data = ml_collections.ConfigDict()
  c.data.train = "embedded:en"
  c.data.validation = ""
  c.data.objective = "causal_lm"
  c.data.input_length = 32 if tiny else 256
  c.data.target_length = ml_collections.config_dict.placeholder(int)
  c.data.noise_density = 0.15  # unused by causal_lm; the trainer's data contract
  c.data.mean_noise_span_length = 20.0
  c.data.segments = ml_collections.ConfigDict(dict(
      kind="words", max_segments=c.model.max_segments, max_segment_bytes=16, fixed_size=4))

  c.opt = ml_collections.ConfigDict()
  c.opt.name = "adamw"
  c.opt.lr = 2e-3
  c.opt.schedule = "cosine"
  c.opt.warmup_steps = 1 if tiny else 50
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
  c.train.steps = 4 if tiny else 600
  c.train.batch_size = 4 if tiny else 16
  c.train.log_every = 2 if tiny else 20
  c.train.eval_every = 4 if tiny else 200
  c.train.eval_batches = 1 if tiny else 16

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 4 if tiny else 200
  c.ckpt.keep = 2

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  return c
