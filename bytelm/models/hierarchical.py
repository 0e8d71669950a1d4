"""A hierarchical byte LM: bytes -> segments -> causal backbone -> bytes (HAT-style).

Neitemeier et al. (2025), "Hierarchical Autoregressive Transformers": a small byte encoder
summarises each segment (a word), a causal backbone runs over the segments, and a small byte
decoder spells out the bytes; the backbone, where most parameters sit, sees ~5x fewer positions.

Here, for a row of target bytes y (the "causal_lm" objective's targets), its segment ids and
context ids (`segment.segment_ids`, `segment.context_ids`, computed on the host):
1. encoder: causal self-attention over the bytes of y within a local window (`window` bytes);
   each segment is summarised by its last byte's state (`pool`), which has seen the whole
   segment and nothing after it;
2. backbone: a causal stack over the N segment summaries;
3. decoder: causal self-attention within the same window over the *inputs* (y shifted right by
   one); position t adds the backbone state of the last segment whose end was settled before
   t (`unpool` of the context ids) and predicts y[t]. So y[t] is predicted from bytes before t
   only (a test changes the bytes from t on and checks the logits up to t).
All positions train in parallel. Every block is `t5.EncoderBlock` with a causal bias, as in
models/decoder.py, so the flat decoder and this model differ only in what the positions are.

Axis legend: B batch, T bytes, N segments, D d_model, H heads, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.models import decoder, segment, t5
from bytelm.nn.attention import MASK_VALUE


@dataclasses.dataclass(frozen=True)
class HierarchicalConfig(t5.T5Config):
  """T5Config's width fields, and the three stacks' depths (num_encoder_layers is the byte
  encoder's, num_decoder_layers the byte decoder's)."""

  POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = t5.T5Config.POSITIVE_FIELDS + (
      "num_backbone_layers", "window", "max_segments")

  num_encoder_layers: int = 1
  num_backbone_layers: int = 4
  num_decoder_layers: int = 1
  window: int = 16  # bytes the byte encoder and decoder attend to, itself included
  max_segments: int = 64  # N: segments per row the backbone sees


def local_causal_bias(rel_bias, length: int, window: int) -> jax.Array:
  """bias_HTT: causal and at most `window` positions back (itself included)."""
  pos_T = jnp.arange(length)
  near_TT = (pos_T[:, None] - pos_T[None, :]) < window
  return decoder.causal_bias(rel_bias, length) + jnp.where(near_TT, 0.0, MASK_VALUE)


class Hierarchical(nnx.Module):
  """Byte encoder -> segment backbone -> byte decoder, over one row of bytes and its segments."""

  def __init__(self, cfg: HierarchicalConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.shared = t5.embedding(cfg, rngs)
    self.byte_bias = t5._rel_bias(cfg, bidirectional=False, rngs=rngs)
    self.segment_bias = t5._rel_bias(cfg, bidirectional=False, rngs=rngs)
    self.encoder = nnx.List([t5.EncoderBlock(cfg, rngs) for _ in range(cfg.num_encoder_layers)])
    self.encoder_norm = t5._norm(cfg)
    self.backbone = nnx.List([t5.EncoderBlock(cfg, rngs) for _ in range(cfg.num_backbone_layers)])
    self.backbone_norm = t5._norm(cfg)
    # What the bytes of the first segment see instead of a backbone state.
    self.start = nnx.Param(jnp.zeros((cfg.d_model,), cfg.storage_dtype))
    self.decoder = nnx.List([t5.EncoderBlock(cfg, rngs) for _ in range(cfg.num_decoder_layers)])
    self.final_norm = t5._norm(cfg)
    self.lm_head = t5.lm_head(cfg, rngs)

  def segments(self, targets_BT: jax.Array, segment_ids_BT: jax.Array) -> jax.Array:
    """Backbone states h_BND: segment n's state has read segments 0..n."""
    cfg = self.config
    key_bias_BT = jnp.zeros(targets_BT.shape, jnp.float32)  # causal: padding comes last
    bias_HTT = local_causal_bias(self.byte_bias, targets_BT.shape[1], cfg.window)
    x_BTD = self.shared(targets_BT)
    for block in self.encoder:
      x_BTD, _ = block(x_BTD, bias_HTT, key_bias_BT)
    s_BND = segment.pool(self.encoder_norm(x_BTD), segment_ids_BT, cfg.max_segments, "last")
    seg_bias_HNN = decoder.causal_bias(self.segment_bias, cfg.max_segments)
    present_BN = (segment_ids_BT[..., None] == jnp.arange(cfg.max_segments)).any(axis=1)
    seg_key_bias_BN = jnp.where(present_BN, 0.0, MASK_VALUE)
    for block in self.backbone:
      s_BND, _ = block(s_BND, seg_bias_HNN, seg_key_bias_BN)
    return self.backbone_norm(s_BND)

  def __call__(self, inputs_BT: jax.Array, targets_BT: jax.Array, segment_ids_BT: jax.Array,
               context_ids_BT: jax.Array) -> jax.Array:
    """logits_BTV: position t predicts targets_BT[t]; inputs_BT is targets_BT shifted right by
    one (the "causal_lm" objective's pair); segment_ids_BT and context_ids_BT as from
    `segment.segment_ids` and `segment.context_ids` of the targets."""
    h_BND = self.segments(targets_BT, segment_ids_BT)
    context_BTD = segment.unpool(h_BND, context_ids_BT, self.start[...])
    bias_HTT = local_causal_bias(self.byte_bias, inputs_BT.shape[1], self.config.window)
    key_bias_BT = jnp.zeros(inputs_BT.shape, jnp.float32)
    y_BTD = self.shared(inputs_BT) + context_BTD.astype(self.config.compute_dtype)
    for block in self.decoder:
      y_BTD, _ = block(y_BTD, bias_HTT, key_bias_BT)
    return self.lm_head(self.final_norm(y_BTD))


def loss_fn(model: Hierarchical, batch: dict[str, jax.Array], z_loss: float = 0.0):
  """Mean next-byte cross-entropy over non-pad targets -> (loss, metrics), as t5.loss_fn.

  batch: `inputs`, `targets` int32 [B, T] (the causal_lm pair), `segment_ids` and
  `context_ids` int32 [B, T] (of the targets; see `segment`).
  """
  logits_BTV = model(batch["inputs"], batch["targets"], batch["segment_ids"],
                     batch["context_ids"])
  return t5.cross_entropy(logits_BTV, batch["targets"], model.config.pad_id, z_loss)
