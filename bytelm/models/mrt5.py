"""MrT5: ByT5 with a learned delete gate in its encoder (Kallini et al., ICLR 2025).

After `gate_layer` encoder blocks, a gate scores every byte position:

    z = RMSNorm(H) w + b,   G = k * sigmoid(-z),   k = gate_scale = -30,   G = k on padding.

G near 0 keeps a position, G near k deletes it.
- Soft deletion (training): G is added to the attention scores towards each key, in the
  self-attention of every encoder block from `gate_layer` on and in every decoder
  cross-attention. Everything stays differentiable and the sequence keeps its length.
- Hard deletion (inference): positions with G > k/2 are kept and moved to the front, in order;
  the remaining blocks and the decoder see only them. Their relative position bias is looked up
  at their original positions, so kept bytes keep their true distances. XLA needs static shapes,
  so the compacted length is rounded up to a multiple of `bucket_multiple`: inference compiles
  once per bucket, never per batch (`encode_for_inference`).

Training adds alpha * mean(G over real positions) to the loss (G < 0, so this pushes towards
deletion); a PI controller sets alpha after every optimizer step so that the fraction of
deleted positions tracks `target_deletion` (`pi_step`). The controller's state lives in the
model as `ControllerState` variables: saved in checkpoints, never touched by the optimizer.

Deviations from the reference code, each for a stated reason:
- after compaction the kept positions keep their G as a key bias (the reference drops it).
  Hard deletion then computes what soft deletion trained, less the deleted keys; dropping G
  changes every attention row where G is not yet saturated at 0, which with softmax1 (where
  a bias shared by all keys is not a no-op) is most rows early in training;
- the controller updates once per optimizer step on training batches (theirs: once per
  micro-batch, evaluation included), and its integral term is clipped to
  [controller_alpha_min, controller_i_max] so that it cannot wind up while alpha sits at its
  floor;
- `controller_alpha_min` (default 0, the reference) may let alpha go negative, i.e. reward
  keeping: when cross-entropy itself drives deletion past the target, a controller limited to
  alpha >= 0 cannot hold the target (configs/mrt5.py, trained from scratch, needs it);
- `regularizer_delay` and `regularizer_scope` (defaults: no delay, the reference's gradient
  path) are for training from scratch, see MrT5Config;
- `gate_init_bias` (default +1, the reference) can start the gate at keeping every byte;
- `gate_centering` (default off, the reference) scores each byte's normalised hidden state
  minus its sequence's mean: then b alone moves every byte at once, and the deleted fraction
  is a smooth function of b. From scratch, where cross-entropy hardly shapes the gate, the
  reference gate's w shifts all bytes together and the deleted fraction jumps between 0 and 1
  (configs/mrt5.py).

Axis legend as in t5.py; L is a compacted (bucketed) encoder length.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.models import blocks, t5
from bytelm.nn import batching, key_mask_bias
from bytelm.nn.compiled import Compiled, jit_call

DELETIONS = ("soft", "hard", "none")


@dataclasses.dataclass(frozen=True)
class MrT5Config(t5.T5Config):
  """A T5Config plus the delete gate, its regulariser and the PI controller."""

  # A checkpoint stays valid when these change (a new target, new gains, new buckets).
  RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = t5.T5Config.RUNTIME_FIELDS + (
      "target_deletion", "regularizer_delay", "controller_kp", "controller_ki", "controller_i_max",
      "controller_alpha_min",
      "score_reg_weight", "score_reg_threshold", "bucket_multiple")

  gate_layer: int = 3  # the gate reads the input of this encoder block (ByT5-small: 3 of 12)
  gate_scale: float = -30.0  # k: G lies in [k, 0]; hard deletion drops G <= k/2
  # b at init. The reference's +1 puts G near k sigmoid(-1) = -8.1, and with the full Xavier
  # weight, w . RMSNorm(h) (standard deviation about 1.4) beats it for ~24% of the positions:
  # an untrained gate then deletes a quarter of the bytes at random. +4 keeps ~99.8%, at
  # G near -0.5 (see configs/mrt5.py).
  gate_init_bias: float = 1.0
  target_deletion: float = 0.5  # delta: the fraction of byte positions to delete
  # Optimizer steps with alpha held at 0. From scratch the decoder first has to learn to use
  # the encoder: before it does, any deletion pressure deletes every byte, and a deleted byte
  # gets no gradient to come back (the reference uses 10k steps on its from-scratch tasks).
  regularizer_delay: int = 0
  # Where the regulariser's gradient goes: "all" (the reference) also reaches the blocks and
  # embeddings below the gate; "gate" only the gate's own parameters. From scratch, "all" lets
  # the deletion pressure move the hidden states at the full learning rate, and the gate
  # deletes every byte within twenty steps whatever alpha is (measured on configs/mrt5.py).
  regularizer_scope: str = "all"
  controller_kp: float = 0.5
  controller_ki: float = 1e-5
  controller_i_max: float = 1.0  # anti-windup: the integral term stays in [alpha_min, this]
  controller_alpha_min: float = 0.0  # the reference: alpha >= 0 (only ever pushes to delete)
  score_reg_weight: float = 0.0  # beta; 0.5 for training from scratch (paper, appendix D)
  score_reg_threshold: float = 5.0  # penalise attention scores above this
  bucket_multiple: int = 64  # hard deletion compacts to a multiple of this many positions
  # Subtract from RMSNorm(h) its mean over the sequence's real positions before the
  # projection, so that w scores how a byte differs from the rest of its sequence and only b
  # moves every position at once. Hard deletion computes the gate on the whole input first,
  # so it sees the same mean.
  gate_centering: bool = False

  def __post_init__(self):
    super().__post_init__()
    if not 0 <= self.gate_layer < self.num_encoder_layers:
      raise ValueError(f"gate_layer must be in [0, num_encoder_layers={self.num_encoder_layers}), "
                       f"got {self.gate_layer}")
    if self.gate_scale >= 0:
      raise ValueError(f"gate_scale (k) must be negative, got {self.gate_scale}")
    if not 0 <= self.target_deletion < 1:
      raise ValueError(f"target_deletion must be in [0, 1), got {self.target_deletion}")
    if self.regularizer_scope not in ("all", "gate"):
      raise ValueError(f"regularizer_scope must be 'all' or 'gate', got "
                       f"{self.regularizer_scope!r}")
    if self.bucket_multiple <= 0:
      raise ValueError(f"bucket_multiple must be positive, got {self.bucket_multiple}")

  @property
  def threshold(self) -> float:
    """Hard deletion keeps a position when its gate value is above this (k/2)."""
    return self.gate_scale / 2


class ControllerState(nnx.Variable):
  """State of the deletion controller: checkpointed with the model, not trained."""


def pi_step(p, i, deleted_frac, *, target, kp, ki, i_max, alpha_min=0.0):
  """One PI-controller update -> (p, i, alpha).

  e = target - deleted_frac; the proportional term is an exponential moving average
  (p <- 0.9 p + 0.1 kp e), the integral term accumulates ki e and is clipped to
  [alpha_min, i_max] (anti-windup: alpha cannot go below alpha_min, so an integral below it
  would only store up delay); alpha = max(alpha_min, p + i).
  """
  e = target - deleted_frac
  p = 0.9 * p + 0.1 * kp * e
  i = jnp.clip(i + ki * e, alpha_min, i_max)
  return p, i, jnp.maximum(alpha_min, p + i)


class DeletionController(nnx.Module):
  """Holds alpha, the weight of the deletion regulariser, and the PI state that sets it."""

  def __init__(self):
    self.steps = ControllerState(jnp.zeros((), jnp.int32))
    self.p = ControllerState(jnp.zeros((), jnp.float32))
    self.i = ControllerState(jnp.zeros((), jnp.float32))
    self.alpha = ControllerState(jnp.zeros((), jnp.float32))

  def update(self, deleted_frac, cfg: MrT5Config) -> None:
    """One step of the controller; during the first cfg.regularizer_delay steps alpha stays 0."""
    p, i, alpha = pi_step(self.p[...], self.i[...], jnp.asarray(deleted_frac, jnp.float32),
                          target=cfg.target_deletion, kp=cfg.controller_kp,
                          ki=cfg.controller_ki, i_max=cfg.controller_i_max,
                          alpha_min=cfg.controller_alpha_min)
    active = self.steps[...] >= cfg.regularizer_delay
    zero = jnp.zeros((), jnp.float32)
    self.p[...] = jnp.where(active, p, zero)
    self.i[...] = jnp.where(active, i, zero)
    self.alpha[...] = jnp.where(active, alpha, zero)
    self.steps[...] = self.steps[...] + 1


class DeleteGate(nnx.Module):
  """G_BT = k * sigmoid(-(RMSNorm(x) w + b)), and k on padding."""

  def __init__(self, cfg: MrT5Config, rngs: nnx.Rngs):
    self.scale = cfg.gate_scale
    self.norm = blocks.norm(cfg)
    init = nnx.initializers.xavier_uniform()
    self.kernel = nnx.Param(init(rngs.params(), (cfg.d_model, 1), cfg.storage_dtype))
    self.bias = nnx.Param(jnp.full((1,), cfg.gate_init_bias, cfg.storage_dtype))  # > 0: keep
    self.centering = cfg.gate_centering

  def __call__(self, x_BTD: jax.Array, mask_BT: jax.Array) -> jax.Array:
    h_BTD = self.norm(x_BTD).astype(jnp.float32)
    if self.centering:  # minus the mean over the sequence's real positions
      h_BTD = h_BTD - masked_mean(h_BTD, mask_BT[..., None], axis=1, keepdims=True)
    z_BT = (h_BTD @ self.kernel[...].astype(jnp.float32))[..., 0] + self.bias[...].astype(
        jnp.float32)
    return jnp.where(mask_BT, self.scale * jax.nn.sigmoid(-z_BT), self.scale)


class Encoding(NamedTuple):
  """What MrT5's encoder returns."""
  enc_BTD: jax.Array  # T: the input length, or the bucket length L after hard deletion
  mask_BT: jax.Array  # positions of enc_BTD that hold a (kept) byte
  key_gate_BT: jax.Array  # G at the positions of enc_BTD: the decoder's cross-attention bias
  # G at the input positions (k on padding; zeros when deletion="none"), as the regulariser
  # sees it: the same values, with gradients only to the gate when regularizer_scope="gate".
  gate_BT: jax.Array
  deleted_frac: jax.Array  # fraction of the real input positions with G <= k/2
  score_excess_B: jax.Array  # the attention-score regulariser's sum over gated layers


def bucket_length(num_kept: int, length: int, multiple: int) -> int:
  """The compacted length for at most num_kept kept positions out of `length`: the next
  multiple of `multiple` (at least one), capped at `length`."""
  return min(length, max(1, math.ceil(num_kept / multiple)) * multiple)


def compaction(keep_BT: jax.Array, length: int):
  """(index_BL, valid_BL): the kept positions of each row moved to the front, in order.

  index_BL holds original positions (slots past a row's kept count point at deleted ones and
  are marked invalid). `length` must be at least the largest kept count of the batch.
  """
  order_BT = jnp.argsort(jnp.logical_not(keep_BT).astype(jnp.int32), axis=1, stable=True)
  index_BL = order_BT[:, :length]
  valid_BL = jnp.arange(length)[None, :] < jnp.sum(keep_BT, axis=1)[:, None]
  return index_BL, valid_BL


class MrT5(t5.T5):
  """ByT5 with a delete gate; see the module docstring. Parameters of T5 keep T5's names, so a
  ByT5 checkpoint initialises everything but the gate."""

  def __init__(self, cfg: MrT5Config, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.gate = DeleteGate(cfg, rngs)
    self.controller = DeletionController()

  # -- the encoder, in two stages around the gate -------------------------------------------

  def gate_prefix(self, inputs_BT, input_mask_BT):
    """Embedding and the blocks before the gate -> (x_BTD, gate_BT)."""
    enc = self.encoder
    x_BTD = enc.dropout(self.shared(inputs_BT))
    x_BTD, _ = enc.run(x_BTD, jnp.arange(inputs_BT.shape[1]), key_mask_bias(input_mask_BT),
                       0, self.config.gate_layer)
    return x_BTD, self.gate(x_BTD, input_mask_BT)

  def _excess_above(self):
    return self.config.score_reg_threshold if self.config.score_reg_weight else None

  def encode_soft(self, x_BTD, gate_BT, input_mask_BT):
    """The blocks after the gate with G as a key bias -> (enc_BTD, excess_B)."""
    x_BTD, excess_B = self.encoder.run(
        x_BTD, jnp.arange(x_BTD.shape[1]), key_mask_bias(input_mask_BT),
        self.config.gate_layer, None, gate_bias_BT=gate_BT, excess_above=self._excess_above())
    return self.encoder.finish(x_BTD), excess_B

  def encode_kept(self, x_BTD, gate_BT, input_mask_BT, length: int | None = None):
    """Hard deletion: the kept positions compacted to `length` (default: the input length)
    and run through the blocks after the gate -> (enc_BLD, mask_BL, gate_BL).

    Kept positions keep their original relative positions and their gate value as a key bias
    (the reference drops it; keeping it makes hard deletion compute what soft deletion trained,
    less the deleted keys, whose weight soft deletion had already cut by exp(G) <= exp(k/2)).
    With length=None the input length is kept (deleted positions fill the masked tail): the
    same result without the speed-up and without a host round trip, e.g. inside a jitted
    evaluation.
    """
    keep_BT = (gate_BT > self.config.threshold) & input_mask_BT
    index_BL, valid_BL = compaction(keep_BT, length or x_BTD.shape[1])
    x_BLD = jnp.take_along_axis(x_BTD, index_BL[..., None], axis=1)
    gate_BL = jnp.where(valid_BL, jnp.take_along_axis(gate_BT, index_BL, axis=1), 0.0)
    # index_BL: the original positions, so the relative position bias is the original one.
    x_BLD, _ = self.encoder.run(x_BLD, index_BL, key_mask_bias(valid_BL),
                                self.config.gate_layer, gate_bias_BT=gate_BL)
    return self.encoder.finish(x_BLD), valid_BL, gate_BL

  def encode(self, inputs_BT, input_mask_BT=None, *, deletion: str = "soft",
             length: int | None = None) -> Encoding:
    """The encoder with soft, hard (to `length`, see encode_kept) or no deletion."""
    if deletion not in DELETIONS:
      raise ValueError(f"deletion must be one of {DELETIONS}, got {deletion!r}")
    if input_mask_BT is None:
      input_mask_BT = inputs_BT != self.config.pad_id
    zeros_B = jnp.zeros(inputs_BT.shape[:1], jnp.float32)
    if deletion == "none":  # exactly ByT5's computation
      enc_BTD = super().encode(inputs_BT, input_mask_BT)
      zeros_BT = jnp.zeros(inputs_BT.shape, jnp.float32)
      return Encoding(enc_BTD, input_mask_BT, zeros_BT, zeros_BT, jnp.zeros((), jnp.float32),
                      zeros_B)
    x_BTD, gate_BT = self.gate_prefix(inputs_BT, input_mask_BT)
    frac = deleted_fraction(gate_BT, input_mask_BT, self.config.threshold)
    reg_gate_BT = gate_BT
    if self.config.regularizer_scope == "gate":
      reg_gate_BT = self.gate(jax.lax.stop_gradient(x_BTD), input_mask_BT)
    if deletion == "soft":
      enc_BTD, excess_B = self.encode_soft(x_BTD, gate_BT, input_mask_BT)
      return Encoding(enc_BTD, input_mask_BT, gate_BT, reg_gate_BT, frac, excess_B)
    enc_BLD, mask_BL, gate_BL = self.encode_kept(x_BTD, gate_BT, input_mask_BT, length)
    return Encoding(enc_BLD, mask_BL, gate_BL, reg_gate_BT, frac, zeros_B)

  # -- the whole model ------------------------------------------------------------------------

  def forward(self, inputs_BT, decoder_inputs_BS, input_mask_BT=None, decoder_mask_BS=None,
              *, deletion: str = "soft"):
    """(logits_BSV, Encoding); the Encoding's score_excess_B then also covers cross-attention."""
    e = self.encode(inputs_BT, input_mask_BT, deletion=deletion)
    soft = deletion == "soft"
    h_BSD, cross_excess_B = self.decoder(
        self.shared(decoder_inputs_BS), e.enc_BTD, key_mask_bias(e.mask_BT), decoder_mask_BS,
        cross_gate_bias_BT=e.key_gate_BT,
        excess_above=self._excess_above() if soft else None)
    cfg = self.config
    num_gated = cfg.num_encoder_layers - cfg.gate_layer + cfg.num_decoder_layers
    e = e._replace(score_excess_B=(e.score_excess_B + cross_excess_B) / num_gated)
    return self.logits(h_BSD), e

  def __call__(self, inputs_BT, decoder_inputs_BS, input_mask_BT=None, decoder_mask_BS=None,
               *, deletion: str = "soft") -> jax.Array:
    return self.forward(inputs_BT, decoder_inputs_BS, input_mask_BT, decoder_mask_BS,
                        deletion=deletion)[0]

  # -- inference --------------------------------------------------------------------------------

  def encode_memory(self, inputs_BT, input_mask_BT, deletion: str = "hard",
                    length: int | None = None):
    """(enc, cross_bias): the decoder's memory and its additive key bias."""
    e = self.encode(inputs_BT, input_mask_BT, deletion=deletion, length=length)
    return e.enc_BTD, key_mask_bias(e.mask_BT) + e.key_gate_BT

  def encode_for_inference(self, inputs_BT, input_mask_BT, compiled: Compiled | None = None,
                           per_example: bool | None = None):
    """Hard deletion at full speed -> (enc_BLD, cross_bias_BL).

    The gate runs first (compiled); the host reads how many positions each example keeps and
    picks buckets; the rest of the encoder runs on the compacted positions, compiled once per
    bucket. With per_example, each example is compacted to its own bucket and run alone (the
    outputs are padded to the largest); otherwise the batch shares the bucket of the example
    that keeps the most. Default (None): per example where the encoder already runs one
    example at a time (one CPU device, inputs of at least batching.MIN_LENGTH), so that one
    example that keeps many bytes does not set the cost of all.
    """
    compiled = compiled or Compiled(self)
    x_BTD, gate_BT = compiled("gate_prefix", inputs_BT, input_mask_BT)
    batch, length = inputs_BT.shape
    kept_B = jax.device_get(jnp.sum((gate_BT > self.config.threshold) & input_mask_BT, axis=1))
    buckets = [bucket_length(int(n), length, self.config.bucket_multiple) for n in kept_B]
    if per_example is None:
      per_example = batching.loop_is_faster(length, dropout_active=False)
    if not per_example or batch == 1:
      enc_BLD, mask_BL, gate_BL = compiled("encode_kept", x_BTD, gate_BT, input_mask_BT,
                                           length=max(buckets))
      return enc_BLD, key_mask_bias(mask_BL) + gate_BL
    encs, masks, gates = zip(*[
        compiled("encode_kept", x_BTD[b:b + 1], gate_BT[b:b + 1], input_mask_BT[b:b + 1],
                 length=buckets[b]) for b in range(batch)])

    def stack(rows, fill):  # every row padded to the largest bucket
      top = max(buckets)
      return jnp.concatenate([
          jnp.pad(r, [(0, 0), (0, top - r.shape[1])] + [(0, 0)] * (r.ndim - 2),
                  constant_values=fill) for r in rows])

    return stack(encs, 0.0), key_mask_bias(stack(masks, False)) + stack(gates, 0.0)

  def eval_sums(self, batch, deletion: str = "hard"):
    """Sums over a batch: cross-entropy (and the number of targets), deleted and real input
    positions. `report` adds them up over the held-out batches."""
    _, metrics = loss_fn(self, batch, deletion=deletion)
    real = jnp.sum(batch["inputs"] != self.config.pad_id).astype(jnp.float32)
    n = metrics["num_targets"]
    return {"ce_sum": metrics["ce"] * n, "num_targets": n,
            "deleted": metrics["deleted_frac"] * real, "real": real}


def deleted_fraction(gate_BT, mask_BT, threshold: float) -> jax.Array:
  """Fraction of the real positions whose gate value is at or below the threshold."""
  return masked_mean((gate_BT <= threshold).astype(jnp.float32), mask_BT)


def masked_mean(x, mask, axis=None, keepdims: bool = False) -> jax.Array:
  """Mean of x over the positions where mask is true (0 where there are none)."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(x * mask, axis, keepdims=keepdims) / jnp.maximum(
      jnp.sum(mask, axis, keepdims=keepdims), 1.0)


def loss_fn(model: MrT5, batch, z_loss: float = 0.0, deletion: str = "soft"):
  """Cross-entropy + alpha * mean gate value (+ beta * score excess) -> (loss, metrics).

  Training uses soft deletion; alpha is the controller's current value (not differentiated).
  metrics add deleted_frac (what the controller reads), gate_mean, alpha and score_excess.
  """
  cfg = model.config
  targets_BS = batch["targets"]
  logits_BSV, e = model.forward(batch["inputs"], t5.shift_right(targets_BS, cfg.decoder_start_id),
                                batch.get("input_mask"), deletion=deletion)
  loss, metrics = blocks.cross_entropy(logits_BSV, targets_BS, cfg.pad_id, z_loss)
  gate_mean = masked_mean(e.gate_BT, batch.get("input_mask", batch["inputs"] != cfg.pad_id))
  alpha = jax.lax.stop_gradient(model.controller.alpha[...])
  excess = jnp.mean(e.score_excess_B)
  loss = loss + alpha * gate_mean + cfg.score_reg_weight * excess
  return loss, dict(metrics, loss=loss, deleted_frac=e.deleted_frac, gate_mean=gate_mean,
                    alpha=alpha, score_excess=excess)


def after_step(model: MrT5, metrics) -> None:
  """Once per optimizer step, inside the compiled train step: the controller reads the batch's
  deleted fraction and sets alpha for the next step."""
  model.controller.update(metrics["deleted_frac"], model.config)


def report(model: MrT5, batches) -> dict[str, float]:
  """End-of-training figures on held-out batches: loss and deletion with hard deletion. (The
  training summary adds the measured encoder speed-up: bytelm.training.report.)"""
  totals = {"ce_sum": 0.0, "num_targets": 0.0, "deleted": 0.0, "real": 0.0}
  for batch in batches:
    m = jax.device_get(jit_call(model, "eval_sums", batch, deletion="hard"))
    for key in totals:
      totals[key] += float(m[key])
  val_loss = totals["ce_sum"] / max(totals["num_targets"], 1.0)
  return {"hard_val_loss": val_loss, "hard_val_bpb": val_loss / math.log(2),
          "hard_deletion": totals["deleted"] / max(totals["real"], 1.0)}
