"""bytelm-train: train a model, as `python train.py` does (train.py calls main).

  bytelm-train --config mrt5 [--workdir DIR] [--config.model.target_deletion=0.3]
  bytelm-train --config byt5:tiny --config.train.steps=5
  bytelm-train --config my_configs/big.py:variant

--config takes a config file (path[:variant]), read relative to the working directory, or, where
no such file exists, the name of a recipe packaged with bytelm (`bytelm.configs`: the files of
the checkout's configs/), with or without `.py` and `configs/`: `configs/mrt5.py:tiny`, as the
README writes it, works from any directory.

A mistake in the command (a mistyped config key, data that cannot be read, a workdir that holds
another run) is one line and exit status 2; --debug shows the traceback (bytelm/console.py).
"""

import difflib
import importlib.util
import pathlib
import sys

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bytelm import console
from bytelm.runs import workdir as workdir_lib
from bytelm.training import config_file, train_and_evaluate

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
  if pathlib.Path(name).parent.name == "configs":  # the checkout's configs/, from elsewhere
    name = pathlib.Path(name).name
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
  flags.DEFINE_bool("debug", False, console.DEBUG_HELP)
  flags.mark_flags_as_required(["config"])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, its errors (an unknown flag or config key, a value of the wrong type,
  a config file that fails to load) as one line and exit status 2."""
  try:
    return FLAGS(argv)
  except Exception as e:  # noqa: BLE001  (every parse error is the command's; --debug shows it)
    if console.debugging(argv):
      raise
    console.fail(_prog(argv), _explain(argv) or console.one_line(e))


def _explain(argv: list[str]) -> str | None:
  """What is wrong with the command's --config: none given, a file that fails to load (an
  unknown variant), or an override naming no field of the config (with the nearest field's
  name). None where none of these is the problem."""
  spec = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-config")),
              None) or next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
                            None)
  if spec is None:
    return ("--config is required: a config file or a packaged recipe, e.g. --config "
            f"configs/mrt5.py, --config mrt5:tiny (recipes: {', '.join(packaged_names())})")
  path, _, variant = spec.partition(":")
  try:
    config = config_file.load(path, variant or None)
  except Exception as e:  # noqa: BLE001  (the config file's own error, e.g. an unknown variant)
    return f"--config {spec}: {console.one_line(e)}"
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    field = arg.removeprefix("--config.").split("=", 1)[0]
    node, done = config, []
    for part in field.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(done) or "the config"
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        near = difflib.get_close_matches(part, known, n=1)
        hint = (f"did you mean --config.{'.'.join(done + near)}?" if near else
                f"{where} has: {', '.join(sorted(known))}" if known else
                f"{where} is a value, not a group of fields")
        return f"--config.{field}: {spec} has no field {'.'.join(done + [part])}; {hint}"
      node = node[part]
      done.append(part)
  return None


def _prog(argv: list[str]) -> str:
  return pathlib.Path(argv[0]).name if argv else "bytelm-train"


def _train(argv):
  prog = _prog(argv)
  if len(argv) > 1:
    console.fail(prog, f"unexpected arguments {argv[1:]}; settings are flags, e.g. "
                       "--config.train.steps=5 (see --help)")
  # Our progress and log lines plain; the libraries' (orbax logs every file it writes) at
  # WARNING.
  absl_logging.set_verbosity(absl_logging.WARNING)
  console.plain_logging()
  workdir = FLAGS.workdir or workdir_lib.default_workdir(
      config_flags.get_config_filename(FLAGS["config"]),
      config_flags.get_override_values(FLAGS["config"]))
  print(f"workdir: {workdir}", flush=True)
  with console.reported(prog, FLAGS.debug or console.debugging()):
    summary = train_and_evaluate(FLAGS.config, workdir)
  print(summary)
  if summary.stop_signal:  # saved and stopped on a signal: exit as the signal's default would
    sys.exit(128 + summary.stop_signal)  # 143 for SIGTERM, 130 for Ctrl-C; rerun to resume


def main(argv: list[str] | None = None):
  """Parse the flags (a packaged config's name resolved to its file first) and train."""
  argv = list(sys.argv if argv is None else argv)
  try:
    argv = resolve_argv(argv)
  except ValueError as e:
    console.fail(_prog(argv), str(e))
  _define_flags()
  app.run(_train, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
