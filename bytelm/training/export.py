"""A trained model as a small, self-contained directory: config.json + model.safetensors.

A workdir's checkpoint also holds the optimizer state (Adam: two more copies of every weight),
and orbax's layout is made for resuming, not for shipping. An export keeps only the model's
state, its floating-point parameters in bfloat16 by default (a sixth of an AdamW checkpoint:
2 bytes per parameter instead of 3 x 4), and the run's config.json, so `bytelm.load_module(export_dir)`
rebuilds the same model. safetensors, not pickle: loading never runs code from the file.

Made by `python export.py WORKDIR OUT_DIR`.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.flax import load_file, save_file

from bytelm.quant.convert import quantization_of

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_SAVED = nnx.Not(nnx.RngState)  # dropout keys are not part of a trained model


def is_export(path) -> bool:
  path = pathlib.Path(path)
  return (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def _key(path) -> str:
  return "/".join(str(p) for p in path)


def export(model: nnx.Module, config: dict, directory, dtype: str = "bfloat16",
           extra: dict | None = None) -> pathlib.Path:
  """Write `model` and its run config (a workdir's config.json, as a dict) to `directory`.

  dtype: what floating-point parameters are stored as ("bfloat16", "float32"); other state
  (integers, controller state, the integer weights of a `bytelm.quant.quantize`d model, whose
  settings config.json records under export.quantized) is stored as it is. extra: JSON-able notes kept in config.json
  under "export" (e.g. the command and commit that trained it). The directory is written
  next to itself and renamed into place, so a failed export leaves nothing half-written.
  """
  directory = pathlib.Path(directory)
  arrays = {}
  for path, value in nnx.to_flat_state(nnx.state(model, _SAVED)):
    array = jnp.asarray(value.get_value() if hasattr(value, "get_value") else value)
    if isinstance(value, nnx.Param) and jnp.issubdtype(array.dtype, jnp.floating):
      array = array.astype(dtype)
    arrays[_key(path)] = array
  notes = dict(extra or {}, stored_dtype=dtype)
  quantized = quantization_of(model)
  if quantized:
    notes["quantized"] = quantized
  saved = dict(config, export=notes)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
  try:
    save_file(arrays, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(saved, indent=2, sort_keys=True, ensure_ascii=False)
                              + "\n", encoding="utf-8")
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
    for path in tmp.iterdir():
      os.chmod(path, 0o644)
    if directory.exists():
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def restore(model: nnx.Module, directory) -> nnx.Module:
  """Fill `model` (built from the export's config) with the exported state, in the model's own
  dtypes; names any array the file lacks or that has the wrong shape."""
  arrays = load_file(str(pathlib.Path(directory) / WEIGHTS))
  flat = []
  for path, value in nnx.to_flat_state(nnx.state(model, _SAVED)):
    key = _key(path)
    current = value.get_value() if hasattr(value, "get_value") else value
    if key not in arrays:
      raise ValueError(f"{directory}/{WEIGHTS} has no array {key!r}: it was exported from "
                       "another model or version; export it again")
    array = arrays[key]
    if tuple(array.shape) != tuple(np.shape(current)):
      raise ValueError(f"{directory}/{WEIGHTS}: {key!r} has shape {tuple(array.shape)}, the "
                       f"model expects {tuple(np.shape(current))}; the config.json beside it "
                       "does not match the weights")
    flat.append((path, jnp.asarray(array, jnp.asarray(current).dtype)))
  nnx.update(model, nnx.from_flat_state(flat))
  return model

