"""bytelm.nn.cpu_attention: the fused CPU attention kernels, forward and backward, compute what
XLA's attention does, and whether they run is the machine's choice, forced by
$BYTELM_CPU_ATTENTION."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bytelm import machine, user_cache
from bytelm.models import t5
from bytelm.nn import attention_kernel, cpu_attention

FLAGS = machine.cpu()["flags"]
# What each dtype's kernel needs of the CPU (as cpu_attention checks it): a dtype's tests run
# where its kernel can; elsewhere (an AMD EPYC has no AMX, older CPUs no AVX-512) they skip.
AVX512 = FLAGS["avx512f"] and machine.has_flags("avx512bw", "avx512vl", "avx512dq")
RUNS = {"bfloat16": AVX512 and FLAGS["amx_tile"] and FLAGS["amx_bf16"], "float32": AVX512}
DTYPES = [pytest.param(d, marks=pytest.mark.skipif(
    not RUNS[d], reason=f"the {d} kernel needs {'AMX bf16 tiles' if d == 'bfloat16' else 'AVX-512'}"))
    for d in RUNS]


CHOICE = cpu_attention.choice  # cached per process; a test may replace it


@pytest.fixture
def use(monkeypatch):
  """use("fused" | "xla" | "auto"): sets $BYTELM_CPU_ATTENTION for what is traced next."""
  def set_choice(value):
    monkeypatch.setenv(cpu_attention.ENV, value)
    CHOICE.cache_clear()
  yield set_choice
  CHOICE.cache_clear()


def _inputs(B, H, T, S, pos_shape, key, dtype="bfloat16", seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(B, H, n, 64)), dtype) for n in (T, S, S))
  pos = None if pos_shape is None else jnp.asarray(rng.normal(size=pos_shape), jnp.float32)
  # Padding (MASK_VALUE-like) and a shift that makes every score negative, where softmax1's
  # implicit zero logit dominates: abstain must change the result.
  key_bias = (jnp.asarray(np.where(rng.random((B, S)) < 0.2, -1e9, -6.0), jnp.float32)
              if key else None)
  return q, k, v, pos, key_bias


CASES = [  # B, H, T, S, pos shape, key bias: tails of the 16-query and 32-key blocks too
    (2, 4, 64, 96, (4, 64, 96), True),
    (2, 3, 37, 45, (2, 3, 37, 45), True),
    (1, 2, 1, 20, (2, 1, 20), False),  # one generation step
    (2, 2, 48, 33, None, True),
    (1, 2, 17, 64, None, False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,T,S,pos_shape,key", CASES)
@pytest.mark.parametrize("abstain", [False, True])
def test_fused_forward_is_xla_forward(B, H, T, S, pos_shape, key, abstain, dtype):
  q, k, v, pos, key_bias = _inputs(B, H, T, S, pos_shape, key, dtype)
  got = jax.jit(cpu_attention.attention, static_argnums=5)(q, k, v, pos, key_bias, abstain)
  want = jax.jit(attention_kernel.xla_forward, static_argnums=5)(q, k, v, pos, key_bias, abstain)
  (o1, m1, z1), (o2, m2, z2) = ([np.asarray(x, np.float32) for x in r] for r in (got, want))
  assert got[0].dtype == q.dtype and o1.shape == o2.shape and m1.shape == m2.shape == z1.shape
  if dtype == "bfloat16":
    # Same arithmetic in another summation order: nearly every output equal to the bit, the
    # rest one bf16 rounding (2^-8 relative) apart.
    np.testing.assert_allclose(o1, o2, rtol=2 ** -7, atol=2 ** -9)
    assert np.mean(o1 == o2) > 0.99
  else:  # fp32 sums in another order: a few ulps
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(z1, z2, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,T,S,pos_shape,key", CASES + [(2, 2, 20, 24, (1, 20, 24), True)])
def test_fused_backward_is_xla_backward(B, H, T, S, pos_shape, key, dtype):
  """From the same residuals, every cotangent: q's, k's, v's, and the biases' summed to their
  shapes (a position bias shared by the batch, or broadcast over heads)."""
  q, k, v, pos, key_bias = _inputs(B, H, T, S, pos_shape, key, dtype)
  do = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), dtype)
  res = (q, k, v, pos, key_bias, *attention_kernel.xla_forward(q, k, v, pos, key_bias, False))
  got = jax.jit(cpu_attention.attention_backward)(*res, do)
  want = jax.jit(attention_kernel.xla_backward)(*res, do)
  for name, a, b in zip(("dq", "dk", "dv", "d_pos", "d_key"), got, want):
    assert (a is None) == (b is None), name
    if b is None:
      continue
    if name == "d_pos":  # the kernel's shape, summed to pos's by attention_kernel
      a = attention_kernel._sum_to(a, pos.shape)
    assert a.dtype == b.dtype and a.shape == b.shape, name
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if dtype == "float32" or name in ("d_pos", "d_key"):  # fp32 sums in another order
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)
    else:  # the same bf16 products summed in another order, rounded once
      np.testing.assert_allclose(a, b, rtol=2 ** -7, atol=2 ** -8 * np.abs(b).max(), err_msg=name)
      assert np.mean(a == b) > 0.9, name


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_through_the_fused_kernels_are_xla_ones(use, dtype):
  """Gradients of every input through the fused kernels (the backward recomputes p from the
  fused forward's m and z) agree with XLA's."""
  q, k, v, pos, key_bias = _inputs(2, 4, 40, 72, (4, 40, 72), True, dtype)
  w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

  def grads():
    loss = lambda *a: jnp.sum(attention_kernel.attention(*a).astype(jnp.float32) * w)
    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    return fn.lower(q, k, v, pos, key_bias).as_text(), fn(q, k, v, pos, key_bias)

  use("fused")
  hlo, fused = grads()
  assert "@bytelm_attention(" in hlo and "@bytelm_attention_backward(" in hlo
  use("xla")
  hlo, plain = grads()
  assert "bytelm_attention" not in hlo
  tol = 2 ** -6 if dtype == "bfloat16" else 1e-5
  for a, b in zip(fused, plain):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_model_gives_the_same_loss_either_way(use, dtype):
  """The choice changes speed, not results: a T5's loss with the kernel chosen or not."""
  cfg = t5.T5Config(vocab_size=259, d_model=64, d_kv=64, d_ff=96, num_heads=2,
                    num_encoder_layers=2, num_decoder_layers=1, dtype=dtype)
  model = t5.T5(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {"inputs": jnp.asarray(rng.integers(3, 259, (2, 40)), jnp.int32),
           "targets": jnp.asarray(rng.integers(3, 259, (2, 24)), jnp.int32)}
  losses = {}
  for choice in ("fused", "xla"):
    use(choice)
    graphdef, state = nnx.split(model)
    loss = jax.jit(lambda st: t5.loss_fn(nnx.merge(graphdef, st), batch)[0])
    assert ("bytelm_attention" in loss.lower(state).as_text()) == (choice == "fused")
    losses[choice] = float(loss(state))
  tol = 1e-3 if dtype == "bfloat16" else 1e-6
  assert abs(losses["fused"] - losses["xla"]) <= tol * losses["xla"], losses


def test_forcing_is_honoured_and_checked(use, monkeypatch):
  q = k = v = jnp.zeros((1, 2, 16, 64), jnp.bfloat16)
  use("xla")
  assert not cpu_attention.applies(q, k, v)
  assert not cpu_attention.applies(*(x.astype(jnp.float32) for x in (q, k, v)))
  assert "bfloat16 XLA" in cpu_attention.describe() and "float32 XLA" in cpu_attention.describe()
  use("sometimes")
  with pytest.raises(ValueError, match="BYTELM_CPU_ATTENTION must be fused, xla or auto"):
    cpu_attention.choice("float32")
  # A CPU without AMX (an AMD EPYC, say): forcing the bf16 kernel fails with the reason and
  # the way out; the fp32 kernel needs AVX-512 only.
  real = machine.cpu()
  no_amx = dict(real, flags=dict(real["flags"], amx_tile=False, amx_bf16=False))
  monkeypatch.setattr(machine, "cpu", lambda: no_amx)
  use("fused")
  with pytest.raises(RuntimeError, match="cannot run bfloat16 here: the CPU lists no AMX bf16 "
                                         "tiles.*set it to xla"):
    cpu_attention.choice("bfloat16")
  use("auto")
  found = cpu_attention.calibrate()
  assert not found["bfloat16"]["use"] and "no AMX" in found["bfloat16"]["reason"]
  if RUNS["float32"]:
    assert "calibrated" in found["float32"]["reason"], found["float32"]
  # Neither without AVX-512.
  no_avx512 = dict(no_amx, flags=dict(no_amx["flags"], avx512f=False))
  monkeypatch.setattr(machine, "cpu", lambda: no_avx512)
  use("fused")
  with pytest.raises(RuntimeError, match="cannot run float32 here: the CPU lists no AVX-512"):
    cpu_attention.choice("float32")
  # Where the machine chose the kernel, only heads of 64 in one dtype, at least MIN_QUERIES of
  # them, are its: not a generation step.
  monkeypatch.setattr(cpu_attention, "choice", lambda dtype: {"use": True, "backward": True})
  assert cpu_attention.applies(q, k, v)
  assert not cpu_attention.applies(q.astype(jnp.float32), k, v)
  assert not cpu_attention.applies(q[..., :32], k[..., :32], v[..., :32])
  assert not cpu_attention.applies(q[:, :, :1], k, v)
  q2 = jnp.concatenate([q, q])
  assert not cpu_attention.applies(q2, k, v)  # k and v broadcast over the batch
  assert cpu_attention.applies(q, k, v, backward=True)


def test_a_stored_choice_is_not_trusted_where_the_kernel_cannot_load(use, monkeypatch):
  """A calibration that chose the kernel, then the library gone and no compiler to build it
  again (or the AMX state refused): XLA's attention, with the reason, not a failed trace."""
  use("auto")
  stored = {"use": True, "backward": True, "reason": "calibrated"}
  user_cache.store_json(cpu_attention._calibration_path(),
                        {dtype: stored for dtype in cpu_attention.DTYPES})
  CHOICE.cache_clear()
  monkeypatch.setattr(cpu_attention, "_unavailable", lambda dtype: "no C++ compiler (g++)")
  assert CHOICE("float32") == {"use": False, "backward": False, "reason": "no C++ compiler (g++)"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_stays_a_nan(dtype):
  """A nan in a bias (MrT5's gate, say) makes the outputs that see it nan, as in XLA's
  attention, forward and backward: not a key quietly masked out."""
  q, k, v, pos, key_bias = _inputs(2, 2, 20, 40, (2, 20, 40), True, dtype)
  key_bias = key_bias.at[0, 7].set(jnp.nan)
  do = jnp.ones(q.shape, dtype)
  fused = cpu_attention.attention(q, k, v, pos, key_bias, False)
  plain = attention_kernel.xla_forward(q, k, v, pos, key_bias, False)
  grads = [f(q, k, v, pos, key_bias, *plain, do)
           for f in (cpu_attention.attention_backward, attention_kernel.xla_backward)]
  grads[0] = (*grads[0][:3], attention_kernel._sum_to(grads[0][3], pos.shape), grads[0][4])
  assert np.isnan(np.asarray(plain[0], np.float32)[0]).all()
  for a, b in [(fused[0], plain[0]), *zip(*grads)]:
    np.testing.assert_array_equal(np.isnan(np.asarray(a, np.float32)),
                                  np.isnan(np.asarray(b, np.float32)))


def test_a_calibration_from_another_machine_is_not_reused(use, monkeypatch):
  use("auto")
  monkeypatch.setattr(machine, "key", lambda: "one-machine")
  cpu_attention.calibrate()
  assert cpu_attention.stored() is not None
  monkeypatch.setattr(machine, "key", lambda: "another-machine")
  assert cpu_attention.stored() is None
