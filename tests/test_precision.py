"""bytelm.nn.precision: bf16 products accumulated in float32, forward and backward, in the
form XLA:CPU runs fast (a float32 result, rounded after), with float32 left alone."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bytelm.nn import precision

# (spec, lhs shape, rhs shape): a Dense, attention scores, segment pooling.
CASES = [("...I,IO->...O", (2, 3, 8), (8, 5)),
         ("...HTK,...HSK->...HTS", (2, 4, 6, 8), (2, 4, 7, 8)),
         ("btn,btd->bnd", (2, 6, 3), (2, 6, 5))]
DOT = re.compile(r"stablehlo\.dot_general .*?: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\) "
                 r"-> tensor<[^>]*x(\w+)>")


def _operands(lhs, rhs):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=lhs), jnp.bfloat16),
          jnp.asarray(rng.normal(size=rhs), jnp.bfloat16))


@pytest.mark.parametrize("spec,lhs,rhs", CASES)
@pytest.mark.parametrize("out_dtype", [None, jnp.float32])
def test_values_and_gradients_are_the_float32_ones_rounded(spec, lhs, rhs, out_dtype):
  a, b = _operands(lhs, rhs)
  a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
  g = jnp.asarray(np.random.default_rng(1).normal(size=jnp.einsum(spec, a32, b32).shape))
  want, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), a32, b32)
  want_da, want_db = vjp(g.astype(jnp.bfloat16).astype(jnp.float32))
  got, vjp = jax.vjp(lambda a, b: precision.einsum(spec, a, b, out_dtype), a, b)
  da, db = vjp(g.astype(got.dtype))
  assert got.dtype == (out_dtype or jnp.bfloat16) and da.dtype == db.dtype == jnp.bfloat16
  # float32 results are the exact accumulator; bf16 ones are rounded once (2^-8 relative).
  tol = 1e-5 if out_dtype == jnp.float32 else 2 ** -8
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol)
  for got_d, want_d in ((da, want_da), (db, want_db)):
    np.testing.assert_allclose(np.asarray(got_d, np.float32), want_d, rtol=2 ** -8, atol=2 ** -7)


@pytest.mark.parametrize("out_dtype", [None, jnp.float32])
def test_every_product_forward_and_backward_takes_bf16_and_accumulates_in_float32(out_dtype):
  """The three dots of a product's value and gradients: bf16 operands, and on the CPU a
  float32 result (a bf16 result runs 7x slower there: the module docstring)."""
  a, b = _operands((16, 8), (8, 4))
  loss = lambda a, b: jnp.sum(precision.einsum("MK,KN->MN", a, b, out_dtype).astype(jnp.float32))
  hlo = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(a, b).as_text()
  dots = DOT.findall(hlo)
  assert len(dots) == 3, dots
  want_out = "f32" if jax.default_backend() == "cpu" or out_dtype else "bf16"
  assert all(d == ("bf16", "bf16", want_out) for d in dots), dots


def test_float32_operands_give_the_plain_program():
  a, b = (jnp.ones((4, 3)), jnp.ones((3, 2)))
  spec = "MK,KN->MN"
  assert (jax.jit(lambda a, b: precision.einsum(spec, a, b)).lower(a, b).as_text()
          == jax.jit(lambda a, b: jnp.einsum(spec, a, b)).lower(a, b).as_text())


def test_a_spec_it_cannot_differentiate_is_refused():
  a, b = _operands((4, 3), (3, 2))
  with pytest.raises(ValueError, match="two operands"):
    precision.einsum("MK,KN", a, b)
