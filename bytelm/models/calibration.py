"""The workload a machine's speed choices are calibrated on (`bytelm.nn.batching.calibrate`).

A short stand-in measured the wrong way round on a Zen 4 EPYC (two layers said "batched"; the
whole model's gradients take 5.9 s batched, 5.1 s one example at a time), so the workload is a
real model: the `mini` T5 (6 + 2 layers, d_model 256) computing its loss and gradients on
8 x 1024 random bytes with 32 target bytes, the shape of the benchmarks where the choice
matters, and its forward pass. About two minutes, once per machine.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bytelm.models import t5
from bytelm.nn import batching


def t5_gradients(batch: int = 8, input_bytes: int = 1024, target_bytes: int = 32,
                 preset: str = "mini") -> Callable[[], object]:
  """A function that computes a T5's loss gradients once and waits for them; compiled (in the
  mode `bytelm.nn.batching` chooses for gradients at the time) on its first call."""
  model, data = _model_and_data(batch, input_bytes, target_bytes, preset)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def gradients(params):
    with batching.for_gradients():  # traced as the trainer's step is
      return jax.grad(lambda p: t5.loss_fn(nnx.merge(graphdef, p, rest), data)[0])(params)
  return lambda: jax.block_until_ready(gradients(params))


def t5_forward(batch: int = 8, input_bytes: int = 1024, target_bytes: int = 32,
               preset: str = "mini") -> Callable[[], object]:
  """The same model's forward pass (teacher-forced logits), the work of evaluation and of
  generation's encoder."""
  model, data = _model_and_data(batch, input_bytes, target_bytes, preset)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda st, x_BT, y_BS: nnx.merge(graphdef, st)(x_BT, t5.shift_right(y_BS)))
  return lambda: jax.block_until_ready(forward(state, data["inputs"], data["targets"]))


def _model_and_data(batch, input_bytes, target_bytes, preset):
  """The preset's T5 (seed 0) and random bytes 3..258 as inputs and targets."""
  model = t5.T5(t5.preset(preset), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  data = {"inputs": jnp.asarray(rng.integers(3, 259, (batch, input_bytes)), jnp.int32),
          "targets": jnp.asarray(rng.integers(3, 259, (batch, target_bytes)), jnp.int32)}
  return model, data
