"""A run's workdir: its config.json, its default name, and whether a config may resume it.

A workdir holds one run. Training into a workdir that holds a run resumes it, which is right
only when the requested config is the run's own: a changed model, data, objective, optimizer,
seed or budget would continue another run's checkpoint under a config.json that no longer says
what trained it. So `check_resume` compares the workdir's config.json with the requested config
before anything is written, and only the fields in SAFE_TO_CHANGE may differ. The default
workdir (`default_workdir`) names the config's variant and a hash of its command-line
overrides, so that a changed run lands in a directory of its own.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Iterator, Mapping

from bytelm.runs import lock as lock_lib

CONFIG = "config.json"
ROOT = "workdirs"  # where default workdirs go, relative to the current directory

# The only fields a resumed run may change: none of them changes a step's arithmetic or what
# a logged number measures. Everything else (model fields, the runtime ones such as MrT5's
# target_deletion included; data; objective; optimizer values; seed; batch_size; steps;
# eval_batches, whose change would make later validation numbers measure other bytes than
# earlier ones) must equal the run's. Patterns as fnmatch's ("mesh.*").
SAFE_TO_CHANGE = (
    "resume",  # what to do with a workdir that holds a run, not part of the run
    "train.log_every",  # how often the training loss is logged
    "train.eval_every",  # how often the (same) validation batches are scored
    "train.prefetch",  # how far ahead batches are built: the same batches either way
    # How many of the same steps one compiled call runs (lax.scan): XLA may fuse the loop's
    # body otherwise than the single step, so the sums can differ in the last float bits only.
    "train.steps_per_call",
    "ckpt.every",  # how often a checkpoint is saved
    "ckpt.keep",  # how many are kept
    "mesh.*",  # how the devices share each step: the same step, summed in another order
    "distributed.*",  # which processes run it: a restart may come up on other hosts and ports
    "model.remat",  # recompute blocks in the backward pass: memory for time, same gradients
    "model.attention_kernel",  # who computes attention: the same numbers up to float rounding
)


# Fields added to the configs after runs were made with them: a stored config without one ran
# as this value, so a run of that value resumes it.
IMPLIED_BEFORE = {
    "data.invalid_utf8": "error",  # text that was not UTF-8 stopped the run
    "train.steps_per_call": 1,  # one optimizer step per compiled call
    "model.attention_kernel": "bytelm",  # nn.attention_kernel.attention
}


class ConfigMismatch(ValueError):
  """The workdir holds a run of another config: resuming it would continue another run."""


class WorkdirNotEmpty(ConfigMismatch):
  """config.resume is false and the workdir already holds something."""


def is_safe_to_change(field: str) -> bool:
  """Whether `field` (dotted, e.g. "train.log_every") may differ on resume (SAFE_TO_CHANGE)."""
  # "section." too: a section safe to change as a whole may also be absent from one side (the
  # config.json of a run made before the section existed, "distributed" say).
  return any(fnmatch.fnmatchcase(field, pattern) or fnmatch.fnmatchcase(field + ".", pattern)
             for pattern in SAFE_TO_CHANGE)


@contextlib.contextmanager
def made(workdir) -> Iterator[pathlib.Path]:
  """`with made(workdir) as path:` the workdir, made (with its missing parents) if it does not
  exist. If the body fails before anything but the lock was written into a workdir made here,
  the directories made here are removed again, so a run that could not start leaves no empty
  workdir behind; a directory that existed, or holds anything, is never removed.

  Raises NotADirectoryError where workdir (or a parent) is a file."""
  workdir = pathlib.Path(workdir).expanduser().absolute()
  blocking = next((p for p in [workdir, *workdir.parents] if p.exists() and not p.is_dir()),
                  None)
  if blocking is not None:
    raise NotADirectoryError(f"the workdir {workdir} cannot be made: {blocking} is a file. "
                             "Give --workdir a directory (a new one, or the workdir of the run "
                             "to resume); nothing was changed.")
  new = [p for p in [workdir, *workdir.parents] if not p.exists()]  # deepest first
  workdir.mkdir(parents=True, exist_ok=True)
  try:
    yield workdir
  except BaseException:
    if new and not holds_run(workdir):
      (workdir / lock_lib.FILENAME).unlink(missing_ok=True)
      for directory in new:
        try:
          directory.rmdir()  # only if empty: never anything a user or a run put there
        except OSError:
          break
    raise


# ---- config.json ----------------------------------------------------------------------------------


def read_config(directory) -> dict:
  """The config.json of a workdir or export (or of a Hugging Face model directory)."""
  directory = pathlib.Path(directory).expanduser()
  config_path = directory / CONFIG
  if not directory.exists():
    where = "" if directory.is_absolute() else f" (from {pathlib.Path.cwd()})"
    raise FileNotFoundError(f"{directory} does not exist{where}; give the path of a bytelm "
                            "workdir or export, or of a Hugging Face ByT5 directory")
  if not config_path.is_file():
    raise FileNotFoundError(f"{directory} is not a bytelm workdir: it has no {CONFIG} "
                            "(train into it with `python train.py --config ... --workdir DIR`, "
                            "or give an export or a Hugging Face ByT5 directory)")
  return json.loads(config_path.read_text(encoding="utf-8"))


def write_config(workdir, config: Mapping) -> None:
  """Write config.json atomically: a reader (or a crash) sees the old file or the new one."""
  path = pathlib.Path(workdir) / CONFIG
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def evaluated_at(workdir, steps: int) -> bool:
  """Whether the run in workdir was evaluated at step `steps` or later: a run finished at
  `steps` (eval scripts reuse it rather than train again)."""
  metrics = pathlib.Path(workdir) / "metrics.jsonl"
  if not metrics.exists():
    return False
  records = map(json.loads, metrics.read_text(encoding="utf-8").splitlines())
  return any("val_bpb" in r and r["step"] >= steps for r in records)


# ---- the default workdir --------------------------------------------------------------------------


def default_workdir(config_spec: str, overrides: Mapping | None = None) -> pathlib.Path:
  """workdirs/<config>[-<variant>][-<hash of the overrides>] for `--config config_spec`
  ("configs/mrt5.py:tiny", or "mrt5:tiny") with command-line overrides {field: value}.

  configs/mrt5.py -> workdirs/mrt5; configs/mrt5.py:tiny -> workdirs/mrt5-tiny; with
  --config.model.target_deletion=0.3 -> workdirs/mrt5-<6 hex digits>, the same digits for
  the same overrides in any order. Overrides of SAFE_TO_CHANGE fields do not count: they may
  change on resume, so they keep the run's workdir.
  """
  path, variant = config_spec, ""
  if ":" in pathlib.Path(config_spec).name:
    path, variant = config_spec.rsplit(":", 1)
  name = pathlib.Path(path).name.removesuffix(".py")
  if variant:
    name += "-" + variant
  counted = {k: v for k, v in (overrides or {}).items() if not is_safe_to_change(k)}
  if counted:
    text = json.dumps(sorted(counted.items()), default=str)
    name += "-" + hashlib.sha256(text.encode()).hexdigest()[:6]
  return pathlib.Path(ROOT) / re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


# ---- may this config go into this workdir? --------------------------------------------------------


def holds_run(workdir) -> bool:
  """Whether workdir holds anything but a lock file (a run, or anything else of the user's)."""
  workdir = pathlib.Path(workdir)
  return workdir.is_dir() and any(p.name != lock_lib.FILENAME for p in workdir.iterdir())


def differences(stored: Mapping, requested: Mapping, prefix: str = "") -> list[tuple[str, object,
                                                                                      object]]:
  """(field, stored value, requested value) of every field that differs and is not safe to
  change; a field absent from one side is "<absent>" there."""
  out = []
  for key in sorted(set(stored) | set(requested)):
    a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
    a = IMPLIED_BEFORE.get(prefix + key, a) if a == "<absent>" else a
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += differences(a, b, f"{prefix}{key}.")
    elif (json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str)
          and not is_safe_to_change(prefix + key)):
      out.append((prefix + key, a, b))
  return out


def check_resume(workdir, requested: Mapping, ignore: tuple[str, ...] = ()) -> None:
  """Raise ConfigMismatch unless a run of `requested` (a resolved config as a dict) may train
  into workdir: an empty workdir, or one whose config.json is the same run's (up to
  SAFE_TO_CHANGE), which it then resumes. With requested["resume"] false, a workdir that holds
  anything is refused outright (WorkdirNotEmpty); nothing is ever deleted.

  Called before anything is written, so a refused run leaves the workdir as it was. ignore:
  fields (patterns) not known yet: with init_from, the model's architecture comes from the
  source, which is read later; check_compatible with the checkpoint's config then covers them.
  """
  workdir = pathlib.Path(workdir)
  if not requested.get("resume", True) and holds_run(workdir):
    what = "a run" if (workdir / CONFIG).exists() else "files"
    raise WorkdirNotEmpty(
        f"{workdir} already holds {what}, and resume=false asks for a new run, not to resume "
        f"one. Train into another --workdir, or delete {workdir} yourself if what it holds is "
        "not wanted; nothing was changed.")
  if (workdir / CONFIG).is_file():
    check_compatible(workdir, read_config(workdir), requested, ignore)


def check_compatible(workdir, stored: Mapping, requested: Mapping,
                     ignore: tuple[str, ...] = ()) -> None:
  """Raise ConfigMismatch naming every field (but SAFE_TO_CHANGE and ignore) in which the
  config of the run in workdir (`stored`) and the requested one differ, with both values."""
  diff = [d for d in differences(stored, requested)
          if not any(fnmatch.fnmatchcase(d[0], p) for p in ignore)]
  if not diff:
    return
  lines = "\n".join(f"  {field}: the workdir's run has {a!r}, this config {b!r}"
                    for field, a, b in diff)
  if [field for field, _, _ in diff] == ["train.steps"]:
    raise ConfigMismatch(
        f"{workdir} holds a run of {stored['train']['steps']} steps, and train.steps cannot "
        f"change on resume (the learning-rate schedule and the weight-decay cut-off are built "
        f"from it):\n{lines}\nTo train on, start a new run from this one's model: "
        f"--config.init_from={workdir} --workdir=<another directory> (its parameters, with a "
        "fresh optimizer and schedule); nothing was changed.")
  raise ConfigMismatch(
      f"{workdir} holds a run of another config, so it cannot resume with this one:\n{lines}"
      "\nTrain into another --workdir (by default each variant and set of --config overrides "
      "gets its own), or give the run's own config to resume it (--config.resume=false "
      "refuses any workdir that holds a run, instead of resuming it). Fields that may change "
      f"on resume: {', '.join(SAFE_TO_CHANGE)}. Nothing was changed.")
