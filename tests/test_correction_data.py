"""The "correction" objective: whole words of a document, corrupted in the inputs."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from bytelm.data import noise, pipeline
from bytelm.training import train_and_evaluate
from bytelm.text.tokenizer import ByteTokenizer

DOCS = ["Laba diena, aš esu iš Lietuvos ir čia gyvenu jau daug metų.",
        "Dobrý den, jmenuji se Petr a bydlím v Českých Budějovicích.",
        "Tiếng Việt có nhiều dấu thanh và dấu phụ.",
        "Zażółć gęślą jaźń, powiedział Łukasz."] * 5
TOK = ByteTokenizer()


def text(row):
  return TOK.decode(row[row != 0])


def source(**kw):
  return pipeline.BatchSource(DOCS, objective="correction", batch_size=8, input_length=48,
                              **kw)


def test_targets_are_whole_words_and_inputs_their_stripped_form():
  src = source()
  batch = src.batch(0)
  assert batch["inputs"].shape == (8, 48) and batch["targets"].shape == (8, 48)
  words = {w for d in DOCS for w in d.split(" ")}
  for x, y in zip(batch["inputs"], batch["targets"]):
    target = text(y)
    assert target and all(w in words for w in target.split(" ")), target
    assert text(x) == noise.strip_diacritics(target)
    assert y[np.count_nonzero(y) - 1] == 1  # ends in eos


def test_batches_are_deterministic_and_typos_are_drawn_per_example():
  src = source(correction_task="typos", typo_rate=0.2)
  a, b = src.batch(3), src.batch(3)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(a["inputs"], src.batch(4)["inputs"])
  changed = [text(x) != text(y) for x, y in zip(a["inputs"], a["targets"])]
  assert sum(changed) >= 6
  first = [b["inputs"] for b in src.eval_batches()]
  assert all(np.array_equal(u, v) for u, v in zip(first, [b["inputs"] for b in src.eval_batches()]))


def test_bad_noise_settings_are_clear_errors():
  with pytest.raises(ValueError, match="task"):
    source(correction_task="spelling")
  with pytest.raises(ValueError, match="layout"):
    source(correction_task="typos", keyboard="dvorak")


def test_the_trainer_trains_on_it(tmp_path):
  """configs/byt5.py:tiny with data.objective = "correction" and its noise keys."""
  root = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("byt5_config", root / "configs" / "byt5.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  (tmp_path / "docs.txt").write_text("\n".join(DOCS), encoding="utf-8")
  config.data.train = f"file:{tmp_path / 'docs.txt'}"
  config.data.objective = "correction"
  config.data.correction_task = "typos"
  config.data.keyboard = "dvorak"  # reaches the source: a clear error
  with pytest.raises(ValueError, match="layout"):
    train_and_evaluate(config, tmp_path / "bad")
  config.data.keyboard = "azerty"
  config.train.steps = 2
  summary = train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(summary.val_loss)
  assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["keyboard"] == "azerty"
