"""Training past one process: two `train.py` processes on localhost (one CPU device each,
joined by jax.distributed through JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID, their collectives over gloo) train as one process with two devices does on the
same global batch; a two-process run stopped by SIGTERM in both processes saves one checkpoint of
one step, and, killed mid-way after that, resumes to the same end. Without subprocesses: how
config.distributed and the environment become jax.distributed.initialize's arguments, and how
the processes agree on the step to stop at.

The processes are the suite's warm python (tests/conftest.py), started as `python` would be,
but for the pair that is killed."""

from __future__ import annotations

import json
import os
import pathlib
import re
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
from bytelm.training import config_file, trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 10

# train.py that, on reaching log step {step}, touches {marker}<process id> and waits there (a
# minute at most) until {marker}go exists, or to be killed: both processes are then at a known
# step, their checkpoints behind them.
PAUSED_AT = """
import os, pathlib, runpy, sys, time
from bytelm.training import trainer
original, process, paused = trainer._check_finite, sys.argv[-1], []
def check_then_wait(metrics, step, *args):
  original(metrics, step, *args)
  if step == {step} and not paused:  # once: a stop's own save checks step {step} again
    paused.append(step)
    pathlib.Path({marker!r} + process).touch()
    deadline = time.time() + 60
    while not os.path.exists({marker!r} + "go") and time.time() < deadline:
      time.sleep(0.01)
trainer._check_finite = check_then_wait
sys.argv = [{train!r}] + sys.argv[1:-1]
runpy.run_path({train!r}, run_name="__main__")
"""


def _paused_pair(step: int, name: str, train: str, env: dict, corpus: pathlib.Path,
                 workdir: pathlib.Path, tmp_path: pathlib.Path):
  """Two train.py processes (real interpreters: a signal reaches them) into workdir, both
  waiting at log step `step` (PAUSED_AT); (processes, marker)."""
  marker = str(tmp_path / name)
  script = PAUSED_AT.format(step=step, marker=marker, train=train)
  procs = _two_processes(
      sys.executable, env, lambda pid: ["-c", script, *_flags(corpus, workdir), str(pid)],
      tmp_path)
  _paused(procs, marker, tmp_path)
  return procs, marker


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


def _two_processes(python, env, argv_of, cwd, flags=False) -> list[subprocess.Popen]:
  """Process 0 and 1 of one job: argv_of(process id) after `python`, the job named by the
  JAX_* variables, or with flags by --config.distributed.* (after argv_of's, so a script's
  last argument must not be the process id)."""
  port = _free_port()
  procs = []
  for pid in (0, 1):
    cluster = {"coordinator_address": f"127.0.0.1:{port}", "num_processes": 2,
               "process_id": pid}
    extra_env = {} if flags else {f"JAX_{k.upper()}": str(v) for k, v in cluster.items()}
    extra_argv = [f"--config.distributed.{k}={v}" for k, v in cluster.items()] if flags else []
    log = (cwd / f"process{pid}.log").open("a")
    procs.append(subprocess.Popen([str(python), *argv_of(pid), *extra_argv], cwd=cwd,
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env={**env, **extra_env}))
  return procs


def _wait(procs, cwd, timeout=300, status=0) -> None:
  for proc in procs:
    proc.wait(timeout=timeout)
  logs = "".join((cwd / f"process{p}.log").read_text()[-2000:] for p in (0, 1))
  assert [proc.returncode for proc in procs] == [status, status], logs


def _paused(procs, marker, cwd) -> None:
  """Wait until both processes of a PAUSED_AT script have touched their marker."""
  deadline = time.time() + 300
  while not all(os.path.exists(marker + str(pid)) for pid in (0, 1)):
    assert time.time() < deadline and all(p.poll() is None for p in procs), (
        (cwd / "process0.log").read_text()[-3000:])
    time.sleep(0.05)


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
def test_two_processes_train_as_one_with_two_devices_stop_together_and_resume(
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

  # SIGTERM to both processes at step 3, as SLURM or Kubernetes stop a job: both save one
  # checkpoint of one step, the same, and exit 143 as train.py does on SIGTERM. Real
  # interpreters: a warm python's work runs in a child of its server, out of a signal's reach.
  killed = tmp_path / "killed"
  procs, marker = _paused_pair(3, "stopped", train, env, corpus, killed, tmp_path)
  for proc in procs:
    proc.send_signal(signal.SIGTERM)
  time.sleep(0.2)  # the handlers run while both wait; were one late, both would stop later
  pathlib.Path(marker + "go").touch()
  _wait(procs, tmp_path, status=128 + signal.SIGTERM)
  stopped = {int(re.findall(r"training interrupted after (\d+) steps",
                            (tmp_path / f"process{pid}.log").read_text())[-1]) for pid in (0, 1)}
  assert len(stopped) == 1, stopped  # both processes stopped at the same step
  (stop,) = stopped
  assert 3 <= stop < STEPS
  with ckpt_lib.Checkpointer(killed / "checkpoints", keep=100) as checkpoints:
    assert checkpoints.steps() == sorted({2, stop}), checkpoints.steps()
  assert _losses(killed) == _losses(two)[:stop]

  # Resumed, then killed at step 7 (checkpoints of steps 4 and 6 behind it, the last perhaps
  # cut short), then started again, named by --config.distributed.* on another port this time:
  # it resumes and ends where the uninterrupted run did.
  procs, _ = _paused_pair(7, "paused", train, env, corpus, killed, tmp_path)
  for proc in procs:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  assert len(_losses(killed)) == 6  # step 7 died before its metrics were written
  _wait(_two_processes(python, env, lambda pid: [train, *_flags(corpus, killed)], tmp_path,
                       flags=True), tmp_path)
  assert _losses(killed) == _losses(two)
  for a, b in zip(_params(killed), _params(two), strict=True):
    np.testing.assert_array_equal(a, b)


# ---- without subprocesses -------------------------------------------------------------------------


@pytest.fixture
def initialize(monkeypatch):
  """jax.distributed.initialize recorded instead of called: (env, config) -> its kwargs, or
  None where it was not called."""
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
              "BYTELM_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.config, "update", lambda *a: None)  # gloo: not for this process

  def run(env, **distributed):
    config = config_file.load(ROOT / "configs" / "bytes_decoder.py", "tiny")
    config.distributed.update(distributed)
    with monkeypatch.context() as m:
      for var, value in env.items():
        m.setenv(var, value)
      calls.clear()
      trainer._maybe_init_distributed(config)
    return calls[0] if calls else None

  return run


def test_the_config_or_the_environment_names_the_processes(initialize):
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
         "JAX_PROCESS_ID": "1"}
  assert initialize({}) is None  # one process: nothing to join
  assert initialize(env) == dict(coordinator_address="10.0.0.1:1234", num_processes=2,
                                 process_id=1)
  assert initialize({}, coordinator_address="h:9", num_processes=4, process_id=3) == dict(
      coordinator_address="h:9", num_processes=4, process_id=3)
  # The config's values win where set; the rest come from the environment.
  assert initialize(env, coordinator_address="h:9", process_id=0) == dict(
      coordinator_address="h:9", num_processes=2, process_id=0)
  # BYTELM_DISTRIBUTED: JAX finds the cluster (SLURM, Open MPI, TPU), given values passed on.
  assert initialize({"BYTELM_DISTRIBUTED": "1"}) == {}
  assert initialize({"BYTELM_DISTRIBUTED": "1"}, num_processes=8) == dict(num_processes=8)


@pytest.mark.parametrize("env, distributed, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:9"}, {},
     r"not num_processes \(--config.distributed.num_processes or JAX_NUM_PROCESSES\) and "
     r"process_id \(--config.distributed.process_id or JAX_PROCESS_ID\)"),
    ({}, dict(coordinator_address="h:9", num_processes=2),
     r"not process_id \(--config.distributed.process_id or JAX_PROCESS_ID\)"),
    ({}, dict(num_processes=2, process_id=1),
     "no coordinator address: set --config.distributed.coordinator_address=HOST:PORT"),
    ({}, dict(coordinator_address="h:9", num_processes=2, process_id=2),
     r"process_id 2 is not one of the 2 processes' ids 0..1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, {},
     "JAX_NUM_PROCESSES='two' is not a whole number"),
])
def test_a_cluster_named_in_part_is_an_error_naming_the_fix(initialize, env, distributed,
                                                           message):
  with pytest.raises(ValueError, match=message):
    initialize(env, **distributed)


def test_processes_stop_at_a_step_they_agree_on(monkeypatch):
  """Two processes (faked): a signal counts at the steps where every process gathers the flags
  (log and checkpoint steps), any process's stopping all. One process stops at the next step,
  as always, and gathers nothing."""
  gathered = []
  monkeypatch.setattr(trainer.multihost_utils, "process_allgather",
                      lambda x: gathered.append(int(x)) or np.array([int(x), signal.SIGINT]))
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with trainer._StopRequested() as stop:  # the other process had Ctrl-C, this one nothing
    assert signal.getsignal(signal.SIGTERM) == stop._handle
    assert not stop.should_stop(5, synced=False) and gathered == []
    assert stop.should_stop(6, synced=True) and gathered == [0]
    assert stop.signum == signal.SIGINT

  gathered.clear()
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  with trainer._StopRequested() as stop:
    assert not stop.should_stop(1, synced=True)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.should_stop(2, synced=False) and stop.signum == signal.SIGTERM
  assert gathered == []  # one process pays for no collective
