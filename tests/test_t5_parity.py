"""bytelm's T5 against Hugging Face's, through bytelm.convert (load_hf / save_hf).

The fixtures (tiny random HF models, their inputs and HF's outputs, HF's bucket function) are
made by tests/fixtures/make_t5_fixture.py; this file needs neither torch nor transformers.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from bytelm.convert import hf_t5, load_hf, save_hf
from bytelm.nn import relative_position_bucket

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
NAMES = ["t5_untied", "t5_tied"]
TOL = 1e-4  # fp32; measured ~3e-6
REGENERATE = "rerun `python tests/fixtures/make_t5_fixture.py` (needs torch + transformers)"
PARITY = ("bytelm's T5 no longer computes what Hugging Face's does on the same weights; look at "
          "bytelm/models/t5.py, bytelm/nn/ and the name map in bytelm/convert/hf_t5.py")


@pytest.fixture(scope="session")
def loaded():
  """name -> (model, config, expected arrays), each model loaded once."""
  out = {}
  for name in NAMES:
    model, config = load_hf(FIXTURES / name)
    with np.load(FIXTURES / name / "expected.npz", allow_pickle=False) as f:
      out[name] = (model, config, dict(f))
  return out


def forward(model, x):
  """(encoder output, logits) for the fixture's inputs, masks included."""
  ids, mask = jnp.asarray(x["input_ids"]), jnp.asarray(x["attention_mask"])
  enc = model.encode(ids, mask)
  logits = model.decode(jnp.asarray(x["decoder_input_ids"]), enc, mask,
                        jnp.asarray(x["decoder_attention_mask"]))
  return np.asarray(enc), np.asarray(logits)


def params(model):
  return {path: np.asarray(v[...]) for path, v in nnx.iter_graph(model)
          if isinstance(v, nnx.Param)}


def copy_fixture(name, tmp_path, edit_config=None):
  """A writable copy of a fixture directory, with config.json edited by edit_config(dict)."""
  d = tmp_path / name
  shutil.copytree(FIXTURES / name, d)
  if edit_config:
    cfg = json.loads((d / "config.json").read_text())
    edit_config(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
  return d


# ---- numerical parity ----------------------------------------------------------------------------

def test_bucket_function_equals_hf():
  with np.load(FIXTURES / "t5_buckets.npz", allow_pickle=False) as f:
    tables = dict(f)
  rel = tables.pop("relative_position")
  assert rel.min() < -128 and rel.max() > 128  # beyond max_distance on both sides
  for key, want in tables.items():
    tag, n, d = key.split("_")
    got = relative_position_bucket(rel, bidirectional=tag == "bidirectional",
                                   num_buckets=int(n), max_distance=int(d))
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{key}: {PARITY}")


@pytest.mark.parametrize("bidirectional", [True, False])
def test_position_bias_is_the_bucket_embedding_at_any_distance(bidirectional):
  """RelativePositionBias reads a table of the distances up to max_distance; at gapped,
  per-example positions (MrT5's compaction) far beyond it, it must equal embedding[bucket]."""
  from bytelm.nn.attention import RelativePositionBias
  rb = RelativePositionBias(3, bidirectional=bidirectional, num_buckets=32, max_distance=128,
                            rngs=nnx.Rngs(0))
  pos_BT = jnp.sort(jax.random.choice(jax.random.key(0), 2000, (2, 300), replace=False), axis=1)
  rel_BTS = np.asarray(pos_BT)[:, None, :] - np.asarray(pos_BT)[:, :, None]
  assert rel_BTS.min() < -1000 and rel_BTS.max() > 1000
  buckets = relative_position_bucket(rel_BTS, bidirectional=bidirectional, num_buckets=32,
                                     max_distance=128)
  want_BHTS = np.moveaxis(np.asarray(rb.embedding[...])[np.asarray(buckets)], -1, 1)
  np.testing.assert_array_equal(np.asarray(rb(pos_BT, pos_BT)), want_BHTS)
  q = jnp.array([5])  # a decoding step: one query against every key
  np.testing.assert_array_equal(np.asarray(rb(q, jnp.arange(700))),
                                np.asarray(rb(jnp.arange(700), jnp.arange(700)))[:, 5:6])


@pytest.mark.parametrize("name", NAMES)
def test_encoder_and_logits_match_hf(loaded, name):
  model, config, x = loaded[name]
  assert config.tie_word_embeddings == (name == "t5_tied")
  assert x["attention_mask"].shape[1] > config.relative_attention_max_distance  # far buckets
  assert not x["attention_mask"].all() and not x["decoder_attention_mask"].all()  # padding
  enc, logits = forward(model, x)
  # Every position, padded ones included: HF masks keys only, so those rows are defined too.
  enc_diff = np.abs(enc - x["encoder_last_hidden_state"]).max()
  logits_diff = np.abs(logits - x["logits"]).max()
  assert enc_diff <= TOL, f"{name}: encoder max abs diff {enc_diff:.2e}. {PARITY}"
  assert logits_diff <= TOL, f"{name}: logits max abs diff {logits_diff:.2e}. {PARITY}"


@pytest.mark.parametrize("name", NAMES)
def test_config_fields_are_mapped(loaded, name):
  hf = json.loads((FIXTURES / name / "config.json").read_text())
  config = loaded[name][1]
  assert (config.vocab_size, config.d_model, config.d_ff, config.num_heads, config.d_kv) == (
      hf["vocab_size"], hf["d_model"], hf["d_ff"], hf["num_heads"], hf["d_kv"])
  assert (config.num_encoder_layers, config.num_decoder_layers) == (
      hf["num_layers"], hf["num_decoder_layers"])
  assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (
      hf["relative_attention_num_buckets"], hf["relative_attention_max_distance"])
  assert (config.layer_norm_eps, config.dropout_rate) == (hf["layer_norm_epsilon"],
                                                          hf["dropout_rate"])
  assert (config.pad_id, config.eos_id, config.decoder_start_id) == (
      hf["pad_token_id"], hf["eos_token_id"], hf["decoder_start_token_id"])


def test_num_decoder_layers_defaults_to_num_layers():
  hf = json.loads((FIXTURES / "t5_tied" / "config.json").read_text())
  del hf["num_decoder_layers"]
  assert hf_t5.config_from_hf(hf).num_decoder_layers == hf["num_layers"]


# ---- the LM head's variants ----------------------------------------------------------------------

def test_transformers4_style_untied_config(loaded, tmp_path):
  """ByT5 on the Hub says tie_word_embeddings: false and has no scale_decoder_outputs."""
  def edit(cfg):
    cfg["tie_word_embeddings"] = False
    cfg.pop("scale_decoder_outputs")
  model, config = load_hf(copy_fixture("t5_untied", tmp_path, edit))
  assert not config.tie_word_embeddings
  want = params(loaded["t5_untied"][0])
  got = params(model)
  assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_tied_head_without_rescale_loads_as_a_copy(loaded, tmp_path):
  """transformers 5's T5Config(tie_word_embeddings=False): tied, but no d_model**-0.5 rescale."""
  tied_model, tied_config, x = loaded["t5_tied"]
  d = copy_fixture("t5_tied", tmp_path, lambda cfg: cfg.update(scale_decoder_outputs=False))
  model, config = load_hf(d)
  assert not config.tie_word_embeddings
  np.testing.assert_array_equal(np.asarray(model.lm_head.kernel[...]),
                                np.asarray(tied_model.shared.embedding[...]).T)
  _, logits = forward(model, x)
  np.testing.assert_allclose(logits * tied_config.d_model**-0.5, x["logits"], atol=TOL)


def test_separate_head_with_rescale_is_refused(tmp_path):
  d = copy_fixture("t5_untied", tmp_path, lambda cfg: cfg.update(scale_decoder_outputs=True))
  with pytest.raises(NotImplementedError, match="scale_decoder_outputs"):
    load_hf(d)


def test_stored_embedding_copies(loaded, tmp_path):
  """Files may repeat shared.weight as encoder/decoder.embed_tokens (and lm_head when tied)."""
  d = copy_fixture("t5_tied", tmp_path)
  tensors = load_file(d / "model.safetensors")
  for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
    tensors[name] = tensors["shared.weight"]
  save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  model, config = load_hf(d)
  assert config.tie_word_embeddings
  want = params(loaded["t5_tied"][0])
  assert all(np.array_equal(v, want[k]) for k, v in params(model).items())

  tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"] + 1
  save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match="encoder.embed_tokens.weight"):
    load_hf(d)


# ---- save_hf -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_save_hf_round_trip(loaded, tmp_path, name):
  model, config, _ = loaded[name]
  out = save_hf(model, config, tmp_path / "saved")
  original = load_file(FIXTURES / name / "model.safetensors")
  saved = load_file(out / "model.safetensors")
  assert sorted(saved) == sorted(original)
  for key, want in original.items():
    assert saved[key].dtype == want.dtype and np.array_equal(saved[key], want), key
  with safe_open(str(out / "model.safetensors"), "np") as f:
    assert f.metadata() == {"format": "pt"}  # transformers refuses files without it
  hf = json.loads((out / "config.json").read_text())
  assert hf["architectures"] == ["T5ForConditionalGeneration"] and hf["model_type"] == "t5"
  assert hf["feed_forward_proj"] == "gated-gelu" and hf["is_encoder_decoder"]

  model2, config2 = load_hf(out)
  assert config2 == config
  want, got = params(model), params(model2)
  assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
  assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_save_hf_overwrites_in_place_and_keeps_other_files(loaded, tmp_path):
  model, config, _ = loaded["t5_tied"]
  d = copy_fixture("t5_untied", tmp_path)
  save_hf(model, config, d)
  assert (d / "generation_config.json").exists()
  assert load_hf(d)[1] == config


def test_save_hf_leaves_nothing_half_written(loaded, tmp_path, monkeypatch):
  model, config, _ = loaded["t5_tied"]

  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(hf_t5, "save_file", fail)
  with pytest.raises(OSError, match="disk full"):
    save_hf(model, config, tmp_path / "saved")
  assert list(tmp_path.iterdir()) == []


def test_save_hf_refuses_a_config_that_disagrees(loaded, tmp_path):
  model, config, _ = loaded["t5_tied"]
  with pytest.raises(ValueError, match="relative_attention_max_distance"):
    save_hf(model, config.replace(relative_attention_max_distance=32), tmp_path / "x")


def test_param_dtype_override_round_trips_bfloat16(tmp_path):
  model, config = load_hf(FIXTURES / "t5_tied", param_dtype="bfloat16")
  assert config.param_dtype == "bfloat16" and config.dtype == "float32"
  assert model.shared.embedding[...].dtype == jnp.bfloat16
  out = save_hf(model, config, tmp_path / "bf16")
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  with safe_open(str(out / "model.safetensors"), "np") as f:
    assert f.get_slice("shared.weight").get_dtype() == "BF16"
  model2, config2 = load_hf(out, param_dtype="bfloat16")
  want, got = params(model), params(model2)
  assert all(np.array_equal(got[k], want[k]) for k in want)


# ---- errors --------------------------------------------------------------------------------------

def test_pickle_only_directory_is_refused(tmp_path):
  d = copy_fixture("t5_tied", tmp_path)
  (d / "model.safetensors").rename(d / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match=r"never unpickles[\s\S]*safe_serialization=True"):
    load_hf(d)


def test_missing_directory_and_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    load_hf(tmp_path / "no_such_dir")
  d = copy_fixture("t5_tied", tmp_path)
  (d / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"config\.json"):
    load_hf(d)


def test_sharded_checkpoint(loaded, tmp_path):
  d = copy_fixture("t5_tied", tmp_path)
  tensors = load_file(d / "model.safetensors")
  (d / "model.safetensors").unlink()
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[:20],
            "model-00002-of-00002.safetensors": names[20:]}
  for file, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, d / file, metadata={"format": "pt"})
  index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
  (d / "model.safetensors.index.json").write_text(json.dumps(index))
  model, _ = load_hf(d)
  want = params(loaded["t5_tied"][0])
  assert all(np.array_equal(v, want[k]) for k, v in params(model).items())


def test_shape_mismatch_names_every_tensor(tmp_path):
  d = copy_fixture("t5_tied", tmp_path, lambda cfg: cfg.update(d_ff=64, num_layers=3))
  with pytest.raises(ValueError) as e:
    load_hf(d)
  msg = str(e.value)
  assert "wrong shape encoder.block.0.layer.1.DenseReluDense.wi_0.weight: file [56, 32], " \
         "expected [64, 32]" in msg
  assert "missing     encoder.block.2.layer.0.SelfAttention.q.weight [48, 32]" in msg


def test_unexpected_tensor_is_named(tmp_path):
  d = copy_fixture("t5_tied", tmp_path)
  tensors = load_file(d / "model.safetensors")
  tensors["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = \
      tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
  save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"unexpected  encoder\.block\.1\.layer\.0\.SelfAttention"
                                       r"\.relative_attention_bias\.weight \[16, 2\]"):
    load_hf(d)


def test_relu_feed_forward_is_not_implemented(tmp_path):
  d = copy_fixture("t5_tied", tmp_path, lambda cfg: cfg.update(feed_forward_proj="relu"))
  with pytest.raises(NotImplementedError, match="'relu'"):
    load_hf(d)


def test_hub_failure_is_explained(monkeypatch):
  import huggingface_hub as hub  # installed with datasets

  def offline(*args, **kwargs):
    raise ConnectionError("no network")
  monkeypatch.setattr(hub, "snapshot_download", offline)
  with pytest.raises(FileNotFoundError, match=r"google/byt5-small[\s\S]*no network"):
    load_hf("google/byt5-small")


def test_loaded_model_is_in_eval_mode_and_jittable(loaded, tmp_path):
  """HF configs say dropout_rate 0.1; like from_pretrained, load_hf returns dropout switched off."""
  x = loaded["t5_untied"][2]
  model, config = load_hf(copy_fixture("t5_untied", tmp_path,
                                       lambda cfg: cfg.update(dropout_rate=0.1)))
  assert config.dropout_rate == 0.1
  graphdef, state = nnx.split(model)

  @jax.jit
  def logits(state, ids, dec):
    return nnx.merge(graphdef, state)(ids, dec, jnp.asarray(x["attention_mask"]),
                                      jnp.asarray(x["decoder_attention_mask"]))
  got = logits(state, jnp.asarray(x["input_ids"]), jnp.asarray(x["decoder_input_ids"]))
  np.testing.assert_allclose(np.asarray(got), x["logits"], atol=TOL, err_msg=PARITY)
