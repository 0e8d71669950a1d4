"""A hierarchical byte LM that learns its own segments (H-Net-style) on the embedded corpus.

  python train.py --config configs/hnet.py [--workdir DIR] [--config.train.steps=100]

configs/hat.py (read from it) with the segments decided inside the model: a boundary predictor
on the byte encoder's states (`bytelm.models.pooling.BoundaryPredictor`, Hwang et al. 2025,
"Dynamic Chunking for End-to-End Hierarchical Sequence Modeling") starts a segment where
consecutive states disagree, trained through the LM loss (a straight-through confidence) and a
ratio loss that pulls the mean segment length toward `model.target_segment_bytes`. The data pipeline computes
no segments. `:tiny` is what the tests use; `:gpu` is configs/hat.py:gpu with learned
boundaries (d_model 512, 8 layers, bf16 matmuls, 256 x 256 bytes).
"""

import pathlib

import ml_collections

from bytelm.training import config_file


# What --config configs/hnet.py:VARIANT accepts ("default": no variant); README lists them.
VARIANTS = ("default", "tiny", "gpu")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_file.check_variant(arg, VARIANTS, __file__)
  c = config_file.load(pathlib.Path(__file__).with_name("hat.py"), variant)
  del c.data["segments"]
  c.model.segmenter = "learned"
  # About the words' mean on English (configs/hat.py), so the backbone sees as many segments.
  c.model.target_segment_bytes = 6.0
  c.model.max_segment_bytes = 16
  c.model.ratio_loss_weight = 0.03
  return c
