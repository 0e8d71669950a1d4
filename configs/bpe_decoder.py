"""A decoder-only LM over byte-level BPE tokens: the subword baseline, scored in bits per byte.

  python train.py --config configs/bpe_decoder.py [--workdir DIR] [--config.train.steps=100]

configs/bytes_decoder.py (read from it: width, depth, optimizer, steps, batch, data and
objective are its own) with positions that are subword tokens instead of bytes. A byte-level
BPE of data.tokenizer.vocab_size tokens (bytelm.data.bpe, Hugging Face `tokenizers`) is trained
on the training split of data.train when the run starts and kept as WORKDIR/tokenizer.json; a
resumed run reuses it. The embedding has that many rows rounded up to a multiple of 128.

Windows are 84 tokens: the 2048-token BPE spells 3.04 bytes per token on the training split of
embedded:en (measured; 3.02 on the held-out split), so a row predicts ~256 bytes, a batch
~4,084, as configs/bytes_decoder.py's 16 x 256. Bytes/s in the progress line are that mean
times the tokens (an estimate; the stream's mean bytes per token, `BatchSource.bytes_per_token`).

Validation bits per byte: the summed log-loss over the held-out windows divided by ln 2 * the
bytes their targets spell (the eos between documents counting one byte, as for the byte models),
on the same held-out documents in the same order as the byte models, whose first
train.eval_batches batches cover about the same prefix (validation bytes are logged as
val_bytes). validation loss is in nats per token. `:tiny` is what the tests use; `:gpu` is
configs/bytes_decoder.py:gpu over these tokens (d_model 512, 8 layers, bf16 matmuls, 256 rows
of 84 tokens).

Measured 2026-11-27 on the 2-core CI CPU (beside another job): 2m33s wall, 2m15s of it
training, 18,584 bytes/s; held-out 4.107 nats per token = 1.958 bits per byte over 65,059
predicted bytes, eos included (the unigram model of the same tokens: 3.079; bytes_decoder:
3.548 over 65,536).
"""

import pathlib

import ml_collections

from bytelm.training import config_file


# What --config configs/bpe_decoder.py:VARIANT accepts ("default": no variant); README lists them.
VARIANTS = ("default", "tiny", "gpu")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = config_file.check_variant(arg, VARIANTS, __file__)
  tiny = variant == "tiny"
  c = config_file.load(pathlib.Path(__file__).with_name("bytes_decoder.py"), variant)
  # A reference: `--config.data.tokenizer.vocab_size=N` also resizes the embedding.
  vocab_size = ml_collections.FieldReference(300 if tiny else 2048)
  c.data.tokenizer = ml_collections.ConfigDict()
  c.data.tokenizer.vocab_size = vocab_size  # BPE tokens, 2 specials and 256 bytes included
  c.model.vocab_size = (vocab_size + 127) // 128 * 128  # embedding rows, a multiple of 128
  # Tokens per row: the byte decoder's bytes (256; tiny 32) over the measured bytes per token
  # (3.04; tiny's 300-token BPE 1.4).
  c.data.input_length = 24 if tiny else 84
  return c
