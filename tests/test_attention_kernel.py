"""The custom-gradient attention kernel equals plain autodiff of softmax(q k^T + bias) v; so do
the position bias and its gradient the per-pair formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bytelm.nn import attention_kernel
from bytelm.nn.attention import RelativePositionBias, relative_position_bucket, softmax1


def _reference(q, k, v, pos, key, abstain):
  s = jnp.einsum("BHTK,BHSK->BHTS", q, k)
  bias = 0.0
  if pos is not None:
    bias = bias + pos
  if key is not None:
    bias = bias + key[:, None, None, :]
  p = (softmax1 if abstain else jax.nn.softmax)(s + bias, axis=-1)
  return jnp.einsum("BHTS,BHSK->BHTK", p, v)


@pytest.mark.parametrize("abstain", [False, True])
@pytest.mark.parametrize("pos_shape", [None, (3, 5, 7), (2, 3, 5, 7)])
@pytest.mark.parametrize("with_key", [False, True])
def test_values_and_gradients_match_autodiff(abstain, pos_shape, with_key):
  keys = jax.random.split(jax.random.key(0), 6)
  q = jax.random.normal(keys[0], (2, 3, 5, 4))
  k = jax.random.normal(keys[1], (2, 3, 7, 4))
  v = jax.random.normal(keys[2], (2, 3, 7, 4))
  pos = None if pos_shape is None else 2 * jax.random.normal(keys[3], pos_shape)
  key = jax.random.normal(keys[4], (2, 7)).at[1, 5:].set(-1e9) if with_key else None
  cot = jax.random.normal(keys[5], (2, 3, 5, 4))

  out_ref, vjp_ref = jax.vjp(lambda *a: _reference(*a, abstain), q, k, v, pos, key)
  out, vjp = jax.vjp(lambda *a: attention_kernel.attention(*a, abstain), q, k, v, pos, key)
  np.testing.assert_allclose(out, out_ref, atol=2e-6)
  for got, want in zip(vjp(cot), vjp_ref(cot)):
    if want is None:
      assert got is None
    else:
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, atol=5e-6)


def test_fully_masked_row_is_finite():
  q = jnp.ones((1, 1, 2, 4))
  k = v = jnp.ones((1, 1, 3, 4))
  key = jnp.full((1, 3), float(np.finfo(np.float32).min))
  out = attention_kernel.attention(q, k, v, None, key, False)
  grad = jax.grad(lambda q: attention_kernel.attention(q, k, v, None, key, False).sum())(q)
  assert jnp.isfinite(out).all() and jnp.isfinite(grad).all()


@pytest.mark.parametrize("pos_shape", [(3, 5, 7), (2, 3, 5, 7)])
def test_the_library_attention_matches_the_kernel(pos_shape):
  """jax.nn.dot_product_attention (XLA here), given T5's unscaled scores and the biases as one,
  computes what the kernel does, gradients (the position bias's included) too."""
  keys = jax.random.split(jax.random.key(1), 6)
  q = jax.random.normal(keys[0], (2, 3, 5, 4))
  k = jax.random.normal(keys[1], (2, 3, 7, 4))
  v = jax.random.normal(keys[2], (2, 3, 7, 4))
  pos = 2 * jax.random.normal(keys[3], pos_shape)
  key = jnp.zeros((2, 7)).at[1, 5:].set(float(np.finfo(np.float32).min))
  cot = jax.random.normal(keys[5], (2, 3, 5, 4))

  @jax.jit
  def both(q, k, v, pos):  # (output, its gradients) of each, compiled once
    out = {}
    for name, fn in (("kernel", lambda *a: attention_kernel.attention(*a, key, False)),
                     ("library", lambda *a: attention_kernel.library_attention(*a, key, "xla"))):
      o, vjp = jax.vjp(fn, q, k, v, pos)
      out[name] = (o, *vjp(cot))
    return out

  out = both(q, k, v, pos)
  for got, want in zip(out["library"], out["kernel"]):
    np.testing.assert_allclose(got, want, atol=5e-6)


def test_attention_with_the_library_kernel_is_the_same_module():
  """nn.Attention(kernel="xla") (model.attention_kernel) gives the output and the parameter
  gradients of the default kernel for the same parameters; it has no softmax1."""
  from bytelm.nn.attention import Attention

  keys = jax.random.split(jax.random.key(2), 2)
  x = jax.random.normal(keys[0], (2, 6, 8))
  pos = jax.random.normal(keys[1], (2, 6, 6))
  key = jnp.zeros((2, 6)).at[0, 4:].set(float(np.finfo(np.float32).min))
  out = {}
  for kernel in ("bytelm", "xla"):
    attn = Attention(8, 2, 4, dropout_rate=0.0, kernel=kernel, rngs=nnx.Rngs(0))
    value, grads = nnx.jit(nnx.value_and_grad(lambda m: (m(x, x, pos, key) ** 2).sum()))(attn)
    out[kernel] = [value, *jax.tree.leaves(nnx.state(grads))]
  for got, want in zip(out["xla"], out["bytelm"]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="'bytelm' for softmax1"):
    Attention(8, 2, 4, dropout_rate=0.0, softmax="softmax1", kernel="xla", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_the_leading_sum_is_the_sum(n):
  x = jax.random.normal(jax.random.key(n), (n, 3, 4))
  np.testing.assert_allclose(attention_kernel._sum_leading(x), jnp.sum(x, axis=0), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_position_bias_and_its_gradient_follow_the_bucket_of_each_pair(bidirectional):
  """The bias at (head h, query t, key s) is embedding[bucket(s - t), h], for positions shared
  by the batch and per example; so is the gradient the embedding gets back."""
  rel = RelativePositionBias(3, bidirectional=bidirectional, num_buckets=8, max_distance=6,
                             rngs=nnx.Rngs(0))
  table_NH = rel.embedding[...]

  def by_pair(table_NH, q_pos, k_pos):
    bucket = relative_position_bucket(k_pos[..., None, :] - q_pos[..., :, None],
                                      bidirectional=bidirectional, num_buckets=8, max_distance=6)
    return jnp.moveaxis(table_NH[bucket], -1, -3)

  graphdef, state = nnx.split(rel)

  def with_table(table_NH, q_pos, k_pos):  # the module with this table as its one parameter
    return nnx.merge(graphdef, jax.tree.map(lambda _: table_NH, state))(q_pos, k_pos)
  q_T, k_S = jnp.arange(9), jnp.arange(11) - 1
  q_BT = jnp.stack([q_T, 2 * q_T])
  k_BS = jnp.stack([k_S, k_S + 5])
  for q_pos, k_pos in ((q_T, k_S), (q_BT, k_BS)):
    want, want_vjp = jax.vjp(lambda t: by_pair(t, q_pos, k_pos), table_NH)
    got, got_vjp = jax.vjp(lambda t: with_table(t, q_pos, k_pos), table_NH)
    assert got.shape == want.shape == q_pos.shape[:-1] + (3, 9, 11)
    np.testing.assert_array_equal(got, want)
    cot = jax.random.normal(jax.random.key(1), want.shape)
    np.testing.assert_allclose(got_vjp(cot)[0], want_vjp(cot)[0], rtol=1e-5, atol=1e-5)
