"""bytelm.load / score / next_byte_logprobs / generate / info on every recipe's model.

The models are the recipes' tiny configs, untrained (a workdir holding the initial weights): what is
tested is that the API reads a text exactly as the training loop's evaluation does, and that
each method is consistent with the model's own forward pass; training would add nothing to that
and minutes to the suite.
"""

import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bytelm
from bytelm import generation, models
from bytelm.byteprobs import adapters
from bytelm.data import bpe, pipeline
from bytelm.nn.quant_dense import MODES
from bytelm.quant import quantize
from bytelm.text import segment_jax
from bytelm.text.tokenizer import EOS_ID, NUM_BYTE_IDS, OFFSET, ByteTokenizer
from bytelm.nn.compiled import jit_call
from bytelm.runs import checkpoint, export
from bytelm.runs import data as data_lib
from bytelm.training import budget, config_file, evaluation, optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ("byt5", "mrt5", "bytes_decoder", "bpe_decoder", "hat", "blt", "hnet")
# One of each code path behind next_byte_logprobs, generate and info (blt is hat with another
# host segmenter, which test_score_is_the_training_loops_evaluation covers).
PATHS = ("byt5", "mrt5", "bytes_decoder", "bpe_decoder", "hat", "hnet")
TEXT = ("Byte models read raw UTF-8: café, naïve, Straße, 東京, and even emoji 🙂. "
        "They need no tokenizer, so a typo costs one byte and not a whole new token. ") * 4


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
  """recipe -> (a workdir holding its tiny model's step-0 checkpoint, its run config): what
  `python train.py` leaves, without the training."""
  root = tmp_path_factory.mktemp("api")
  out = {}
  for name in RECIPES:
    c = config_file.load(ROOT / "configs" / f"{name}.py", "tiny")
    workdir = root / name
    budget.prepare(c, workdir)  # the entropy model or tokenizer a recipe fits
    family = models.family(c.model_family)
    model_cfg = family.config_cls(**c.model.to_dict())
    model = family.model_cls(model_cfg, rngs=nnx.Rngs(0))
    saved = c.to_dict()
    saved["model"] = dataclasses.asdict(model_cfg)
    (workdir / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    tx, _ = optimizer.make_optimizer(c.opt, c.train.steps)
    _, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
    with checkpoint.Checkpointer(workdir / "checkpoints", keep=1, async_save=False) as ckpt:
      ckpt.save(0, state, {"step": 0, "config": saved})
    out[name] = (workdir, c)
  return out


@pytest.fixture(scope="session")
def loaded(exported):
  return {name: bytelm.load(path) for name, (path, _) in exported.items()}


def trainer_bpb(lm, c, documents, window: int) -> float:
  """The training loop's evaluation (pipeline windows, evaluation.evaluate) of one window of a
  validation split holding `documents` in this order."""
  dc = c.data
  kw = dict(objective=dc.objective, batch_size=1, input_length=dc.input_length,
            noise_density=dc.noise_density, mean_noise_span_length=dc.mean_noise_span_length,
            shuffle_seed=None)
  if "segments" in dc:
    kw["segments"] = dc.segments.to_dict()
  if lm.tokenizer is not None:
    kw["tokenizer"] = lm.tokenizer
  source = pipeline.BatchSource(documents, **kw)
  batches = list(source.eval_batches())
  loss_fn = segment_jax.with_segments(models.family(c.model_family).loss_fn,
                                      source.device_segmenter)
  eval_fn = jax.jit(lambda _, batch: evaluation.eval_sums(lm.module, batch, loss_fn))
  return evaluation.evaluate(eval_fn, None, [batches[window]])["val_bpb"]


@pytest.mark.parametrize("name", RECIPES)
def test_score_is_the_training_loops_evaluation(name, exported, loaded):
  lm, c = loaded[name], exported[name][1]
  length = c.data.input_length
  if lm.encoder_decoder:
    # One raw window: the pipeline's evaluation window 0 of a split holding only this text.
    raw = pipeline.BatchSource([TEXT * 9], objective="span_corruption", batch_size=1,
                               input_length=length).raw_length
    text = (TEXT * 9).encode("utf-8")[:raw].decode("utf-8", "ignore")
    text += "x" * (raw - len(text.encode("utf-8")))
    expected = trainer_bpb(lm, c, [text], 0)
  else:
    # Window 1 of [a, text, z] is an eos, then the text's first `length` positions, when a
    # holds `length` positions (window 0: a, then the eos).
    filler = "\x07" * length  # never merged into a longer token
    text = lm.tokenizer.decode(bpe.encode_documents(lm.tokenizer, [TEXT])[0][:length].tolist()) \
        if lm.tokenizer is not None else TEXT.encode("utf-8")[:length].decode("utf-8", "ignore")
    if lm.tokenizer is None:
      text += "x" * (length - len(text.encode("utf-8")))
    expected = trainer_bpb(lm, c, [filler, text, "z"], 1)
  got = lm.score([text])
  assert got.shape == (1,)
  np.testing.assert_allclose(got[0], expected, rtol=1e-5)
  assert 0 < got[0] < 20


# Shorter than one window of every tiny decoder (32 bytes; the BPE decoder's 24 tokens): score
# reads a longer text in windows of the run's input length, byteprobs reads it whole.
IN_ONE_WINDOW = ["The cat sat on the mat.", "Ça va? 東京"]


@pytest.mark.parametrize("name", ("bytes_decoder", "bpe_decoder", "hat"))
def test_score_and_bits_per_byte_are_one_definition(name, loaded):
  """One bits per byte (docs/api.md): every byte of a text read from a document start, not its
  end, under the model's own probabilities. score, the training loop's evaluation, and
  byteprobs' bits_per_byte (which counted the end as a byte) give one number."""
  lm = loaded[name]
  for text in IN_ONE_WINDOW:
    ids = (bpe.encode_documents(lm.tokenizer, [text])[0] if lm.tokenizer is not None
           else text.encode("utf-8"))
    assert len(ids) <= lm.data["input_length"], "the text must fit one window"
  np.testing.assert_allclose(lm.byte_lm().bits_per_byte(IN_ONE_WINDOW),
                             lm.score(IN_ONE_WINDOW, total=True), rtol=1e-5)


@pytest.mark.parametrize("name", ("bytes_decoder", "bpe_decoder", "byt5"))
def test_texts_are_str_or_bytes(name, loaded):
  """A text's bytes are what is scored: str is UTF-8 encoded, bytes are read as they are."""
  lm = loaded[name]
  texts = ["Ça va? 東京 🙂", TEXT]
  np.testing.assert_array_equal(lm.score([t.encode("utf-8") for t in texts]), lm.score(texts))
  np.testing.assert_array_equal(lm.continuation_bits(b"The cat ", [b"sat", "on"]),
                                lm.continuation_bits("The cat ", ["sat", "on"]))
  with pytest.raises(TypeError, match="text 1 must be str or bytes"):
    lm.score(["fine", 42])


@pytest.mark.parametrize("name", ("bytes_decoder", "bpe_decoder"))
def test_decoders_score_bytes_that_are_not_utf8(name, loaded):
  """A byte model reads any bytes; a BPE decoder too, through byteprobs' tokenization (which is
  the tokenizer's on UTF-8 and extends it to any bytes): finite, the same number byteprobs
  gives, and not the score of the text with U+FFFD in place of the bad bytes."""
  lm = loaded[name]
  raw = b"caf\xe9 \xff\xfe\x00 \xc3("  # Latin-1, a UTF-16 mark, a cut character
  got = lm.score([raw])
  assert np.isfinite(got[0]) and got[0] > 0
  np.testing.assert_allclose(got[0], lm.byte_lm().bits_per_byte([raw]), rtol=1e-5)
  assert abs(got[0] - lm.score([raw.decode("utf-8", "replace")])[0]) > 1e-3


@pytest.mark.parametrize("name", ("bytes_decoder", "mrt5"))
def test_score_batches_rows_independently(name, loaded):
  """A text's score does not depend on what it is scored with, and long texts span rows."""
  lm = loaded[name]
  texts = ["short one", TEXT, "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich."]
  together = lm.score(texts, batch_size=2)
  alone = np.array([lm.score([t])[0] for t in texts])
  np.testing.assert_allclose(together, alone, rtol=1e-5)
  with pytest.raises(ValueError, match="empty"):
    lm.score(["fine", ""])
  with pytest.raises(TypeError, match="list of texts"):
    lm.score("not a list")


@pytest.mark.parametrize("name", PATHS)
def test_next_byte_logprobs_is_a_distribution(name, loaded):
  lm = loaded[name]
  logp = lm.next_byte_logprobs("Byte models re")
  assert logp.shape == (257,)
  np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-6)
  assert np.all(np.isfinite(logp))
  assert not np.allclose(logp, lm.next_byte_logprobs("Something else entirely "))


@pytest.mark.parametrize("name", ("bytes_decoder", "byt5"))
def test_next_byte_logprobs_are_the_models_logits(name, loaded):
  """The byte entries are the model's own next-id logits, renormalised over bytes and eos."""
  lm = loaded[name]
  prefix = "Byte mo"
  ids = [OFFSET + b for b in prefix.encode("utf-8")]
  if lm.encoder_decoder:
    x = jnp.asarray([[OFFSET + b for b in b"input text"] + [EOS_ID]])
    y = jnp.asarray([[lm.module.config.decoder_start_id] + ids])
    logits = lm.module(x, y)[0, -1]
    got = lm.next_byte_logprobs(prefix, inputs="input text")
  else:
    logits = lm.module(jnp.asarray([[EOS_ID] + ids]))[0, -1]
    got = lm.next_byte_logprobs(prefix)
  logits = np.asarray(logits, np.float64)
  want = np.concatenate([logits[OFFSET:NUM_BYTE_IDS], logits[EOS_ID:EOS_ID + 1]])
  np.testing.assert_allclose(got, want - np.logaddexp.reduce(want), atol=1e-5)


@pytest.mark.parametrize("name", PATHS)
def test_generate(name, loaded):
  lm = loaded[name]
  prompts = ["The cat", "Byte models"]
  out = lm.generate(prompts, max_new_bytes=6)
  assert len(out) == 2 and all(isinstance(o, str) for o in out)
  assert all(len(o.encode("utf-8")) <= 6 * 3 for o in out)  # U+FFFD is 3 bytes
  assert out == lm.generate(prompts, max_new_bytes=6)  # greedy is deterministic
  # The same continuations from bytes prompts, as the bytes generated (U+FFFD in the str).
  raw = lm.generate([p.encode() for p in prompts], max_new_bytes=6, as_bytes=True)
  assert all(isinstance(r, bytes) and len(r) <= 6 for r in raw)
  assert [r.decode("utf-8", "replace") for r in raw] == out
  sampled = lm.generate(prompts, max_new_bytes=6, temperature=1.0, seed=3)
  assert sampled == lm.generate(prompts, max_new_bytes=6, temperature=1.0, seed=3)
  with pytest.raises(ValueError, match="max_new_bytes"):
    lm.generate(prompts, max_new_bytes=0)


def test_encoder_decoders_search_and_cut_samples(loaded):
  """num_beams, top_k and top_p reach the compiled search (tests/test_generation.py checks it);
  one beam is greedy, and a sample cut to the likeliest byte (top_k=1) is greedy too."""
  lm, prompts = loaded["byt5"], ["The cat", "Byte models"]
  greedy = lm.generate(prompts, max_new_bytes=6)
  assert lm.generate(prompts, max_new_bytes=6, num_beams=1) == greedy
  assert lm.generate(prompts, max_new_bytes=6, temperature=1.0, seed=3, top_k=1) == greedy
  beams = generation.encoder_decoder_texts(lm.module, ByteTokenizer(), prompts,
                                           max_new_bytes=6, method="beam", num_beams=2)
  assert lm.generate(prompts, max_new_bytes=6, num_beams=2) == beams
  with pytest.raises(ValueError, match="temperature=0"):
    lm.generate(prompts, max_new_bytes=6, num_beams=2, temperature=1.0)
  with pytest.raises(ValueError, match="num_beams, top_k and top_p are for encoder-decoders"):
    loaded["bytes_decoder"].generate(prompts, max_new_bytes=6, num_beams=2)


def test_greedy_generation_follows_next_byte_logprobs(loaded):
  lm = loaded["bytes_decoder"]
  logp = lm.next_byte_logprobs("The cat")
  first = lm.generate(["The cat"], 1, as_bytes=True)[0]
  best = int(np.argmax(logp))
  assert first == (bytes([best]) if best < 256 else b"")


@pytest.mark.parametrize("name", PATHS)
def test_info(name, exported, loaded):
  lm = loaded[name]
  info = lm.info()
  n = sum(p.size for p in jax.tree.leaves(nnx.state(lm.module, nnx.Param)))
  assert info["parameters"] == n > 0
  assert info["weight_bytes"] >= 4 * n  # float32
  newest = exported[name][0] / "checkpoints" / "0"
  assert info["bytes_on_disk"] == sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())
  assert info["source"] == "workdir"
  assert info["kind"] == ("encoder-decoder" if name in ("byt5", "mrt5") else "decoder")
  assert info["quantization"] is None
  assert isinstance(info["segmenter"], str)
  if name == "bpe_decoder":
    assert info["segmenter"].startswith("BPE")
  if name == "hnet":
    assert info["segmenter"] == "learned boundaries"


def test_load_a_hugging_face_byt5_directory():
  """The parity fixture (a tiny HF T5 written by transformers): scored with ByT5's span
  corruption, the same number as the bytelm model converted from it."""
  path = ROOT / "tests" / "fixtures" / "t5_tied"
  lm = bytelm.load(path)
  assert lm.info()["source"] == "hugging_face" and lm.encoder_decoder
  got = lm.score([TEXT])
  module, _ = bytelm.convert.load_hf(path)
  again = bytelm.api.LanguageModel(module, "t5", lm.data, path, source="hugging_face")
  np.testing.assert_allclose(got, again.score([TEXT]), rtol=1e-6)
  assert math.isfinite(got[0]) and got[0] > 0
  assert len(lm.generate(["hello"], max_new_bytes=4)) == 1


def test_import_is_light():
  """`import bytelm` imports no checkpoint, dataset or PyTorch library (orbax alone takes about
  0.4 s, datasets 0.8 s): the calls that need them import them."""
  code = ("import bytelm, sys; print(sorted({m.split('.')[0] for m in sys.modules} "
          "& {'orbax', 'datasets', 'torch'}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]", f"import bytelm imported {out.stdout.strip()}"


def test_the_names_the_readme_showed_warn_and_still_work(exported, loaded):
  """bytelm.load_module, load_hf, generate and hierarchical_generation.generate: one release
  more, each warning with its replacement, each giving what the replacement gives."""
  path = exported["byt5"][0]
  with pytest.warns(DeprecationWarning, match=r"bytelm\.load\(path\)\.module"):
    module = bytelm.load_module(path)
  want = jax.tree.leaves(nnx.state(loaded["byt5"].module, nnx.Param))
  got = jax.tree.leaves(nnx.state(module, nnx.Param))
  assert len(got) == len(want) > 0 and all(np.array_equal(a, b) for a, b in zip(got, want))
  fixture = ROOT / "tests" / "fixtures" / "t5_tied"
  with pytest.warns(DeprecationWarning, match=r"bytelm\.load\(path\)"):
    hf_module, hf_config = bytelm.load_hf(fixture)
  assert hf_config == bytelm.convert.load_hf(fixture)[1]
  with pytest.warns(DeprecationWarning, match=r"bytelm\.load\(path\)\.generate"):
    texts = bytelm.generate(module, ByteTokenizer(), ["The cat"], max_new_bytes=6)
  assert texts == loaded["byt5"].generate(["The cat"], max_new_bytes=6)
  hat = loaded["hat"]
  from bytelm import hierarchical_generation
  with pytest.warns(DeprecationWarning, match=r"bytelm\.load\(path\)\.generate"):
    out = hierarchical_generation.generate(hat.module, "The cat", 6, segmenter=hat._segmenter())
  assert out == hat.generate(["The cat"], 6, as_bytes=True)[0]
  with pytest.warns(DeprecationWarning, match=r"bytelm\.load\(workdir\)\.byte_lm\(\)"):
    old = adapters.byte_model_from_workdir(exported["hat"][0])
  np.testing.assert_allclose(old.next_byte_logprobs(b"The c"),
                             hat.byte_lm().next_byte_logprobs(b"The c"), rtol=1e-6)
  with pytest.raises(ValueError, match="encoder-decoder.*next_byte_logprobs"):
    loaded["byt5"].byte_lm()


def test_load_errors(tmp_path, loaded):
  with pytest.raises(FileNotFoundError, match="config.json"):
    bytelm.load(tmp_path)
  with pytest.raises(ValueError, match="longer than the model's"):
    loaded["byt5"].continuation_bits("prompt", ["x" * 5000])
  with pytest.raises(TypeError, match="str or bytes"):
    loaded["bytes_decoder"].next_byte_logprobs(42)


def test_a_config_json_that_is_not_a_runs_is_named_with_what_it_lacks(exported, tmp_path):
  """Not a bare KeyError: the directory, its config.json and the missing part."""
  (tmp_path / "no_model").mkdir()
  (tmp_path / "no_model" / "config.json").write_text('{"model_family": "decoder", "data": {}}')
  with pytest.raises(ValueError, match=r"no_model: its config.json is not a bytelm run's "
                                       r"config: it has no \"model\""):
    bytelm.load(tmp_path / "no_model")
  # A model without the run's data settings: the module loads, a LanguageModel cannot score.
  workdir = exported["bytes_decoder"][0]
  config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  del config["data"]
  export.export(bytelm.load(workdir).module, config, tmp_path / "no_data")
  with pytest.raises(ValueError, match=r"no_data: its config.json has no \"data\".*"
                                       r"bytelm.runs.load.load"):
    bytelm.load(tmp_path / "no_data")


def test_a_mistyped_keyword_is_named_as_no_field_not_blamed_on_the_checkpoint(exported):
  path = exported["bytes_decoder"][0]
  with pytest.raises(TypeError, match=r"unknown keyword dtyp: a DecoderConfig has no such field "
                                      r"\(did you mean dtype\?\); the fields load can override: "
                                      r"dropout_rate, dtype, remat"):
    bytelm.load(path, dtyp="bfloat16")
  # A real field the checkpoint depends on keeps its own reason.
  with pytest.raises(ValueError, match="d_model cannot be overridden at load"):
    bytelm.load(path, d_model=8)


def test_quantized_model_reports_its_mode(exported, tmp_path):
  from bytelm.quant import quantize
  from bytelm.nn.quant_dense import QuantDense
  path, c = exported["bytes_decoder"]
  model = quantize(bytelm.load(path).module, "int8")
  saved = c.to_dict()
  saved["model"] = dataclasses.asdict(model.config)
  export.export(model, saved, tmp_path / "q", dtype="float32")
  lm = bytelm.load(tmp_path / "q")
  assert lm.info()["quantization"] == "int8" and lm.info()["source"] == "export"
  assert lm.info()["parameters"] == bytelm.load(path).info()["parameters"]
  quantized = sum(n.in_features * n.out_features for _, n in nnx.iter_graph(lm.module)
                  if isinstance(n, QuantDense))
  assert quantized > 0  # 1 byte a weight instead of 4, and a float32 scale per column
  assert bytelm.load(path).info()["weight_bytes"] - lm.info()["weight_bytes"] >= 2 * quantized
  assert lm.info()["bytes_on_disk"] == sum(p.stat().st_size for p in (tmp_path / "q").iterdir())
  plain = bytelm.load(path).score([TEXT])[0]
  assert abs(lm.score([TEXT])[0] / plain - 1) < 0.02


@pytest.mark.parametrize("name", ("bytes_decoder", "bpe_decoder", "byt5"))
def test_continuation_bits(name, exported, loaded):
  lm = loaded[name]
  prompt = "The cat sat on the "  # ends in a space: a BPE gives it a lone space token
  got = lm.continuation_bits(prompt, ["mat", "hat."])
  assert got.shape == (2,) and np.all(got > 0)
  if lm.encoder_decoder:  # the output's bits: the cross-entropy of its ids (eos included)
    x = jnp.asarray([[OFFSET + b for b in prompt.encode()] + [EOS_ID]])
    y = [OFFSET + b for b in b"mat"] + [EOS_ID]
    # One compiled call (dropout off), not an eager op-by-op run of the model.
    logits = jit_call(lm.module, "__call__", x,
                      jnp.asarray([[lm.module.config.decoder_start_id] + y[:-1]]))[0]
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    want = -float(sum(logp[t, i] for t, i in enumerate(y))) / math.log(2)
  elif lm.tokenizer is not None:
    # The prompt's tokens are not a prefix of the whole text's ("Ġ" vs "Ġmat"), so the
    # difference of the two scores is no continuation's bits: the exact byte-level prefix
    # probabilities are.
    ids = bpe.encode_documents(lm.tokenizer, [prompt, prompt + "mat"])
    assert lm.tokenizer.id_to_token(int(ids[0][-1])) == "Ġ"
    assert list(ids[1][:len(ids[0])]) != list(ids[0])
    exact = bytelm.load(exported[name][0]).byte_lm()  # loaded afresh
    whole = exact.prefix_logprob((prompt + "mat").encode())
    want = (exact.prefix_logprob(prompt.encode()) - whole) / math.log(2)
  else:  # the whole text's bits minus the prompt's (each text scored as a document start)
    whole = lm.score([prompt + "mat"], total=True) * len(prompt + "mat")
    want = whole - lm.score([prompt], total=True) * len(prompt)
  np.testing.assert_allclose(got[0], want, rtol=1e-5)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_in_every_quantization_exports_to_the_same_model(name, exported, loaded,
                                                                      tmp_path):
  """Every recipe in every quantization mode, exported (float32 storage) and loaded back, is the
  same model: the same graph and bit-identical arrays, integer codes and scales included, so
  its scores are the same (a score is a function of the two; the test below computes scores
  for one mode per family, which is where the compiling goes)."""
  from bytelm.runs.load import load as load_module

  workdir = exported[name][0]
  config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  for mode in MODES:
    module = quantize(nnx.clone(loaded[name].module), mode)
    made = export.export(module, config, tmp_path / mode, dtype="float32", source=workdir)
    back = load_module(made.rename(tmp_path / f"{mode}-shipped"))
    assert nnx.graphdef(back) == nnx.graphdef(module), mode
    kept = nnx.Not(nnx.RngState)  # dropout keys are no part of a trained model's export
    flat = nnx.to_flat_state(nnx.state(module, kept))
    flat_back = nnx.to_flat_state(nnx.state(back, kept))
    assert [k for k, _ in flat_back] == [k for k, _ in flat], mode
    for (key, a), (_, b) in zip(flat, flat_back):
      a, b = np.asarray(a.get_value()), np.asarray(b.get_value())
      assert a.dtype == b.dtype and np.array_equal(a, b), (mode, key)


# Every recipe exported as it was trained (float32 storage, so scores are equal to float
# precision), and as the export command stores it by default (bfloat16) once; quantized, each
# mode on two families, the recipes that carry a fitted file (bpe_decoder, blt) among them.
# A quantized export is restored by one code path whatever the family (quantize the fresh
# model, then read the arrays), and each family (blt's is hat's) is quantized once. Every
# recipe in every mode would be 28 cases and about 90 s on 2 cores, nearly all of it compiling
# quantized evaluations.
EXPORTS = [(name, None, "float32") for name in RECIPES] + [
    ("bpe_decoder", None, "bfloat16"),
    ("byt5", "int8_weight", "float32"), ("mrt5", "int8_weight", "float32"),
    ("bytes_decoder", "int8", "float32"), ("bpe_decoder", "int8", "float32"),
    ("blt", "ternary", "float32"), ("hnet", "ternary", "float32")]


@pytest.mark.parametrize("name,mode,dtype", EXPORTS)
def test_every_export_loads_back_to_the_scores_of_the_model_it_was_made_from(
    name, mode, dtype, exported, loaded, tmp_path):
  """An export, moved away from its run, scores as the model in memory it was made from (float
  and quantized; to float precision where parameters are stored as float32). It carries what the model
  reads text with (a BPE tokenizer, a BLT entropy model); an entropy model the config names by
  path is copied in, so the export still loads once that file is gone."""
  workdir = exported[name][0]
  config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  segments = config["data"].get("segments") or {}
  named = None
  if segments.get("entropy_model"):  # the fixture names the one it fitted into the workdir
    if mode is None:  # as the trainer writes it: "", the one in the workdir
      segments["entropy_model"] = ""
    else:  # a file of the user's elsewhere, gone by the time the export is loaded
      named = tmp_path / "my_entropy_model.npz"
      named.write_bytes(pathlib.Path(segments["entropy_model"]).read_bytes())
      segments["entropy_model"] = str(named)
  fitted = data_lib.fitted_files(config, workdir)
  module = loaded[name].module
  if mode is not None:
    module = quantize(nnx.clone(module), mode)
  text = ["Byte models read raw UTF-8: café, 東京 🙂."]  # one row: the shape other tests compiled
  want = dataclasses.replace(loaded[name], module=module).score(text)
  made = export.export(module, config, tmp_path / "made", dtype=dtype, source=workdir)
  assert sorted(p.name for p in made.iterdir()) == sorted([export.CONFIG, export.WEIGHTS, *fitted])
  moved = made.rename(tmp_path / "shipped")
  if named is not None:
    named.unlink()
  lm = bytelm.load(moved)
  info = lm.info()
  assert info["source"] == "export" and info["quantization"] == mode
  assert info["bytes_on_disk"] == sum(p.stat().st_size for p in moved.iterdir())
  # bfloat16 keeps 8 bits of each weight: a score within a percent (an untrained model's).
  np.testing.assert_allclose(lm.score(text), want, rtol=1e-6 if dtype == "float32" else 1e-2)
  if name == "blt" and mode is None:  # the deprecated reader of a directory finds it too
    with pytest.warns(DeprecationWarning):
      old = adapters.byte_model_from_workdir(moved)
    data = text[0].encode("utf-8") * 3
    assert old.segmenter(data) == lm._segmenter()(data) != [0]
