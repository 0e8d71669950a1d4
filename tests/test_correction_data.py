"""The "correction" objective: whole words of a document, corrupted in the inputs."""

import numpy as np
import pytest

from bytelm.data import noise, pipeline
from bytelm.tokenizer import ByteTokenizer

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
