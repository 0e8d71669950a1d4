"""The console scripts' argument handling (bytelm/cli/): packaged config names, bytelm-score's
figures and its errors. That they run installed, from another directory, after `pip install .`,
is .ci/run's check."""

import pathlib
import re

import numpy as np
import pytest

import bytelm
from bytelm.cli import correct as correct_cli
from bytelm.cli import score as score_cli
from bytelm.cli import train as train_cli
from bytelm.training import config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A tiny Hugging Face T5 (tests/fixtures/make_t5_fixture.py): a model bytelm.load reads at once.
MODEL = ROOT / "tests" / "fixtures" / "t5_tied"


# ---- bytelm-train: --config by name or path ---------------------------------------------------


def test_every_recipe_in_configs_is_packaged_by_name():
  recipes = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
  assert train_cli.packaged_names() == recipes
  assert "mrt5" in recipes


def test_a_packaged_name_resolves_to_its_file_and_keeps_the_variant():
  mrt5 = train_cli.packaged_configs() / "mrt5.py"
  assert train_cli.resolve_config("mrt5") == f"{mrt5}"
  assert train_cli.resolve_config("mrt5:tiny") == f"{mrt5}:tiny"
  assert train_cli.resolve_config("mrt5.py:tiny") == f"{mrt5}:tiny"
  # The resolved file loads as the checkout's does, the config it builds on found beside it.
  path, variant = train_cli.resolve_config("mrt5:tiny").split(":")
  assert config_file.load(path, variant) == config_file.load(ROOT / "configs" / "mrt5.py", "tiny")


def test_a_file_in_the_working_directory_comes_before_a_packaged_name(tmp_path, monkeypatch):
  (tmp_path / "mrt5.py").write_text("raise AssertionError('not read here')\n")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "mine.py").write_text("")
  monkeypatch.chdir(tmp_path)
  assert train_cli.resolve_config("mrt5.py:tiny") == "mrt5.py:tiny"  # the local file
  assert train_cli.resolve_config("sub/mine.py") == "sub/mine.py"
  # No file named `mrt5` here: the packaged recipe.
  assert train_cli.resolve_config("mrt5") == f"{train_cli.packaged_configs() / 'mrt5.py'}"


def test_only_config_values_are_resolved_in_argv():
  byt5 = train_cli.packaged_configs() / "byt5.py"
  argv = ["bytelm-train", "--config", "byt5:tiny", "--config.train.steps=5", "--workdir", "w"]
  assert train_cli.resolve_argv(argv) == [
      "bytelm-train", "--config", f"{byt5}:tiny", "--config.train.steps=5", "--workdir", "w"]
  assert train_cli.resolve_argv(["bytelm-train", "--config=byt5", "--config.seed=3"]) == [
      "bytelm-train", f"--config={byt5}", "--config.seed=3"]


@pytest.mark.parametrize("value", ["nosuch:tiny", "configs/nosuch.py"])
def test_an_unknown_config_is_one_line_naming_it_and_the_choices(value, capsys):
  with pytest.raises(SystemExit) as exit_info:
    train_cli.main(["bytelm-train", "--config", value, "--workdir", "w"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert value in err and "byt5, bytes_decoder" in err and "byt5:tiny" in err


# ---- bytelm-score -------------------------------------------------------------------------------


def test_score_prints_each_files_bits_per_byte_and_the_total(tmp_path, capsys, monkeypatch):
  texts = ["Byte models read raw UTF-8: café, naïve, Straße, 東京.", "short " * 40]
  files = [tmp_path / "a.txt", tmp_path / "b.txt"]
  for path, text in zip(files, texts):
    path.write_text(text, encoding="utf-8")
  lm, loaded = bytelm.load(MODEL), []
  # The command's model is this one (compiled once for both), loaded from --model.
  monkeypatch.setattr(bytelm, "load", lambda path: loaded.append(path) or lm)
  # Two rows a call: each file is one row here; a smaller compile than the default 8.
  score_cli.main([*map(str, files), "--model", str(MODEL), "--batch-size", "2"])
  assert loaded == [MODEL]
  out = capsys.readouterr()
  rows = [line.split("  ") for line in out.out.strip().splitlines()]
  assert [name for _, name in rows] == [str(files[0]), str(files[1]), "total"]
  expected = [*lm.score(texts, 2), lm.score(texts, 2, total=True)]
  np.testing.assert_allclose([float(value) for value, _ in rows], expected, atol=6e-5)
  # Files of different lengths: the total weighs by bytes, not a mean of the files.
  assert abs(expected[2] - np.mean(expected[:2])) > 1e-3
  assert "span-corruption" in out.err  # an encoder-decoder's bits are said to be its own kind


def _one_line_error(argv, capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    score_cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


def test_bad_files_are_refused_before_the_model_is_loaded(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(bytelm, "load", lambda *a, **k: pytest.fail("loaded the model"))
  good, empty = tmp_path / "good.txt", tmp_path / "empty.txt"
  good.write_text("fine")
  empty.write_bytes(b"")
  model = ["--model", str(MODEL)]
  err = _one_line_error([str(good), str(tmp_path / "missing.txt"), *model], capsys)
  assert "missing.txt: no such file" in err
  assert "empty.txt is empty" in _one_line_error([str(empty), *model], capsys)


def test_a_file_that_is_not_utf8_is_scored_as_its_bytes_with_a_note(tmp_path, capsys,
                                                                    monkeypatch):
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("café".encode("latin-1"))
  scored = []

  class Model:  # what the command hands the model: the file's bytes, as they are
    encoder_decoder = False

    def score(self, texts, batch_size=8, total=False):
      scored.append(list(texts))
      return np.ones(len(texts))

  monkeypatch.setattr(bytelm, "load", lambda path: Model())
  score_cli.main([str(latin1), "--model", str(MODEL)])
  assert scored == [[b"caf\xe9"]]
  err = capsys.readouterr().err
  # é is 0xe9 in both Latin-1 and Windows-1252: cp1252, which also has the curly quotes.
  assert re.search(r"note: .*latin1\.txt: not valid UTF-8 at byte offset 3 .*byte 0xe9.*"
                   r"iconv -f cp1252 -t utf-8.*scored as the bytes it holds", err)


def test_a_directory_that_is_not_a_model_is_refused(tmp_path, capsys):
  text = tmp_path / "t.txt"
  text.write_text("fine")
  err = _one_line_error([str(text), "--model", str(tmp_path / "nowhere")], capsys)
  assert "nowhere is not a model: it has no config.json" in err
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "config.json").write_text('{"name": "something else"}')
  err = _one_line_error([str(text), "--model", str(tmp_path / "other")], capsys)
  assert "other: its config.json is not a bytelm run's" in err


# ---- bytelm-correct and the scripts' table ------------------------------------------------------


def test_correct_is_the_demos_command_under_its_own_name(capsys):
  with pytest.raises(SystemExit) as exit_info:
    correct_cli.main(["--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: bytelm-correct") and "--diff" in out and "--model" in out


def test_every_console_script_names_a_main():
  text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
  section = text.split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
  scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', section, re.M))
  assert scripts == {"bytelm-train": "bytelm.cli.train:main",
                     "bytelm-correct": "bytelm.cli.correct:main",
                     "bytelm-score": "bytelm.cli.score:main",
                     "bytelm-export": "bytelm.cli.export:main",
                     # beside its library, so that `python -m bytelm.data.prepare` is the same
                     "bytelm-prepare": "bytelm.data.prepare:main"}
  for target in scripts.values():
    module, function = target.split(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))
