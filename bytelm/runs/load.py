"""The model of a workdir's newest checkpoint, or of an export, ready for inference.

Only the model is read: a checkpoint also holds the optimizer's state (Adam: two more copies of
every weight), which inference does not need, so the model's subtree is restored alone and no
optimizer is built (building one would also need the run's schedule and optimizer code).
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib

from flax import nnx

from bytelm import models
from bytelm.quant import convert as quant_convert
from bytelm.runs import export as export_lib
from bytelm.runs import workdir as workdir_lib


def load(path, **runtime) -> nnx.Module:
  """The model of the newest readable checkpoint in a bytelm workdir, or of an export.

  The family (T5, MrT5, ...) and its config come from config.json; the directory is only read.
  Keyword arguments override the config's runtime fields (those a checkpoint does not depend
  on, e.g. `dtype`, or MrT5's `bucket_multiple`).
  """
  path = pathlib.Path(path).expanduser()
  saved = workdir_lib.read_config(path)
  exported = export_lib.is_export(path)
  if exported:  # before building the model: a missing file fails at once
    export_lib.check_complete(path, saved)
  model = _model(saved, path, runtime)
  if exported:
    quantized = saved.get("export", {}).get("quantized")
    if quantized:  # the same integer structure, then its arrays
      model = quant_convert.quantize(model, **quantized)
    model = export_lib.restore(model, path)
  else:
    model = _restore_model(model, path / "checkpoints")
  model.eval()
  return model


def _model(saved: dict, path: pathlib.Path, runtime: dict) -> nnx.Module:
  """A fresh model of the saved config with the runtime overrides, naming what does not fit."""
  if not isinstance(saved.get("model"), dict):
    raise ValueError(f"{path}: its {workdir_lib.CONFIG} is not a bytelm run's config: it has "
                     "no \"model\" (the model's fields, which a run's config.json holds beside "
                     "model_family and data). Give a bytelm workdir or export, or a Hugging "
                     "Face ByT5 directory")
  try:
    family = models.family(saved.get("model_family", "t5"))
  except ValueError as e:
    raise ValueError(f"{path / workdir_lib.CONFIG}: {e}") from None
  fields = [f.name for f in dataclasses.fields(family.config_cls)]
  unknown = sorted(set(saved["model"]) - set(fields))
  if unknown:
    raise ValueError(f"{path / workdir_lib.CONFIG} names model fields this version of bytelm "
                     f"does not have: {', '.join(unknown)}. The run was made by another version; "
                     "load it with that version (nothing was changed).")
  runtime_fields = family.config_cls.RUNTIME_FIELDS
  no_field = sorted(set(runtime) - set(fields))
  if no_field:
    guesses = sorted({g for n in no_field for g in difflib.get_close_matches(n, runtime_fields)})
    hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    raise TypeError(f"load({path}): unknown keyword {', '.join(no_field)}: a "
                    f"{family.config_cls.__name__} has no such field{hint}; the fields load "
                    f"can override: {', '.join(runtime_fields)}")
  fixed = sorted(set(runtime) - set(runtime_fields))
  if fixed:
    raise ValueError(f"load({path}): {', '.join(fixed)} cannot be overridden at load (the "
                     f"checkpoint depends on them); runtime fields: {', '.join(runtime_fields)}")
  return family.model_cls(family.config_cls(**{**saved["model"], **runtime}), rngs=nnx.Rngs(0))


def _restore_model(model: nnx.Module, directory: pathlib.Path) -> nnx.Module:
  """model with the arrays of the newest readable checkpoint under directory."""
  from bytelm.runs import checkpoint as ckpt_lib  # orbax: only when a checkpoint is read

  if not directory.is_dir():  # checked here: the checkpointer would create it
    raise FileNotFoundError(f"{directory} does not exist: {directory.parent} holds no "
                            "checkpoint (train into it, or give an export)")
  # The trainer saves nnx.state((model, optimizer)): the model is subtree 0.
  graphdef, state = nnx.split((model,))
  with ckpt_lib.Checkpointer(directory, keep=1_000_000, async_save=False) as ckpt:
    restored = ckpt.restore_latest(ckpt_lib.abstract_like(state), check_meta=lambda meta: None,
                                   set_aside=False, partial=True)
  if restored is None:
    raise FileNotFoundError(f"{directory} holds no checkpoint yet")
  (model,) = nnx.merge(graphdef, restored[1])
  return model
