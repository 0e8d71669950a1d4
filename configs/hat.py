"""A word-pooled hierarchical byte LM (HAT-style) on the embedded corpus.

  python train.py --config configs/hat.py [--workdir DIR] [--config.train.steps=100]

Default: bytelm.models.hierarchical with a backbone of configs/bytes_decoder.py's width and
depth (d_model 256, d_ff 640, 4 heads x 64, 4 layers) over up to 48 word segments per 256-byte
row (`bytelm.text.segment.word_starts`: split at whitespace, the space on the word after it;
words longer than 16 bytes cut), and a 1-layer byte encoder and 1-layer byte decoder of width 96 (one
head of 64, d_ff 256) attending 16 bytes back. Data, objective, optimizer and steps are
configs/bytes_decoder.py's (read from it), so the two compare directly; configs/blt.py and
configs/hnet.py change only the segmenter. `:tiny` is what the tests use; `:gpu` is
configs/bytes_decoder.py:gpu's backbone (d_model 512, 8 layers, bf16 matmuls, 256 x 256-byte
batches) with byte layers of width 192 (3 heads x 64, d_ff 512), two on each side.

The byte layers are narrow because they run at every byte: at the backbone's width (and
attending over the whole row, masked) the model trained 1.4x the flat decoder's bytes/s; as
here, 3.1-3.6x (eval/hierarchical.py, BENCHMARKS.md).
"""

import dataclasses
import pathlib

import ml_collections

from bytelm.models import hierarchical
from bytelm.quant import recipe
from bytelm.training import config_file


# What --config configs/hat.py:VARIANT accepts ("default": no variant); README lists them.
VARIANTS = ("default", "tiny", "gpu", "ternary", "tiny_ternary", "gpu_ternary")

# The byte encoder's and decoder's depth and width, their window (bytes) and the segments per
# row, N, of each variant; the backbone is the flat decoder's width and depth.
BYTE_LAYERS = {
    "default": dict(num_encoder_layers=1, num_decoder_layers=1, byte_d_model=96, byte_d_ff=256,
                    byte_num_heads=1, window=16, max_segments=48),
    "tiny": dict(num_encoder_layers=1, num_decoder_layers=1, byte_d_model=32, byte_d_ff=64,
                 byte_num_heads=1, window=8, max_segments=16),
    # The default's ratio to the backbone (96 of 256: ~3/8) at 512, and, as the backbone is
    # twice as deep, two layers each side.
    "gpu": dict(num_encoder_layers=2, num_decoder_layers=2, byte_d_model=192, byte_d_ff=512,
                byte_num_heads=3, window=16, max_segments=48),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config_file.check_variant(arg, VARIANTS, __file__)
  variant, ternary = recipe.split_variant(arg)
  c = config_file.load(pathlib.Path(__file__).with_name("bytes_decoder.py"), variant)
  c.model_family = "hierarchical"
  width = {k: v for k, v in c.model.to_dict().items()  # dtype included
           if k not in ("num_encoder_layers", "num_decoder_layers")}
  c.model = ml_collections.ConfigDict(dataclasses.asdict(hierarchical.HierarchicalConfig(
      **width, num_backbone_layers=c.model.num_decoder_layers, **BYTE_LAYERS[variant])))
  c.data.segments = ml_collections.ConfigDict(dict(
      kind="words", max_segments=c.model.max_segments, max_segment_bytes=16, fixed_size=4))
  if ternary:
    recipe.make_ternary(c)
  return c
