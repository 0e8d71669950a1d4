"""Suite-wide settings."""

import os
import pathlib
import shutil
import tempfile

import pytest
from hypothesis import settings

# No per-example deadline: a property either holds or fails whatever the machine's speed, and
# a 2-core CI host busy with other tests can take longer than Hypothesis's default 200 ms for
# an example (a JAX call compiling, a garbage collection) without anything being wrong.
settings.register_profile("bytelm", deadline=None)
settings.load_profile("bytelm")

# One persistent compilation cache for the whole session, shared with every process the tests
# start (train.py, the docs' blocks, eval/ scripts inherit os.environ): a computation compiled
# once, by the suite or by a subprocess, is read back by the next process instead of compiled
# again (the resume tests run the same train step in four processes, and in-process runs
# rebuild the same jitted steps again and again). A fresh directory per session, so that a clean checkout
# gets the same benefit as a developer's and no session reads a stale entry; a cache the user
# points JAX_COMPILATION_CACHE_DIR at is used as it is (so pytest-xdist's workers, which
# inherit the controller's environment, share the controller's). Every entry is kept: the
# small models here compile in well under JAX's default one-second threshold.
_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _OWN_CACHE = tempfile.mkdtemp(prefix="bytelm-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Prepared data streams (bytelm.data.prepare) go to a directory of the session's own, not the
# user's ~/.cache/bytelm, and every process the tests start (and every xdist worker) shares it.
_OWN_DATA_CACHE = None
if "bytelm-data-cache-" not in os.environ.get("BYTELM_CACHE", ""):
  _OWN_DATA_CACHE = os.environ["BYTELM_CACHE"] = tempfile.mkdtemp(prefix="bytelm-data-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Stacks run one example at a time with recomputation, as first measured to win, not
# calibrated: a calibration (a minute) in every session's fresh cache would time the suite.
# tests/test_batching.py unsets it to test the calibration itself.
os.environ.setdefault("BYTELM_PER_EXAMPLE", "loop_remat")

# XLA's CPU backend at optimisation level 0 for the suite and every process it starts:
# compiling, not running, is most of the suite's time (a tiny model's train step runs in
# milliseconds and takes seconds to compile), and level 0 about halves compile times (the
# suite: 451 s at the default level, 326 s at 0, on a 2-core AMD EPYC). Results differ from the
# default level's in the last bits of a float32 (loss 6.5058141 against 6.5058131 after a
# step): every test compares results computed in one setting (a resumed run with a straight
# one, a cached step with the whole model) or with stored numbers within a tolerance far
# wider, so the assertions are unchanged. The default level is what .ci/run's console scripts
# run; the suite runs at it too with XLA_FLAGS=--xla_backend_optimization_level=3 (a level
# given in XLA_FLAGS is kept).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))

import jax  # noqa: E402  (after the environment, which jax reads when imported)

# A plugin may have imported jax before this file: set the options on the live config too.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
  for own in (_OWN_CACHE, _OWN_DATA_CACHE):
    if own:
      shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_bpe_decoder_run(tmp_path_factory):
  """(workdir, Summary) of configs/bpe_decoder.py:tiny trained for its few steps: a real token
  model and tokenizer. test_bpe and test_byteprobs both read one; under pytest-xdist their
  files may run in two workers, which share one run (the first to get here trains it, under a
  file lock; the other reads it and the summary it was trained with) instead of training the
  same run twice. Nobody writes to it."""
  import dataclasses
  import json

  import filelock

  from bytelm.training import config_file
  from bytelm.training import Summary, train_and_evaluate

  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # the session's directory, above each worker's
    base = base.parent
  root = base / "trained-bpe-decoder"
  with filelock.FileLock(str(root) + ".lock"):
    summary_file = root / "summary.json"  # JSON: the suite unpickles nothing
    if not summary_file.exists():
      config = config_file.load(pathlib.Path(__file__).resolve().parents[1] / "configs" /
                                "bpe_decoder.py", "tiny")
      # Two steps, as docs/recipes/bpe_decoder.md's run (tests/test_docs.py's overrides): what
      # the tests check (a finite, plausible score; the tokenizer kept; token and byte scores
      # agreeing) holds for any number of steps, and the suite's compilation cache compiles
      # the steps once for both.
      config.train.update(steps=2, eval_every=2, eval_batches=1)
      config.ckpt.every = 2
      summary = train_and_evaluate(config, root / "run")
      summary_file.write_text(json.dumps(dataclasses.asdict(summary)), encoding="utf-8")
    return root / "run", Summary(**json.loads(summary_file.read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def warm_python():
  """(python, env): a `python` that starts with jax and bytelm already imported
  (tests/warm_python.py), and the environment to run it in, whose PATH finds it first and whose
  PYTHONPATH puts this checkout's bytelm first. Commands run as `python ...` would, without
  seconds of imports each: the docs' blocks, the console scripts' error messages."""
  import subprocess
  import sys

  import warm_python as warm  # tests/warm_python.py (pytest puts tests/ on sys.path)

  root = pathlib.Path(__file__).resolve().parents[1]
  with tempfile.TemporaryDirectory() as tmp:  # a short path: a socket's is limited to ~100
    tmp = pathlib.Path(tmp)
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
    python = warm.install(tmp / "bin", tmp / "socket")
    env["PATH"] = os.pathsep.join([str(python.parent), os.environ["PATH"]])
    with (tmp / "server.log").open("w") as log:
      server = subprocess.Popen([sys.executable, warm.__file__, "serve", tmp / "socket"],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
      if server.stdout.readline() != "ready\n":
        raise RuntimeError(f"the warm python did not start: {(tmp / 'server.log').read_text()}")
      yield python, env
    finally:
      server.terminate()
      server.wait()
