"""Diacritics restoration as tagging: labels that line up with the stripped bytes."""

import unicodedata

import numpy as np
from hypothesis import given, settings, strategies as st

from bytelm.data import noise, pipeline
from bytelm.text import tags
from bytelm.text.tokenizer import EOS_ID, ByteTokenizer

SENTENCES = ["Laba diena, aš esu iš Lietuvos.", "Příliš žluťoučký kůň úpěl ďábelské ódy.",
             "Tiếng Việt có nhiều dấu thanh.", "Zażółć gęślą jaźń, Łukasz!",
             "Ştiinţa şi învăţământul în România.", "À l'école, où il a été élève.",
             "El niño comió más piñas. Straße, œuvre, Ørsted, Đà Nẵng."]


def stripped_text(ids) -> str:
  return ByteTokenizer().decode(ids)


def test_labels_restore_the_text_exactly():
  for sentence in SENTENCES:
    ids, labels = tags.example(sentence, 256)
    assert len(ids) == len(labels) and ids[-1] == EOS_ID
    plain = stripped_text(ids)
    assert plain == noise.strip_diacritics(sentence)
    assert tags.apply(plain, labels) == sentence


def test_labels_mark_only_ascii_letters_and_are_allowed_there():
  ids, labels = tags.example("Zażółć, ß 5 Đà!", 64)
  table = tags.allowed_table()
  for i, label in zip(ids, labels):
    assert table[i, label], (i, label)
    is_letter = 3 <= i < 259 and chr(i - 3).isascii() and chr(i - 3).isalpha()
    assert (label != tags.IGNORE) == is_letter
  assert list(labels).count(tags.KEEP) == 2  # Z and a: the undecorated letters


def test_the_label_set_covers_the_languages_and_nothing_else():
  for ch in "ąčęėįšųūžěřůťďňáéíóúýłńśźżăâîșțşţàèùçœëïüôêñươđạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ":
    if ch != "œ":
      assert ch in tags.LETTERS and ch.upper() in tags.LETTERS, ch
  for ch in "ßœæøðþı":  # separate letters: nothing to restore them from, except ø
    assert (ch in tags.LETTERS) == (ch == "ø"), ch
  assert all(len(noise.strip_diacritics(ch)) == 1 and noise.strip_diacritics(ch).isascii()
             for ch in tags.LETTERS)
  assert len(set(tags.LETTERS)) == len(tags.LETTERS) == tags.num_labels() - 2


def test_words_are_dropped_until_the_input_fits():
  ids, labels = tags.example("Příliš žluťoučký kůň úpěl ďábelské ódy.", 21)
  assert len(ids) == 21  # 20 bytes and the eos
  assert stripped_text(ids) == "Prilis zlutoucky kun"
  assert tags.apply(stripped_text(ids), labels) == "Příliš žluťoučký kůň"


def test_text_in_decomposed_form_is_read_as_composed():
  nfd = unicodedata.normalize("NFD", "Đà Nẵng, й")
  ids, labels = tags.example(nfd, 64)
  assert tags.apply(stripped_text(ids), labels) == unicodedata.normalize("NFC", nfd)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("abcsezAEZ .,ñ日ß"), max_size=40),
       st.integers(0, 2**31 - 1))
def test_any_labels_change_diacritics_only(text, seed):
  """Whatever a model predicts, the output strips back to its input."""
  labels = np.random.default_rng(seed).integers(0, tags.num_labels(), len(text.encode()) + 1)
  assert noise.strip_diacritics(tags.apply(text, labels)) == noise.strip_diacritics(text)


def test_the_pipeline_batches_labels_beside_their_bytes():
  src = pipeline.BatchSource(SENTENCES * 3, objective="diacritics_tagging", batch_size=6,
                             input_length=48)
  batch = src.batch(0)
  assert batch["inputs"].shape == batch["targets"].shape == (6, 48)
  originals = set(SENTENCES)
  for x, y in zip(batch["inputs"], batch["targets"]):
    plain = stripped_text(x[x != 0])
    restored = tags.apply(plain, y)
    assert restored and any(restored in s for s in originals), restored
    assert np.all(y[x == 0] == tags.IGNORE)
