"""A byte tagger: the ByT5 encoder with a label head, one label per input byte.

Used for diacritics restoration (`bytelm.text.tags`): the encoder reads the stripped text in
both directions and, at every ASCII letter, picks "keep" or one of the decorated letters that
strip to it. Labels a byte cannot take are masked out of the logits (`tags.allowed_table`), so
the model only ever chooses between valid restorations.

The encoder and embedding are T5's, with T5's parameter names: `init_from` a ByT5 / MrT5 workdir
or a Hugging Face ByT5 directory starts the tagger from their encoder (the decoder is dropped).

Axis legend: B batch, T input positions, D d_model, C labels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bytelm.models import blocks, t5
from bytelm.nn import Dense
from bytelm.nn.attention import MASK_VALUE
from bytelm.text import tags


@dataclasses.dataclass(frozen=True)
class TaggerConfig(t5.T5Config):
  """T5Config's encoder fields (the decoder ones are unused), and the letters to restore."""

  POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = tuple(
      f for f in t5.T5Config.POSITIVE_FIELDS if f != "num_decoder_layers")

  num_decoder_layers: int = 0
  letters: str = tags.LETTERS  # label 2 + k puts back letters[k] (see bytelm.text.tags)
  # Each byte's embedding also sees this many bytes on each side, through one dense layer over
  # the window (a convolution), before the encoder; 0 turns it off. See LocalContext.
  context_width: int = 0

  @property
  def num_labels(self) -> int:
    return tags.num_labels(self.letters)


class LocalContext(nnx.Module):
  """x_BTD + W [x_{t-k} .. x_{t+k}]: every position mixes in its 2k neighbours' embeddings.

  Why: whether a letter takes a diacritic depends mostly on the letters around it, but a T5
  encoder from scratch learns *where* its neighbours are only as fast as its relative position
  bias grows from near zero; a window layer hands each byte its neighbourhood from step one, as
  CANINE and Charformer do with convolutions over characters. Written as one Dense over the
  stacked shifted embeddings so that a quantized Dense covers it too.
  """

  def __init__(self, cfg: TaggerConfig, rngs: nnx.Rngs):
    self.width = cfg.context_width
    window = 2 * self.width + 1
    self.mix = Dense(window * cfg.d_model, cfg.d_model, std=(window * cfg.d_model)**-0.5,
                     **blocks.layer_kwargs(cfg, rngs))

  def __call__(self, x_BTD: jax.Array, mask_BT: jax.Array) -> jax.Array:
    k, t = self.width, x_BTD.shape[1]
    x_BTD = x_BTD * mask_BT[..., None].astype(x_BTD.dtype)  # padding contributes nothing
    padded_BTD = jnp.pad(x_BTD, ((0, 0), (k, k), (0, 0)))
    window_BTW = jnp.concatenate([padded_BTD[:, i:i + t] for i in range(2 * k + 1)], axis=-1)
    return x_BTD + self.mix(window_BTW)


class Tagger(nnx.Module):
  """Byte embedding -> T5 encoder -> per-byte label logits (invalid labels masked)."""

  def __init__(self, cfg: TaggerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.shared = blocks.embedding(cfg, rngs)
    self.context = LocalContext(cfg, rngs) if cfg.context_width else None
    self.encoder = t5.Encoder(cfg, rngs)
    self.label_head = Dense(cfg.d_model, cfg.num_labels, std=cfg.d_model**-0.5,
                            out_dtype=jnp.float32, **blocks.layer_kwargs(cfg, rngs))

  def __call__(self, inputs_BT: jax.Array, input_mask_BT: jax.Array | None = None) -> jax.Array:
    """logits_BTC, with MASK_VALUE where input byte t cannot take label c."""
    if input_mask_BT is None:
      input_mask_BT = inputs_BT != self.config.pad_id
    x_BTD = self.shared(inputs_BT)
    if self.context is not None:
      x_BTD = self.context(x_BTD, input_mask_BT)
    h_BTD = self.encoder(x_BTD, input_mask_BT)
    logits_BTC = self.label_head(h_BTD)  # float32 (out_dtype)
    allowed_BTC = jnp.asarray(tags.allowed_table(self.config.letters,
                                                 self.config.vocab_size))[inputs_BT]
    return jnp.where(allowed_BTC, logits_BTC, MASK_VALUE)

  def predict(self, inputs_BT: jax.Array) -> jax.Array:
    """The most likely label of every byte, labels_BT (int32)."""
    return jnp.argmax(self(inputs_BT), axis=-1).astype(jnp.int32)

  def log_probs(self, inputs_BT: jax.Array) -> jax.Array:
    """log p(label) of every byte, logp_BTC (disallowed labels: about -3.4e38)."""
    return jax.nn.log_softmax(self(inputs_BT), axis=-1)


def loss_fn(model: Tagger, batch: dict[str, jax.Array], z_loss: float = 0.0):
  """Mean cross-entropy over the bytes that have a decision (label != IGNORE) -> (loss, metrics).

  batch: `inputs` int32 [B, T], `targets` int32 [B, T] labels. For a tagger, bits_per_byte is
  bits per decided letter. z_loss (the trainer's contract) is not used: a label softmax this
  small has no logit drift to hold back.
  """
  del z_loss
  labels_BT = batch["targets"]
  logits_BTC = model(batch["inputs"])
  weights_BT = (labels_BT != tags.IGNORE).astype(jnp.float32)
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTC, labels_BT)
  num_targets = jnp.maximum(weights_BT.sum(), 1.0)
  ce = (ce_BT * weights_BT).sum() / num_targets
  right_BT = (jnp.argmax(logits_BTC, axis=-1) == labels_BT).astype(jnp.float32)
  # The letters that change: where the task is (most letters are kept).
  changed_BT = weights_BT * (labels_BT != tags.KEEP)
  return ce, {"loss": ce, "ce": ce, "bits_per_byte": ce / math.log(2),
              "num_targets": weights_BT.sum(),
              "accuracy": (right_BT * weights_BT).sum() / num_targets,
              "changed_accuracy": (right_BT * changed_BT).sum() / jnp.maximum(changed_BT.sum(),
                                                                            1.0)}
