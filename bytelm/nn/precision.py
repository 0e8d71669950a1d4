"""Matmuls whose result must be float32 while their operands are in the compute dtype (bf16).

Logits and attention scores feed a softmax, where a bf16 result (8 significant bits) would
move every logit by up to 2^-9 of its size. XLA accumulates a bf16 matmul in float32 anyway;
`preferred_element_type=float32` just keeps that accumulator instead of rounding it.

Plain autodiff of such a matmul differentiates it in float32: the cotangent of a float32
result is float32, and JAX then casts the bf16 operand up to meet it, so the backward matmuls
(2/3 of the FLOPs) would run at float32 speed. `einsum_to_float32`'s backward pass casts the
cotangent to the operands' dtype first: the backward of the bf16 einsum with a bf16 result,
as every other layer's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def einsum_to_float32(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """jnp.einsum(spec, a, b) in a's and b's dtype, accumulated and returned in float32."""
  if a.dtype == jnp.float32 and b.dtype == jnp.float32:
    return jnp.einsum(spec, a, b)  # nothing to round: the float32 program, unchanged
  return _mixed(spec, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mixed(spec, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _mixed_fwd(spec, a, b):
  return _mixed(spec, a, b), (a, b)


def _mixed_bwd(spec, res, g):
  a, b = res
  # The product itself is dead code here (only its transpose is used): XLA drops it.
  _, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), a, b)
  return vjp(g.astype(jnp.result_type(a, b)))


_mixed.defvjp(_mixed_fwd, _mixed_bwd)
