"""model.dtype="bfloat16" on every recipe: the train step's matmuls take bf16 operands, the
parameters and optimizer state stay float32, and 20 steps land where float32's 20 steps do.

Each recipe's `:tiny` model is trained twice from one initialisation on the same batches, once
per compute dtype, with the trainer's own step (`trainer.train_step`, `optimizer.make_optimizer`,
the segments cut inside the step, as `budget.step_timer` builds it). One compile per recipe and
dtype, shared by the tests of this file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bytelm import models
from bytelm.nn import Embed
from bytelm.text import segment_jax
from bytelm.training import budget, config_file, trainer
from bytelm.training import optimizer as optim

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ("byt5", "mrt5", "bytes_decoder", "bpe_decoder", "hat", "blt", "hnet", "diacritics")
STEPS = 20
# A small corpus of the embedded ones, with diacritics for the tagger: the BPE and entropy
# recipes fit their tokenizer and n-gram model to it in a second (to embedded:en in ~8).
DATA = "embedded:l10n_ro"


@dataclasses.dataclass
class Run:
  lowered: jax.stages.Lowered  # the train step (its StableHLO: lowered.as_text())
  state: nnx.State  # of (model, optimizer), before the steps
  batches: list  # STEPS + 1: the last one's loss is that of STEPS updates

  def losses(self) -> list[float]:
    """losses[s]: the loss of the parameters after s optimizer steps (compiled here)."""
    step, state, out = self.lowered.compile(), self.state, []
    for batch in self.batches:
      state, metrics = step(state, batch)
      out.append(float(metrics["loss"]))
    return out


def _step(c, source, batches, init: nnx.State, dtype: str) -> Run:
  """The recipe's train step from the state `init`, computing in dtype, lowered."""
  family = models.family(c.model_family)
  cfg = family.config_cls(**{**c.model.to_dict(), "dtype": dtype})
  model = nnx.eval_shape(lambda: family.model_cls(cfg, rngs=nnx.Rngs(0)))
  nnx.update(model, init)
  tx, schedule = optim.make_optimizer(c.opt, STEPS)
  graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
  loss_fn = segment_jax.with_segments(family.loss_fn, source.device_segmenter)
  lowered = jax.jit(functools.partial(
      trainer.train_step, graphdef=graphdef, loss_fn=loss_fn, schedule=schedule, z_loss=0.0,
      after_step=family.after_step)).lower(state, batches[0])
  return Run(lowered, state, batches)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """runs(name) -> {dtype: Run} of that recipe, lowered on first use."""
  root = tmp_path_factory.mktemp("bf16")

  @functools.cache
  def get(name):
    c = config_file.load(ROOT / "configs" / f"{name}.py", "tiny")
    c.data.train = DATA
    budget.prepare(c, root / name)  # the tokenizer or entropy model the recipe fits
    source = budget.train_source(c, root / name)
    batches = [{k: jnp.asarray(v) for k, v in source.batch(s).items()}
               for s in range(STEPS + 1)]
    family = models.family(c.model_family)
    init = nnx.state(family.model_cls(family.config_cls(**c.model.to_dict()),
                                      rngs=nnx.Rngs(c.seed)))
    return {dtype: _step(c, source, batches, init, dtype) for dtype in ("float32", "bfloat16")}

  return get


def _dims(tensor_type: str) -> tuple[list[int], str]:
  """([2, 64, 64], "bf16") of "2x64x64xbf16"."""
  *dims, dtype = tensor_type.split("x")
  return [int(d) for d in dims], dtype


DOT = re.compile(r"stablehlo\.dot_general .*?contracting_dims = \[([\d, ]*)\] x .*?"
                 r": \(tensor<([^>]+)>, tensor<([^>]+)>\) -> tensor<([^>]+)>")


def dot_flops(hlo: str) -> dict[str, float]:
  """{operand and result dtypes, e.g. "bf16,bf16->f32": FLOPs} of the dot products in a
  lowered program."""
  flops = {}
  for contracting, lhs, rhs, out in DOT.findall(hlo):
    lhs_dims, lhs_dtype = _dims(lhs)
    k = math.prod(lhs_dims[int(i)] for i in contracting.replace(" ", "").split(",") if i)
    key = f"{lhs_dtype},{_dims(rhs)[1]}->{_dims(out)[1]}"
    flops[key] = flops.get(key, 0.0) + 2.0 * math.prod(_dims(out)[0]) * k
  return flops


@pytest.mark.parametrize("name", RECIPES)
def test_bf16_matmuls_with_float32_parameters_and_optimizer_state(name, runs):
  """The lowered program, not the compiled one (XLA:CPU rewrites a dot with a bf16 result to
  float32). A dtype that some layer ignores shows up as float32 FLOPs; what stays float32 on
  purpose (MrT5's 1-wide gate projection) is negligible. On the CPU every bf16 product,
  forward and backward, asks for its float32 accumulator (bytelm.nn.precision: 7x faster
  there than a bf16 result)."""
  flops = {dtype: dot_flops(run.lowered.as_text()) for dtype, run in runs(name).items()}
  assert flops["float32"] and set(flops["float32"]) == {"f32,f32->f32"}, flops["float32"]
  on_cpu = jax.default_backend() == "cpu"
  bf16 = sum(v for k, v in flops["bfloat16"].items()
             if k.startswith("bf16,bf16->") and (k.endswith("f32") or not on_cpu))
  assert bf16 >= 0.99 * sum(flops["bfloat16"].values()), flops["bfloat16"]
  for run in runs(name).values():  # what the step returns: the state it was lowered for
    out_state = jax.tree.leaves(run.lowered.out_info[0])
    assert {x.dtype for x in out_state if jnp.issubdtype(x.dtype, jnp.floating)} \
        == {jnp.dtype(jnp.float32)}


# One recipe per model family's code (compiles dominate: ~6 s a recipe): byt5's model is
# mrt5's without the gate, bpe_decoder's is bytes_decoder's over tokens, hat's and blt's are
# hnet's with segments cut from the bytes instead of learned (the matmul test covers all).
TRAINED = ("mrt5", "bytes_decoder", "hnet", "diacritics")


@pytest.mark.parametrize("name", TRAINED)
def test_bf16_training_follows_float32(name, runs):
  """After 20 steps from one initialisation on one stream of batches, bf16's loss is within 2%
  of float32's (measured: within 0.13% on every recipe, 2026-12, CPU)."""
  l32, l16 = (runs(name)[dtype].losses() for dtype in ("float32", "bfloat16"))
  assert np.isfinite(l32).all() and np.isfinite(l16).all(), (l32, l16)
  assert l32[STEPS] < 0.9 * l32[0], l32  # it trained: the comparison means something
  assert abs(l16[STEPS] - l32[STEPS]) <= 0.02 * l32[STEPS], (l32[STEPS], l16[STEPS])


def test_a_bf16_embedding_sums_its_gradient_in_float32():
  """Each row's gradient is summed over all its lookups in float32 (bytelm.nn.Embed): 16k
  lookups of 4 ids give float32's gradient within bf16's rounding (0.3%), where a lookup in a
  table cast to bf16 first (nnx.Embed) was 11% off."""
  ids_BT = jax.random.randint(jax.random.key(0), (16, 1024), 0, 4)
  cotangent_BTD = jax.random.normal(jax.random.key(1), (16, 1024, 8))

  def grad(dtype):
    embed = Embed(4, 8, dtype=dtype, rngs=nnx.Rngs(0))
    return nnx.grad(lambda e: jnp.sum(e(ids_BT).astype(jnp.float32) * cotangent_BTD))(
        embed).embedding[...]

  g32, g16 = grad(jnp.float32), grad(jnp.bfloat16)
  assert g16.dtype == jnp.float32
  assert float(jnp.abs(g16 - g32).max()) < 0.01 * float(jnp.abs(g32).max())
