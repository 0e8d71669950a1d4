"""ByT5: the T5.1.1 encoder-decoder over bytes (Xue et al. 2022, "ByT5: Towards a token-free future").

Numerically identical to Hugging Face's `T5ForConditionalGeneration` on the same weights (see
tests/test_t5_parity.py). What is T5-specific is written where it happens: RMSNorm in fp32, no
biases, no score scaling, one relative position bias per stack, gated-GELU, and the d_model**-0.5
rescale only when the LM head is tied to the embedding.

Axis legend: B batch, T encoder (input byte) positions, S decoder (target) positions, L cache
length, D d_model, H heads, K head dim, F d_ff, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.models.blocks import (BlockConfig, EncoderBlock, add_gate, attention, block_kwargs,
                                  cross_entropy, dropout_active, embedding, lm_head, maybe_remat,
                                  norm, rel_bias, score_excess)
from bytelm.nn import GatedGeluMLP, key_mask_bias
from bytelm.nn.attention import MASK_VALUE
from bytelm.nn.batching import loop_is_faster, map_over_batch
from bytelm.nn.compiled import Compiled


@dataclasses.dataclass(frozen=True)
class T5Config(BlockConfig):
  """Hyper-parameters of a T5 encoder-decoder: the blocks' (`BlockConfig`) and the stacks'.
  Field names follow Hugging Face's `T5Config`."""

  POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = BlockConfig.POSITIVE_FIELDS + (
      "num_encoder_layers", "num_decoder_layers")

  num_encoder_layers: int = 6  # ByT5 makes the encoder 3x deeper than the decoder
  num_decoder_layers: int = 2
  tie_word_embeddings: bool = False  # ByT5 / T5.1.1: untied
  decoder_start_id: int = 0  # T5 starts decoding from the pad id


# Named presets. The ByT5 sizes are from the paper's table 1; the small ones are for CPUs.
PRESETS: dict[str, dict[str, Any]] = {
    "byt5_small": dict(d_model=1472, d_ff=3584, num_heads=6, d_kv=64, num_encoder_layers=12,
                       num_decoder_layers=4),
    "byt5_base": dict(d_model=1536, d_ff=3968, num_heads=12, d_kv=64, num_encoder_layers=18,
                      num_decoder_layers=6),
    "byt5_large": dict(d_model=1536, d_ff=3840, num_heads=16, d_kv=64, num_encoder_layers=36,
                       num_decoder_layers=12),
    # The benchmark config of eval/speed.py: a ByT5 shape that trains on a laptop CPU.
    "mini": dict(d_model=256, d_ff=640, num_heads=4, d_kv=64, num_encoder_layers=6,
                 num_decoder_layers=2),
    # For tests: compiles in a second.
    "tiny": dict(d_model=64, d_ff=128, num_heads=2, d_kv=32, num_encoder_layers=2,
                 num_decoder_layers=2, relative_attention_num_buckets=8,
                 relative_attention_max_distance=20),
}


def preset(name: str, **overrides) -> T5Config:
  """A named T5Config (`byt5_small`, `byt5_base`, `byt5_large`, `mini`, `tiny`) with overrides."""
  if name not in PRESETS:
    raise ValueError(f"unknown T5 preset {name!r}; choose one of {sorted(PRESETS)}")
  return T5Config(**{**PRESETS[name], **overrides})


def byt5_small(**overrides) -> T5Config:
  """google/byt5-small's shape: d_model 1472, d_ff 3584, 6 heads x 64, 12 encoder / 4 decoder."""
  return preset("byt5_small", **overrides)


class DecoderBlock(nnx.Module):
  """Causal self-attention, cross-attention to the encoder, then the MLP; all pre-norm."""

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs):
    self.self_attn_norm, self.self_attn = norm(cfg), attention(cfg, rngs)
    self.cross_attn_norm, self.cross_attn = norm(cfg), attention(cfg, rngs)
    self.mlp_norm = norm(cfg)
    self.mlp = GatedGeluMLP(cfg.d_model, cfg.d_ff, dropout_rate=cfg.dropout_rate,
                            **block_kwargs(cfg, rngs))
    self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

  def __call__(self, y_BSD, self_pos_bias_HSL, self_key_bias_BL, enc_kv, cross_key_bias_BT,
               self_kv=None, cross_gate_bias_BT=None, excess_above=None):
    """One block -> (y_BSD, excess_B). enc_kv = (k, v) of the encoder output; self_kv overrides
    the self-attention keys/values (the KV cache path, L cache slots), else they come from this
    block's input. cross_gate_bias_BT and excess_above: as in EncoderBlock, for cross-attention."""
    h_BSD = self.self_attn_norm(y_BSD)
    k_BHLK, v_BHLK = self.self_attn.project_kv(h_BSD) if self_kv is None else self_kv
    y_BSD = y_BSD + self.dropout(self.self_attn.attend(h_BSD, k_BHLK, v_BHLK, self_pos_bias_HSL,
                                                       self_key_bias_BL))
    h_BSD = self.cross_attn_norm(y_BSD)
    excess_B = score_excess(self.cross_attn, h_BSD, enc_kv[0], None, cross_key_bias_BT,
                             excess_above)
    y_BSD = y_BSD + self.dropout(self.cross_attn.attend(
        h_BSD, *enc_kv, None, add_gate(cross_key_bias_BT, cross_gate_bias_BT)))
    return y_BSD + self.dropout(self.mlp(self.mlp_norm(y_BSD))), excess_B


class Encoder(nnx.Module):
  """The encoder stack over embedded bytes; bidirectional position bias from its first layer."""

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs):
    self.rel_bias = rel_bias(cfg, bidirectional=True, rngs=rngs)
    self.remat = cfg.remat
    self.blocks = nnx.List([EncoderBlock(cfg, rngs) for _ in range(cfg.num_encoder_layers)])
    self.final_norm = norm(cfg)
    self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

  def __call__(self, x_BTD: jax.Array, mask_BT: jax.Array,
               key_bias_BT: jax.Array | None = None) -> jax.Array:
    """The encoded x_BTD. key_bias_BT is added to every attention score towards that key."""
    x_BTD = self.dropout(x_BTD)
    x_BTD, _ = self.run(x_BTD, jnp.arange(x_BTD.shape[1]),
                        add_gate(key_mask_bias(mask_BT), key_bias_BT))
    return self.finish(x_BTD)

  def run(self, x_BTD, pos, key_bias_BT, start: int = 0, stop: int | None = None,
          gate_bias_BT=None, excess_above=None):
    """Blocks start..stop-1 over x_BTD -> (x_BTD, excess_B summed over those blocks).

    pos holds the positions of x_BTD's rows: (T,) shared by the batch, or (B, T) per example
    (MrT5's compacted sequences keep their original positions). The relative position bias is
    looked up once per run (per example in the per-example loop) and shared by every block.
    The pieces of __call__, exposed so that MrT5 can put its delete gate between two runs.
    """
    blocks = list(self.blocks)[start:stop]
    per_example = pos.ndim == 2
    shared_bias_HTT = None if per_example else self.rel_bias(pos, pos)
    loop = loop_is_faster(x_BTD.shape[1], dropout_active(self.dropout))

    def layers(x_BTD, key_bias_BT, gate_bias_BT, pos_BT):
      bias = self.rel_bias(pos_BT, pos_BT) if per_example else shared_bias_HTT
      excess_B = jnp.zeros(x_BTD.shape[:1], jnp.float32)
      for block in blocks:  # the loop already rematerialises each example
        x_BTD, e_B = maybe_remat(block, self.remat and not loop)(
            x_BTD, bias, key_bias_BT, gate_bias_BT, excess_above)
        excess_B = excess_B + e_B
      return x_BTD, excess_B

    return map_over_batch(layers, x_BTD, key_bias_BT, gate_bias_BT,
                          pos if per_example else None, loop=loop)

  def finish(self, x_BTD: jax.Array) -> jax.Array:
    """The stack's final norm (and dropout)."""
    return self.dropout(self.final_norm(x_BTD))


class Decoder(nnx.Module):
  """The decoder stack; causal position bias from its first layer, no bias in cross-attention."""

  def __init__(self, cfg: T5Config, rngs: nnx.Rngs):
    self.rel_bias = rel_bias(cfg, bidirectional=False, rngs=rngs)
    self.remat = cfg.remat
    self.blocks = nnx.List([DecoderBlock(cfg, rngs) for _ in range(cfg.num_decoder_layers)])
    self.final_norm = norm(cfg)
    self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

  def __call__(self, y_BSD, enc_BTD, cross_key_bias_BT, mask_BS=None, cross_gate_bias_BT=None,
               excess_above=None):
    """Teacher-forced decoding of a whole target sequence -> (h_BSD, cross excess_B)."""
    pos_S = jnp.arange(y_BSD.shape[1])
    causal_SS = pos_S[None, :] <= pos_S[:, None]
    pos_bias_HSS = self.rel_bias(pos_S, pos_S) + jnp.where(causal_SS, 0.0, MASK_VALUE)
    self_key_bias_BS = None if mask_BS is None else key_mask_bias(mask_BS)
    y_BSD = self.dropout(y_BSD)
    loop = loop_is_faster(max(y_BSD.shape[1], enc_BTD.shape[1]), dropout_active(self.dropout))

    def layers(y_BSD, self_key_bias_BS, enc_BTD, cross_key_bias_BT, cross_gate_bias_BT):
      excess_B = jnp.zeros(y_BSD.shape[:1], jnp.float32)
      for block in self.blocks:
        enc_kv = block.cross_attn.project_kv(enc_BTD)
        y_BSD, e_B = maybe_remat(block, self.remat and not loop)(
            y_BSD, pos_bias_HSS, self_key_bias_BS, enc_kv, cross_key_bias_BT, None,
            cross_gate_bias_BT, excess_above)
        excess_B = excess_B + e_B
      return y_BSD, excess_B

    y_BSD, excess_B = map_over_batch(layers, y_BSD, self_key_bias_BS, enc_BTD, cross_key_bias_BT,
                                     cross_gate_bias_BT, loop=loop)
    return self.dropout(self.final_norm(y_BSD)), excess_B

  def init_cache(self, enc_BTD: jax.Array, max_len: int) -> list[dict[str, jax.Array]]:
    """Per layer: zeroed self-attention k/v for max_len steps, and the cross-attention k/v
    of the encoder output (computed once per generation instead of once per step)."""
    attn = self.blocks[0].self_attn
    zeros_BHLK = jnp.zeros((enc_BTD.shape[0], attn.num_heads, max_len, attn.d_kv), attn.dtype)
    cache = []
    for block in self.blocks:
      ck_BHTK, cv_BHTK = block.cross_attn.project_kv(enc_BTD)
      cache.append(dict(k=zeros_BHLK, v=zeros_BHLK, ck=ck_BHTK, cv=cv_BHTK))
    return cache

  def step(self, y_B1D, cache, index, cross_key_bias_BT):
    """Decode position `index` (a traced scalar) given the cache; returns (h_B1D, cache)."""
    max_len = cache[0]["k"].shape[2]
    pos_L = jnp.arange(max_len)
    q_pos_1 = jnp.reshape(index, (1,))
    visible_1L = pos_L[None, :] <= q_pos_1[:, None]  # cache slots written so far
    pos_bias_H1L = self.rel_bias(q_pos_1, pos_L) + jnp.where(visible_1L, 0.0, MASK_VALUE)
    new_cache = []
    for block, layer in zip(self.blocks, cache):
      k_BH1K, v_BH1K = block.self_attn.project_kv(block.self_attn_norm(y_B1D))
      k_BHLK = jax.lax.dynamic_update_slice_in_dim(layer["k"], k_BH1K.astype(layer["k"].dtype),
                                                   index, axis=2)
      v_BHLK = jax.lax.dynamic_update_slice_in_dim(layer["v"], v_BH1K.astype(layer["v"].dtype),
                                                   index, axis=2)
      y_B1D, _ = block(y_B1D, pos_bias_H1L, None, (layer["ck"], layer["cv"]), cross_key_bias_BT,
                       self_kv=(k_BHLK, v_BHLK))
      new_cache.append(dict(layer, k=k_BHLK, v=v_BHLK))
    return self.dropout(self.final_norm(y_B1D)), new_cache


class T5(nnx.Module):
  """The encoder-decoder: shared byte embedding, encoder, decoder, LM head."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.config = cfg
    self.shared = embedding(cfg, rngs)
    self.encoder = Encoder(cfg, rngs)
    self.decoder = Decoder(cfg, rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = lm_head(cfg, rngs)

  def encode(self, inputs_BT, input_mask_BT=None, key_bias_BT=None) -> jax.Array:
    """Encoder output enc_BTD; the mask defaults to `inputs != pad`."""
    if input_mask_BT is None:
      input_mask_BT = inputs_BT != self.config.pad_id
    return self.encoder(self.shared(inputs_BT), input_mask_BT, key_bias_BT)

  def logits(self, h_BSD: jax.Array) -> jax.Array:
    if self.config.tie_word_embeddings:
      # Mesh-TF convention, kept by HF: rescale before projecting with the embedding
      # (float32 logits, as the untied head's).
      return self.shared.attend(h_BSD * self.config.d_model**-0.5)
    return self.lm_head(h_BSD)

  def cross_bias(self, input_mask_BT) -> jax.Array:
    """The additive cross-attention key bias_BT of the padding mask."""
    return key_mask_bias(input_mask_BT)

  def decode(self, decoder_inputs_BS, enc_BTD, input_mask_BT, decoder_mask_BS=None) -> jax.Array:
    """Teacher-forced decoder logits_BSV given the encoder output."""
    h_BSD, _ = self.decoder(self.shared(decoder_inputs_BS), enc_BTD,
                            self.cross_bias(input_mask_BT), decoder_mask_BS)
    return self.logits(h_BSD)

  def __call__(self, inputs_BT, decoder_inputs_BS, input_mask_BT=None,
               decoder_mask_BS=None) -> jax.Array:
    """logits_BSV for decoder_inputs_BS (targets shifted right, see `shift_right`)."""
    if input_mask_BT is None:
      input_mask_BT = inputs_BT != self.config.pad_id
    enc_BTD = self.encode(inputs_BT, input_mask_BT)
    return self.decode(decoder_inputs_BS, enc_BTD, input_mask_BT, decoder_mask_BS)

  # -- inference (bytelm.generation drives these) ------------------------------------------

  def encode_memory(self, inputs_BT, input_mask_BT):
    """(enc_BTD, cross_bias_BT): what the decoder attends to, and its key bias."""
    return self.encode(inputs_BT, input_mask_BT), self.cross_bias(input_mask_BT)

  def decode_memory(self, decoder_inputs_BS, enc_BTD, cross_bias_BT) -> jax.Array:
    """Teacher-forced logits_BSV against an `encode_memory` / `encode_for_inference` result."""
    h_BSD, _ = self.decoder(self.shared(decoder_inputs_BS), enc_BTD, cross_bias_BT)
    return self.logits(h_BSD)

  def encode_for_inference(self, inputs_BT, input_mask_BT, compiled: Compiled | None = None):
    """encode_memory, compiled, with dropout off. MrT5 overrides it with hard deletion.

    compiled: this model already split (`Compiled(model)`), when the caller makes more compiled
    calls with it (generation does): splitting costs ~20 ms of Python per call.
    """
    return (compiled or Compiled(self))("encode_memory", inputs_BT, input_mask_BT)

  def init_cache(self, enc_BTD: jax.Array, max_len: int):
    return self.decoder.init_cache(enc_BTD, max_len)

  def decode_step(self, ids_B, cache, index, cross_bias_BT):
    """Logits_BV for the next position after feeding ids_B at position `index`."""
    h_B1D, cache = self.decoder.step(self.shared(ids_B[:, None]), cache, index, cross_bias_BT)
    return self.logits(h_B1D)[:, 0], cache


def shift_right(targets_BS: jax.Array, start_id: int = 0) -> jax.Array:
  """Decoder inputs: the targets shifted one step right, starting from `start_id`."""
  start_B1 = jnp.full((targets_BS.shape[0], 1), start_id, targets_BS.dtype)
  return jnp.concatenate([start_B1, targets_BS[:, :-1]], axis=1)


def loss_fn(model: T5, batch: dict[str, jax.Array], z_loss: float = 0.0):
  """Mean cross-entropy over non-pad targets (+ optional t5x z-loss) -> (loss, metrics).

  batch: `inputs` int32 [B, T], `targets` int32 [B, S] (pad = 0 is ignored), optional
  `input_mask` [B, T]. bits_per_byte counts every predicted id, eos included.
  """
  targets_BS = batch["targets"]
  logits_BSV = model(batch["inputs"], shift_right(targets_BS, model.config.decoder_start_id),
                     batch.get("input_mask"))
  return cross_entropy(logits_BSV, targets_BS, model.config.pad_id, z_loss)
