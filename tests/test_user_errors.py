"""A user's mistakes, typed as a user types them: each command runs as a process (`python
train.py ...` from another directory) and must end in one line on stderr, `prog: error: ...`,
that names the problem and the fix, with exit status 2, leaving no empty workdir behind.
`--debug` brings the traceback back. The processes are the suite's warm python
(tests/conftest.py): forked with jax and bytelm imported, as `python` would run them."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "train.py")
TINY = ["--config", str(ROOT / "configs" / "byt5.py:tiny")]
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)  # absl's "I1206 12:00:00.123 ..."


@dataclasses.dataclass
class Case:
  argv: list[str]  # after `python`
  expect: tuple[str, ...]  # in the one line
  env: dict = dataclasses.field(default_factory=dict)
  status: int = 2


def _write_inputs(cwd: pathlib.Path) -> None:
  """The files the cases read, in their working directory."""
  (cwd / "quotes.txt").write_bytes("“Smart quotes” from a Windows editor.\n".encode("cp1252"))
  (cwd / "small.txt").write_text("tiny\n", encoding="utf-8")
  (cwd / "a_file").write_text("not a directory\n", encoding="utf-8")
  (cwd / "hf_home").mkdir()  # an empty Hugging Face cache
  run = cwd / "other_run"  # a workdir of another config: its config.json only
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"seed": 123}), encoding="utf-8")


CASES = {
    "mistyped key": Case(
        [TRAIN, *TINY, "--config.train.stepz=5"],
        ("--config.train.stepz", "no field train.stepz", "did you mean --config.train.steps?")),
    "unknown variant": Case(
        [TRAIN, "--config", "byt5:tyni"],
        ("unknown variant 'tyni' of configs/byt5.py", "'tiny'")),
    "no --config": Case(
        [TRAIN, "--config.train.steps=5"],
        ("--config is required", "mrt5:tiny")),
    "glob matching nothing": Case(
        [TRAIN, *TINY, "--config.data.train=file:corpus/*.txt"],
        ("no files match", "corpus/*.txt", "quote the glob")),
    "invalid UTF-8": Case(
        [TRAIN, *TINY, "--config.data.train=file:quotes.txt"],
        ("quotes.txt: not valid UTF-8 at byte offset 0", "byte 0x93",
         "iconv -f cp1252 -t utf-8 quotes.txt")),
    # Another source reading a training file as validation: a warning that it is not held
    # out, then the error.
    "dataset too small": Case(
        [TRAIN, *TINY, "--config.data.train=file:small.txt",
         "--config.data.validation=file:small*.txt"],
        ("warning: the validation split reads 1 of the training files", "small.txt",
         "give data.validation other files", "the dataset is too small",
         "add text or lower input_length")),
    "mesh of more devices than there are": Case(
        [TRAIN, *TINY, "--config.mesh.fsdp=4"],
        ("mesh {'data': -1, 'fsdp': 4}", "--config.mesh.fsdp=1",
         "--xla_force_host_platform_device_count")),
    "workdir that is a file": Case(
        [TRAIN, *TINY, "--workdir", "a_file"],
        ("a_file is a file", "Give --workdir a directory")),
    "workdir of another config": Case(
        [TRAIN, *TINY, "--workdir", "other_run"],
        ("holds a run of another config", "seed: the workdir's run has 123, this config 0",
         "another --workdir")),
    "hf source offline": Case(
        [TRAIN, *TINY, "--config.data.train=hf:wikitext:wikitext-2-raw-v1"],
        ("hf:wikitext:wikitext-2-raw-v1 is not in the local Hugging Face cache",
         "offline mode is on"),
        env={"HF_DATASETS_OFFLINE": "1"}),
    "hf source without network": Case(  # nothing listens on port 9: no Hub here
        [TRAIN, *TINY, "--config.data.train=hf:wikitext:wikitext-2-raw-v1"],
        ("not in the local Hugging Face cache", "127.0.0.1 cannot be reached"),
        env={"HF_ENDPOINT": "http://127.0.0.1:9"}),
    # The README's relative config path, from a directory without configs/: the packaged one
    # (then refused for its mesh, which shows that it was read).
    "README's config path from elsewhere": Case(
        [TRAIN, "--config", "configs/bytes_decoder.py:tiny", "--config.mesh.fsdp=4"],
        ("mesh {'data': -1, 'fsdp': 4}",)),
    "export into a directory that holds files": Case(
        [str(ROOT / "export.py"), "nowhere", "other_run"],
        ("other_run is not empty (config.json", "--overwrite")),
    "export of a workdir that does not exist": Case(
        [str(ROOT / "export.py"), "nowhere", "out"],
        ("nowhere does not exist",)),
    "a language the typo corrector does not know": Case(
        ["-m", "bytelm.cli.correct", "--task", "typos", "--lang", "xx", "teh"],
        ("bytelm-correct: error:", "--lang xx: the typo corrector knows en, es, fr")),
    "with --debug, the traceback": Case(
        [TRAIN, *TINY, "--config.mesh.fsdp=4", "--debug"],
        ("Traceback (most recent call last)", "ValueError: mesh"), status=1),
}


@pytest.fixture(scope="module")
def results(warm_python, tmp_path_factory):
  """name -> (exit status, stdout, stderr, working directory) of each case, run in a
  directory of its own, three at a time."""
  python, env = warm_python

  def run(name, case):
    cwd = tmp_path_factory.mktemp("cwd")
    _write_inputs(cwd)
    done = subprocess.run([str(python), *case.argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**env, "HF_HOME": str(cwd / "hf_home"), **case.env})
    return done.returncode, done.stdout, done.stderr, cwd

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {name: pool.submit(run, name, case) for name, case in CASES.items()}
    return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", CASES)
def test_a_users_error_is_one_line_naming_the_fix(name, results):
  case = CASES[name]
  status, out, err, cwd = results[name]
  assert status == case.status, f"exit {status}\n{out}\n{err}"
  if case.status == 2:  # one line (after any warnings)
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1, err
    assert re.match(r"(train\.py|bytelm-correct|bytelm-export): error: ", lines[0]), err
  for expected in case.expect:
    assert expected in err, err
  assert not ABSL_PREFIX.search(out + err), out + err  # plain lines, no absl prefixes
  # Nothing is left behind by a run that could not start; what was there is untouched.
  assert not (cwd / "workdirs").exists(), list((cwd / "workdirs").rglob("*"))
  assert json.loads((cwd / "other_run" / "config.json").read_text()) == {"seed": 123}
  assert {p.name for p in (cwd / "other_run").iterdir()} <= {"config.json", "lock"}
  assert (cwd / "a_file").read_text(encoding="utf-8") == "not a directory\n"


def test_an_empty_workdir_made_for_a_run_that_failed_is_removed_and_a_users_is_kept(tmp_path):
  """The same, in process: the directories a run made are removed when it fails before its
  first write; a directory that existed stays, with the lock file it got."""
  from bytelm.runs import workdir as workdir_lib

  made = tmp_path / "new" / "run"
  with pytest.raises(RuntimeError, match="failed"):
    with workdir_lib.made(made) as path:
      (path / "lock").touch()
      raise RuntimeError("failed")
  assert not (tmp_path / "new").exists()
  kept = tmp_path / "mine"
  kept.mkdir()
  with pytest.raises(RuntimeError):
    with workdir_lib.made(kept / "run") as path:
      (path / "tokenizer.json").write_text("{}")  # written: the run's, kept for a rerun
      raise RuntimeError("failed")
  assert (kept / "run" / "tokenizer.json").exists()
  with pytest.raises(RuntimeError):
    with workdir_lib.made(kept):
      raise RuntimeError("failed")
  assert kept.is_dir()  # it existed: never removed
