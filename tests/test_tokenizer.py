"""Tests for bytelm.text.tokenizer: round trips, Hugging Face ByT5 parity, batching, sentinels."""

import json
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bytelm.text import tokenizer
from bytelm.text.tokenizer import ByteTokenizer, sentinel_id

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "byt5_tokenizer_ids.json"
REGENERATE = "rerun `python tests/fixtures/make_tokenizer_fixture.py` (needs transformers)"

tok = ByteTokenizer()


@pytest.fixture(scope="module")
def hf():
  return json.loads(FIXTURE.read_text(encoding="utf-8"))


# ---- round trips -------------------------------------------------------------------------------

@given(st.binary())
def test_bytes_round_trip(data):
  ids = tok.encode(data)
  assert ids.dtype == np.int32 and ids[-1] == tokenizer.EOS_ID
  assert tok.decode_bytes(ids) == data


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))  # surrogates aren't UTF-8
def test_text_round_trip(text):
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode(text, add_eos=False)) == text


@given(st.binary())
def test_ids_are_byte_plus_offset(data):
  ids = tok.encode(data, add_eos=False)
  assert ids.tolist() == [b + 3 for b in data]
  assert ids.size == 0 or (ids.min() >= 3 and ids.max() <= 258)


def test_layout_constants():
  assert (tokenizer.PAD_ID, tokenizer.EOS_ID, tokenizer.UNK_ID, tokenizer.OFFSET) == (0, 1, 2, 3)
  assert tokenizer.NUM_BYTE_IDS == 259
  assert tok.vocab_size == tokenizer.VOCAB_SIZE == 384


# ---- Hugging Face parity -----------------------------------------------------------------------

def test_matches_hf_byt5_ids(hf):
  assert len(hf["cases"]) >= 20
  for case in hf["cases"]:
    assert tok.encode(case["text"]).tolist() == case["ids"], (
        f"ids differ from HF ByT5Tokenizer {hf['transformers_version']} for "
        f"{case['text']!r}; if HF changed its layout, {REGENERATE} and investigate")


def test_decode_matches_hf_decode(hf):
  for case in hf["cases"]:
    assert tok.decode(case["ids"]) == case["hf_decoded"] == case["text"]


def test_truncation_matches_hf(hf):
  for case in hf["truncation"]:
    ids_BT, _ = tok.encode_batch([case["text"]], length=case["max_length"])
    assert ids_BT[0].tolist() == case["ids"], case


def test_special_token_strings_are_plain_bytes(hf):
  # Deliberate divergence: HF turns "</s>" inside text into eos; we never let text inject ids.
  for case in hf["special_token_strings"]:
    ids = tok.encode(case["text"])
    assert ids.tolist() != case["hf_ids"]
    assert ids.tolist() == [b + 3 for b in case["text"].encode()] + [1]
    assert tok.decode(ids) == case["text"]


# ---- decode rules ------------------------------------------------------------------------------

def test_decode_stops_at_first_eos_and_skips_pad_unk_and_extra_ids():
  ids = [0, ord("a") + 3, 2, 0, ord("b") + 3, 259, 383, 1, ord("c") + 3, 1]
  assert tok.decode(ids) == "ab"
  assert tok.decode_bytes(ids) == b"ab"


def test_decode_accepts_lists_numpy_and_jax():
  import jax.numpy as jnp
  ids = tok.encode("héllo")
  for x in (ids.tolist(), ids, ids.astype(np.int64), jnp.asarray(ids)):
    assert tok.decode(x) == "héllo"
  assert tok.decode([]) == "" and tok.decode(np.zeros(0, np.int32)) == ""


def test_invalid_utf8_replace_and_strict():
  ids = [ord("a") + 3, 0xFF + 3, ord("b") + 3, 1]  # 0xFF never occurs in UTF-8
  assert tok.decode(ids) == "a\ufffdb"
  assert tok.decode(ids, errors="ignore") == "ab"
  with pytest.raises(UnicodeDecodeError):
    tok.decode(ids, errors="strict")
  truncated = tok.encode("é", add_eos=False)[:1]  # half a 2-byte character
  assert tok.decode(truncated) == "\ufffd"


def test_decode_bad_input():
  with pytest.raises(ValueError, match="decode_batch"):
    tok.decode(np.ones((2, 3), np.int32))
  with pytest.raises(TypeError, match="integers"):
    tok.decode(np.array([3.0, 4.0]))


# ---- batches -----------------------------------------------------------------------------------

def test_encode_batch_pads_to_longest():
  ids_BT, mask_BT = tok.encode_batch(["ab", "", "xyz"])
  assert ids_BT.dtype == mask_BT.dtype == np.int32
  assert ids_BT.tolist() == [[100, 101, 1, 0], [1, 0, 0, 0], [123, 124, 125, 1]]
  assert mask_BT.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
  assert tok.decode_batch(ids_BT) == ["ab", "", "xyz"]


def test_encode_batch_fixed_length_and_truncation():
  ids_BT, mask_BT = tok.encode_batch(["ab", b"\x00\x01\x02\x03\x04"], length=4)
  assert ids_BT.tolist() == [[100, 101, 1, 0], [3, 4, 5, 1]]  # eos kept as the last id
  assert mask_BT.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
  ids_BT, mask_BT = tok.encode_batch(["abcdef"], length=3, add_eos=False)
  assert ids_BT.tolist() == [[100, 101, 102]] and mask_BT.tolist() == [[1, 1, 1]]
  ids_BT, _ = tok.encode_batch(["a"], length=3, add_eos=False)
  assert ids_BT.tolist() == [[100, 0, 0]]


def test_encode_batch_errors():
  with pytest.raises(ValueError, match=r"text 1 .* 4 ids.*length=3.*truncate=True"):
    tok.encode_batch(["ab", "abc"], length=3, truncate=False)
  tok.encode_batch(["ab"], length=3, truncate=False)  # exactly fits
  with pytest.raises(ValueError, match="empty"):
    tok.encode_batch([])
  with pytest.raises(ValueError, match="length"):
    tok.encode_batch(["a"], length=0)
  with pytest.raises(TypeError, match="sequence of texts"):
    tok.encode_batch("abc")
  with pytest.raises(TypeError, match="int"):
    tok.encode_batch(["a", 3])


def test_decode_batch_needs_2d():
  with pytest.raises(ValueError, match=r"\[B, T\]"):
    tok.decode_batch([3, 4, 1])


# ---- encode input types ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, 3, 1.5, ["a"], np.array([1, 2])])
def test_encode_rejects_non_text(bad):
  with pytest.raises(TypeError, match="expected str or bytes"):
    tok.encode(bad)


def test_encode_accepts_bytearray_and_rejects_surrogates():
  assert tok.encode(bytearray(b"\xff")).tolist() == [258, 1]
  with pytest.raises(UnicodeEncodeError):
    tok.encode("\ud800")


# ---- sentinels ---------------------------------------------------------------------------------

def test_sentinels_count_down_from_258():
  # ByT5 pretraining sentinels, not HF's <extra_id_i> = 259 + i (see the module docstring).
  assert [sentinel_id(i) for i in range(4)] == [258, 257, 256, 255]
  assert sentinel_id(255) == 3 == tokenizer.OFFSET
  assert tok.encode(b"\xff", add_eos=False).tolist() == [sentinel_id(0)]  # shares 0xFF's id


def test_sentinel_bounds():
  for bad in (-1, 256):
    with pytest.raises(ValueError, match="out of range"):
      sentinel_id(bad)
  for bad in (1.0, True, "0"):
    with pytest.raises(TypeError):
      sentinel_id(bad)
