"""Basic layers shared by every bytelm model: Dense, Embed, RMSNorm, gated-GELU MLP.

Axis legend: B batch, T positions, D d_model, F d_ff, V vocab.

All layers follow T5's conventions (no biases, pre-norm RMSNorm in fp32), because ByT5 and MrT5
are T5s and parity with Hugging Face's weights is a requirement. `dtype` is the compute dtype,
`param_dtype` the storage dtype of the parameters: with dtype bfloat16 the matmuls take bf16
operands, while norm statistics, logits (`out_dtype`) and every gradient that sums many terms
(the embedding's) stay float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm.nn import precision
from bytelm.nn import quant as qn


def normal_init(std: float):
  """A N(0, std^2) initializer (T5 initialises every matrix this way, std from fan-in)."""
  return jax.nn.initializers.normal(stddev=std)


QUANT_MODES = (None, "int8_weight", "int8", "ternary")


class Dense(nnx.Module):
  """y = x @ W with no bias; W is stored (in, out).

  Every matrix multiply of the models goes through this class, so quantization happens in one
  place. quant (training, with straight-through estimators: the forward sees quantized values,
  the backward the float ones; bytelm.nn.quant):
    None: float; "int8_weight": per-output-column int8 weights; "int8": those and per-row
    8-bit activations (LLM.int8's vector-wise W8A8); "ternary": BitNet b1.58 weights
    round-clip(W / mean|W|, -1, 1) (statistic="median" for the median) and 8-bit activations.
  After training, `bytelm.quant.quantize` stores the weights as integers for inference.
  out_dtype: None (the compute dtype) or float32, for logits: the bf16 matmul's float32
  accumulator, not logits rounded to bf16 (bytelm.nn.precision).
  """

  def __init__(self, in_features: int, out_features: int, *, std: float, dtype=jnp.float32,
               param_dtype=jnp.float32, quant: str | None = None, statistic: str = "mean",
               out_dtype=None, rngs: nnx.Rngs):
    if quant not in QUANT_MODES:
      raise ValueError(f"quant must be one of {QUANT_MODES}, got {quant!r}")
    self.in_features, self.out_features = in_features, out_features
    self.dtype, self.quant, self.statistic = dtype, quant, statistic
    self.out_dtype = jnp.dtype(out_dtype or dtype)
    self.kernel = nnx.Param(normal_init(std)(rngs.params(), (in_features, out_features), param_dtype))

  def __call__(self, x_BTI: jax.Array) -> jax.Array:
    w_IO = self.kernel[...]
    if self.quant is None:
      return self._dot(x_BTI, w_IO)
    if self.quant == "ternary":
      w_IO = qn.fake_quant_ternary(w_IO, self.statistic)
    else:
      q_IO, scale_O = qn.quantize_weight(w_IO)
      w_IO = qn.ste(w_IO, qn.dequantize_weight(q_IO, jax.lax.stop_gradient(scale_O)))
    if self.quant != "int8_weight":
      x_BTI = qn.fake_quant_int8_rows(x_BTI)
    return self._dot(x_BTI, w_IO)

  def _dot(self, x_BTI: jax.Array, w_IO: jax.Array) -> jax.Array:
    x_BTI, w_IO = x_BTI.astype(self.dtype), w_IO.astype(self.dtype)
    if jnp.dtype(self.dtype) != jnp.float32:
      return precision.einsum("...I,IO->...O", x_BTI, w_IO, self.out_dtype)
    # In float32, one 2-D product over all rows: XLA:CPU ran the weight gradient of a product
    # contracted over the batch and time axes at once through a transposed copy of the
    # output's cotangent (40-84 ms each; a mini fp32 train step took 2.44 s, flattened 1.96 s,
    # on an AMX Xeon). In bf16 the flattened form was the slower one there (1.33 -> 1.59-1.68
    # s), so bf16 keeps the batch axes (BENCHMARKS.md).
    y_NO = precision.einsum("NI,IO->NO", x_BTI.reshape(-1, x_BTI.shape[-1]), w_IO,
                            self.out_dtype)
    return y_NO.reshape(x_BTI.shape[:-1] + y_NO.shape[-1:])


class Embed(nnx.Embed):
  """nnx.Embed (the same `embedding` parameter) whose rows are looked up in the storage dtype
  and only then cast to the compute dtype, and whose `attend` (a tied LM head) returns float32
  logits.

  Why not nnx.Embed's own call: it casts the whole table to the compute dtype before the
  lookup, so the backward pass adds up each row's gradient in bf16. A byte vocabulary puts
  every row in a batch thousands of times, and a bf16 sum stops growing once it is about 2^8
  times the terms it adds: 16k lookups of 4 ids gave a gradient 11% off float32's (64k: 39%),
  against 0.3% with the lookup in float32 (tests/test_bf16.py).
  """

  def __call__(self, ids_BT: jax.Array) -> jax.Array:
    if not jnp.issubdtype(ids_BT.dtype, jnp.integer):
      raise ValueError(f"embedding ids must be integers, got {ids_BT.dtype}")
    return jnp.take(self.embedding[...], ids_BT, axis=0).astype(self.dtype)

  def attend(self, h_BTD: jax.Array) -> jax.Array:
    """logits_BTV = h_BTD @ embedding^T in the compute dtype, returned in float32 (as Dense
    with out_dtype float32)."""
    return precision.einsum("...D,VD->...V", h_BTD.astype(self.dtype),
                            self.embedding[...].astype(self.dtype), jnp.float32)


class RMSNorm(nnx.Module):
  """T5's LayerNorm: y = w * x / sqrt(mean(x^2) + eps), no mean subtraction, no bias, fp32 math."""

  def __init__(self, dim: int, *, eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32):
    self.eps, self.dtype = eps, dtype
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    x32_BTD = x_BTD.astype(jnp.float32)  # the variance of bf16 activations overflows/underflows
    var_BT1 = jnp.mean(jnp.square(x32_BTD), axis=-1, keepdims=True)
    y_BTD = x32_BTD * jax.lax.rsqrt(var_BT1 + self.eps)
    # Like HF: normalise in fp32, cast to the weight dtype, then scale.
    scale_D = self.scale[...]
    return (scale_D * y_BTD.astype(scale_D.dtype)).astype(self.dtype)


class GatedGeluMLP(nnx.Module):
  """T5.1.1's feed-forward: wo(dropout(gelu_tanh(x wi_0) * (x wi_1)))."""

  def __init__(self, d_model: int, d_ff: int, *, dropout_rate: float, dtype=jnp.float32,
               param_dtype=jnp.float32, quant: str | None = None, statistic: str = "mean",
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, quant=quant, statistic=statistic, rngs=rngs)
    # The gate's GELU runs on wi_0's float32 accumulator, rounded once after the product with
    # wi_1: in bf16, GELU's eight elementwise steps would each round to bf16 (and XLA:CPU
    # emulates each such step with two conversions).
    self.wi_0 = Dense(d_model, d_ff, std=d_model**-0.5, out_dtype=jnp.float32, **kw)
    self.wi_1 = Dense(d_model, d_ff, std=d_model**-0.5, **kw)
    self.wo = Dense(d_ff, d_model, std=d_ff**-0.5, **kw)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    # BitNet's SubLN: an RMSNorm right before a ternary matmul whose input is not normalised.
    self.sub_norm = (RMSNorm(d_ff, dtype=dtype, param_dtype=param_dtype)
                     if quant == "ternary" else None)

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    # HF's "gelu_new" is the tanh approximation; approximate=True is the same formula.
    h_BTF = (jax.nn.gelu(self.wi_0(x_BTD), approximate=True) * self.wi_1(x_BTD)).astype(
        self.wo.dtype)
    if self.sub_norm is not None:
      h_BTF = self.sub_norm(h_BTF)
    return self.wo(self.dropout(h_BTF))
