"""Training past one process: two `train.py` processes on localhost (one CPU device each,
joined by jax.distributed through JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID, their collectives over gloo) train as one process with two devices does on the
same global batch, and a two-process run killed mid-way resumes to the same end.

The processes are the suite's warm python (tests/conftest.py), started as `python` would be,
but for the pair that is killed."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from bytelm.runs import checkpoint as ckpt_lib
from bytelm.runs.load import load

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 10

# train.py that, on reaching log step {step}, touches {marker} and waits there (a minute at
# most) to be killed: both processes are then at a known step, their checkpoints behind them.
PAUSED_AT = """
import pathlib, runpy, sys, time
from bytelm.training import trainer
original, process = trainer._check_finite, sys.argv[-1]
def check_then_wait(metrics, step, *args):
  original(metrics, step, *args)
  if step == {step}:
    pathlib.Path({marker!r} + process).touch()
    time.sleep(60)
trainer._check_finite = check_then_wait
sys.argv = [{train!r}] + sys.argv[1:-1]
runpy.run_path({train!r}, run_name="__main__")
"""


def _flags(corpus: pathlib.Path, workdir: pathlib.Path) -> list[str]:
  return ["--config", str(ROOT / "configs" / "bytes_decoder.py:tiny"),
          f"--config.data.train=file:{corpus}", f"--config.train.steps={STEPS}",
          "--config.train.log_every=1", "--config.train.batch_size=4",
          "--config.train.eval_every=5", "--config.ckpt.every=2", "--config.ckpt.keep=100",
          "--config.mesh.data=-1", f"--workdir={workdir}"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(python, env, argv_of, cwd) -> list[subprocess.Popen]:
  """Process 0 and 1 of one job: argv_of(process id) after `python`."""
  port = _free_port()
  procs = []
  for pid in (0, 1):
    cluster = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(pid)}
    log = (cwd / f"process{pid}.log").open("a")
    procs.append(subprocess.Popen([str(python), *argv_of(pid)], cwd=cwd, stdout=log,
                                  stderr=subprocess.STDOUT, env={**env, **cluster}))
  return procs


def _wait(procs, cwd, timeout=300) -> None:
  for proc in procs:
    proc.wait(timeout=timeout)
  logs = "".join((cwd / f"process{p}.log").read_text()[-2000:] for p in (0, 1))
  assert [proc.returncode for proc in procs] == [0, 0], logs


def _losses(workdir) -> list[float]:
  rows = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
  return [r["loss"] for r in rows if "loss" in r]


def _params(workdir) -> list[np.ndarray]:
  """The parameters of the run's last checkpoint, read into this one-device process."""
  with ckpt_lib.Checkpointer(workdir / "checkpoints", keep=100) as checkpoints:
    assert checkpoints.steps()[-1] == STEPS
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load(workdir), nnx.Param))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  rng = np.random.default_rng(0)
  words = ["byte", "model", "řeč", "gate", "the", "of", "naïve", "encoder"]
  path = tmp_path_factory.mktemp("corpus") / "text.txt"
  path.write_text("\n".join(" ".join(rng.choice(words, size=12)) for _ in range(300)),
                  encoding="utf-8")
  return path


@pytest.mark.multiprocess  # run apart: pytest -m multiprocess (pyproject.toml says why)
def test_two_processes_train_as_one_process_with_two_devices_and_resume_after_a_kill(
    corpus, warm_python, tmp_path):
  python, env = warm_python
  train = str(ROOT / "train.py")
  # The reference: one process, two CPU devices, the same global batch of 4 rows.
  one = tmp_path / "one"
  flags = " ".join(filter(None, [env.get("XLA_FLAGS"),
                                 "--xla_force_host_platform_device_count=2"]))
  subprocess.run([str(python), train, *_flags(corpus, one)], cwd=tmp_path, check=True,
                 capture_output=True, timeout=300, env={**env, "XLA_FLAGS": flags})

  two = tmp_path / "two"
  _wait(_two_processes(python, env, lambda pid: [train, *_flags(corpus, two)], tmp_path),
        tmp_path)
  np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-6)
  assert len(_losses(two)) == STEPS
  for a, b in zip(_params(two), _params(one), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  # Killed at step 7 (checkpoints of steps 2, 4 and 6 behind it, the last perhaps cut short),
  # then started again: it resumes and ends where the uninterrupted run did.
  killed, marker = tmp_path / "killed", str(tmp_path / "paused")
  script = PAUSED_AT.format(step=7, marker=marker, train=train)
  # Real interpreters: a warm python's work runs in a child of its server, out of a signal's
  # reach.
  procs = _two_processes(
      sys.executable, env, lambda pid: ["-c", script, *_flags(corpus, killed), str(pid)],
      tmp_path)
  deadline = time.time() + 300
  while not all(os.path.exists(marker + str(pid)) for pid in (0, 1)):
    assert time.time() < deadline and all(p.poll() is None for p in procs), (
        (tmp_path / "process0.log").read_text()[-3000:])
    time.sleep(0.05)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  assert len(_losses(killed)) == 6  # step 7 died before its metrics were written
  _wait(_two_processes(python, env, lambda pid: [train, *_flags(corpus, killed)], tmp_path),
        tmp_path)
  assert _losses(killed) == _losses(two)
  for a, b in zip(_params(killed), _params(two), strict=True):
    np.testing.assert_array_equal(a, b)
