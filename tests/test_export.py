"""bytelm.runs.export and export.py: an export never deletes what is at its destination, and
carries what its model reads text with.

A new or empty directory receives the export; a non-empty one is refused unless overwrite is
asked for, and then only the export's files are replaced; a training run's workdir, or a
directory holding one, is refused even then. A run's fitted files (a BPE tokenizer, an entropy
model) come from its workdir, or nothing is written. The model is the byte decoder's tiny
config, untrained: what is tested is where files go, not what they hold (tests/test_api.py
loads every recipe's export back and scores it).
"""

import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from bytelm import models
from bytelm.data import bpe
from bytelm.runs import data as data_lib
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


def test_an_export_carries_its_runs_fitted_files_or_writes_nothing(model_and_config, tmp_path):
  """Files, not models: any bytes stand in for the tokenizer, the test reads them back."""
  model, saved = model_and_config
  bpe_run = dict(saved, data=dict(saved["data"], tokenizer={"vocab_size": 512}))
  run = tmp_path / "run"
  run.mkdir()
  with pytest.raises(ValueError, match=r"tokenizer.json.*source="):
    export.export(model, bpe_run, tmp_path / "out")
  with pytest.raises(FileNotFoundError, match=rf"{run / bpe.FILENAME} is missing.*nothing was "
                                              "written"):
    export.export(model, bpe_run, tmp_path / "out", source=run)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no export, no temporary

  (run / bpe.FILENAME).write_text("the run's tokenizer")
  out = export.export(model, bpe_run, tmp_path / "out", dtype="float32", source=run)
  assert (out / bpe.FILENAME).read_text() == "the run's tokenizer"
  (out / "notes.txt").write_text("a user's file")
  (run / bpe.FILENAME).write_text("retrained")
  export.export(model, bpe_run, out, dtype="float32", source=run, overwrite=True)
  assert (out / bpe.FILENAME).read_text() == "retrained"  # replaced with the other export files
  assert (out / "notes.txt").read_text() == "a user's file"

  # An entropy model the config names by path goes in under the standard name, the saved
  # config pointing at it ("": the one beside it), so the export does not need the original.
  mine = tmp_path / "mine.npz"
  mine.write_bytes(b"the user's entropy model")
  blt_run = dict(saved, data=dict(saved["data"], segments={"kind": "entropy",
                                                           "entropy_model": str(mine)}))
  out = export.export(model, blt_run, tmp_path / "blt", source=run)
  assert (out / data_lib.ENTROPY_MODEL).read_bytes() == b"the user's entropy model"
  written = json.loads((out / export.CONFIG).read_text(encoding="utf-8"))
  assert written["data"]["segments"]["entropy_model"] == ""
  assert written["export"]["entropy_model_from"] == str(mine)
  assert blt_run["data"]["segments"]["entropy_model"] == str(mine)  # the caller's dict as it was
  assert data_lib.fitted_files(written, out) == {data_lib.ENTROPY_MODEL:
                                                 out / data_lib.ENTROPY_MODEL}


def test_an_export_without_its_fitted_file_says_to_export_again(model_and_config, tmp_path):
  model, saved = model_and_config
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / bpe.FILENAME).write_text("{}")
  bpe_run = dict(saved, data=dict(saved["data"], tokenizer={"vocab_size": 512}))
  out = export.export(model, bpe_run, tmp_path / "out", source=tmp_path / "run")
  (out / bpe.FILENAME).unlink()  # an export made before exports carried it, or a lost file
  with pytest.raises(FileNotFoundError, match=r"out is an incomplete export: it lacks "
                                              r"tokenizer.json.*Export it again.*bytelm-export"):
    load_run(out)


def test_the_command_refuses_before_reading_the_workdir(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  proc = subprocess.run([sys.executable, str(ROOT / "export.py"), str(tmp_path / "no_run"),
                         str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "not empty (keep.txt)" in proc.stderr and "--overwrite" in proc.stderr
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
