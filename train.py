"""Train a bytelm model: python train.py --config configs/byt5.py [--workdir DIR] [--config.x=y]."""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from bytelm.runs import lock as lock_lib
from bytelm.runs import workdir as workdir_lib
from bytelm.training import train_and_evaluate

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/byt5.py[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and config.json go "
                    "(default: workdirs/<config name>[-<variant>][-<hash of the --config "
                    "overrides>]). A workdir holding a run of the same config is resumed; one "
                    "of another config is refused.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
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
    sys.exit(f"train.py: error: {e}")
  print(summary)
  if summary.stop_signal:  # saved and stopped on a signal: exit as the signal's default would
    sys.exit(128 + summary.stop_signal)  # 143 for SIGTERM, 130 for Ctrl-C; rerun to resume


if __name__ == "__main__":
  app.run(main)
