"""The per-example loop (bytelm/nn/batching.py): the same numbers every way, a forced choice
honoured, each machine's calibration kept for that machine only, and the gradients' choice
asked for where a gradient is traced."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bytelm import machine, timing, user_cache
from bytelm.models import mrt5, t5
from bytelm.nn import batching
from bytelm.training import trainer


@pytest.fixture
def cache(monkeypatch, tmp_path):
  monkeypatch.setenv("BYTELM_CACHE", str(tmp_path))
  monkeypatch.delenv(batching.ENV, raising=False)
  return tmp_path


def _loss_and_grads(mode: str, monkeypatch):
  monkeypatch.setenv(batching.ENV, mode)
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
  loss_batch, grads_batch = _loss_and_grads("batched", monkeypatch)
  for mode in ("loop", "loop_remat", "attention_loop"):
    loss, grads = _loss_and_grads(mode, monkeypatch)
    assert float(loss) == pytest.approx(float(loss_batch), rel=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_batch)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_forced_choice_is_honoured(monkeypatch, cache):
  user_cache.store_json(batching._path(), {"mode": "loop_remat"})  # this machine's calibration
  monkeypatch.setenv(batching.ENV, "batched")
  assert batching.choice() == "batched" and not batching.loop_is_faster(4096, False)
  assert not batching.attention_loop_is_faster(4096)
  monkeypatch.setenv(batching.ENV, "attention_loop")  # the stack batched, its attention not
  on_cpu = jax.default_backend() == "cpu"
  assert not batching.loop_is_faster(4096, False)
  assert batching.attention_loop_is_faster(4096) is on_cpu
  assert not batching.attention_loop_is_faster(batching.MIN_LENGTH - 1)
  monkeypatch.setenv(batching.ENV, "loop")
  assert batching.choice() == "loop"
  monkeypatch.setenv(batching.ENV, "auto")
  assert batching.choice() == "loop_remat"
  monkeypatch.setenv(batching.ENV, "sometimes")
  with pytest.raises(ValueError, match=batching.ENV):
    batching.choice()


def test_a_calibration_is_kept_for_its_machine_only(monkeypatch, cache):
  monkeypatch.setattr(machine, "key", lambda: "epyc")
  assert batching.stored() is None and batching.choice() == batching.DEFAULT  # none yet
  user_cache.store_json(batching._path(), {"mode": "batched", "seconds": {"batched": 0.3}})
  assert batching.choice() == "batched"
  assert batching.calibrate(_never)["seconds"] == {"batched": 0.3}  # kept: not measured again
  monkeypatch.setattr(machine, "key", lambda: "xeon")  # another CPU: not reused
  assert batching.stored() is None and batching.choice() == batching.DEFAULT


def _never():
  raise AssertionError("measured again")


def test_calibration_times_each_mode_and_keeps_the_fastest(monkeypatch, cache):
  """Each mode's workload is built (so compiled) in that mode; the fastest is kept, one for
  gradients and one for forward passes, and choice() gives the gradients' inside
  for_gradients() only. Off one CPU device there is no choice: batched, nothing measured."""
  monkeypatch.setattr(machine, "key", lambda: "this-host")
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    assert batching.calibrate(_never)["mode"] == "batched" and batching.stored() is None
    return
  gradient_cost = {"batched": 3, "loop": 1, "loop_remat": 2, "attention_loop": 4}
  forward_cost = {"batched": 3, "loop": 4, "attention_loop": 1}
  # A clock that only the workloads move: sleeps of a few ms were reordered by a busy CI host.
  clock = [0.0]
  monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
  built = []

  def builder(cost):
    def build():
      mode = batching.choice()  # what a model traced now would run
      built.append(mode)
      return lambda: clock.__setitem__(0, clock[0] + cost[mode])
    return build
  result = batching.calibrate(builder(gradient_cost), builder(forward_cost), repeats=2)
  assert built == list(batching.MODES) + ["batched", "loop", "attention_loop"]
  assert result["mode"] == "loop" and set(result["seconds"]) == set(batching.MODES)
  assert result["forward_mode"] == "attention_loop"
  assert batching.stored() == result and batching.choice() == "attention_loop"
  with batching.for_gradients():
    assert batching.choice() == "loop"
  assert batching.choice() == "attention_loop"
  line = batching.prepare(_never)  # kept: read back, not measured
  assert "loop for gradients" in line and "attention_loop for forward passes" in line


def test_the_train_step_asks_for_the_gradients_choice(monkeypatch, cache):
  """The trainer's step traces its model inside for_gradients(), so it runs the gradients'
  mode; a forward pass outside it asks for the forward mode."""
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    return  # no choice to ask for
  asked = []
  real_choice = batching.choice
  monkeypatch.setattr(batching, "choice",
                      lambda: asked.append(batching._for_gradients) or real_choice())
  model = t5.T5(t5.preset("tiny"), rngs=nnx.Rngs(0))
  batch = {"inputs": jnp.full((2, batching.MIN_LENGTH), 7, jnp.int32),
           "targets": jnp.full((2, 8), 7, jnp.int32)}
  graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)))
  step = functools.partial(trainer.train_step, graphdef=graphdef, loss_fn=t5.loss_fn,
                           schedule=lambda _: 1e-3, z_loss=0.0)
  jax.eval_shape(step, state, batch)  # traced, not run
  assert asked and all(asked)
  asked.clear()
  jax.eval_shape(lambda x_BT, y_BS: model(x_BT, t5.shift_right(y_BS)), batch["inputs"],
                 batch["targets"])
  assert asked and not any(asked)


def test_per_example_positions_give_the_batched_numbers_in_the_attention_loop(monkeypatch,
                                                                                cache):
  """MrT5's hard deletion compacts each example with its own positions, so each example's
  attention has its own (H, T, S) bias: the attention loop must hand each its own."""
  fields = dict(t5.PRESETS["tiny"], num_encoder_layers=3, gate_layer=1, bucket_multiple=8,
                attention_softmax="softmax1")  # its untrained gate drops ~1/4 at random
  model = mrt5.MrT5(mrt5.MrT5Config(**fields), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  inputs = jnp.asarray(rng.integers(3, 259, (3, batching.MIN_LENGTH)), jnp.int32)
  encoded = {}
  for mode in ("batched", "attention_loop"):
    monkeypatch.setenv(batching.ENV, mode)
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda st, x: nnx.merge(graphdef, st).encode(x, deletion="hard")[:2])
    encoded[mode] = encode(state, inputs)  # a fresh trace: reads the choice again
  kept_B = np.sum(encoded["batched"][1], axis=1)
  assert len(set(kept_B.tolist())) > 1 and max(kept_B) < batching.MIN_LENGTH  # own positions
  np.testing.assert_allclose(encoded["attention_loop"][0], encoded["batched"][0], rtol=1e-5,
                             atol=1e-6)
