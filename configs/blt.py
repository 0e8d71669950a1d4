"""A hierarchical byte LM with entropy segments (BLT-style patches) on the embedded corpus.

  python train.py --config configs/blt.py [--workdir DIR] [--config.train.steps=100]

configs/hat.py (read from it) with one change: a segment starts where a byte n-gram model's
entropy over the next byte is above a global threshold (Pagnoni et al. 2024, "Byte Latent
Transformer", with a count model in place of their small transformer), set so that segments
average `target_segment_bytes` before long ones are cut. The n-gram model is fitted on the
training split when a run starts and kept in the workdir (entropy_model.npz), so a resumed run,
evaluation and generation cut the same segments. `:tiny` is what the tests use; `:gpu` is
configs/hat.py:gpu with these segments (d_model 512, 8 layers, bf16 matmuls, 256 x 256 bytes).
"""

import pathlib

import ml_collections

from bytelm.training import config_file


# What --config configs/blt.py:VARIANT accepts ("default": no variant); README lists them.
VARIANTS = ("default", "tiny", "gpu")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_file.check_variant(arg, VARIANTS, __file__)
  c = config_file.load(pathlib.Path(__file__).with_name("hat.py"), variant)
  c.data.segments.kind = "entropy"
  c.data.segments.entropy_model = ""  # empty: fitted on data.train, saved in the workdir
  c.data.segments.entropy_order = 1 if variant == "tiny" else 2  # bytes of context
  # About the words' mean on English (configs/hat.py), so the backbone sees as many segments.
  c.data.segments.target_segment_bytes = 6.0
  c.data.segments.entropy_relative = 0.0  # > 0: also cut where entropy rises by this much
  return c
