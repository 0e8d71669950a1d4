"""bytelm.runs: a changed run gets its own default workdir, and a workdir resumes only with its
own run's config (the trainer's refusals are in test_training.py and test_mrt5.py); a workdir
is loaded without an optimizer; every config can say resume=false."""

import dataclasses
import pathlib
import re

import pytest

from bytelm import models
from bytelm.runs import workdir as workdir_lib
from bytelm.training import config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_"))


def resolved(name: str, arg: str | None = None) -> dict:
  """The config.json a run of configs/<name>.py[:arg] writes (its model config complete)."""
  c = config_file.load(ROOT / "configs" / f"{name}.py", arg)
  family = models.family(c.model_family)
  saved = c.to_dict()
  saved["model"] = dataclasses.asdict(family.config_cls(**c.model.to_dict()))
  return saved


def test_a_path_that_does_not_exist_is_named_as_such(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"nowhere does not exist; give the path of a "
                                              r"bytelm workdir or export"):
    workdir_lib.read_config(tmp_path / "nowhere")
  monkeypatch.chdir(tmp_path)  # a relative path: from where it was looked for
  with pytest.raises(FileNotFoundError, match=rf"^nowhere does not exist \(from {re.escape(str(tmp_path))}\)"):
    workdir_lib.read_config("nowhere")
  with pytest.raises(FileNotFoundError, match="is not a bytelm workdir: it has no config.json"):
    workdir_lib.read_config(tmp_path)  # there, but no run in it


def test_the_default_workdir_names_the_variant_and_the_overrides():
  name = lambda spec, overrides=None: str(workdir_lib.default_workdir(spec, overrides))
  assert name("configs/mrt5.py") == "workdirs/mrt5"  # what the README's commands use
  assert name("/abs/configs/mrt5.py:tiny") == "workdirs/mrt5-tiny"
  assert name("mrt5:tiny") == "workdirs/mrt5-tiny"  # a packaged config by name
  changed = name("configs/mrt5.py", {"model.target_deletion": 0.3})
  assert changed.startswith("workdirs/mrt5-") and len(changed) == len("workdirs/mrt5-") + 6
  # Stable: the same overrides in any order give the same name; other values another one.
  both = {"model.target_deletion": 0.3, "opt.lr": 1e-3}
  assert name("configs/mrt5.py", both) == name("configs/mrt5.py", dict(reversed(both.items())))
  names = {changed, name("configs/mrt5.py", {"model.target_deletion": 0.4}),
           name("configs/mrt5.py", both), name("configs/mrt5.py:tiny", both)}
  assert len(names) == 4
  # Overrides that may change on resume keep the run's workdir.
  assert name("configs/mrt5.py:tiny", {"train.log_every": 1, "mesh.fsdp": 2,
                                       "resume": False}) == "workdirs/mrt5-tiny"
  # Golden, the README's example: if this changes, every changed run made before loses its
  # default workdir (a rerun starts afresh elsewhere), so do not change it lightly.
  assert changed == "workdirs/mrt5-cf0b96"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_resumes_by_default_and_can_refuse(name):
  assert resolved(name, "tiny")["resume"] is True


def test_only_cadence_fields_may_change_on_resume():
  stored = resolved("mrt5", "tiny")
  safe = {"train.log_every": 7, "train.eval_every": 7, "train.prefetch": 0,
          "train.steps_per_call": 4, "ckpt.every": 7,
          "ckpt.keep": 7, "mesh.data": 2, "mesh.fsdp": 2, "model.remat": True,
          "model.attention_kernel": "xla", "resume": False,
          "distributed.coordinator_address": "10.0.0.2:4321", "distributed.num_processes": 4,
          "distributed.process_id": 3}
  for field, value in safe.items():
    assert workdir_lib.is_safe_to_change(field)
    section, _, key = field.rpartition(".")
    changed = {**stored, section: {**stored[section], key: value}} if section else {
        **stored, key: value}
    assert workdir_lib.differences(stored, changed) == [], field
  # A runtime model field, a data field, an optimizer value, evaluation's bytes, the budget.
  for field in ("model.target_deletion", "model.dropout_rate", "data.train", "opt.lr",
                "opt.warmup_steps", "train.eval_batches", "train.steps", "train.batch_size",
                "seed", "init_from", "model_family"):
    assert not workdir_lib.is_safe_to_change(field), field
  changed = {**stored, "opt": {**stored["opt"], "lr": 0.5}, "seed": 3}
  assert workdir_lib.differences(stored, changed) == [("opt.lr", stored["opt"]["lr"], 0.5),
                                                      ("seed", 0, 3)]


@pytest.mark.parametrize("name", CONFIGS)
def test_a_run_restarted_on_other_hosts_resumes(name, tmp_path):
  """config.distributed names where the processes run, not the run: a restart on other hosts
  and ports resumes, also a run whose config.json predates the field, and each process's own
  --config.distributed.process_id keeps the default workdir they all share."""
  stored = resolved(name, "tiny")
  assert stored["distributed"] == {"coordinator_address": "", "num_processes": 0,
                                   "process_id": -1}
  workdir_lib.write_config(tmp_path, stored)
  moved = {**stored, "distributed": {"coordinator_address": "10.0.0.9:1234",
                                     "num_processes": 2, "process_id": 1}}
  workdir_lib.check_resume(tmp_path, moved)
  older = {k: v for k, v in stored.items() if k != "distributed"}
  workdir_lib.write_config(tmp_path, older)
  workdir_lib.check_resume(tmp_path, moved)
  assert workdir_lib.differences(moved, older) == []
  spec = f"configs/{name}.py:tiny"
  assert workdir_lib.default_workdir(spec, {"distributed.process_id": 1}) == (
      workdir_lib.default_workdir(spec))


def test_an_empty_workdir_takes_a_run_whatever_resume_says(tmp_path):
  requested = dict(resolved("byt5", "tiny"), resume=False)
  workdir_lib.check_resume(tmp_path / "absent", requested)
  workdir_lib.check_resume(tmp_path, requested)
  (tmp_path / "lock").touch()  # a lock file alone is what a refused or ended run may leave
  workdir_lib.check_resume(tmp_path, requested)
  workdir_lib.write_config(tmp_path, requested)
  with pytest.raises(workdir_lib.WorkdirNotEmpty, match="already holds a run"):
    workdir_lib.check_resume(tmp_path, requested)
  workdir_lib.check_resume(tmp_path, dict(requested, resume=True))  # the same run: resumed


def test_a_changed_data_setting_of_any_recipe_is_named(tmp_path):
  """The correction objective's settings, the segments, the tokenizer: all part of the run."""
  for name, arg, field, value in (("diacritics", "typos", "data.typo_rate", 0.1),
                                  ("hat", "tiny", "data.segments.max_segment_bytes", 8),
                                  ("bpe_decoder", "tiny", "data.tokenizer.vocab_size", 400)):
    stored = resolved(name, arg)
    workdir = tmp_path / name
    workdir.mkdir()
    workdir_lib.write_config(workdir, stored)
    section, _, key = field.rpartition(".")
    requested = workdir_lib.read_config(workdir)
    target = requested
    for part in section.split("."):
      target = target[part]
    target[key] = value
    with pytest.raises(workdir_lib.ConfigMismatch, match=rf"{field}: the workdir's run has"):
      workdir_lib.check_resume(workdir, requested)


def test_the_budget_and_the_trainer_read_the_same_batches(tmp_path):
  """budget.train_source (the training budget's step timer) is the trainer's source: the
  correction settings reach it too."""
  from bytelm.runs import data as data_lib
  from bytelm.training import budget

  text = tmp_path / "text.txt"
  text.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog."
                            for i in range(200)), encoding="utf-8")
  c = config_file.load(ROOT / "configs" / "diacritics.py", "typos")
  c.data.train = f"file:{text}"
  c.data.input_length, c.train.batch_size = 32, 2
  inputs = {}
  for rate in (0.0, 0.5):
    c.data.typo_rate = rate
    batch = budget.train_source(c, tmp_path).batch(0)
    assert all((batch[k] == v).all()
               for k, v in data_lib.sources(c, tmp_path, ("train",))["train"].batch(0).items())
    inputs[rate] = batch["inputs"]
  assert (inputs[0.0] != inputs[0.5]).any()  # the typo rate is not dropped on the way


def test_a_run_from_before_invalid_utf8_existed_resumes_but_not_with_another_value():
  requested = resolved("byt5", "tiny")
  stored = {**requested, "data": {k: v for k, v in requested["data"].items()
                                  if k != "invalid_utf8"}}
  assert requested["data"]["invalid_utf8"] == "error"
  assert workdir_lib.differences(stored, requested) == []
  replaced = {**requested, "data": {**requested["data"], "invalid_utf8": "replace"}}
  assert workdir_lib.differences(stored, replaced) == [("data.invalid_utf8", "error", "replace")]


def test_the_step_timer_builds_ahead_only_on_an_accelerator(monkeypatch):
  """On a CPU the host is the device: the timer builds each call's batches in the call (a
  thread there slowed the other recipes' timed steps); elsewhere it prefetches as the
  trainer does, train.prefetch batches ahead."""
  from bytelm.training import budget

  c = config_file.load(ROOT / "configs" / "hat.py", "tiny")
  c.train.prefetch = 3
  monkeypatch.setattr(budget.jax, "default_backend", lambda: "cpu")
  assert budget.timer_prefetch(c) == 0
  monkeypatch.setattr(budget.jax, "default_backend", lambda: "gpu")
  assert budget.timer_prefetch(c) == 3
