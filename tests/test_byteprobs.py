"""Exact byte probabilities from tokenized LMs (bytelm/byteprobs): the canonical tokenization."""

import pytest
import tokenizers
from hypothesis import given, settings, strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from bytelm.byteprobs.tokenization import BPE
from bytelm.data import bpe

TEXTS = ["The quick brown fox jumps over the lazy dog's back, 123 times!",
         "Žluťoučký kůň úpěl ďábelské ódy. Ça va? Tiếng Việt có dấu.",
         "def f(x):\n    return x ** 2  # square\n\n", "日本語のテキスト 😀 emoji"] * 20


def _hf(use_regex: bool, vocab_size: int = 360) -> tokenizers.Tokenizer:
  if use_regex:
    return bpe.train(TEXTS, vocab_size)
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(bpe.SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  return tok


@pytest.fixture(scope="module", params=[True, False], ids=["regex", "no-regex"])
def pair(request):
  hf = _hf(request.param)
  return hf, BPE.from_json(hf.to_str())


TEXT = st.text(st.sampled_from(list("the quick ofx's 12 3!?\n\t  ŽůňÇçệ日本😀")), max_size=40)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_encoding_matches_hugging_face_tokenizers(pair, text):
  hf, ours = pair
  assert ours.encode(text.encode("utf-8")) == hf.encode(text, add_special_tokens=False).ids


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=30))
def test_any_bytes_encode_to_a_valid_sequence_that_spells_them(data):
  ours = BPE.from_json(_hf(True).to_str())
  ids = ours.encode(data)
  assert ours.decode(ids) == data and ours.is_valid(ids)


def test_a_sequence_other_than_the_canonical_one_is_invalid(pair):
  _, ours = pair
  ids = ours.encode(b"the quick brown fox")
  assert len(ids) < len(b"the quick brown fox")  # merges happened
  singles = [ours.vocab[bytes([b])] for b in b"the quick brown fox"]
  assert ours.is_valid(ids) and not ours.is_valid(singles)
  assert ours.decode(singles) == ours.decode(ids)


def test_the_regex_keeps_merges_inside_pieces():
  ours = BPE.from_json(_hf(True).to_str())
  assert ours.pieces(b"Hello  world's 12!!") == [b"Hello", b" ", b" world", b"'s", b" 12", b"!!"]
  for i in ours.encode(b"the fox jumps over the dog"):  # no token spans ' ' inside a word end
    token = ours.token_bytes[i]
    assert b" " not in token[1:]


def test_bad_tokenizer_files_are_clear_errors():
  with pytest.raises(ValueError, match="ByteLevel"):
    BPE.from_json('{"model": {"type": "WordPiece"}, "pre_tokenizer": null}')
  with pytest.raises(ValueError, match="256 bytes"):
    BPE({b"a": 0}, [])
