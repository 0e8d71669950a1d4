"""A decoder-only LM over bytes: the flat baseline of the hierarchical models.

T5's blocks (pre-norm RMSNorm, gated-GELU MLP, no biases) as a causal stack: each position
attends to itself and the positions before it, with T5's unidirectional relative position
bias. The self-attention block is `t5.EncoderBlock`, given a causal mask: the same module the
hierarchical backbone will stack, so a comparison between them changes only what the positions
are (bytes or segments).

Trained with the "causal_lm" objective (inputs = a window of ids, targets = the same window
shifted by one); bits per byte count every predicted id, the eos between documents included.

Axis legend: B batch, T positions, D d_model, H heads, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.models import t5
from bytelm.nn import key_mask_bias
from bytelm.nn.attention import MASK_VALUE


@dataclasses.dataclass(frozen=True)
class DecoderConfig(t5.T5Config):
  """T5Config's fields; the stack is num_decoder_layers deep (num_encoder_layers is unused)."""

  POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = tuple(
      f for f in t5.T5Config.POSITIVE_FIELDS if f != "num_encoder_layers")

  num_encoder_layers: int = 0
  num_decoder_layers: int = 4


def causal_bias(rel_bias, length: int) -> jax.Array:
  """bias_HTT: the relative position bias, MASK_VALUE above the diagonal (no look-ahead)."""
  pos_T = jnp.arange(length)
  causal_TT = pos_T[None, :] <= pos_T[:, None]
  return rel_bias(pos_T, pos_T) + jnp.where(causal_TT, 0.0, MASK_VALUE)


class DecoderLM(nnx.Module):
  """Byte embedding -> causal T5 blocks -> final norm -> LM head."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.shared = t5.embedding(cfg, rngs)
    self.rel_bias = t5._rel_bias(cfg, bidirectional=False, rngs=rngs)
    self.blocks = nnx.List([t5.EncoderBlock(cfg, rngs) for _ in range(cfg.num_decoder_layers)])
    self.final_norm = t5._norm(cfg)
    self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
    self.lm_head = t5.lm_head(cfg, rngs)

  def __call__(self, ids_BT: jax.Array, mask_BT: jax.Array | None = None) -> jax.Array:
    """logits_BTV: position t predicts id t + 1 from ids 0..t. Padding (mask 0, by default
    id == pad) is never attended to."""
    if mask_BT is None:
      mask_BT = ids_BT != self.config.pad_id
    bias_HTT = causal_bias(self.rel_bias, ids_BT.shape[1])
    key_bias_BT = key_mask_bias(mask_BT)
    x_BTD = self.dropout(self.shared(ids_BT))
    for block in self.blocks:
      x_BTD, _ = block(x_BTD, bias_HTT, key_bias_BT)
    return self.lm_head(self.dropout(self.final_norm(x_BTD)))


def loss_fn(model: DecoderLM, batch: dict[str, jax.Array], z_loss: float = 0.0):
  """Mean next-id cross-entropy over non-pad targets -> (loss, metrics), as t5.loss_fn.

  batch: `inputs` int32 [B, T] and `targets` int32 [B, T] (the inputs shifted by one; pad 0 is
  ignored, as are the all-pad rows that fill the last evaluation batch).
  """
  logits_BTV = model(batch["inputs"])
  return t5.cross_entropy(logits_BTV, batch["targets"], model.config.pad_id, z_loss)
