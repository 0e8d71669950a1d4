"""Basic layers shared by every bytelm model: Dense, RMSNorm, gated-GELU MLP.

Axis legend: B batch, T positions, D d_model, F d_ff.

All layers follow T5's conventions (no biases, pre-norm RMSNorm in fp32), because ByT5 and MrT5
are T5s and parity with Hugging Face's weights is a requirement. `dtype` is the compute dtype,
`param_dtype` the storage dtype of the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def normal_init(std: float):
  """A N(0, std^2) initializer (T5 initialises every matrix this way, std from fan-in)."""
  return jax.nn.initializers.normal(stddev=std)


class Dense(nnx.Module):
  """y = x @ W with no bias; W is stored (in, out).

  Every matrix multiply of the models goes through this class, so a quantized variant can
  replace it in one place.
  """

  def __init__(self, in_features: int, out_features: int, *, std: float, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.in_features, self.out_features = in_features, out_features
    self.dtype = dtype
    self.kernel = nnx.Param(normal_init(std)(rngs.params(), (in_features, out_features), param_dtype))

  def __call__(self, x_BTI: jax.Array) -> jax.Array:
    return jnp.dot(x_BTI.astype(self.dtype), self.kernel[...].astype(self.dtype))


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
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.wi_0 = Dense(d_model, d_ff, std=d_model**-0.5, **kw)
    self.wi_1 = Dense(d_model, d_ff, std=d_model**-0.5, **kw)
    self.wo = Dense(d_ff, d_model, std=d_ff**-0.5, **kw)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    # HF's "gelu_new" is the tanh approximation; approximate=True is the same formula.
    h_BTF = jax.nn.gelu(self.wi_0(x_BTD), approximate=True) * self.wi_1(x_BTD)
    return self.wo(self.dropout(h_BTF))
