"""The pieces every bytelm model family is built from: the config fields the blocks read, the
T5 layers made from them, the pre-norm self-attention block, and the cross-entropy loss.

t5.py stacks these into ByT5's encoder and decoder; decoder.py, hierarchical.py, tagger.py and
mrt5.py build on them (and on t5.py's stacks where they are a T5). A family's own config
extends `BlockConfig` (through `t5.T5Config` today, whose field names every saved config.json
uses).

Axis legend: B batch, T query positions, S key positions, D d_model, H heads, K head dim, V vocab,
W window.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bytelm.nn import Attention, Dense, Embed, GatedGeluMLP, RelativePositionBias, RMSNorm
from bytelm.nn.attention import KERNELS as ATTENTION_KERNELS, MASK_VALUE
from bytelm.nn.layers import QUANT_MODES


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """What the blocks read: widths, attention, dtypes, quantization, the special ids."""

  # Fields that change how the model computes, not what it is: a checkpoint stays valid when
  # they change (resume, init_from, export).
  RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("dropout_rate", "dtype", "remat",
                                               "attention_kernel")
  POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = ("d_model", "d_ff", "num_heads", "d_kv",
                                                "vocab_size")

  vocab_size: int = 384  # embedding rows: 259 byte ids + room, rounded to 128 (ByT5)
  d_model: int = 256  # residual stream width
  d_ff: int = 640  # hidden width of the gated-GELU feed-forward
  num_heads: int = 4
  d_kv: int = 64  # width of one head; H*K need not equal D
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128  # distances beyond this share the last bucket
  dropout_rate: float = 0.0  # ByT5 pretraining used 0.0; HF configs say 0.1 (fine-tuning)
  layer_norm_eps: float = 1e-6
  attention_softmax: str = "softmax"  # or "softmax1" (MrT5)
  dtype: str = "float32"  # compute dtype; "bfloat16" on accelerators
  remat: bool = False  # recompute each block in the backward pass: less memory, ~1/3 more compute
  param_dtype: str = "float32"
  pad_id: int = 0
  eos_id: int = 1
  # Quantization-aware training of the blocks' matmuls (bytelm.nn.Dense): None, "int8_weight",
  # "int8" (W8A8) or "ternary" (BitNet b1.58, with an RMSNorm before the attention output and
  # `wo`); embeddings, LM head and MrT5's gate stay float. quant_statistic: the ternary scale,
  # "mean" or "median" of |W|.
  quant: str | None = None
  quant_statistic: str = "mean"
  # Who computes attention (without dropout): "bytelm" (`nn.attention_kernel.attention`, a
  # custom gradient that recomputes the probabilities), or jax.nn.dot_product_attention's
  # "xla" or "cudnn" (cuDNN's fused attention on an NVIDIA GPU; 16-bit dtypes only). The same
  # numbers up to float rounding; on a CPU "bytelm" is the faster (BENCHMARKS.md, launch
  # overhead: 1.2-1.4x on the causal attention of the flat decoder and the backbone).
  attention_kernel: str = "bytelm"

  def __post_init__(self):
    if self.quant not in QUANT_MODES:
      raise ValueError(f"quant must be one of {QUANT_MODES}, got {self.quant!r}")
    if self.quant_statistic not in ("mean", "median"):
      raise ValueError(f"quant_statistic must be 'mean' or 'median', got {self.quant_statistic!r}")
    if self.attention_softmax not in ("softmax", "softmax1"):
      raise ValueError(f"attention_softmax must be 'softmax' or 'softmax1', got "
                       f"{self.attention_softmax!r}")
    if self.attention_kernel not in ATTENTION_KERNELS:
      raise ValueError(f"attention_kernel must be one of {ATTENTION_KERNELS}, got "
                       f"{self.attention_kernel!r}")
    if self.attention_kernel != "bytelm" and self.attention_softmax != "softmax":
      raise ValueError(f"attention_kernel {self.attention_kernel!r} has no "
                       f"{self.attention_softmax}; use attention_kernel 'bytelm'")
    for name in self.POSITIVE_FIELDS:
      if getattr(self, name) <= 0:
        raise ValueError(f"{type(self).__name__}.{name} must be positive, got "
                         f"{getattr(self, name)}")

  def replace(self, **changes):
    """A copy with the given fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def storage_dtype(self):
    return jnp.dtype(self.param_dtype)


# ---- layers made from a config -----------------------------------------------------------------


def embedding(cfg: BlockConfig, rngs: nnx.Rngs) -> Embed:
  """The byte embedding (N(0, 1) as in T5; shared with the LM head when tied)."""
  return Embed(cfg.vocab_size, cfg.d_model, embedding_init=nnx.initializers.normal(1.0),
               dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, rngs=rngs)


def lm_head(cfg: BlockConfig, rngs: nnx.Rngs) -> Dense:
  """An untied LM head; std d_model**-0.5 (not HF's 1.0) keeps the initial logits O(1) when
  training from scratch. Its logits are float32 whatever the compute dtype (see Dense)."""
  return Dense(cfg.d_model, cfg.vocab_size, std=cfg.d_model**-0.5, out_dtype=jnp.float32,
               **layer_kwargs(cfg, rngs))


def layer_kwargs(cfg: BlockConfig, rngs: nnx.Rngs) -> dict:
  """The dtypes (and rngs) every layer of a model built from cfg takes."""
  return dict(dtype=cfg.compute_dtype, param_dtype=cfg.storage_dtype, rngs=rngs)


def block_kwargs(cfg: BlockConfig, rngs: nnx.Rngs) -> dict:
  """The blocks' matmuls (attention, feed-forward) are the ones quantized."""
  return dict(layer_kwargs(cfg, rngs), quant=cfg.quant, statistic=cfg.quant_statistic)


def norm(cfg: BlockConfig) -> RMSNorm:
  """T5's RMSNorm over d_model (computed in fp32)."""
  return RMSNorm(cfg.d_model, eps=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                 param_dtype=cfg.storage_dtype)


def attention(cfg: BlockConfig, rngs: nnx.Rngs) -> Attention:
  """Multi-head attention of num_heads x d_kv, its matmuls quantized as cfg.quant says."""
  return Attention(cfg.d_model, cfg.num_heads, cfg.d_kv, dropout_rate=cfg.dropout_rate,
                   softmax=cfg.attention_softmax, kernel=cfg.attention_kernel,
                   **block_kwargs(cfg, rngs))


def rel_bias(cfg: BlockConfig, bidirectional: bool, rngs: nnx.Rngs) -> RelativePositionBias:
  """T5's bucketed relative position bias, one per stack (causal unless bidirectional)."""
  return RelativePositionBias(cfg.num_heads, bidirectional=bidirectional,
                              num_buckets=cfg.relative_attention_num_buckets,
                              max_distance=cfg.relative_attention_max_distance,
                              std=cfg.d_model**-0.5, param_dtype=cfg.storage_dtype, rngs=rngs)


def dropout_active(dropout: nnx.Dropout) -> bool:
  """Whether dropout changes anything in this call (training with a rate above 0)."""
  return dropout.rate > 0 and not dropout.deterministic


def maybe_remat(block: nnx.Module, remat: bool):
  """block's __call__, rematerialised in the backward pass when `remat` (config.remat)."""
  if not remat:
    return block
  return functools.partial(nnx.remat(type(block).__call__), block)


def add_gate(key_bias_BS, gate_bias_BS):
  """key_bias_BS plus an optional extra key bias (MrT5's delete gate), in fp32."""
  return key_bias_BS if gate_bias_BS is None else key_bias_BS + gate_bias_BS.astype(jnp.float32)


def score_excess(attn, h_BTD, k_BHSK, pos_bias, key_bias_BS, above):
  """excess_B: MrT5's attention-score regulariser of this attention (`Attention.score_excess`),
  zeros when `above` is None."""
  if above is None:
    return jnp.zeros(h_BTD.shape[:1], jnp.float32)
  return attn.score_excess(h_BTD, k_BHSK, pos_bias, key_bias_BS, above=above)


# ---- the self-attention block --------------------------------------------------------------------


class EncoderBlock(nnx.Module):
  """Pre-norm self-attention then gated-GELU MLP, each added back to the residual stream: T5's
  encoder block, and with a causal bias the block of the decoder-only and hierarchical stacks."""

  def __init__(self, cfg: BlockConfig, rngs: nnx.Rngs):
    self.attn_norm, self.attn = norm(cfg), attention(cfg, rngs)
    self.mlp_norm = norm(cfg)
    self.mlp = GatedGeluMLP(cfg.d_model, cfg.d_ff, dropout_rate=cfg.dropout_rate,
                            **block_kwargs(cfg, rngs))
    self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

  def __call__(self, x_BTD: jax.Array, pos_bias_HTT: jax.Array, key_bias_BT: jax.Array,
               gate_bias_BT: jax.Array | None = None, excess_above: float | None = None):
    """(x_BTD, excess_B). gate_bias_BT is added to key_bias_BT (MrT5's soft deletion);
    excess_B is the attention-score regulariser, zeros unless excess_above is given."""
    h_BTD = self.attn_norm(x_BTD)
    k_BHTK, v_BHTK = self.attn.project_kv(h_BTD)
    excess_B = score_excess(self.attn, h_BTD, k_BHTK, pos_bias_HTT, key_bias_BT, excess_above)
    attn_BTD = self.attn.attend(h_BTD, k_BHTK, v_BHTK, pos_bias_HTT,
                                add_gate(key_bias_BT, gate_bias_BT))
    return self._mlp(x_BTD + self.dropout(attn_BTD)), excess_B

  def _mlp(self, x_BTD: jax.Array) -> jax.Array:
    return x_BTD + self.dropout(self.mlp(self.mlp_norm(x_BTD)))

  def local(self, x_BTD: jax.Array, pos_bias_HWS: jax.Array, window: int) -> jax.Array:
    """The block with causal attention to the last `window` positions (itself included), in
    blocks: the W = window queries of each block attend to their own block and the one before
    (S = 2W keys), so the cost grows with T * W instead of T * T. pos_bias_HWS is the bias of
    query W + i over keys 0..2W-1 and must mask what is further than W - 1 back or ahead.
    T must be a multiple of the window."""
    B, T, D = x_BTD.shape
    if T % window:
      raise ValueError(f"local attention needs a length that is a multiple of the window "
                       f"{window}, got {T}")
    nb = T // window
    h_BTD = self.attn_norm(x_BTD)
    k_BHTK, v_BHTK = self.attn.project_kv(h_BTD)

    def with_previous_block(z_BHTK):  # -> (B nb) H 2W K
      z_BHnWK = z_BHTK.reshape(B, z_BHTK.shape[1], nb, window, -1)
      prev_BHnWK = jnp.pad(z_BHnWK, ((0, 0), (0, 0), (1, 0), (0, 0), (0, 0)))[:, :, :-1]
      both = jnp.concatenate([prev_BHnWK, z_BHnWK], axis=3)
      return both.transpose(0, 2, 1, 3, 4).reshape(B * nb, z_BHTK.shape[1], 2 * window, -1)

    # The first block has no block before it: its zero keys are masked.
    first_S = jnp.where(jnp.arange(2 * window) < window, MASK_VALUE, 0.0)
    key_bias_nS = jnp.zeros((nb, 2 * window), jnp.float32).at[0].set(first_S)
    attn_BTD = self.attn.attend(h_BTD.reshape(B * nb, window, D), with_previous_block(k_BHTK),
                                with_previous_block(v_BHTK), pos_bias_HWS,
                                jnp.tile(key_bias_nS, (B, 1))).reshape(B, T, D)
    return self._mlp(x_BTD + self.dropout(attn_BTD))

  def after(self, x_BTD: jax.Array, pos_bias_BHTS: jax.Array, past_k_1HPK: jax.Array | None = None,
            past_v_1HPK: jax.Array | None = None):
    """(x_BTD, k_BHTK, v_BHTK): the block over new positions that may also read P earlier
    ones, given as their keys and values (one path every row continues, shared by the batch;
    pos_bias_BHTS covers the P past keys, then the T new ones), and the new positions' own
    keys and values (what a cache of them keeps)."""
    h_BTD = self.attn_norm(x_BTD)
    k_BHTK, v_BHTK = self.attn.project_kv(h_BTD)
    keys, values = k_BHTK, v_BHTK
    if past_k_1HPK is not None:
      B = x_BTD.shape[0]
      keys = jnp.concatenate([jnp.broadcast_to(past_k_1HPK, (B,) + past_k_1HPK.shape[1:])
                              .astype(k_BHTK.dtype), k_BHTK], axis=2)
      values = jnp.concatenate([jnp.broadcast_to(past_v_1HPK, (B,) + past_v_1HPK.shape[1:])
                                .astype(v_BHTK.dtype), v_BHTK], axis=2)
    key_bias_BS = jnp.zeros((x_BTD.shape[0], keys.shape[2]), jnp.float32)
    attn_BTD = self.attn.attend(h_BTD, keys, values, pos_bias_BHTS, key_bias_BS)
    return self._mlp(x_BTD + self.dropout(attn_BTD)), k_BHTK, v_BHTK

  def step(self, x_B1D: jax.Array, cache: dict[str, jax.Array], slot_B: jax.Array,
           pos_bias_BH1S: jax.Array, key_bias_BS: jax.Array):
    """One new position per row, written to cache slot slot_B (k, v: B H S K) before it
    attends to the cache; pos_bias_BH1S and key_bias_BS say which slots it may see, and how
    far back they are. Returns (x_B1D, cache)."""
    h_B1D = self.attn_norm(x_B1D)
    k_BH1K, v_BH1K = self.attn.project_kv(h_B1D)
    write_BS = (jnp.arange(cache["k"].shape[2]) == slot_B[:, None])[:, None, :, None]
    cache = {"k": jnp.where(write_BS, k_BH1K.astype(cache["k"].dtype), cache["k"]),
             "v": jnp.where(write_BS, v_BH1K.astype(cache["v"].dtype), cache["v"])}
    attn_B1D = self.attn.attend(h_B1D, cache["k"], cache["v"], pos_bias_BH1S, key_bias_BS)
    return self._mlp(x_B1D + self.dropout(attn_B1D)), cache


# ---- the loss ------------------------------------------------------------------------------------


def cross_entropy(logits_BSV, targets_BS, pad_id: int, z_loss: float = 0.0):
  """(loss, metrics) of logits against targets; pad targets are ignored."""
  logits_BSV = logits_BSV.astype(jnp.float32)
  weights_BS = (targets_BS != pad_id).astype(jnp.float32)
  ce_BS = optax.softmax_cross_entropy_with_integer_labels(logits_BSV, targets_BS)
  num_targets = jnp.maximum(weights_BS.sum(), 1.0)
  ce = (ce_BS * weights_BS).sum() / num_targets
  loss = ce
  if z_loss:
    log_z_BS = jax.nn.logsumexp(logits_BSV, axis=-1)
    loss = loss + z_loss * (jnp.square(log_z_BS) * weights_BS).sum() / num_targets
  return loss, {"loss": loss, "ce": ce, "bits_per_byte": ce / math.log(2),
                "num_targets": weights_BS.sum()}
