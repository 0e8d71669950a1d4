"""A run's model at step 0: fresh from config.model, or initialised from another model
(`config.init_from`: a Hugging Face T5/ByT5 directory or another bytelm workdir)."""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx

from bytelm import convert, models
from bytelm.runs.load import load

log = logging.getLogger(__name__)

# What init_from takes from this run's config (the family's RUNTIME_FIELDS and these two);
# everything else comes from the source checkpoint.
FROM_RUN = ("attention_softmax", "param_dtype")


def model_config(config, family):
  """The model's frozen config from config.model, naming any field the family lacks."""
  fields = {f.name for f in dataclasses.fields(family.config_cls)}
  unknown = set(config.model) - fields
  if unknown:
    raise ValueError(f"config.model has unknown fields {sorted(unknown)}; "
                     f"{family.config_cls.__name__} has {sorted(fields)}")
  return family.config_cls(**config.model.to_dict())


def resolved(config) -> dict:
  """config as config.json stores it: a dict, with every model field (the family's defaults
  filled in), so that two runs compare field by field."""
  out = config.to_dict()
  out["model"] = dataclasses.asdict(model_config(config, models.family(config.model_family)))
  return out


def from_run(model_cfg) -> tuple[str, ...]:
  """The model fields that this run's config decides even with init_from."""
  return model_cfg.RUNTIME_FIELDS + FROM_RUN


def init_model(config, family, model_cfg, rngs):
  """(model, its config): fresh, or initialised from init_from with its architecture."""
  init_from = config.init_from
  if not init_from:
    return family.model_cls(model_cfg, rngs=rngs), model_cfg
  path = pathlib.Path(init_from).expanduser()
  if (path / "checkpoints").is_dir():  # a bytelm workdir
    model = _with_config(load(path), None, family, rngs, model_cfg)
  else:  # a Hugging Face T5 / ByT5 directory (or Hub name)
    model, src_cfg = convert.load_hf(init_from, dtype=model_cfg.dtype,
                                     param_dtype=model_cfg.param_dtype)
    model = _with_config(model, src_cfg, family, rngs, model_cfg)
  new_cfg = model.config
  differ = [f for f in dataclasses.asdict(new_cfg)
            if f not in from_run(model_cfg) and getattr(new_cfg, f) != getattr(model_cfg, f)]
  if differ:
    log.warning("init_from=%s: the model's shape comes from the checkpoint; config.model's %s "
                "were ignored", init_from, differ)
  model.train()
  return model, new_cfg


def _with_config(model, src_cfg, family, rngs, model_cfg):
  """`model`'s parameters in a fresh model with the source's architecture and this run's
  runtime choices (dropout, dtypes, softmax).

  The source may be of another family: a ByT5 initialises an MrT5 (whose gate then starts
  fresh, with this run's gate fields), and an MrT5's T5 parameters initialise a ByT5.
  """
  src_cfg = src_cfg or model.config
  keep = from_run(model_cfg)
  cfg = model_cfg.replace(**{f.name: getattr(src_cfg, f.name)
                             for f in dataclasses.fields(src_cfg)
                             if f.name not in keep and hasattr(model_cfg, f.name)})
  fresh = family.model_cls(cfg, rngs=rngs)
  params = nnx.state(model, nnx.Param)
  fresh_paths = {path for path, _ in nnx.to_flat_state(nnx.state(fresh, nnx.Param))}
  shared = nnx.from_flat_state(
      [(path, v) for path, v in nnx.to_flat_state(params) if path in fresh_paths])
  nnx.update(fresh, jax.tree.map(lambda x: jnp.asarray(x, cfg.param_dtype), shared))
  return fresh
