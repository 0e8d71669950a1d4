"""bytelm's models behind the byteprobs interfaces.

- `decoder_token_lm(model)`: a decoder-only LM over BPE tokens (configs/bpe_decoder.py) as the
  `token_lm` callable of `ByteLM`: next-token log-probabilities for a batch of token prefixes.
- `ByteDecoderLM(model)`: a decoder-only byte LM (configs/bytes_decoder.py) with
  `next_byte_logprobs`, so it can join an ensemble.

Both models were trained on documents separated by eos, so a prefix is read after an eos: the
start of a document. Prefixes of one batch are right-padded to one length, a multiple of 64
so that few shapes are compiled; the model is causal, so padding after a prefix changes
nothing before it.

Axis legend: B prefixes, T positions, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bytelm.byteprobs.byte_lm import END
from bytelm.nn.compiled import Compiled
from bytelm.tokenizer import EOS_ID, NUM_BYTE_IDS, OFFSET, ByteTokenizer


def _last_logprobs(compiled: Compiled, rows: list[list[int]], pad_to: int = 64) -> np.ndarray:
  """log_softmax of the logits at each row's last position, float64 [B, V]."""
  length = -(-max(len(r) for r in rows) // pad_to) * pad_to
  ids_BT = np.zeros((len(rows), length), np.int32)
  mask_BT = np.zeros((len(rows), length), bool)
  for b, r in enumerate(rows):
    ids_BT[b, :len(r)], mask_BT[b, :len(r)] = r, True
  logits_BTV = compiled("__call__", ids_BT, mask_BT)
  last_B = jnp.asarray([len(r) - 1 for r in rows])
  logits_BV = jnp.take_along_axis(logits_BTV, last_B[:, None, None], axis=1)[:, 0]
  return np.asarray(jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1), np.float64)


def decoder_token_lm(model, vocab_size: int | None = None):
  """token_lm(prefixes) -> log-probabilities [len(prefixes), vocab_size] of the next token, from
  a `models.decoder.DecoderLM` over BPE ids (the embedding's spare rows are cut off and the rest
  renormalised)."""
  compiled = Compiled(model)
  size = vocab_size or model.config.vocab_size

  def token_lm(prefixes):
    logp_BV = _last_logprobs(compiled, [[EOS_ID] + list(p) for p in prefixes])[:, :size]
    return logp_BV - np.logaddexp.reduce(logp_BV, axis=1, keepdims=True)

  return token_lm


class ByteDecoderLM:
  """A decoder-only byte LM's next-byte distribution: its 256 byte ids and eos (the end of
  text), renormalised over those 257."""

  def __init__(self, model):
    self.compiled = Compiled(model)

  def next_byte_logprobs(self, prefix: bytes) -> np.ndarray:
    ids = [EOS_ID] + ByteTokenizer().encode(prefix, add_eos=False).tolist()
    logp_V = _last_logprobs(self.compiled, [ids])[0]
    out = np.empty(257)
    out[:256], out[END] = logp_V[OFFSET:NUM_BYTE_IDS], logp_V[EOS_ID]
    return out - np.logaddexp.reduce(out)
