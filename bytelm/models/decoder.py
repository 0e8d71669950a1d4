"""A decoder-only LM over bytes (the flat baseline of the hierarchical models) or over subword
tokens (the BPE baseline, configs/bpe_decoder.py).

T5's blocks (pre-norm RMSNorm, gated-GELU MLP, no biases) as a causal stack: each position
attends to itself and the positions before it, with T5's unidirectional relative position
bias. The self-attention block is `blocks.EncoderBlock`, given a causal mask: the same module
the hierarchical backbone stacks, so a comparison between them changes only what the positions
are (bytes or segments).

Trained with the "causal_lm" objective (inputs = a window of ids, targets = the same window
shifted by one); bits per byte count every predicted id, the eos between documents included.
Over tokens, batches carry `target_bytes` (the bytes each target spells, bytelm.data.pipeline)
and bits per byte are the summed log-loss over the bytes those targets spell, so that the two
kinds of model are scored on the same text in the same unit.

Axis legend: B batch, T positions, D d_model, H heads, V vocab.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.models import blocks, t5
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
    self.shared = blocks.embedding(cfg, rngs)
    self.rel_bias = blocks.rel_bias(cfg, bidirectional=False, rngs=rngs)
    self.blocks = nnx.List([blocks.EncoderBlock(cfg, rngs) for _ in range(cfg.num_decoder_layers)])
    self.final_norm = blocks.norm(cfg)
    self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
    self.lm_head = blocks.lm_head(cfg, rngs)

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

  def tree_logits(self, ids_BN: jax.Array, depth_BN: jax.Array, attend_BNN: jax.Array,
                  past: list[tuple[jax.Array, jax.Array]] | None = None,
                  past_len: jax.Array | int = 0) -> jax.Array:
    """logits_BNV of token trees, each node computed once: node n of row b holds id
    ids_BN[b, n] at depth depth_BN[b, n] of its path from the row's root and reads the nodes
    attend_BNN[b, n] marks (itself and its ancestors: its path). Its logits are those
    __call__ gives at the end of that path written out as a sequence. Many sequences that
    share beginnings (the token prefixes of bytelm.byteprobs) go through once, a node per
    distinct prefix, instead of once each.

    past: the keys and values of a path every tree continues (`path_kv`), of which every
    node reads the first past_len positions, its depth counting from the path's start: the
    same logits as the trees with the path written out, for their own nodes' work (a
    sampling loop's trees hang off a long stable path)."""
    bias_BHNS = (self.rel_bias(depth_BN, depth_BN)
                 + jnp.where(attend_BNN[:, None], 0.0, MASK_VALUE))
    if past is not None:
      P = past[0][0].shape[2]
      pos_BP = jnp.broadcast_to(jnp.arange(P), (ids_BN.shape[0], P))
      bias_BHNP = (self.rel_bias(depth_BN, pos_BP)
                   + jnp.where(pos_BP < past_len, 0.0, MASK_VALUE)[:, None, None, :])
      bias_BHNS = jnp.concatenate([bias_BHNP, bias_BHNS], axis=-1)
    x_BND = self.shared(ids_BN)
    for i, block in enumerate(self.blocks):
      x_BND, _, _ = block.after(x_BND, bias_BHNS, *(past[i] if past is not None else ()))
    return self.lm_head(self.final_norm(x_BND))

  def path_kv(self, ids_1P: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    """(k_1HPK, v_1HPK) of each block over one token path read causally: the past that
    `tree_logits` continues (positions past the path's real length, padding, are never read
    by it)."""
    P = ids_1P.shape[1]
    bias_1HPP = causal_bias(self.rel_bias, P)[None]
    x_1PD = self.shared(ids_1P)
    past = []
    for block in self.blocks:
      x_1PD, k_1HPK, v_1HPK = block.after(x_1PD, bias_1HPP)
      past.append((k_1HPK, v_1HPK))
    return past

  def init_cache(self, batch: int, max_len: int) -> list[dict[str, jax.Array]]:
    """Empty keys and values (B H L K) of each block, for `step`."""
    cfg = self.config
    zeros = jnp.zeros((batch, cfg.num_heads, max_len, cfg.d_kv), cfg.compute_dtype)
    return [{"k": zeros, "v": zeros} for _ in self.blocks]

  def step(self, ids_B: jax.Array, t, cache):
    """(logits_BV of the id after position t, cache): position t (a traced scalar) reads
    ids_B and the cached positions before it (KV-cached generation)."""
    max_len = cache[0]["k"].shape[2]
    pos_L = jnp.arange(max_len)
    bias_1H1L = (self.rel_bias(jnp.reshape(t, (1,)), pos_L)
                 + jnp.where(pos_L <= t, 0.0, MASK_VALUE))[None]
    key_bias_BL = jnp.zeros((ids_B.shape[0], max_len), jnp.float32)
    slot_B = jnp.full(ids_B.shape, t)
    x_B1D = self.shared(ids_B[:, None])
    new = []
    for block, layer in zip(self.blocks, cache):
      x_B1D, layer = block.step(x_B1D, layer, slot_B, bias_1H1L, key_bias_BL)
      new.append(layer)
    return self.lm_head(self.final_norm(x_B1D))[:, 0], new


def loss_fn(model: DecoderLM, batch: dict[str, jax.Array], z_loss: float = 0.0):
  """Mean next-id cross-entropy over non-pad targets -> (loss, metrics), as t5.loss_fn.

  batch: `inputs` int32 [B, T] and `targets` int32 [B, T] (the inputs shifted by one; pad 0 is
  ignored, as are the all-pad rows that fill the last evaluation batch), and for a token model
  `target_bytes` int32 [B, T]: then metrics also hold `num_bytes`, and `bits_per_byte` is the
  summed cross-entropy / (ln 2 * num_bytes) instead of the mean per target / ln 2.
  """
  logits_BTV = model(batch["inputs"])
  loss, metrics = blocks.cross_entropy(logits_BTV, batch["targets"], model.config.pad_id, z_loss)
  if "target_bytes" in batch:
    keep_BT = batch["targets"] != model.config.pad_id
    num_bytes = jnp.where(keep_BT, batch["target_bytes"], 0).sum().astype(jnp.float32)
    ce_sum = metrics["ce"] * metrics["num_targets"]
    metrics = dict(metrics, num_bytes=num_bytes,
                   bits_per_byte=ce_sum / (math.log(2) * jnp.maximum(num_bytes, 1.0)))
  return loss, metrics
