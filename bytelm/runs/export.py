"""A trained model as a small, self-contained directory: config.json + model.safetensors, and
the files its run fitted to its data (a BPE tokenizer.json, an entropy_model.npz).

A workdir's checkpoint also holds the optimizer state (Adam: two more copies of every weight),
and orbax's layout is made for resuming, not for shipping. An export keeps only the model's
state, its floating-point parameters in bfloat16 by default (a sixth of an AdamW checkpoint:
2 bytes per parameter instead of 3 x 4), the run's config.json, and the files its model reads
text with (`runs.data.fitted_files`: a BPE model's tokenizer, a BLT model's entropy segmenter),
so `bytelm.load(export_dir)` (`runs.load.load` for the module alone) rebuilds the same model
wherever the directory is moved. safetensors, not pickle: loading never runs code from the file.

Made by `bytelm-export WORKDIR OUT_DIR` (python export.py in a checkout).
"""

from __future__ import annotations

import copy
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
from bytelm.runs import data as data_lib

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_SAVED = nnx.Not(nnx.RngState)  # dropout keys are not part of a trained model
# What marks a training run's workdir (bytelm.training.trainer writes both).
_RUN_FILES = ("checkpoints", "metrics.jsonl")


def is_export(path) -> bool:
  """Whether path holds an export (its weights and config.json), not a training run."""
  path = pathlib.Path(path)
  return (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def _key(path) -> str:
  return "/".join(str(p) for p in path)


def check_destination(directory, overwrite: bool = False) -> None:
  """Raise unless an export may be written to `directory`: absent or empty; or, with
  overwrite, one whose export files (config.json, model.safetensors, a carried tokenizer or
  entropy model) may be replaced. Never a training
  run's workdir (its config.json would be lost) nor a directory above one: an export is a
  thing to ship or delete whole, and a run inside it would go with it."""
  directory = pathlib.Path(directory)
  if directory.exists() and not directory.is_dir():
    raise FileExistsError(f"{directory} is a file; export to a directory (a new or empty one)")
  if not directory.is_dir() or not any(directory.iterdir()):
    return
  # The directory itself first (cheap, and the likeliest slip), the whole tree only when it
  # is about to be written to.
  found = next((directory / n for n in _RUN_FILES if (directory / n).exists()), None)
  if found is None and overwrite:
    found = next((p for p in directory.rglob("*") if p.name in _RUN_FILES), None)
  if found is not None:
    raise FileExistsError(
        f"{directory} holds a training run ({found.parent}, with its {found.name}); an export "
        "never goes there, even with overwrite. Export to a new directory; nothing was "
        "changed.")
  if not overwrite:
    held = sorted(p.name for p in directory.iterdir())
    raise FileExistsError(
        f"{directory} is not empty ({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}). "
        f"Export to a new or empty directory, or pass overwrite=True (bytelm-export --overwrite) "
        f"to replace its {CONFIG}, {WEIGHTS} and the files the model reads text with (other "
        "files stay); nothing was changed.")


def export(model: nnx.Module, config: dict, directory, dtype: str = "bfloat16",
           extra: dict | None = None, overwrite: bool = False, *,
           source=None) -> pathlib.Path:
  """Write `model`, its run config (a workdir's config.json, as a dict) and the files the
  model reads text with to `directory`.

  dtype: what floating-point parameters are stored as ("bfloat16", "float32"); other state
  (integers, controller state, the integer weights of a `bytelm.quant.quantize`d model, whose
  settings config.json records under export.quantized) is stored as it is. extra: JSON-able
  notes kept in config.json under "export" (e.g. the command and commit that trained it).
  source: the workdir (or export) the model was loaded from, which holds what its run fitted
  to its data (`runs.data.fitted_files`: a BPE tokenizer.json, an entropy_model.npz); they are
  copied in, an entropy model the config names by path under the standard name, the saved
  config then pointing at the copy, so the export is whole wherever it is moved. Needed only
  for a config that fitted something. directory: new or empty, or, with overwrite, one whose
  export files are replaced (its other files are left alone); see `check_destination`. Files
  are written under temporary names and renamed into place, so a failed export leaves nothing
  half-written.
  """
  directory = pathlib.Path(directory)
  check_destination(directory, overwrite)
  carried = _carried(config, source)
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
  segments = (saved.get("data") or {}).get("segments") or {}
  if data_lib.ENTROPY_MODEL in carried and segments.get("entropy_model"):
    # The copy, under the standard name, is what the export's config now means: "" is "the
    # one in this directory", as in a workdir whose run fitted its own.
    notes["entropy_model_from"] = segments["entropy_model"]
    saved["data"] = copy.deepcopy(saved["data"])
    saved["data"]["segments"]["entropy_model"] = ""
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
  try:
    save_file(arrays, str(tmp / WEIGHTS))
    for name, path in carried.items():
      shutil.copyfile(path, tmp / name)
    (tmp / CONFIG).write_text(json.dumps(saved, indent=2, sort_keys=True, ensure_ascii=False)
                              + "\n", encoding="utf-8")
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
    for path in tmp.iterdir():
      os.chmod(path, 0o644)
    if directory.is_dir() and any(directory.iterdir()):  # overwrite: the export's files only
      # The weights first, config.json last: a crash between the renames leaves the old
      # config.json, which restore() then finds at odds with the new weights' shapes.
      for name in (WEIGHTS, *carried, CONFIG):
        os.replace(tmp / name, directory / name)
    else:
      os.replace(tmp, directory)  # rename(2) replaces an empty directory
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def _carried(config: dict, source) -> dict[str, pathlib.Path]:
  """{name in the export: file to copy} of what config's run fitted (runs.data.fitted_files),
  each checked to be there before anything is written."""
  try:
    files = data_lib.fitted_files(config, source)
  except ValueError as e:  # a run that fitted something, and no source
    raise ValueError(f"{e}: pass export(..., source=WORKDIR), the workdir (or export) the "
                     "model came from, and the export carries it; nothing was written") from None
  for name, path in files.items():
    if not path.is_file():
      raise FileNotFoundError(
          f"{path} is missing, and the model needs it ({name}, fitted by its run to its "
          f"training text): export from the workdir (or export) the model came from, which "
          "holds it; nothing was written")
  return files


def check_complete(directory, config: dict) -> None:
  """Raise FileNotFoundError unless the export at `directory` (config: its config.json) holds
  every file its model reads text with."""
  directory = pathlib.Path(directory)
  missing = [path.name if path.parent == directory else str(path)
             for path in data_lib.fitted_files(config, directory).values()
             if not path.is_file()]
  if missing:
    raise FileNotFoundError(
        f"{directory} is an incomplete export: it lacks {', '.join(missing)}, which its model "
        f"reads text with (its run fitted it to the training text). Export it again from the "
        f"run's workdir: bytelm-export WORKDIR {directory} --overwrite (or "
        "bytelm.runs.export.export(..., source=WORKDIR))")


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

