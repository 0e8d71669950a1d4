"""Reusing a finished run: train a config into a workdir unless the workdir already holds it.

A benchmark (eval/) trains its models and then measures them; run again, it measures the same
runs without training them again, and an interrupted run resumes from its checkpoint. What a
finished run reported comes from its metrics.jsonl (`last_evaluation`), so a reused run reports
what it reported when it was trained.
"""

from __future__ import annotations

import json
import logging
import pathlib
import signal

from bytelm.runs import workdir as workdir_lib
from bytelm.training import model_init, trainer

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
  """Training was stopped by a signal (SIGTERM, Ctrl-C) before it finished; its checkpoint is
  saved, and calling again resumes it."""

  def __init__(self, workdir: pathlib.Path, summary: trainer.Summary):
    self.signum = summary.stop_signal
    super().__init__(f"training in {workdir} was stopped by "
                     f"{signal.Signals(self.signum).name} at step {summary.steps}; its "
                     "checkpoint is saved: run the same command again to resume")


def train_unless_finished(config, workdir) -> pathlib.Path:
  """workdir, after training `config` into it with `train_and_evaluate`, unless it already holds
  the finished run of this config (then nothing is written). An interrupted run resumes, as
  `train_and_evaluate` does; a run of another config is refused (`runs.workdir.ConfigMismatch`),
  finished or not. Raises TrainingStopped when a signal stops the training."""
  workdir = pathlib.Path(workdir).expanduser()
  steps = config.train.steps
  if workdir_lib.evaluated_at(workdir, steps):
    # Only this config's own run is reused, the same check a resume makes: a run of more steps
    # was trained on another schedule, so it is not this config's run cut short.
    workdir_lib.check_compatible(workdir, workdir_lib.read_config(workdir),
                                 model_init.resolved(config))
    log.info("reusing the run in %s: it was evaluated at step %d or later", workdir, steps)
    return workdir
  log.info("training %s to step %d", workdir, steps)
  summary = trainer.train_and_evaluate(config, workdir)
  if summary.interrupted:
    raise TrainingStopped(workdir, summary)
  return workdir


def finished_steps(workdir) -> int | None:
  """The steps of the run in workdir if it finished (was evaluated at its config's
  train.steps); None where workdir holds no run or an unfinished one. A benchmark that sizes
  its runs by a measured budget reuses a finished run at the steps it has."""
  workdir = pathlib.Path(workdir).expanduser()
  if not (workdir / "config.json").is_file():
    return None
  steps = int(workdir_lib.read_config(workdir)["train"]["steps"])
  return steps if workdir_lib.evaluated_at(workdir, steps) else None


def last_evaluation(workdir) -> dict:
  """What the run in workdir reported at its last evaluation: every metrics.jsonl record of that
  step except the training log's, merged (val_loss, val_bpb, the family's extra metrics and its
  end-of-training report, e.g. MrT5's hard_val_loss), with "step"."""
  path = pathlib.Path(workdir).expanduser() / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist: {workdir} holds no run yet (train it "
                            "first, e.g. with train_unless_finished)")
  records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
  evaluated = [r["step"] for r in records if "val_bpb" in r]
  if not evaluated:
    raise ValueError(f"{path} holds no evaluation yet: the run stopped before its first; "
                     "train it to the end, then measure it")
  step, out = max(evaluated), {}
  for r in records:
    if r["step"] == step and "bits_per_byte" not in r:  # the training log row has that key
      out.update(r)
  return out
