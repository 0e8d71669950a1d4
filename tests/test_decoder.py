"""The decoder-only byte LM (models/decoder.py) and its recipe configs/bytes_decoder.py."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import bytelm
from bytelm import generation
from bytelm.models import decoder
from bytelm.nn.compiled import Compiled
from bytelm.training import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def config(variant="tiny"):
  spec = importlib.util.spec_from_file_location("bytes_decoder",
                                                ROOT / "configs" / "bytes_decoder.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def tiny_model():
  return decoder.DecoderLM(decoder.DecoderConfig(**config().model.to_dict()), rngs=nnx.Rngs(0))


def test_no_position_sees_a_later_one():
  """d logits[t] / d embedding of input s is zero for every s > t."""
  model = tiny_model()
  ids = jnp.asarray([[5, 70, 80, 90, 100, 1, 60, 61]])
  x = model.shared(ids)

  def logits_from_embeddings(x_BTD):
    bias = decoder.causal_bias(model.rel_bias, ids.shape[1])
    key_bias = jnp.zeros(ids.shape, jnp.float32)
    for block in model.blocks:
      x_BTD, _ = block(x_BTD, bias, key_bias)
    return model.lm_head(model.final_norm(x_BTD))

  np.testing.assert_allclose(logits_from_embeddings(x), model(ids), rtol=1e-6)
  # Compiled: one XLA program, not an eager op-by-op jacobian.
  jac = jax.jit(jax.jacobian(lambda x: logits_from_embeddings(x).sum(-1)))(x)  # [1, T, 1, T, D]
  for t in range(ids.shape[1]):
    assert float(jnp.abs(jac[0, t, 0, t + 1:]).max(initial=0.0)) == 0.0, t
    assert float(jnp.abs(jac[0, t, 0, : t + 1]).max()) > 0.0, t


def test_pad_rows_and_pad_targets_do_not_count():
  """An all-pad row (the last evaluation batch's filler) leaves the loss as it was."""
  model = tiny_model()
  row = jnp.asarray([[5, 70, 80, 90, 100, 1]])
  batch = {"inputs": row[:, :-1], "targets": row[:, 1:]}
  padded = {k: jnp.concatenate([v, jnp.zeros_like(v)]) for k, v in batch.items()}
  loss, metrics = decoder.loss_fn(model, batch)
  padded_loss, padded_metrics = decoder.loss_fn(model, padded)
  np.testing.assert_allclose(float(loss), float(padded_loss), rtol=1e-6)
  assert float(metrics["num_targets"]) == float(padded_metrics["num_targets"]) == 5


def test_the_recipe_trains_and_loads(tmp_path):
  c = config()
  summary = train_and_evaluate(c, tmp_path / "run")
  assert np.isfinite(summary.val_loss) and summary.val_bpb > 0
  model = bytelm.load(tmp_path / "run").module
  assert isinstance(model, decoder.DecoderLM) and model.config.num_decoder_layers == 2


def test_cached_steps_compute_what_the_whole_model_computes():
  model = tiny_model()
  ids_BT = jnp.asarray(np.random.default_rng(0).integers(3, 259, (2, 20)), jnp.int32)
  cache = model.init_cache(2, 24)
  # Each step compiled once (t a traced scalar, as generation calls it), not 20 eager runs.
  compiled = Compiled(model)
  steps = []
  for t in range(20):
    logits_BV, cache = compiled("step", ids_BT[:, t], np.int32(t), cache)
    steps.append(logits_BV)
  np.testing.assert_allclose(np.stack(steps, 1), model(ids_BT), rtol=1e-4, atol=1e-4)
  # Greedy generation follows the whole model's argmax: the model on the prompt and the
  # output (one call; the model is causal, test_no_position_sees_a_later_one), row
  # len(prompt) - 1 + k predicting output byte k from the prompt and out[:k].
  prompt = [1] + list(np.asarray(ids_BT[0, :5]))
  out = generation.decoder_ids(model, prompt, 6)
  whole_TV = np.array(model(jnp.asarray([prompt + out], jnp.int32))[0])
  for k, new in enumerate(out):
    logits_V = whole_TV[len(prompt) - 1 + k]
    logits_V[0] = -np.inf
    assert new == int(np.argmax(logits_V))


def test_the_compiled_loop_gives_the_host_loops_ids():
  """A batch of prompts of different lengths in one compiled loop equals the host loop on each
  alone; then with eos as likely as one of the ids chosen, one row ends while the other goes
  on (same shapes: no second compilation)."""
  model = tiny_model()
  prompts = [[1, 75, 104, 101], [1] + list(range(40, 60))]

  def compare(m):
    rows = generation.decoder_rows(m, prompts, 12)
    for prompt, row in zip(prompts, rows):
      assert row == generation.decoder_ids(m, prompt, 12, on_host=True), prompt
    return rows

  rows = compare(model)
  kernel = model.lm_head.kernel
  kernel[...] = kernel[...].at[:, 1].set(kernel[:, rows[0][5]] * 1.05)  # eos: id 1
  lengths = sorted(len(r) for r in compare(model))
  assert lengths[0] < lengths[1], lengths
