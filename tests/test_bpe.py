"""The byte-level BPE (data/bpe.py), its token batches, bits per byte of a token model, and the
recipe configs/bpe_decoder.py."""

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

import bytelm
from bytelm.data import bpe, pipeline
from bytelm.models import decoder
from bytelm.text.tokenizer import EOS_ID, PAD_ID
from bytelm.training import config_file, evaluation

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 320

DOCS = [
    "In the beginning God created the heavens and the earth. The earth was formless and empty.",
    "def encode(text):\n    return text.encode('utf-8')  # the bytes of the text\n",
    "Příliš žluťoučký kůň úpěl ďábelské ódy. Ελληνικά κείμενα. Кириллица и пробелы.",
    "中文文本没有空格。日本語のテキスト。한국어 텍스트. हिन्दी पाठ। العربية نص.",
    "Emoji: 👩‍👩‍👧 🇨🇿 👍🏽 and a literal <eos> and <pad> in the text.",
] * 4

ANY_TEXT = [
    "", " ", "  leading and trailing  ", "\r\n\t\x00\x7f", "<eos><pad><eos>",
    "naïve café ﬁ (NFKC would change these)", "e\u0301 vs é", "Ελληνικά", "日本語テキスト",
    "🧑🏿‍🚀🏳️‍🌈", "\U0010ffff\ufeff", "unseen: ꙮ 𓀀 ᚠᛇᚻ",
]


@pytest.fixture(scope="module")
def tok():
  return bpe.train(DOCS, VOCAB)


def config(variant="tiny"):
  return config_file.load(ROOT / "configs" / "bpe_decoder.py", variant)


# ---- the tokenizer


def test_special_ids_and_size(tok):
  assert tok.token_to_id("<pad>") == PAD_ID == 0 and tok.token_to_id("<eos>") == EOS_ID == 1
  assert tok.get_vocab_size() == VOCAB
  assert EOS_ID not in tok.encode("a <eos> b", add_special_tokens=False).ids  # text stays text


def test_byte_chars_are_the_pre_tokenizers():
  assert set(bpe.byte_chars()) == set(pre_tokenizers.ByteLevel.alphabet())
  text = "".join(map(chr, range(128))) + "é€😀"
  (got, _), = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                        use_regex=False).pre_tokenize_str(text)
  assert got == "".join(bpe.byte_chars()[b] for b in text.encode("utf-8"))


@pytest.mark.parametrize("text", ANY_TEXT)
def test_round_trip_to_the_same_bytes(tok, text):
  ids = tok.encode(text, add_special_tokens=False).ids
  assert bpe.decode_bytes(ids, bpe.token_bytes(tok)) == text.encode("utf-8")
  assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trip_of_arbitrary_text(tok, text):
  ids = tok.encode(text, add_special_tokens=False).ids
  assert bpe.decode_bytes(ids, bpe.token_bytes(tok)) == text.encode("utf-8")


def test_merges_shorten_the_text(tok):
  ids = tok.encode(DOCS[0], add_special_tokens=False).ids
  assert len(ids) < 0.7 * len(DOCS[0].encode()), "BPE should merge the training text"


def test_saved_and_reloaded_gives_identical_ids(tok, tmp_path):
  bpe.save(tok, tmp_path / "tokenizer.json")
  again = bpe.load(tmp_path / "tokenizer.json")
  for text in DOCS + ANY_TEXT:
    assert again.encode(text).ids == tok.encode(text).ids
  # Deterministic: training again writes the same file, byte for byte.
  bpe.save(bpe.train(DOCS, VOCAB), tmp_path / "again.json")
  assert (tmp_path / "again.json").read_bytes() == (tmp_path / "tokenizer.json").read_bytes()
  # An existing file is loaded, not retrained (the spec is never read).
  assert bpe.load_or_train(tmp_path / "tokenizer.json", "file:/nowhere/{split}.txt",
                           VOCAB).to_str() == tok.to_str()
  with pytest.raises(ValueError, match="asks for 400"):
    bpe.load_or_train(tmp_path / "tokenizer.json", "file:/nowhere/{split}.txt", 400)


def test_a_corrupt_file_is_named(tok, tmp_path):
  path = tmp_path / "tokenizer.json"
  path.write_text(tok.to_str()[:1000], encoding="utf-8")
  with pytest.raises(ValueError, match="not a readable tokenizer"):
    bpe.load(path)
  path.write_text('{"version": "1.0", "model": 3}', encoding="utf-8")
  with pytest.raises(ValueError, match="not a readable tokenizer"):
    bpe.load(path)


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="vocab_size must be an int >= 258"):
    bpe.train(DOCS, 100)
  with pytest.raises(ValueError, match="supports only"):
    bpe.train(["ab"], 2000)
  with pytest.raises(ValueError, match="causal_lm"):
    pipeline.BatchSource(DOCS, objective="span_corruption", batch_size=2, input_length=16,
                         tokenizer=bpe.train(DOCS, VOCAB))


def test_trained_on_the_training_split_only(tmp_path):
  (tmp_path / "train.txt").write_text(" ".join(DOCS), encoding="utf-8")
  (tmp_path / "validation.txt").write_text("zyzzyva " * 500, encoding="utf-8")
  tok = bpe.load_or_train(tmp_path / "tokenizer.json", f"file:{tmp_path}/{{split}}.txt", VOCAB)
  assert (tmp_path / "tokenizer.json").is_file()
  assert not any("zz" in t for t in tok.get_vocab()), "held-out text leaked into the merges"


# ---- token batches


def test_target_bytes_sum_to_the_bytes_of_the_covered_text(tok):
  src = pipeline.BatchSource(DOCS, objective="causal_lm", batch_size=3, input_length=8,
                             shuffle_seed=None, tokenizer=tok)
  spelled = bpe.token_bytes(tok)
  spelled[EOS_ID] = b"\xff"  # the byte stream's eos marker
  stream = b"\xff".join(d.encode("utf-8") for d in DOCS)
  batches = list(src.eval_batches())
  targets = np.concatenate([b["targets"] for b in batches]).ravel()
  target_bytes = np.concatenate([b["target_bytes"] for b in batches]).ravel()
  first = spelled[batches[0]["inputs"][0, 0]]  # the one token no window predicts
  predicted = bpe.decode_bytes(targets[targets != PAD_ID], spelled)
  assert stream.startswith(first + predicted)
  assert len(stream) - len(first + predicted) < 8 * 4  # only a tail shorter than a window
  assert target_bytes.sum() == len(predicted)  # the eos counted as one byte
  assert src.eval_bytes == len(predicted) - predicted.count(b"\xff")
  assert target_bytes[targets == PAD_ID].sum() == 0
  # Training batches: each target's bytes, whatever the window.
  batch = src.batch(5)
  np.testing.assert_array_equal(batch["target_bytes"],
                                [[len(spelled[t]) for t in row] for row in batch["targets"]])
  assert src.bytes_per_batch == round(3 * 8 * len(stream) / src.stream_length)


# ---- bits per byte


def _uniform_decoder(vocab_size=384):
  """A tiny decoder whose logits are all zero: uniform over its vocab_size rows."""
  cfg = decoder.DecoderConfig(**{**config().model.to_dict(), "vocab_size": vocab_size})
  model = decoder.DecoderLM(cfg, rngs=nnx.Rngs(0))
  nnx.update(model.lm_head, jax.tree.map(jnp.zeros_like, nnx.state(model.lm_head, nnx.Param)))
  return model


def test_bpb_of_a_uniform_model_is_log2_v_times_tokens_over_bytes():
  model = _uniform_decoder(384)
  targets = np.asarray([[5, 9, 1, 300, 0], [7, 0, 0, 0, 0]], np.int32)
  tbytes = np.asarray([[3, 1, 1, 4, 0], [6, 0, 0, 0, 0]], np.int32)
  batch = {"inputs": np.full_like(targets, 4), "targets": targets, "target_bytes": tbytes}
  _, metrics = decoder.loss_fn(model, batch)
  tokens, num_bytes = 5, 15
  np.testing.assert_allclose(metrics["ce"], math.log(384), rtol=1e-6)
  np.testing.assert_allclose(metrics["num_bytes"], num_bytes)
  np.testing.assert_allclose(metrics["bits_per_byte"], math.log2(384) * tokens / num_bytes,
                             rtol=1e-6)

  # The trainer's evaluation sums over batches before dividing.
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  eval_fn = jax.jit(functools.partial(evaluation.eval_step, graphdef=graphdef,
                                      loss_fn=decoder.loss_fn))
  # 2 more tokens, 4 more bytes, in a batch of the same shape (one compilation).
  second = {"inputs": batch["inputs"],
            "targets": np.asarray([[5, 9, 0, 0, 0], [0, 0, 0, 0, 0]], np.int32),
            "target_bytes": np.asarray([[3, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.int32)}
  val = evaluation.evaluate(eval_fn, state, [batch, second])
  np.testing.assert_allclose(val["val_bpb"], math.log2(384) * 7 / 19, rtol=1e-6)
  np.testing.assert_allclose(val["val_loss"], math.log(384), rtol=1e-6)
  assert val["val_bytes"] == 19 and val["val_targets"] == 7

  # Byte batches (no target_bytes): one target is one byte, as before.
  val = evaluation.evaluate(eval_fn, state, [{k: batch[k] for k in ("inputs", "targets")}])
  np.testing.assert_allclose(val["val_bpb"], math.log2(384), rtol=1e-6)
  assert "val_bytes" not in val


# ---- the recipe


def test_the_recipe_matches_the_byte_decoder():
  c, b = config("default"), config_file.load(ROOT / "configs" / "bytes_decoder.py")
  for key in ("d_model", "d_ff", "num_heads", "num_decoder_layers"):
    assert c.model[key] == b.model[key], key
  assert c.opt.to_dict() == b.opt.to_dict() and c.train.to_dict() == b.train.to_dict()
  assert c.model.vocab_size == 2048 == c.data.tokenizer.vocab_size
  c.data.tokenizer.vocab_size = 3000  # the override a user makes on the command line
  assert c.model.vocab_size == 3072


def test_the_recipe_trains_and_keeps_its_tokenizer(trained_bpe_decoder_run):
  workdir, summary = trained_bpe_decoder_run  # configs/bpe_decoder.py:tiny (tests/conftest.py)
  assert np.isfinite(summary.val_loss) and 0 < summary.val_bpb < 10
  assert summary.extras["val_bytes"] > 0
  tok = bpe.load(workdir / "tokenizer.json")
  assert tok.get_vocab_size() == 300
  model = bytelm.load(workdir).module
  assert isinstance(model, decoder.DecoderLM) and model.config.vocab_size == 384


def test_long_documents_encode_in_pieces_to_the_same_ids():
  """A document past bpe._PIECE_CHARS is encoded (and trained on) in pieces cut after a newline
  between two non-space characters, where the pre-tokenizer cuts anyway: the same ids. (A cut
  after a newline that ends a longer whitespace run, "\r\n" or "\n\n", would change them.)"""
  rng = np.random.default_rng(0)
  lines = ["x1 " + " ".join(rng.choice(["naïve", "byte", "  spaced", "x1", "日本"], size=8))
           for _ in range(400)]
  ends = rng.choice(["\n", "\n", "\n\n", "\r\n", " \n"], size=len(lines))
  text = "".join(line + end for line, end in zip(lines, ends)) + "\n\n  tail"
  tok = bpe.train([text], 285)
  cut = bpe.pieces(text, max_chars=1000)
  assert "".join(cut) == text and len(cut) > 10
  assert all(p.endswith("\n") and not p[-2].isspace() and not c[0].isspace()
             for p, c in zip(cut, cut[1:]))
  whole = np.asarray(tok.encode(text, add_special_tokens=False).ids)
  original = bpe._PIECE_CHARS
  try:
    bpe._PIECE_CHARS = 1000
    np.testing.assert_array_equal(bpe.encode_documents(tok, [text, "short"])[0], whole)
  finally:
    bpe._PIECE_CHARS = original
