"""A word-pooled hierarchical byte LM (HAT-style) on the embedded corpus.

  python train.py --config configs/hat.py [--workdir DIR] [--config.train.steps=100]

Default: bytelm.models.hierarchical with configs/bytes_decoder.py's width (d_model 256, d_ff
640, 4 heads x 64): a 1-layer byte encoder and a 1-layer byte decoder, both attending 16 bytes
back, around a 4-layer backbone over up to 64 word segments per 256-byte row
(`models/segment.word_starts`, words longer than 16 bytes cut). Data, objective, optimizer and
budget are configs/bytes_decoder.py's (read from it), so the two compare directly. `:tiny` is
what the tests use.

Measured 2026-11-26 on the 2-core CI CPU, each run alone, 600 steps of 16 x 256 bytes:
hat 4m17s, 9,903 bytes/s, held-out 2.646 bits per byte; bytes_decoder 6m03s, 6,935 bytes/s,
3.548 bits per byte. That is 1.43x the throughput, not yet the 3x that issue 6 asks for: the
byte layers here are as wide as the backbone and attend over the whole row, masked.
"""

import dataclasses
import pathlib

import ml_collections

from bytelm.models import hierarchical
from bytelm.training import config_file


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  if variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {variant!r} of configs/hat.py; use '' or 'tiny'")
  tiny = variant == "tiny"
  c = config_file.load(pathlib.Path(__file__).with_name("bytes_decoder.py"), variant)
  c.model_family = "hierarchical"
  width = {k: v for k, v in c.model.to_dict().items()
           if k not in ("num_encoder_layers", "num_decoder_layers")}
  c.model = ml_collections.ConfigDict(dataclasses.asdict(hierarchical.HierarchicalConfig(
      **width, num_encoder_layers=1, num_decoder_layers=1,
      num_backbone_layers=2 if tiny else 4, window=8 if tiny else 16,
      max_segments=16 if tiny else 48, byte_d_model=32 if tiny else 96,
      byte_d_ff=64 if tiny else 256, byte_num_heads=1)))
  c.data.segments = ml_collections.ConfigDict(dict(
      kind="words", max_segments=c.model.max_segments, max_segment_bytes=16, fixed_size=4))
  return c
