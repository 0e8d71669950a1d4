"""The matmuls of a bf16 model: bf16 operands, a float32 accumulator, the result in the dtype
asked for, forward and backward.

Logits and attention scores feed a softmax, where a bf16 result (8 significant bits) would
move every logit by up to 2^-9 of its size, so they keep the float32 accumulator
(`out_dtype=float32`). Every other product is rounded to bf16 after accumulating in float32,
which is what a bf16 x bf16 -> bf16 matmul computes anyway.

On XLA:CPU the form matters for speed. A dot whose result is bf16 is rewritten to float32
(its operands converted up, the result rounded down) and runs below float32 speed: 135 GFLOP/s
for an (8192, 256) x (256, 640) product on an Intel Xeon with AMX, against 977 GFLOP/s for the
same operands with a float32 result, which goes to the AMX tiles (288 in float32). So on the
CPU backend every product here asks for the float32 result and rounds it after; elsewhere a
bf16 result comes straight from the dot, as before (measured on CPUs only).

Plain autodiff of a product with a float32 result differentiates it in float32: the cotangent
is float32, and JAX casts the bf16 operand up to meet it, so the backward matmuls (2/3 of the
FLOPs) would run at float32 speed. `einsum`'s backward pass casts the cotangent to the
operands' dtype first and runs both transposed products the same way as the forward one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype=None) -> jax.Array:
  """jnp.einsum(spec, a, b) ("lhs,rhs->out", two operands) accumulated in float32 and returned
  in out_dtype (default: the operands' dtype). Float32 operands give the float32 program,
  unchanged."""
  dtype = jnp.result_type(a, b)
  if dtype == jnp.float32:
    return jnp.einsum(spec, a, b).astype(out_dtype or dtype)  # nothing to round
  if "->" not in spec or spec.count(",") != 1:
    raise ValueError(f"precision.einsum takes 'lhs,rhs->out' with two operands, got {spec!r}")
  return _mixed(spec, jnp.dtype(out_dtype or dtype), a.astype(dtype), b.astype(dtype))


def product(spec: str, a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
  """The forward product of `einsum`, without its gradient rule: for code whose gradient is
  defined around it (the attention kernel's custom VJP) or never taken (QuantDense)."""
  out_dtype = jnp.dtype(out_dtype)
  if out_dtype == jnp.float32 or jax.default_backend() == "cpu":
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)
  return jnp.einsum(spec, a, b).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed(spec, out_dtype, a, b):
  return product(spec, a, b, out_dtype)


def _mixed_fwd(spec, out_dtype, a, b):
  return _mixed(spec, out_dtype, a, b), (a, b)


def _mixed_bwd(spec, out_dtype, res, g):
  a, b = res
  inputs, out = spec.split("->")
  lhs, rhs = inputs.split(",")
  g = g.astype(a.dtype)
  # Each operand's gradient is the product of the cotangent with the other operand, summed
  # over what the operand lacks (einsum sums an index, or "...", absent from its output).
  return (product(f"{out},{rhs}->{lhs}", g, b, a.dtype),
          product(f"{lhs},{out}->{rhs}", a, g, b.dtype))


_mixed.defvjp(_mixed_fwd, _mixed_bwd)
