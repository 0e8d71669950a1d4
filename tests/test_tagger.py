"""The byte tagger (models/tagger.py), its recipe configs/diacritics.py, and model exports."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import bytelm
from bytelm import models
from bytelm.text import tags
from bytelm.models import tagger
from bytelm.runs import export
from bytelm.runs.load import load as load_run
from bytelm.training import model_init, train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["Laba diena, aš esu iš Lietuvos ir čia gyvenu.", "Příliš žluťoučký kůň úpěl ďábelské ódy.",
        "Tiếng Việt có nhiều dấu thanh.", "À l'école, où il a été élève."] * 20


def diacritics_config(variant="tiny"):
  spec = importlib.util.spec_from_file_location("diacritics", ROOT / "configs" / "diacritics.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """configs/diacritics.py:tiny trained for a few steps on DOCS, and its exports."""
  root = tmp_path_factory.mktemp("tagger")
  (root / "docs.txt").write_text("\n".join(DOCS), encoding="utf-8")
  config = diacritics_config()
  config.data.train = f"file:{root / 'docs.txt'}"
  summary = train_and_evaluate(config, root / "run")
  model = load_run(root / "run")
  saved = json.loads((root / "run" / "config.json").read_text(encoding="utf-8"))
  for dtype in ("float32", "bfloat16"):
    export.export(model, saved, root / dtype, dtype, extra={"note": "test"})
  return root, summary, model


def tiny_model(seed=0):
  cfg = tagger.TaggerConfig(**{k: v for k, v in diacritics_config().model.to_dict().items()})
  return tagger.Tagger(cfg, rngs=nnx.Rngs(seed))


def test_only_allowed_labels_can_win():
  model = tiny_model()
  ids = jnp.asarray([[ord(c) + 3 for c in "as, 5 Zz!"] + [1, 0]])
  logits = model(ids)
  allowed = tags.allowed_table()[np.asarray(ids)]
  predicted = np.asarray(jnp.argmax(logits, -1))
  assert all(allowed[0, t, predicted[0, t]] for t in range(ids.shape[1]))
  assert all(predicted[0, t] == tags.IGNORE for t in (2, 3, 4, 5, 8, 9, 10))


def test_the_loss_averages_over_letters_only():
  model = tiny_model()
  ids, labels = tags.example("Zażółć, 5 ąę!", 24)
  batch = {"inputs": jnp.asarray(ids)[None], "targets": jnp.asarray(labels)[None]}
  loss, metrics = tagger.loss_fn(model, batch)
  logits = np.asarray(model(batch["inputs"]))[0]
  letters = labels != tags.IGNORE
  ce = optax.softmax_cross_entropy_with_integer_labels(logits[letters], labels[letters])
  np.testing.assert_allclose(float(loss), float(ce.mean()), rtol=1e-5)
  assert float(metrics["num_targets"]) == letters.sum() == 8


def test_the_recipe_trains_and_loads(run):
  root, summary, model = run
  assert np.isfinite(summary.val_loss) and 0 <= summary.extras["val_accuracy"] <= 1
  assert isinstance(model, tagger.Tagger)
  assert json.loads((root / "run" / "config.json").read_text())["model_family"] == "tagger"


def test_an_export_loads_as_the_same_model(run):
  root, _, model = run
  ids = jnp.asarray([tags.example("Laba diena, as esu is Lietuvos", 32)[0]])
  exact = load_run(root / "float32")
  np.testing.assert_array_equal(np.asarray(exact(ids)), np.asarray(model(ids)))
  half = load_run(root / "bfloat16")
  assert half.shared.embedding[...].dtype == jnp.float32  # the model's own dtype again
  # Weights rounded to bf16 move the allowed labels' logits by 0.5% of their largest (measured
  # 2026-12); a weight left out of the export or stored wrongly moves them by far more.
  allowed = tags.allowed_table()[np.asarray(ids)]
  got, want = np.asarray(half(ids))[allowed], np.asarray(model(ids))[allowed]
  assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
  sizes = {d: (root / d / export.WEIGHTS).stat().st_size for d in ("float32", "bfloat16")}
  assert sizes["bfloat16"] < 0.55 * sizes["float32"]
  saved = json.loads((root / "bfloat16" / export.CONFIG).read_text())
  assert saved["export"] == {"note": "test", "stored_dtype": "bfloat16"}


def test_a_mismatched_export_is_a_clear_error(run, tmp_path):
  root, _, model = run
  saved = json.loads((root / "run" / "config.json").read_text())
  saved["model"]["d_model"] *= 2
  export.export(model, saved, tmp_path / "bad", "float32")
  with pytest.raises(ValueError, match="shape"):
    load_run(tmp_path / "bad")


def test_init_from_a_byt5_takes_its_encoder():
  config = diacritics_config()
  config.init_from = str(ROOT / "tests" / "fixtures" / "t5_untied")
  family = models.family("tagger")
  model, cfg = model_init.init_model(config, family, model_init.model_config(config, family),
                                     nnx.Rngs(1))
  byt5, _ = bytelm.convert.load_hf(config.init_from)
  assert isinstance(model, tagger.Tagger) and cfg.d_model == byt5.config.d_model
  np.testing.assert_array_equal(np.asarray(model.shared.embedding[...]),
                                np.asarray(byt5.shared.embedding[...]))
  np.testing.assert_array_equal(np.asarray(model.encoder.blocks[0].attn.q.kernel[...]),
                                np.asarray(byt5.encoder.blocks[0].attn.q.kernel[...]))


def test_the_window_layer_sees_exactly_its_neighbours():
  cfg = tagger.TaggerConfig(d_model=16, d_ff=32, num_heads=2, d_kv=8, num_encoder_layers=1,
                            context_width=2)
  layer = tagger.LocalContext(cfg, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 10, 16))
  mask = jnp.ones((1, 10), bool)
  base = layer(x, mask)
  changed = layer(x.at[0, 5].add(1.0), mask)
  moved = np.abs(np.asarray(changed - base)).max(-1)[0] > 1e-6
  assert list(np.flatnonzero(moved)) == [3, 4, 5, 6, 7]  # 5 and the two on each side
  # A padded position contributes nothing, whatever its embedding.
  pad = mask.at[0, 9].set(False)
  np.testing.assert_allclose(layer(x, pad)[0, :9], layer(x.at[0, 9].set(100.0), pad)[0, :9])
