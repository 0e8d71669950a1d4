"""bytelm-train: train a model, as `python train.py` does (train.py calls main).

  bytelm-train --config mrt5 [--workdir DIR] [--config.model.target_deletion=0.3]
  bytelm-train --config byt5:tiny --config.train.steps=5
  bytelm-train --config my_configs/big.py:variant

--config takes a config file (path[:variant]), read relative to the working directory, or, where
no such file exists, the name of a recipe packaged with bytelm (`bytelm.configs`: the files of
the checkout's configs/), with or without `.py`.
"""

import importlib.util
import logging
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bytelm.runs import lock as lock_lib
from bytelm.runs import workdir as workdir_lib
from bytelm.training import train_and_evaluate

FLAGS = flags.FLAGS


def packaged_configs() -> pathlib.Path:
  """The directory of the packaged recipes: bytelm.configs where bytelm is installed, else (a
  checkout run in place, not installed) the checkout's configs/."""
  spec = importlib.util.find_spec("bytelm.configs")
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(list(spec.submodule_search_locations)[0])
  return pathlib.Path(__file__).resolve().parents[2] / "configs"


def packaged_names() -> list[str]:
  return sorted(p.stem for p in packaged_configs().glob("*.py") if not p.stem.startswith("_"))


def resolve_config(value: str) -> str:
  """--config's value as a file path ml_collections can read: a file relative to the working
  directory as given; else a packaged recipe's file (`mrt5`, `mrt5.py`; `:variant` kept)."""
  path, sep, variant = value.partition(":")
  if pathlib.Path(path).is_file():
    return value
  name = path.removesuffix(".py")
  if name in packaged_names():
    return f"{packaged_configs() / (name + '.py')}{sep}{variant}"
  raise ValueError(f"--config {value}: no file {path} in the working directory, and no "
                   f"packaged config named {name!r}; give a config file's path, or one of "
                   f"{', '.join(packaged_names())} (optionally :variant, e.g. byt5:tiny)")


def resolve_argv(argv: list[str]) -> list[str]:
  """argv with each --config value (`--config X` or `--config=X`) resolved by resolve_config;
  --config.field overrides pass as they are."""
  out, i = list(argv), 1
  while i < len(out):
    if out[i] in ("--config", "-config") and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
      i += 1
    elif out[i].startswith(("--config=", "-config=")):
      flag, value = out[i].split("=", 1)
      out[i] = f"{flag}={resolve_config(value)}"
    i += 1
  return out


def _define_flags():
  if "config" in FLAGS:  # main() called again in one process (tests)
    return
  config_flags.DEFINE_config_file(
      "config", None, "Config file (configs/byt5.py[:variant]) or a packaged recipe's name "
      "(byt5[:variant]).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and config.json go "
                      "(default: workdirs/<config name>[-<variant>][-<hash of the --config "
                      "overrides>]). A workdir holding a run of the same config is resumed; one "
                      "of another config is refused.")
  flags.mark_flags_as_required(["config"])


def _train(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Our progress at INFO; the libraries' (orbax logs every file it writes) at WARNING.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("bytelm").setLevel(logging.INFO)
  workdir = FLAGS.workdir or workdir_lib.default_workdir(
      config_flags.get_config_filename(FLAGS["config"]),
      config_flags.get_override_values(FLAGS["config"]))
  print(f"workdir: {workdir}", flush=True)
  try:
    summary = train_and_evaluate(FLAGS.config, workdir)
  except (workdir_lib.ConfigMismatch, lock_lib.WorkdirLocked) as e:  # refused; nothing written
    sys.exit(f"{pathlib.Path(sys.argv[0]).name}: error: {e}")
  print(summary)
  if summary.stop_signal:  # saved and stopped on a signal: exit as the signal's default would
    sys.exit(128 + summary.stop_signal)  # 143 for SIGTERM, 130 for Ctrl-C; rerun to resume


def main(argv: list[str] | None = None):
  """Parse the flags (a packaged config's name resolved to its file first) and train."""
  argv = list(sys.argv if argv is None else argv)
  try:
    argv = resolve_argv(argv)
  except ValueError as e:
    print(f"{pathlib.Path(argv[0]).name}: error: {e}", file=sys.stderr)
    sys.exit(2)
  _define_flags()
  app.run(_train, argv=argv)


if __name__ == "__main__":
  main()
