"""A hierarchical byte LM: bytes -> segments -> causal backbone -> bytes (HAT-style).

Neitemeier et al. (2025), "Hierarchical Autoregressive Transformers": a small byte encoder
summarises each segment (a word), a causal backbone runs over the segments, and a small byte
decoder spells out the bytes; the backbone, where most parameters sit, sees ~5x fewer positions.

Here, for a row of target bytes y (the "causal_lm" objective's targets):
1. encoder: causal self-attention over the bytes of y within a local window (`window` bytes,
   computed in blocks so its cost grows with T, not T^2), at the narrower byte width
   (`byte_d_model`); each segment is summarised by its last byte's state (`pool`: or its first
   byte, its mean, or a learned query attending over it), which has seen the whole segment and
   nothing after it, projected up to the backbone width;
2. backbone: a causal stack over the N segment summaries, at the full width;
3. decoder: the same local causal attention over the *inputs* (y shifted right by one);
   position t adds the backbone state (projected down) of the last segment whose end was
   settled before t (`pooling.unpool` of the context ids) and predicts y[t]. So y[t] is
   predicted from bytes before t only (tests change the bytes from t on and check).
All positions train in parallel. Every block is `blocks.EncoderBlock`, as in models/decoder.py,
so with equal width and depth the flat decoder and the backbone differ only in what the
positions are (bytes or segments).

Where segments come from (`segmenter`):
- "given": the batch carries `segment_ids` and `context_ids` (words, entropy or fixed
  segments, computed on the host by the data pipeline: `bytelm.text.segment.Segmenter`);
- "learned": a boundary predictor on the byte encoder's states decides (H-Net's routing,
  `pooling.BoundaryPredictor`), pulled toward `target_segment_bytes` by a ratio loss.

Axis legend: B batch, T bytes, N segments, D d_model (backbone), d byte_d_model, H heads,
V vocab, W window, S keys.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.models import blocks, decoder, pooling, t5
from bytelm.nn import Dense
from bytelm.nn.attention import MASK_VALUE

SEGMENTERS = ("given", "learned")
POOLS = ("last", "first", "mean", "query")


@dataclasses.dataclass(frozen=True)
class HierarchicalConfig(t5.T5Config):
  """T5Config's width fields are the backbone's; the byte encoder and decoder have their own
  (num_encoder_layers is the byte encoder's depth, num_decoder_layers the byte decoder's)."""

  POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = t5.T5Config.POSITIVE_FIELDS + (
      "num_backbone_layers", "window", "max_segments", "byte_d_model", "byte_d_ff",
      "byte_num_heads", "max_segment_bytes", "target_segment_bytes")

  num_encoder_layers: int = 1
  num_backbone_layers: int = 4
  num_decoder_layers: int = 1
  window: int = 16  # bytes the byte encoder and decoder attend to, itself included
  max_segments: int = 64  # N: segments per row the backbone sees
  byte_d_model: int = 128  # width of the byte encoder and decoder
  byte_d_ff: int = 320
  byte_num_heads: int = 2  # of d_kv each
  segmenter: str = "given"  # or "learned"
  pool: str = "last"  # a segment's summary: its "last" or "first" byte, "mean", or "query"
  # The learned segmenter: a segment reaching max_segment_bytes ends there; the ratio loss
  # (weight ratio_loss_weight) pulls the mean segment length toward target_segment_bytes.
  max_segment_bytes: int = 16
  target_segment_bytes: float = 5.0
  ratio_loss_weight: float = 0.03

  def __post_init__(self):
    super().__post_init__()
    if self.segmenter not in SEGMENTERS:
      raise ValueError(f"HierarchicalConfig.segmenter must be one of {SEGMENTERS}, got "
                       f"{self.segmenter!r}")
    if self.pool not in POOLS:
      raise ValueError(f"HierarchicalConfig.pool must be one of {POOLS}, got {self.pool!r}")
    if self.segmenter == "learned" and self.target_segment_bytes <= 1:
      raise ValueError("target_segment_bytes must be above 1 (a boundary at every byte is "
                       f"no compression), got {self.target_segment_bytes}")

  def byte_config(self) -> "HierarchicalConfig":
    """The config of the byte layers: the byte width, the backbone's everything else."""
    return self.replace(d_model=self.byte_d_model, d_ff=self.byte_d_ff,
                        num_heads=self.byte_num_heads)


def window_bias(rel_bias, window: int) -> jax.Array:
  """bias_HWS for `blocks.EncoderBlock.local`: query W + i over keys 0..2W-1, causal and at most
  W - 1 back."""
  q_W, k_S = window + jnp.arange(window), jnp.arange(2 * window)
  back_WS = q_W[:, None] - k_S[None, :]
  allowed_WS = (back_WS >= 0) & (back_WS < window)
  return rel_bias(q_W, k_S) + jnp.where(allowed_WS, 0.0, MASK_VALUE)


def _ste_one(c: jax.Array) -> jax.Array:
  """1 in the forward pass, with c's gradient (a straight-through estimator)."""
  return c + jax.lax.stop_gradient(1.0 - c)


class Hierarchical(nnx.Module):
  """Byte encoder -> segment backbone -> byte decoder, over one row of bytes and its segments."""

  def __init__(self, cfg: HierarchicalConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    bcfg = cfg.byte_config()
    kw = blocks.layer_kwargs(cfg, rngs)
    self.shared = blocks.embedding(bcfg, rngs)
    self.byte_bias = blocks.rel_bias(bcfg, bidirectional=False, rngs=rngs)
    self.encoder = nnx.List([blocks.EncoderBlock(bcfg, rngs)
                             for _ in range(cfg.num_encoder_layers)])
    self.encoder_norm = blocks.norm(bcfg)
    self.router = (pooling.BoundaryPredictor(cfg.byte_d_model, **kw)
                   if cfg.segmenter == "learned" else None)
    self.pooler = (pooling.QueryPool(cfg.byte_d_model, **kw) if cfg.pool == "query" else None)
    self.up = Dense(cfg.byte_d_model, cfg.d_model, std=cfg.byte_d_model**-0.5, **kw)
    self.segment_bias = blocks.rel_bias(cfg, bidirectional=False, rngs=rngs)
    self.backbone = nnx.List([blocks.EncoderBlock(cfg, rngs)
                              for _ in range(cfg.num_backbone_layers)])
    self.backbone_norm = blocks.norm(cfg)
    self.down = Dense(cfg.d_model, cfg.byte_d_model, std=cfg.d_model**-0.5, **kw)
    # What the bytes of the first segment see instead of a backbone state.
    self.start = nnx.Param(jnp.zeros((cfg.byte_d_model,), cfg.storage_dtype))
    self.decoder = nnx.List([blocks.EncoderBlock(bcfg, rngs)
                             for _ in range(cfg.num_decoder_layers)])
    self.final_norm = blocks.norm(bcfg)
    self.lm_head = blocks.lm_head(bcfg, rngs)

  # ---- the three stacks (training: all positions at once)

  def _local(self, blocks, x_BTd: jax.Array) -> jax.Array:
    bias_HWS = window_bias(self.byte_bias, self.config.window)
    for block in blocks:
      x_BTd = block.local(x_BTd, bias_HWS, self.config.window)
    return x_BTd

  def encode_bytes(self, targets_BT: jax.Array) -> jax.Array:
    """e_BTd: the byte encoder's state of each byte (causal: it has read bytes 0..t)."""
    return self.encoder_norm(self._local(self.encoder, self.shared(targets_BT)))

  def _pool(self, e_BTd: jax.Array, ids_BT: jax.Array, num_segments: int) -> jax.Array:
    if self.pooler is not None:
      return self.pooler(e_BTd, ids_BT, num_segments)
    return pooling.pool(e_BTd, ids_BT, num_segments, self.config.pool)

  def backbone_states(self, e_BTd: jax.Array, segment_ids_BT: jax.Array) -> jax.Array:
    """h_BNd: segment n's backbone state (it has read segments 0..n), at the byte width."""
    cfg = self.config
    s_BND = self.up(self._pool(e_BTd, segment_ids_BT, cfg.max_segments))
    seg_bias_HNN = decoder.causal_bias(self.segment_bias, cfg.max_segments)
    present_BN = (segment_ids_BT[..., None] == jnp.arange(cfg.max_segments)).any(axis=1)
    seg_key_bias_BN = jnp.where(present_BN, 0.0, MASK_VALUE)
    for block in self.backbone:
      s_BND, _ = block(s_BND, seg_bias_HNN, seg_key_bias_BN)
    return self.down(self.backbone_norm(s_BND))

  def decode_bytes(self, inputs_BT: jax.Array, context_BTd: jax.Array) -> jax.Array:
    """logits_BTV from the shifted inputs and each position's backbone context."""
    y_BTd = self.shared(inputs_BT) + context_BTd.astype(self.config.compute_dtype)
    return self.lm_head(self.final_norm(self._local(self.decoder, y_BTd)))

  def forward(self, inputs_BT: jax.Array, targets_BT: jax.Array,
              segment_ids_BT: jax.Array | None = None,
              context_ids_BT: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """(logits_BTV, aux): position t predicts targets_BT[t]; inputs_BT is targets_BT shifted
    right by one (the "causal_lm" pair). With the "given" segmenter, segment_ids_BT and
    context_ids_BT are `bytelm.text.segment`'s `segment_ids` / `context_ids` of the targets.
    aux holds `bytes_per_segment` and, for the learned segmenter, its `ratio_loss`."""
    cfg = self.config
    T = targets_BT.shape[1]
    pad = -T % cfg.window  # the local layers work in whole windows; padding comes last
    if pad:
      targets_BT, inputs_BT = (jnp.pad(a, ((0, 0), (0, pad))) for a in (targets_BT, inputs_BT))
    valid_BT = targets_BT != cfg.pad_id
    e_BTd = self.encode_bytes(targets_BT)
    aux = {}
    scale_BT = None
    if cfg.segmenter == "learned":
      p_BT = self.router(e_BTd)
      starts_BT = pooling.force_max_length(p_BT >= 0.5, cfg.max_segment_bytes)
      segment_ids_BT, context_ids_BT = pooling.ids_from_starts(starts_BT & valid_BT,
                                                               cfg.max_segments)
      aux["ratio_loss"] = pooling.ratio_loss(p_BT, starts_BT, valid_BT, cfg.target_segment_bytes)
      # H-Net's confidence: forward 1, but the LM loss's gradient reaches the boundary
      # probabilities. Position t reads the decision about byte t - 1 (settled before t).
      c_BT = jnp.where(starts_BT, p_BT, 1.0 - p_BT)
      scale_BT = _ste_one(jnp.pad(c_BT, ((0, 0), (1, 0)), constant_values=1.0)[:, :-1])
    elif segment_ids_BT is None or context_ids_BT is None:
      raise ValueError("the 'given' segmenter needs segment_ids and context_ids in the batch: "
                       "wrap the loss as the trainer does, bytelm.text.segment_jax.with_segments("
                       "loss_fn, source.device_segmenter), with a source made with a `segments` "
                       "setting (configs/hat.py)")
    elif pad:
      segment_ids_BT, context_ids_BT = (jnp.pad(a, ((0, 0), (0, pad)), constant_values=-1)
                                        for a in (segment_ids_BT, context_ids_BT))
    aux["bytes_per_segment"] = pooling.bytes_per_segment(segment_ids_BT, valid_BT)
    # Unpooled (and scaled) in float32: the backward pass sums each segment's gradient over
    # its bytes, the start's over every first segment of the batch, and the confidence's over
    # d; in bf16 each of those sums drifts by a percent (decode_bytes casts afterwards).
    h_BNd = self.backbone_states(e_BTd, segment_ids_BT).astype(jnp.float32)
    context_BTd = pooling.unpool(h_BNd, context_ids_BT, self.start[...])
    if scale_BT is not None:
      context_BTd = context_BTd * scale_BT[..., None]
    return self.decode_bytes(inputs_BT, context_BTd)[:, :T], aux

  def __call__(self, inputs_BT, targets_BT, segment_ids_BT=None, context_ids_BT=None):
    """logits_BTV (see `forward`)."""
    return self.forward(inputs_BT, targets_BT, segment_ids_BT, context_ids_BT)[0]

  # ---- one position at a time, with caches (bytelm/generation/hierarchical.py runs the loop)

  def init_cache(self, batch: int, max_len: int) -> dict:
    """Empty caches for up to max_len bytes: the last `window` keys and values of each byte
    layer, all max_segments of each backbone layer, the encoder states of the bytes and the
    backbone states of the segments so far, and the learned segmenter's running state."""
    cfg = self.config

    def slots(n, heads):
      zeros = jnp.zeros((batch, heads, n, cfg.d_kv), cfg.compute_dtype)
      return {"k": zeros, "v": zeros}

    return {"encoder": [slots(cfg.window, cfg.byte_num_heads) for _ in self.encoder],
            "decoder": [slots(cfg.window, cfg.byte_num_heads) for _ in self.decoder],
            "backbone": [slots(cfg.max_segments, cfg.num_heads) for _ in self.backbone],
            "e": jnp.zeros((batch, max_len, cfg.byte_d_model), cfg.compute_dtype),
            "h": jnp.zeros((batch, cfg.max_segments, cfg.byte_d_model), cfg.compute_dtype),
            "router_k": jnp.zeros((batch, cfg.byte_d_model), jnp.float32),
            # The learned segmenter: bytes in the segment so far, segments started so far,
            # and where the current one started.
            "run": jnp.zeros((batch,), jnp.int32),
            "started": jnp.zeros((batch,), jnp.int32),
            "first": jnp.zeros((batch,), jnp.int32)}

  def _local_step(self, blocks, layers, x_B1d, t):
    """Position t (a traced scalar) through local blocks whose caches hold positions
    t - W + 1 .. t - 1 in slot (position mod W)."""
    W = self.config.window
    pos_S = t - (t - jnp.arange(W)) % W  # the position each slot holds once t is written
    bias_1H1S = self.byte_bias(jnp.reshape(t, (1,)), pos_S)[None]
    key_bias_BS = jnp.broadcast_to(jnp.where(pos_S >= 0, 0.0, MASK_VALUE),
                                   (x_B1d.shape[0], W))
    slot_B = jnp.full((x_B1d.shape[0],), t % W)
    new = []
    for block, layer in zip(blocks, layers):
      x_B1d, layer = block.step(x_B1d, layer, slot_B, bias_1H1S, key_bias_BS)
      new.append(layer)
    return x_B1d, new

  def _encode_step(self, ids_B, t, cache):
    """Byte t (ids_B) through the encoder into cache["e"]; p_B: the learned segmenter's
    probability that a segment starts at t (1 at t = 0)."""
    x_B1d, cache["encoder"] = self._local_step(self.encoder, cache["encoder"],
                                               self.shared(ids_B[:, None]), t)
    e_Bd = self.encoder_norm(x_B1d)[:, 0]
    cache["e"] = jax.lax.dynamic_update_slice_in_dim(cache["e"], e_Bd[:, None], t, axis=1)
    p_B = jnp.ones(ids_B.shape, jnp.float32)
    if self.router is not None:
      p_B = jnp.where(t == 0, 1.0, self.router.probability(self.router.q(e_Bd),
                                                           cache["router_k"]))
      cache["router_k"] = self.router.k(e_Bd).astype(jnp.float32)
    return p_B, cache

  def backbone_step(self, n_B: jax.Array, first_B: jax.Array, last_B: jax.Array,
                    cache: dict) -> dict:
    """Segment n_B (bytes first_B .. last_B) through the backbone into cache["h"]; rows with
    n_B = -1 are left alone. Segments 0 .. n_B - 1 must be in the cache already."""
    N = self.config.max_segments
    bias_BH1N = self.segment_bias(n_B[:, None], jnp.arange(N)[None])
    key_bias_BN = jnp.where(jnp.arange(N)[None] <= n_B[:, None], 0.0, MASK_VALUE)
    pos_T = jnp.arange(cache["e"].shape[1])[None]
    inside_BT = (pos_T >= first_B[:, None]) & (pos_T <= last_B[:, None])
    s_B1D = self.up(self._pool(cache["e"], jnp.where(inside_BT, 0, -1), 1))
    new = []
    for block, layer in zip(self.backbone, cache["backbone"]):
      s_B1D, layer = block.step(s_B1D, layer, n_B, bias_BH1N, key_bias_BN)  # slot -1: no write
      new.append(layer)
    cache["backbone"] = new
    h_Bd = self.down(self.backbone_norm(s_B1D))[:, 0]
    write_BN1 = (jnp.arange(N)[None] == n_B[:, None])[..., None]
    cache["h"] = jnp.where(write_BN1, h_Bd[:, None].astype(cache["h"].dtype), cache["h"])
    return cache

  def _learned_plan(self, p_B, t, cache):
    """The learned segmenter's decision about byte t - 1 (probability p_B): (segment to run
    through the backbone or -1, its first and last byte, the context of position t, cache)."""
    cfg = self.config
    starts_B = (t == 1) | (p_B >= 0.5) | (cache["run"] >= cfg.max_segment_bytes)
    cache["run"] = jnp.where(starts_B, 1, cache["run"] + 1)
    cache["started"] = cache["started"] + starts_B
    # A segment starting at t - 1 settles the one that ended at t - 2.
    settled_B = cache["started"] - 2
    n_B = jnp.where(starts_B & (settled_B >= 0) & (settled_B < cfg.max_segments), settled_B, -1)
    first_B = cache["first"]
    cache["first"] = jnp.where(starts_B, t - 1, cache["first"])
    context_B = jnp.minimum(settled_B, cfg.max_segments - 1)
    return n_B, first_B, jnp.full_like(n_B, t - 2), context_B, cache

  def generation_step(self, ids_B: jax.Array, t, cache: dict, plan: dict):
    """(logits_BV, cache): byte t - 1 (ids_B; pad at t = 0) through the encoder, a settled
    segment through the backbone, and the decoder's prediction of byte t.

    plan, for a host segmenter (from the bytes before t): `segment_B` to run through the
    backbone (-1: none), `first_B` and `last_B` its bytes, `context_B` the segment position t
    reads (-1: none). The learned segmenter makes the plan here (the plan's values are ignored).
    """
    p_B, cache = jax.lax.cond(t > 0, lambda c: self._encode_step(ids_B, t - 1, c),
                              lambda c: (jnp.ones(ids_B.shape, jnp.float32), c), cache)
    n_B, first_B, last_B = plan["segment_B"], plan["first_B"], plan["last_B"]
    context_B = plan["context_B"]
    if self.router is not None:
      n_B, first_B, last_B, context_B, cache = jax.lax.cond(
          t > 0, lambda c: self._learned_plan(p_B, t, c),
          lambda c: (jnp.full_like(n_B, -1), first_B, last_B, jnp.full_like(n_B, -1), c),
          cache)
    cache = jax.lax.cond((n_B >= 0).any(),
                         lambda c: self.backbone_step(n_B, first_B, last_B, c),
                         lambda c: c, cache)
    h_Bd = jnp.take_along_axis(cache["h"], jnp.maximum(context_B, 0)[:, None, None],
                               axis=1)[:, 0]
    context_Bd = jnp.where((context_B >= 0)[:, None], h_Bd, self.start[...].astype(h_Bd.dtype))
    y_B1d = self.shared(ids_B[:, None]) + context_Bd[:, None].astype(self.config.compute_dtype)
    y_B1d, cache["decoder"] = self._local_step(self.decoder, cache["decoder"], y_B1d, t)
    return self.lm_head(self.final_norm(y_B1d))[:, 0], cache


def loss_fn(model: Hierarchical, batch: dict[str, jax.Array], z_loss: float = 0.0):
  """Mean next-byte cross-entropy over non-pad targets (+ the learned segmenter's weighted
  ratio loss) -> (loss, metrics), as t5.loss_fn; metrics add `bytes_per_segment`.

  batch: `inputs`, `targets` int32 [B, T] (the causal_lm pair); for the "given" segmenter also
  `segment_ids` and `context_ids` int32 [B, T] (of the targets; see `segment`).
  """
  logits_BTV, aux = model.forward(batch["inputs"], batch["targets"], batch.get("segment_ids"),
                                  batch.get("context_ids"))
  loss, metrics = blocks.cross_entropy(logits_BTV, batch["targets"], model.config.pad_id, z_loss)
  metrics = dict(metrics, bytes_per_segment=aux["bytes_per_segment"])
  if "ratio_loss" in aux:
    loss = loss + model.config.ratio_loss_weight * aux["ratio_loss"]
    metrics.update(loss=loss, ratio_loss=aux["ratio_loss"])
  return loss, metrics
