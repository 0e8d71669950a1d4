"""Reading a config file (configs/*.py) by path, for configs built on another one and for eval/."""

import importlib.util
import pathlib

import ml_collections


def load(path, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at path (configs/ is not a package, so by path)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no config file at {path}")
  spec = importlib.util.spec_from_file_location(f"_bytelm_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def check_variant(arg: str | None, variants, path) -> str:
  """The variant `arg` names ("default" for none), or a ValueError listing the config file's
  variants (a config's VARIANTS, "default" being the config without one)."""
  variant = arg or "default"
  if variant not in variants:
    names = ", ".join(repr(v) for v in variants if v != "default")
    raise ValueError(f"unknown variant {variant!r} of configs/{pathlib.Path(path).name}; it has "
                     f"{names} (--config configs/{pathlib.Path(path).name}:VARIANT), or none")
  return variant
