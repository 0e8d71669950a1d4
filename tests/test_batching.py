"""The per-example loop (bytelm/nn/batching.py): the same numbers either way, a forced choice
honoured, and each machine's calibration kept for that machine only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bytelm import machine
from bytelm.models import t5
from bytelm.nn import batching


@pytest.fixture
def cache(monkeypatch, tmp_path):
  monkeypatch.setenv("BYTELM_CACHE", str(tmp_path))
  monkeypatch.delenv(batching.ENV, raising=False)
  return tmp_path


def _loss_and_grads(per_example: str, monkeypatch):
  monkeypatch.setenv(batching.ENV, per_example)
  model = t5.T5(t5.preset("tiny"), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {"inputs": jnp.asarray(rng.integers(3, 259, (3, batching.MIN_LENGTH)), jnp.int32),
           "targets": jnp.asarray(rng.integers(3, 259, (3, 16)), jnp.int32)}
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    return t5.loss_fn(nnx.merge(graphdef, p, rest), batch)[0]
  return jax.jit(jax.value_and_grad(loss))(params)  # a fresh trace: reads the choice again


def test_the_loop_gives_the_batched_numbers(monkeypatch, cache):
  assert batching.loop_is_faster(batching.MIN_LENGTH, False) is (jax.default_backend() == "cpu")
  loss_loop, grads_loop = _loss_and_grads("1", monkeypatch)
  loss_batch, grads_batch = _loss_and_grads("0", monkeypatch)
  assert float(loss_loop) == pytest.approx(float(loss_batch), rel=1e-5)
  for a, b in zip(jax.tree.leaves(grads_loop), jax.tree.leaves(grads_batch)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_forced_choice_is_honoured(monkeypatch, cache):
  batching._store({"loop": True})  # this machine's calibration says loop
  monkeypatch.setenv(batching.ENV, "0")
  assert not batching.choice() and not batching.loop_is_faster(4096, False)
  monkeypatch.setenv(batching.ENV, "1")
  assert batching.choice()
  monkeypatch.setenv(batching.ENV, "sometimes")
  with pytest.raises(ValueError, match=batching.ENV):
    batching.choice()


def test_a_calibration_is_kept_for_its_machine_only(monkeypatch, cache):
  monkeypatch.setattr(machine, "key", lambda: "epyc")
  assert batching.stored() is None and batching.choice()  # none yet: the loop
  batching._store({"loop": False, "batched_s": 0.3, "loop_s": 0.5})
  assert not batching.choice()
  assert batching.calibrate()["loop_s"] == 0.5  # kept: not measured again
  monkeypatch.setattr(machine, "key", lambda: "xeon")  # another CPU: not reused
  assert batching.stored() is None and batching.choice()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="calibrates on a CPU only")
def test_calibration_measures_and_stores(monkeypatch, cache):
  monkeypatch.setattr(machine, "key", lambda: "this-host")
  result = batching.calibrate(repeats=1, length=256)
  assert result["loop"] == (result["loop_s"] < result["batched_s"])
  assert batching.stored() == result and batching.choice() == result["loop"]
