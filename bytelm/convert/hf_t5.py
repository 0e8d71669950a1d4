"""Hugging Face T5 / ByT5 checkpoints <-> bytelm's `T5`, through safetensors only (never pickle).

`load_hf(path)` reads what `T5ForConditionalGeneration.save_pretrained` writes (config.json plus
model.safetensors or a sharded model.safetensors.index.json); `save_hf(model, config, path)` writes
a directory that `from_pretrained` loads. Only the gated-GELU feed-forward of T5.1.1 / mT5 / ByT5.

Traps:
- HF's Linear stores its weight (out, in); our Dense kernel is (in, out): matrices are transposed.
  Embeddings and the relative position bias table (buckets, heads) are stored alike.
- The LM head. transformers < 5 reads `tie_word_embeddings` (true when absent): true means the head
  is the shared embedding and the decoder output is first scaled by d_model**-0.5 (original T5);
  false means a separate `lm_head.weight` and no scaling (T5.1.1, ByT5). transformers >= 5 always
  sets tie_word_embeddings to true, keeps the scaling decision in `scale_decoder_outputs`, and
  unties only when the file holds an lm_head.weight that differs from shared.weight. We decide by
  the file's content as transformers 5 does. A tied head without the rescale (what transformers 5
  saves for `T5Config(tie_word_embeddings=False)`) has no bytelm equivalent and loads as an untied
  head holding a copy of the embedding: the same numbers.
- `encoder.embed_tokens.weight` / `decoder.embed_tokens.weight` are copies of `shared.weight`
  when a file has them; `decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight`
  (old checkpoints) was never used and is skipped, as transformers does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import uuid
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from bytelm.models.t5 import T5, T5Config

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# What a user with a pickled checkpoint can run, in an environment they trust, to convert it.
CONVERT_SNIPPET = """\
  from transformers import T5ForConditionalGeneration
  model = T5ForConditionalGeneration.from_pretrained("{src}")
  model.save_pretrained("{src}-safetensors", safe_serialization=True)"""

# T5Config field <- (config.json key, HF T5Config's default when the key is absent).
_FIELDS = {
    "vocab_size": ("vocab_size", 32128),
    "d_model": ("d_model", 512),
    "d_ff": ("d_ff", 2048),
    "num_heads": ("num_heads", 8),
    "d_kv": ("d_kv", 64),
    "num_encoder_layers": ("num_layers", 6),
    "relative_attention_num_buckets": ("relative_attention_num_buckets", 32),
    "relative_attention_max_distance": ("relative_attention_max_distance", 128),
    "dropout_rate": ("dropout_rate", 0.1),
    "layer_norm_eps": ("layer_norm_epsilon", 1e-6),
    "pad_id": ("pad_token_id", 0),
    "eos_id": ("eos_token_id", 1),
}
# gated-GELU with the tanh approximation ("gelu_new"), which HF uses for "gated-gelu".
_GATED_GELU = ("gated-gelu", "gated-gelu_new")
_MODEL_TYPES = ("t5", "mt5")  # same architecture; umt5 has a position bias per layer (unsupported)
_NEVER_USED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_EMBED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


# ---- names ---------------------------------------------------------------------------------------

def param_names(config: T5Config) -> dict[str, tuple[tuple[Any, ...], bool]]:
  """HF tensor name -> (path of our nnx.Param, whether HF's array is our kernel transposed)."""
  names: dict[str, tuple[tuple[Any, ...], bool]] = {"shared.weight": (("shared", "embedding"), False)}

  def dense(hf: str, ours: tuple, parts: tuple[str, ...]):
    for p in parts:
      names[f"{hf}.{p}.weight"] = ((*ours, p, "kernel"), True)

  for stack, num_layers in (("encoder", config.num_encoder_layers),
                            ("decoder", config.num_decoder_layers)):
    names[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        (stack, "rel_bias", "embedding"), False)
    names[f"{stack}.final_layer_norm.weight"] = ((stack, "final_norm", "scale"), False)
    for i in range(num_layers):
      hf, ours = f"{stack}.block.{i}.layer", (stack, "blocks", i)
      if stack == "encoder":
        sublayers = (("SelfAttention", "attn"), ("DenseReluDense", "mlp"))
      else:
        sublayers = (("SelfAttention", "self_attn"), ("EncDecAttention", "cross_attn"),
                     ("DenseReluDense", "mlp"))
      for j, (hf_sub, sub) in enumerate(sublayers):
        names[f"{hf}.{j}.layer_norm.weight"] = ((*ours, f"{sub}_norm", "scale"), False)
        parts = ("wi_0", "wi_1", "wo") if sub == "mlp" else ("q", "k", "v", "o")
        dense(f"{hf}.{j}.{hf_sub}", (*ours, sub), parts)
  if not config.tie_word_embeddings:
    names["lm_head.weight"] = (("lm_head", "kernel"), True)
  return names


# ---- config.json ---------------------------------------------------------------------------------

def config_from_hf(hf: dict[str, Any], *, tie_word_embeddings: bool | None = None, dtype=None,
                   param_dtype=None) -> T5Config:
  """A T5Config from the fields of an HF config.json (missing fields take HF's defaults).

  tie_word_embeddings overrides the file's flag (load_hf decides it from the tensors).
  """
  model_type = hf.get("model_type", "t5")
  if model_type not in _MODEL_TYPES:
    raise NotImplementedError(f"config.json has model_type {model_type!r}; bytelm converts "
                              f"{' / '.join(_MODEL_TYPES)} checkpoints only")
  ff = hf.get("feed_forward_proj", "relu")
  if ff not in _GATED_GELU:
    raise NotImplementedError(
        f"config.json has feed_forward_proj {ff!r}; bytelm implements the gated-GELU "
        "feed-forward of T5.1.1 / mT5 / ByT5 only ('gated-gelu'), not the original T5's ReLU")
  kw = {field: hf.get(key, default) for field, (key, default) in _FIELDS.items()}
  kw["num_decoder_layers"] = hf.get("num_decoder_layers") or kw["num_encoder_layers"]
  for field in ("pad_id", "eos_id"):
    value = kw[field]
    if isinstance(value, list) and len(value) == 1:
      value = value[0]
    if not isinstance(value, int):
      raise ValueError(f"config.json: {_FIELDS[field][0]} is {value!r}; bytelm needs one integer id")
    kw[field] = value
  start = hf.get("decoder_start_token_id")
  kw["decoder_start_id"] = kw["pad_id"] if start is None else start  # T5 starts from pad
  if tie_word_embeddings is None:
    tie_word_embeddings = hf.get("tie_word_embeddings", True) is not False
  kw["tie_word_embeddings"] = bool(tie_word_embeddings)
  if dtype is not None:
    kw["dtype"] = jnp.dtype(dtype).name
  if param_dtype is not None:
    kw["param_dtype"] = jnp.dtype(param_dtype).name
  return T5Config(**kw)


def config_to_hf(config: T5Config) -> dict[str, Any]:
  """The config.json of HF's T5ForConditionalGeneration for a bytelm T5Config."""
  if config.attention_softmax != "softmax":
    raise ValueError(f"attention_softmax={config.attention_softmax!r} has no Hugging Face T5 "
                     "equivalent; only 'softmax' models can be saved")
  tie = config.tie_word_embeddings
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.d_kv,
      "d_ff": config.d_ff,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_eps,
      "initializer_factor": 1.0,
      "feed_forward_proj": "gated-gelu",
      "dense_act_fn": "gelu_new",
      "is_gated_act": True,
      "is_encoder_decoder": True,
      "use_cache": True,
      "pad_token_id": config.pad_id,
      "eos_token_id": config.eos_id,
      "decoder_start_token_id": config.decoder_start_id,
      # Both spellings of the head: transformers < 5 reads the first, >= 5 the second.
      "tie_word_embeddings": tie,
      "scale_decoder_outputs": tie,
      "dtype": jnp.dtype(config.param_dtype).name,
  }


# ---- files ---------------------------------------------------------------------------------------

def _resolve(path) -> pathlib.Path:
  """A local directory, or a Hub snapshot of config.json + safetensors when huggingface_hub exists."""
  local = pathlib.Path(path).expanduser()
  if local.is_dir():
    return local
  if local.exists():
    raise NotADirectoryError(f"{local} is a file; load_hf wants the checkpoint's directory "
                             "(config.json + model.safetensors)")
  name = str(path)
  if name.count("/") != 1 or name.startswith((".", "/", "~")):
    raise FileNotFoundError(f"no such checkpoint directory: {local}")
  try:
    import huggingface_hub  # optional: only for Hub names
  except ImportError as e:
    raise FileNotFoundError(f"{name!r} is not a local directory, and huggingface_hub is not "
                            "installed to fetch it from the Hub") from e
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(
        name, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"]))
  except Exception as e:  # network, auth, unknown repo: all end the same way for the user
    raise FileNotFoundError(f"{name!r} is not a local directory and could not be fetched from the "
                            f"Hugging Face Hub ({type(e).__name__}: {e}); download it and pass "
                            "the directory") from e


def _read_config(directory: pathlib.Path) -> dict[str, Any]:
  file = directory / "config.json"
  if not file.is_file():
    raise FileNotFoundError(f"{file} not found: a Hugging Face checkpoint directory needs its "
                            "config.json")
  return json.loads(file.read_text(encoding="utf-8"))


def _shard_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """The safetensors files holding the weights, or an error saying how to get them."""
  if (directory / WEIGHTS).is_file():
    return [directory / WEIGHTS]
  index = directory / WEIGHTS_INDEX
  if index.is_file():
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    files = [directory / name for name in sorted(set(weight_map.values()))]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
      raise FileNotFoundError(f"{index} lists shards that are missing: {absent}")
    return files
  pickled = sorted(p.name for p in directory.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
  how = ("Convert it to safetensors in an environment you trust (it needs torch + transformers):\n"
         + CONVERT_SNIPPET.format(src=directory))
  if pickled:
    raise FileNotFoundError(
        f"{directory} holds only pickled weights ({', '.join(pickled)}) and no {WEIGHTS}. bytelm "
        f"never unpickles checkpoints (unpickling runs arbitrary code). {how}")
  raise FileNotFoundError(f"{directory} has neither {WEIGHTS} nor {WEIGHTS_INDEX}. If the "
                          f"checkpoint exists only as pytorch_model.bin: {how}")


class _Tensors:
  """Name -> shape of every tensor in the shards, read lazily (one array in memory at a time)."""

  def __init__(self, files: list[pathlib.Path], stack: contextlib.ExitStack):
    self.shapes: dict[str, tuple[int, ...]] = {}
    self._handles: dict[str, Any] = {}
    self._stored: dict[str, str] = {}  # name -> name in the file (differs for an alias)
    for file in files:
      handle = stack.enter_context(safe_open(str(file), framework="np"))
      for name in handle.keys():
        if name in self._handles:
          raise ValueError(f"tensor {name!r} appears in more than one shard ({file.name})")
        self._handles[name], self._stored[name] = handle, name
        self.shapes[name] = tuple(handle.get_slice(name).get_shape())

  def alias(self, name: str, existing: str) -> None:
    self.shapes[name], self._handles[name] = self.shapes[existing], self._handles[existing]
    self._stored[name] = self._stored[existing]

  def __contains__(self, name: str) -> bool:
    return name in self.shapes

  def __getitem__(self, name: str) -> np.ndarray:
    return self._handles[name].get_tensor(self._stored[name])

  def same(self, a: str, b: str) -> bool:
    return self.shapes[a] == self.shapes[b] and np.array_equal(self[a], self[b])


# ---- load ----------------------------------------------------------------------------------------

def load_hf(path, *, dtype=None, param_dtype=None) -> tuple[T5, T5Config]:
  """(model, config) from a Hugging Face T5/ByT5 directory or Hub name; the model is in eval mode.

  dtype / param_dtype (compute / storage) override the config's float32 defaults; weights are
  cast to param_dtype. Errors name missing, unexpected and mis-shaped tensors.
  """
  directory = _resolve(path)
  hf = _read_config(directory)
  config_from_hf(hf)  # fail on an unsupported architecture before touching the weights
  with contextlib.ExitStack() as stack:
    tensors = _Tensors(_shard_files(directory), stack)

    # -- LM head and embedding copies (see the module docstring) --
    tie_flag = hf.get("tie_word_embeddings", True) is not False
    scale = bool(hf.get("scale_decoder_outputs", tie_flag))
    ignored = {n for n in _NEVER_USED if n in tensors}
    if "shared.weight" not in tensors:  # transformers 5 may keep only a tied copy
      copies = [n for n in _EMBED_COPIES if n in tensors]
      if copies:
        tensors.alias("shared.weight", copies[0])
    bad = [n for n in _EMBED_COPIES if n in tensors and not tensors.same(n, "shared.weight")]
    if bad:
      raise ValueError(f"{directory}: {bad} differ from shared.weight; bytelm's T5 shares one "
                       "embedding between encoder, decoder and (when tied) the LM head")
    ignored |= {n for n in _EMBED_COPIES if n in tensors}
    has_head = "lm_head.weight" in tensors
    if has_head and tie_flag and "shared.weight" in tensors and tensors.same(
        "lm_head.weight", "shared.weight"):
      has_head, ignored = False, ignored | {"lm_head.weight"}  # a stored copy of the tied head
    if has_head and scale:
      raise NotImplementedError(
          f"{directory}: an lm_head.weight separate from shared.weight, yet config.json asks to "
          "scale the decoder output by d_model**-0.5 (tie_word_embeddings / scale_decoder_outputs "
          "true); bytelm's T5 rescales only a tied head. Set scale_decoder_outputs to false if "
          "the checkpoint is a T5.1.1 / ByT5")
    head_is_embedding_copy = not has_head and tie_flag and not scale
    config = config_from_hf(hf, tie_word_embeddings=not has_head and tie_flag and scale,
                            dtype=dtype, param_dtype=param_dtype)

    # -- names and shapes --
    names = param_names(config)
    if head_is_embedding_copy:
      del names["lm_head.weight"]
    abstract = nnx.eval_shape(lambda: T5(config, rngs=nnx.Rngs(0)))
    want = {path: tuple(p.shape) for path, p in _params(abstract)}
    expected = {hf_name: want[ours][::-1] if transpose else want[ours]
                for hf_name, (ours, transpose) in names.items()}
    _check(directory, expected, {n: s for n, s in tensors.shapes.items() if n not in ignored})

    # -- fill the abstract model, one tensor in memory at a time --
    source = {ours: (hf_name, transpose) for hf_name, (ours, transpose) in names.items()}
    if head_is_embedding_copy:
      source[("lm_head", "kernel")] = ("shared.weight", True)
    for path, param in _params(abstract):
      hf_name, transpose = source.pop(path)
      array = tensors[hf_name]
      param.set_value(jnp.asarray(array.T if transpose else array, config.storage_dtype))
    assert not source, f"load_hf filled no parameter at {sorted(source)}"
  nnx.reseed(abstract, default=0)  # the dropout streams: concrete keys for the abstract ones
  leftover = [p for p, v in nnx.iter_graph(abstract)
              if isinstance(v, nnx.Variable) and isinstance(v.get_value(), jax.ShapeDtypeStruct)]
  assert not leftover, f"load_hf left abstract state in the model: {leftover}"
  abstract.eval()  # like HF's from_pretrained: dropout off until model.train()
  return abstract, config


def _params(model: nnx.Module):
  return [(path, v) for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)]


def _check(directory, expected: dict[str, tuple], found: dict[str, tuple]) -> None:
  """Raise one error listing every missing, unexpected and mis-shaped tensor."""
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  mismatched = sorted(n for n in set(expected) & set(found) if expected[n] != found[n])
  if not (missing or unexpected or mismatched):
    return
  lines = [f"{directory}: the weights do not match config.json's T5 shape"]
  lines += [f"  missing     {n} {list(expected[n])}" for n in missing]
  lines += [f"  unexpected  {n} {list(found[n])}" for n in unexpected]
  lines += [f"  wrong shape {n}: file {list(found[n])}, expected {list(expected[n])}"
            for n in mismatched]
  raise ValueError("\n".join(lines))


# ---- save ----------------------------------------------------------------------------------------

# Fields that change what the model computes; save_hf insists model.config agrees on them.
_ARCH_FIELDS = tuple(f.name for f in dataclasses.fields(T5Config)
                     if f.name not in T5Config.RUNTIME_FIELDS + ("param_dtype",))


def save_hf(model: T5, config: T5Config, path) -> pathlib.Path:
  """Write config.json + model.safetensors that HF's `T5ForConditionalGeneration` loads.

  Files are written to a temporary directory beside `path` and renamed into place, so a failure
  never leaves a half-written checkpoint. Returns the directory.
  """
  if not isinstance(model, T5):
    raise TypeError(f"save_hf saves bytelm.models.t5.T5 models, got {type(model).__name__}")
  differ = [f for f in _ARCH_FIELDS if getattr(config, f) != getattr(model.config, f)]
  if differ:
    raise ValueError("config disagrees with model.config on " + ", ".join(
        f"{f} ({getattr(config, f)!r} vs {getattr(model.config, f)!r})" for f in differ))
  hf_config = config_to_hf(config)

  ours = {p: v for p, v in _params(model)}
  names = param_names(config)
  tensors = {}
  for hf_name, (p, transpose) in names.items():
    array = np.asarray(ours.pop(p)[...])  # bfloat16 stays bfloat16 (ml_dtypes)
    tensors[hf_name] = np.ascontiguousarray(array.T if transpose else array)
  assert not ours, f"save_hf has no Hugging Face name for {sorted(ours)}"

  target = pathlib.Path(path).expanduser()
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()  # not tempfile.mkdtemp: that one is private (0700) and would stay so after the rename
  try:
    # metadata format=pt: transformers refuses safetensors files without it.
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    if not target.exists():
      os.replace(tmp, target)
    else:  # an existing directory: replace our two files, leave anything else alone
      for name in (WEIGHTS, "config.json"):
        os.replace(tmp / name, target / name)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target
