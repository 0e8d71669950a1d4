"""bytelm.runs.export and export.py: an export never deletes what is at its destination.

A new or empty directory receives the export; a non-empty one is refused unless overwrite is
asked for, and then only the export's two files are replaced; a training run's workdir, or a
directory holding one, is refused even then. The model is the byte decoder's tiny config,
untrained: what is tested is where files go, not what they hold.
"""

import dataclasses
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from bytelm import models
from bytelm.runs import export
from bytelm.runs.load import load as load_run
from bytelm.training import config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
IDS = np.asarray([[1, 75, 104, 3, 50]], np.int32)


@pytest.fixture(scope="module")
def model_and_config():
  c = config_file.load(ROOT / "configs" / "bytes_decoder.py", "tiny")
  family = models.family(c.model_family)
  model_cfg = family.config_cls(**c.model.to_dict())
  saved = c.to_dict()
  saved["model"] = dataclasses.asdict(model_cfg)
  return family.model_cls(model_cfg, rngs=nnx.Rngs(0)), saved


def snapshot(directory: pathlib.Path) -> dict:
  return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_a_new_or_empty_directory_receives_the_export(model_and_config, tmp_path):
  model, saved = model_and_config
  (tmp_path / "empty").mkdir()
  for name in ("new", "empty"):
    out = export.export(model, saved, tmp_path / name, dtype="float32")
    assert sorted(p.name for p in out.iterdir()) == [export.CONFIG, export.WEIGHTS]
    np.testing.assert_array_equal(load_run(out)(IDS), model(IDS))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]  # no temporary left


def test_a_non_empty_directory_is_refused_unless_overwrite(model_and_config, tmp_path):
  model, saved = model_and_config
  out = tmp_path / "mine"
  out.mkdir()
  (out / "notes.txt").write_text("a user's file")
  (out / export.CONFIG).write_text("{}")
  before = snapshot(out)
  with pytest.raises(FileExistsError, match=r"not empty \(config.json, notes.txt\).*overwrite"):
    export.export(model, saved, out)
  assert snapshot(out) == before

  export.export(model, saved, out, dtype="float32", overwrite=True)
  assert (out / "notes.txt").read_text() == "a user's file"  # only the export's files change
  np.testing.assert_array_equal(load_run(out)(IDS), model(IDS))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("run_at", ["", "runs/mrt5"])
def test_a_workdir_or_a_directory_above_one_is_refused_even_with_overwrite(
    model_and_config, tmp_path, run_at):
  model, saved = model_and_config
  run = tmp_path / run_at
  (run / "checkpoints" / "8").mkdir(parents=True)
  (run / "checkpoints" / "8" / "state").write_bytes(b"weights of a long run")
  (run / "metrics.jsonl").write_text('{"step": 8}\n')
  (run / export.CONFIG).write_text('{"model": {}}')
  before = snapshot(tmp_path)
  # Without overwrite a run below is refused as any non-empty directory is; the tree is only
  # searched when it is about to be written to.
  with pytest.raises(FileExistsError, match="holds a training run" if not run_at else "empty"):
    export.export(model, saved, tmp_path)
  with pytest.raises(FileExistsError, match="holds a training run"):
    export.export(model, saved, tmp_path, overwrite=True)
  assert snapshot(tmp_path) == before


def test_a_file_is_refused(model_and_config, tmp_path):
  model, saved = model_and_config
  (tmp_path / "model").write_text("not a directory")
  with pytest.raises(FileExistsError, match="is a file"):
    export.export(model, saved, tmp_path / "model", overwrite=True)
  assert (tmp_path / "model").read_text() == "not a directory"


def test_the_command_refuses_before_reading_the_workdir(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  proc = subprocess.run([sys.executable, str(ROOT / "export.py"), str(tmp_path / "no_run"),
                         str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "not empty (keep.txt)" in proc.stderr and "--overwrite" in proc.stderr
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
