"""The trainer: exact resume (in process, after SIGTERM and after SIGKILL), multi-device
equivalence, and clear errors that lose nothing (unknown key, missing data, a workdir of
another config, a workdir in use, NaN, truncation)."""

import importlib.util
import json
import logging
import os
import pathlib
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import bytelm
from bytelm import models
from bytelm.runs import checkpoint as ckpt_lib
from bytelm.runs import lock as lock_lib
from bytelm.runs import workdir as workdir_lib
from bytelm.training import budget, evaluation, model_init, reuse, trainer, train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_config_module():
  spec = importlib.util.spec_from_file_location("byt5_config", ROOT / "configs" / "byt5.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A few KB of text, different every line, as a local file source."""
  rng = np.random.default_rng(0)
  words = ["byte", "model", "řeč", "việt", "gate", "delete", "encoder", "the", "of", "naïve"]
  lines = [" ".join(rng.choice(words, size=12)) + "." for _ in range(300)]
  path = tmp_path_factory.mktemp("corpus") / "text.txt"
  path.write_text("\n".join(lines), encoding="utf-8")
  return f"file:{path}"


def tiny_config(corpus, **train):
  config = _load_config_module().get_config("tiny")
  config.data.train = corpus
  config.train.log_every = 1
  config.train.update(train)
  return config


def losses(workdir) -> list[float]:
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
  return [r["loss"] for r in rows if "loss" in r]


def tensorboard(workdir) -> tuple[dict[str, dict[int, float]], list[int]]:
  """({tag: {step: value}}, purge steps) of the run's TensorBoard event files, read in the
  order they were written as TensorBoard reads them: a purge step (a resumed run's) drops the
  values at and after it from earlier files."""
  from tensorboardX.proto import event_pb2

  scalars, purges = {}, []
  for path in sorted((pathlib.Path(workdir) / "tensorboard").glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):  # TFRecords: length (8 bytes), its CRC (4), the event, its CRC (4)
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
      i += 12 + length + 4
      if event.session_log.status == event_pb2.SessionLog.START:
        purges.append(event.step)
        for series in scalars.values():
          for step in [s for s in series if s >= event.step]:
            del series[step]
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars, purges


def saved_steps(workdir) -> list[int]:
  with ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", keep=100) as checkpoints:
    return checkpoints.steps()


def final_params(workdir) -> dict:
  with ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", keep=100) as checkpoints:
    return checkpoints.restore_raw(checkpoints.steps()[-1])["0"]


def assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(_plain(x), _plain(y))


def _plain(x):
  """Host array of a leaf; RNG keys (dropout streams) as their raw key data."""
  if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x)


# Dropout on in the resume tests: a resumed run must continue the dropout streams where they
# stopped, not start them afresh (with dropout off, fresh streams would go unnoticed).
DROPOUT = 0.1


def straight_config(corpus, steps: int = 8):
  config = tiny_config(corpus, steps=steps)
  config.model.dropout_rate = DROPOUT
  return config


@pytest.fixture(scope="module")
def straight_run(corpus, tmp_path_factory):
  """8 steps in one go, with dropout: the reference for the resume tests."""
  workdir = tmp_path_factory.mktemp("straight")
  summary = train_and_evaluate(straight_config(corpus), workdir)
  return workdir, summary


def test_a_run_learns_and_reports(straight_run):
  workdir, summary = straight_run
  assert summary.steps == 8 and not summary.interrupted
  assert np.isfinite(summary.val_loss)
  seq = losses(workdir)
  assert len(seq) == 8 and seq[-1] < seq[0]  # the loss falls even in 8 steps
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["d_model"] == 64 and saved["train"]["steps"] == 8
  # The same numbers as TensorBoard scalars (float32 there), validation at its steps too.
  scalars, purges = tensorboard(workdir)
  assert purges == []
  assert list(scalars["loss"]) == list(range(1, 9))
  np.testing.assert_allclose(list(scalars["loss"].values()), seq, rtol=1e-6)
  assert {"bits_per_byte", "lr", "grad_norm", "bytes_per_s", "input_wait_frac",
          "val_bpb"} <= set(scalars)
  assert sorted(scalars["val_bpb"]) == [4, 8]
  # The share of each log interval spent waiting for a batch (built ahead: train.prefetch 2).
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  waits = [r["input_wait_frac"] for r in rows if "loss" in r]
  assert len(waits) == 8 and all(0 <= w <= 1 for w in waits), waits


def test_rerunning_a_finished_run_reports_it_without_training(corpus, straight_run):
  """The same run, with only fields that are safe to change on resume changed (logging and
  checkpoint cadence): resumed, here finished, so reported as it ended."""
  workdir, first = straight_run
  config = tiny_config(corpus, steps=8)
  config.model.dropout_rate = DROPOUT
  config.train.log_every, config.ckpt.keep = 2, 3
  again = train_and_evaluate(config, workdir)
  assert (again.steps, again.train_loss, again.val_loss) == (8, first.train_loss, first.val_loss)
  assert saved_steps(workdir) == [4, 8] and len(losses(workdir)) == 8
  assert json.loads((workdir / "config.json").read_text())["train"]["log_every"] == 2


def test_a_finished_run_is_reused_untouched_and_an_empty_workdir_is_trained(
    corpus, straight_run, tmp_path):
  """train_unless_finished (what eval/ trains through): the finished run of the same config is
  not trained, evaluated or rewritten; a run of other steps is refused as a resume would be (it
  was trained on another schedule); an empty workdir is trained to its end."""
  workdir, first = straight_run
  before = {name: ((workdir / name).read_bytes(), (workdir / name).stat().st_mtime_ns)
            for name in ("metrics.jsonl", "config.json")}
  assert reuse.train_unless_finished(straight_config(corpus), workdir) == workdir
  with pytest.raises(workdir_lib.ConfigMismatch, match="train.steps"):
    reuse.train_unless_finished(straight_config(corpus, steps=4), workdir)
  assert before == {name: ((workdir / name).read_bytes(), (workdir / name).stat().st_mtime_ns)
                    for name in before}
  assert reuse.finished_steps(workdir) == 8
  last = reuse.last_evaluation(workdir)
  assert last["step"] == 8 and last["val_bpb"] == pytest.approx(first.val_bpb)
  assert "bits_per_byte" not in last  # the evaluation's figures, not the training log's

  fresh = tmp_path / "fresh"
  assert reuse.finished_steps(fresh) is None
  # straight_run's config: its train step is compiled already (the persistent compilation
  # cache), where another step count would compile another schedule into a new step. Its
  # batches built in the loop (prefetch 0) rather than ahead: the same run, bit for bit.
  config = straight_config(corpus)
  config.train.prefetch = 0
  assert reuse.train_unless_finished(config, fresh) == fresh
  assert reuse.finished_steps(fresh) == 8 and losses(fresh) == losses(workdir)
  assert_trees_equal(final_params(fresh), final_params(workdir))
  assert reuse.last_evaluation(fresh)["step"] == 8


def test_a_budgeted_benchmark_reuses_a_finished_run_and_reads_the_trainers_validation(
    corpus, straight_run):
  """budget.train_within (eval/compare.py, eval/hierarchical.py) keeps a finished run at the
  steps it has, whatever budget is asked; budget.train_source(..., "validation") gives the
  batches the trainer evaluated (eval/quant.py measures quantized models on them)."""
  workdir, first = straight_run
  config = straight_config(corpus, steps=3)
  run = budget.train_within(config, workdir, budget_bytes=1e9)
  assert run["reused"] and run["steps"] == config.train.steps == 8 and "seconds" not in run
  assert run["val_bpb"] == pytest.approx(first.val_bpb)

  module = bytelm.load(workdir).module
  loss_fn = models.family(config.model_family).loss_fn
  batches = list(budget.train_source(config, workdir, "validation")
                 .eval_batches(config.train.eval_batches))
  assert evaluation.evaluate_model(module, loss_fn, batches)["val_bpb"] == pytest.approx(
      first.val_bpb, rel=1e-5)


def test_training_stopped_by_a_signal_is_an_error_not_a_finished_run(corpus, tmp_path,
                                                                     monkeypatch):
  """A benchmark must not go on to measure a run that SIGTERM stopped half-way."""
  stopped = trainer.Summary(steps=3, seconds=1.0, train_loss=1.0, train_bpb=1.0, val_loss=1.0,
                            val_bpb=1.0, checkpoint="", stop_signal=signal.SIGTERM)
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda config, workdir: stopped)
  with pytest.raises(reuse.TrainingStopped, match="SIGTERM at step 3.*again to resume"):
    reuse.train_unless_finished(tiny_config(corpus, steps=8), tmp_path)


def test_resume_is_exact(corpus, straight_run, tmp_path):
  """4 steps, stop, restore from the workdir, 4 more == 8 straight: bit-identical, with the
  batches built ahead (train.prefetch) dropped at the stop and built again from step 4."""
  reference, _ = straight_run
  # The schedule depends on train.steps, so stop the 8-step run early instead of shortening it.
  config = tiny_config(corpus, steps=8)
  config.model.dropout_rate = DROPOUT
  assert config.train.prefetch == 2  # the default, as in straight_run
  _run_until(config, tmp_path, stop_at=4)
  assert saved_steps(tmp_path) == [4]
  summary = train_and_evaluate(config, tmp_path)
  assert summary.steps == 8
  assert losses(tmp_path) == losses(reference)
  assert_trees_equal(final_params(tmp_path), final_params(reference))
  # TensorBoard: the resumed run hides what the first wrote after its checkpoint (step 4), and
  # its plot is the straight run's.
  scalars, purges = tensorboard(tmp_path)
  assert purges == [5]
  assert scalars["loss"] == tensorboard(reference)[0]["loss"]


def test_steps_per_call_runs_the_same_steps_and_resumes_exactly(corpus, straight_run, tmp_path):
  """train.steps_per_call 3 (lax.scan over stacked batches) with log, evaluation and checkpoint
  steps every 4: calls of 3, 1, 3, 1 steps, stopped by Ctrl-C at step 4 and resumed; the losses
  logged, the checkpoint at the stop and the end's parameters are straight_run's (one step per
  call), dropout streams included."""
  reference, _ = straight_run
  config = straight_config(corpus)
  config.train.update(steps_per_call=3, log_every=4)
  assert (config.train.eval_every, config.ckpt.every) == (4, 4)
  assert [trainer.call_size(s, 3, (4, 4, 4), 8) for s in (0, 3, 4, 7)] == [3, 1, 3, 1]
  _run_until(config, tmp_path, stop_at=4)
  assert saved_steps(tmp_path) == [4]
  assert_trees_close(_restore(tmp_path, 4), _restore(reference, 4))
  assert train_and_evaluate(config, tmp_path).steps == 8
  expected = losses(reference)
  np.testing.assert_allclose(losses(tmp_path), [expected[3], expected[7]], rtol=1e-6)
  assert_trees_close(final_params(tmp_path), final_params(reference))


def _restore(workdir, step):
  with ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", keep=100) as checkpoints:
    return checkpoints.restore_raw(step)["0"]


def assert_trees_close(a, b, rtol=1e-6):
  """Equal up to float rounding: XLA may fuse a step inside a loop otherwise than alone."""
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(_plain(x), _plain(y), rtol=rtol, atol=1e-7)


def _run_until(config, workdir, stop_at):
  """Run `config` but send ourselves SIGINT after step `stop_at`, like a user's Ctrl-C."""
  from bytelm.training import trainer

  original, sent = trainer._check_finite, []

  def check_and_interrupt(metrics, step, *args):
    original(metrics, step, *args)
    if step == stop_at and not sent:  # a second SIGINT means "quit now", so only one
      sent.append(step)
      os.kill(os.getpid(), signal.SIGINT)

  trainer._check_finite = check_and_interrupt
  try:
    summary = train_and_evaluate(config, workdir)
  finally:
    trainer._check_finite = original
  assert summary.interrupted and summary.steps == stop_at
  assert summary.stop_signal == signal.SIGINT  # train.py exits 130
  return summary


# train.py, paused after the log step `step`: it touches `marker` and waits there (a minute at
# most) until the trainer has received a stop signal, so that the test signals a real process
# at a known step, whatever the machine's speed. SIGKILL ends it during the wait.
PAUSED_AT = """
import pathlib, runpy, signal, sys, time
from bytelm.training import trainer
original, paused = trainer._check_finite, []
def check_then_wait(metrics, step, *args):
  original(metrics, step, *args)
  if step == {step} and not paused:  # once: the stop's own save checks step {step} again
    paused.append(step)
    pathlib.Path({marker!r}).touch()
    stop = signal.getsignal(signal.SIGTERM).__self__  # the trainer's _StopRequested
    deadline = time.time() + 60
    while not stop.requested and time.time() < deadline:
      time.sleep(0.01)
trainer._check_finite = check_then_wait
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name="__main__")
"""


def _in(cwd) -> dict:
  """subprocess arguments to run in cwd with this checkout's bytelm (not an installed one)."""
  path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
  return {"cwd": cwd, "env": dict(os.environ, PYTHONPATH=path)}


def _signal_at(step, sig, flags, marker, cwd) -> int:
  """Run train.py with flags in cwd, send it `sig` when it reaches `step`; its exit status."""
  script = PAUSED_AT.format(step=step, marker=str(marker), train=str(ROOT / "train.py"))
  log = marker.with_suffix(".log")
  with log.open("w") as err:  # a file, not a pipe nobody reads while it runs
    proc = subprocess.Popen([sys.executable, "-c", script, *flags], stdout=subprocess.DEVNULL,
                            stderr=err, **_in(cwd))
    try:
      while not marker.exists():
        if proc.poll() is not None:
          raise AssertionError(f"train.py ended before step {step}: {log.read_text()[-3000:]}")
        time.sleep(0.05)
      marker.unlink()
      proc.send_signal(sig)
      proc.wait(timeout=300)
    finally:
      proc.kill()
  return proc.returncode


def test_stopped_and_killed_runs_resume_bit_for_bit(corpus, straight_run, tmp_path):
  """train.py stopped by SIGTERM saves and exits 143; killed by SIGKILL it loses only the
  steps since its last checkpoint (and leaves no lock behind); rerun after each, it ends bit
  for bit where the straight run did, dropout streams included. Without --workdir, each run
  goes to the default workdir of the variant and overrides, the cadence ones not counted."""
  reference, _ = straight_run
  # straight_run's config from the command line (a checkpoint cadence changes no step).
  spec, marker = str(ROOT / "configs/byt5.py:tiny"), tmp_path / "paused"
  flags = ["--config", spec, f"--config.data.train={corpus}",
           "--config.train.log_every=1", f"--config.model.dropout_rate={DROPOUT}",
           "--config.ckpt.every=2", "--config.ckpt.keep=100"]
  workdir = tmp_path / workdir_lib.default_workdir(
      spec, {"data.train": corpus, "model.dropout_rate": DROPOUT})
  assert workdir.parent == tmp_path / "workdirs" and workdir.name.startswith("byt5-tiny-")

  assert _signal_at(3, signal.SIGTERM, flags, marker, tmp_path) == 128 + signal.SIGTERM
  assert saved_steps(workdir) == [2, 3]  # it saved where it stopped
  assert len(losses(workdir)) == 3

  assert _signal_at(7, signal.SIGKILL, flags, marker, tmp_path) == -signal.SIGKILL
  # Orbax finishes one save before it starts the next: step 6's may have been cut short.
  assert saved_steps(workdir) in ([2, 3, 4], [2, 3, 4, 6])
  assert len(losses(workdir)) == 6  # step 7 died before its metrics were written

  subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], check=True,
                 capture_output=True, timeout=300, **_in(tmp_path))
  assert losses(workdir) == losses(reference)
  assert_trees_equal(final_params(workdir), final_params(reference))


MULTI_DEVICE_SCRIPT = """
import json, sys
import jax
from bytelm.training import train_and_evaluate, sharding
sys.path.insert(0, {tests!r})
from test_training import tiny_config, losses
import pathlib
out = {{}}
for name, mesh in (("one", {{"data": 1, "fsdp": 1}}), ("mesh", {{"data": 2, "fsdp": 2}})):
  config = tiny_config({corpus!r}, steps=3)
  config.mesh = mesh
  if name == "mesh":  # the 3 steps in one call: its stacked batches sharded on their rows' axis
    config.train.update(steps_per_call=3, log_every=3)
  workdir = pathlib.Path({tmp!r}) / name
  train_and_evaluate(config, workdir)
  out[name] = losses(workdir)
# Parameters and optimizer state really are sharded over fsdp on the 2x2 mesh.
import optax
from flax import nnx
from bytelm.models import t5
mesh = sharding.make_mesh({{"data": 2, "fsdp": 2}})
model = t5.T5(t5.preset("tiny"), rngs=nnx.Rngs(0))
state = nnx.state((model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)))
state = jax.device_put(state, sharding.state_shardings(state, mesh))
leaves = jax.tree_util.tree_leaves_with_path(state)
q = [x for p, x in leaves if "encoder" in jax.tree_util.keystr(p) and "'q'" in jax.tree_util.keystr(p)]
out["q_shards"] = [list(s.data.shape) for s in q[0].addressable_shards]
out["q_spec"] = list(q[0].sharding.spec)
out["sharded_fraction"] = sum(x.addressable_shards[0].data.size < x.size for _, x in leaves) / len(leaves)
out["devices"] = jax.device_count()
print("RESULT" + json.dumps(out))
"""


def test_multi_device_matches_one_device_and_shards_parameters(corpus, tmp_path):
  flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"),  # the suite's (conftest.py)
                                  "--xla_force_host_platform_device_count=4"]))
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  script = MULTI_DEVICE_SCRIPT.format(tests=str(ROOT / "tests"), corpus=corpus, tmp=str(tmp_path))
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert out["devices"] == 4
  np.testing.assert_allclose(out["mesh"], out["one"][-1:], atol=1e-5, rtol=0)
  assert out["q_spec"] == ["fsdp", None]
  assert out["q_shards"] == [[32, 64]] * 4  # (d_model 64 / fsdp 2, inner 64) on each device
  assert out["sharded_fraction"] > 0.5  # most leaves (kernels and their Adam moments)


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                         str(ROOT / "configs/byt5.py:tiny"), "--config.model.d_modle=32",
                         f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "d_modle" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_a_workdir_in_use_is_refused_and_a_released_lock_is_taken(corpus, tmp_path):
  with lock_lib.WorkdirLock(tmp_path):  # another run, as far as the trainer can tell
    with pytest.raises(lock_lib.WorkdirLocked, match=f'in use .*"pid": {os.getpid()}'):
      train_and_evaluate(tiny_config(corpus), tmp_path)
  assert [p.name for p in tmp_path.iterdir()] == ["lock"]  # nothing else was written
  # A run that ended, however (a SIGKILL too: the kernel drops its lock), leaves the file
  # but not the lock; the next run takes it and names itself.
  with lock_lib.WorkdirLock(tmp_path) as held:
    assert json.loads(held.path.read_text())["pid"] == os.getpid()


def test_a_negative_prefetch_is_refused_before_anything_is_written(corpus, tmp_path):
  with pytest.raises(ValueError, match="train.prefetch=-1.*or 0 to build each batch in the loop"):
    train_and_evaluate(tiny_config(corpus, prefetch=-1), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_missing_data_is_a_clear_error(tmp_path):
  config = tiny_config(f"file:{tmp_path}/nothing/*.txt")
  with pytest.raises(Exception, match="nothing"):
    train_and_evaluate(config, tmp_path / "run")


def _snapshot(workdir):
  """What a refused run must not touch: every file but the lock, with its bytes."""
  return {p.relative_to(workdir): p.read_bytes() for p in sorted(workdir.rglob("*"))
          if p.is_file() and p.name != lock_lib.FILENAME}


# Each a change that makes another run: the model's shape, a data field, an optimizer value
# (the checkpoint would restore: only the configs differ), the seed, the global batch.
CHANGED = [("model.d_model", 32, 64), ("data.noise_density", 0.3, 0.15),
           ("opt.lr", 1e-3, 0.002), ("seed", 1, 0), ("train.batch_size", 8, 4)]


def test_a_workdir_of_another_config_is_refused_and_kept(corpus, straight_run):
  workdir, _ = straight_run
  before = _snapshot(workdir)
  for field, value, stored in CHANGED:
    config = tiny_config(corpus, steps=8)
    config.model.dropout_rate = DROPOUT
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(workdir_lib.ConfigMismatch) as refused:
      train_and_evaluate(config, workdir)
    message = str(refused.value)
    assert f"{field}: the workdir's run has {stored!r}, this config {value!r}" in message
    assert "--workdir" in message and "--config.resume=false" in message  # the two ways out
    assert _snapshot(workdir) == before  # nothing touched, config.json included


def test_a_changed_step_count_is_refused_saying_how_to_train_on(corpus, straight_run):
  """train.steps shapes the learning-rate schedule: more steps is a new run, from this one."""
  workdir, _ = straight_run
  before = _snapshot(workdir)
  config = tiny_config(corpus, steps=12)
  config.model.dropout_rate = DROPOUT
  with pytest.raises(workdir_lib.ConfigMismatch,
                     match=rf"(?s)train.steps: the workdir's run has 8, this config 12.*"
                           rf"--config.init_from={workdir}"):
    train_and_evaluate(config, workdir)
  assert _snapshot(workdir) == before


def test_resume_false_refuses_a_workdir_that_holds_a_run(corpus, straight_run, tmp_path):
  workdir, _ = straight_run
  before = _snapshot(workdir)
  config = tiny_config(corpus, steps=8)
  config.model.dropout_rate = DROPOUT  # the run's own config: still refused
  config.resume = False
  with pytest.raises(workdir_lib.WorkdirNotEmpty, match="already holds a run.*another --workdir"):
    train_and_evaluate(config, workdir)
  assert _snapshot(workdir) == before
  (tmp_path / "notes.txt").write_text("a user's file")  # anything at all: never deleted
  with pytest.raises(workdir_lib.WorkdirNotEmpty, match="already holds files"):
    train_and_evaluate(config, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["lock", "notes.txt"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
  config = tiny_config(corpus, steps=8)
  # A run that diverges half-way: the two-stage schedule's second stage (from step 4) at 1e33
  # times the first's learning rate blows the parameters up after the checkpoint at step 4.
  config.opt.update(schedule="two_stage", warmup_steps=0, second_stage_lr=1e33)
  config.resume = False  # (and resume=false takes an empty workdir)
  with pytest.raises(FloatingPointError, match=r"at step \d.*last good checkpoint is step 4"):
    train_and_evaluate(config, tmp_path)
  assert saved_steps(tmp_path) == [4]
  logged = losses(tmp_path)  # up to the last finite step: the NaN is not logged as a loss
  assert len(logged) >= 5 and all(np.isfinite(logged))


# Orbax's failed read leaves an event-loop callback behind (see pyproject's filterwarnings).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_checkpoint_falls_back_with_a_warning(corpus, tmp_path, caplog):
  # straight_run's config (dropout on, which the fallback does not depend on): its train step
  # is compiled already (the persistent compilation cache), not compiled again without dropout.
  config = straight_config(corpus)
  config.ckpt.every = 2
  _run_until(config, tmp_path, stop_at=4)  # checkpoints 2 and 4
  newest = tmp_path / "checkpoints" / "4" / "state"
  biggest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 3])
  with caplog.at_level(logging.WARNING, logger="bytelm"):
    summary = train_and_evaluate(config, tmp_path)
  assert summary.steps == 8
  assert any("checkpoint 4" in r.getMessage() and "falling back" in r.getMessage()
             for r in caplog.records)
  assert list((tmp_path / "checkpoints").glob("4.unreadable-*"))  # set aside, not deleted


def test_init_from_a_workdir_or_a_hugging_face_directory(corpus, straight_run):
  """init_from loads the source's parameters (not its optimizer or step); a HF directory's
  architecture wins over config.model, with this run's runtime fields."""
  from flax import nnx
  from bytelm import models

  workdir, _ = straight_run
  family = models.family("t5")
  config = tiny_config(corpus)
  config.init_from = str(workdir)
  model, _ = model_init.init_model(config, family, model_init.model_config(config, family),
                                   nnx.Rngs(1))
  loaded = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  saved = _flat(final_params(workdir))
  assert len(loaded) > 10
  for name, value in loaded.items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)

  config.init_from = str(ROOT / "tests" / "fixtures" / "t5_untied")
  config.model.dropout_rate = 0.1
  model, cfg = model_init.init_model(config, family, model_init.model_config(config, family),
                                     nnx.Rngs(1))
  assert (cfg.d_model, cfg.num_encoder_layers, cfg.dropout_rate) == (48, 3, 0.1)
  assert model.encoder.dropout.deterministic is False  # training mode, unlike load_hf's eval


def test_load_reads_the_model_alone(straight_run, monkeypatch):
  """bytelm.load of a workdir restores the model's parameters from the checkpoint, and
  builds no optimizer (whose state it would only throw away)."""
  from flax import nnx
  import bytelm

  def no_optimizer(*args, **kwargs):
    raise AssertionError("load built an optimizer")

  monkeypatch.setattr(nnx, "Optimizer", no_optimizer)
  workdir, _ = straight_run
  model = bytelm.load(workdir).module
  loaded = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  saved = _flat(final_params(workdir))
  assert len(loaded) > 10 and model.encoder.dropout.deterministic  # ready for inference
  for name, value in loaded.items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)


def _flat(tree, prefix=""):
  """{"encoder/blocks/0/attn/q/kernel": array}: restored checkpoints say "0" and wrap leaves
  in {"value": ...}; live states say 0."""
  if isinstance(tree, dict):
    if set(tree) == {"value"}:
      return _flat(tree["value"], prefix)
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}/{k}" if prefix else str(k)))
    return out
  return {prefix: np.asarray(tree)} if not jax.dtypes.issubdtype(
      getattr(tree, "dtype", np.float32), jax.dtypes.prng_key) else {}
