"""The training loop: `train_and_evaluate(config, workdir)`.

Reads top to bottom in execution order: set-up (and the check that the workdir may take this
run), mesh, data, model and optimizer, restore, step functions, loop, summary. The train step
is a pure function of (state, batch) -> (state, metrics), jitted once with the state donated;
the model and optimizer are split once (`nnx.split`) and merged inside the compiled function,
which costs no Python per step (docs/architecture.md, "the step").

A run is reproducible from its workdir (bytelm.runs): config.json, metrics.jsonl, and
checkpoints holding model, optimizer, RNG state and the data position. The data of step s is a
function of (seed, s) only, so resuming needs nothing but the step; a workdir resumes only with
its run's own config (bytelm.runs.workdir.check_resume).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from bytelm import models
from bytelm.data import prefetch as prefetch_lib
from bytelm.models import calibration
from bytelm.nn import batching, cpu_attention
from bytelm.runs import checkpoint as ckpt_lib
from bytelm.runs import data as data_lib
from bytelm.runs import lock as lock_lib
from bytelm.runs import workdir as workdir_lib
from bytelm.text import segment_jax
from bytelm.training import metrics as metrics_lib
from bytelm.training import model_init
from bytelm.training import optimizer as optim
from bytelm.training import report as report_lib
from bytelm.training import sharding
from bytelm.training.evaluation import eval_step, evaluate

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Summary:
  """What a finished (or interrupted) run reports."""
  steps: int
  seconds: float
  train_loss: float
  train_bpb: float
  val_loss: float
  val_bpb: float
  checkpoint: str
  stop_signal: int = 0  # the signal that interrupted the run (SIGTERM, SIGINT), 0 if none
  extras: dict[str, float] = dataclasses.field(default_factory=dict)  # the family's report

  @property
  def interrupted(self) -> bool:
    return self.stop_signal != 0

  def __str__(self):
    state = "interrupted" if self.interrupted else "finished"
    lines = [f"training {state} after {self.steps} steps in "
             f"{metrics_lib.fmt_duration(self.seconds)}",
             f"  final train loss {self.train_loss:.4f} ({self.train_bpb:.3f} bits/byte)",
             f"  validation loss  {self.val_loss:.4f} ({self.val_bpb:.3f} bits/byte)"]
    lines += [f"  {name:<16} {value:.4g}" for name, value in self.extras.items()]
    lines.append(f"  checkpoint       {self.checkpoint}")
    return "\n".join(lines)


class _StopRequested:
  """SIGTERM / Ctrl-C set a flag; the loop saves a checkpoint and returns at the next step
  boundary: the end of the call under way (train.steps_per_call steps at most).

  Several processes must stop at one step, or one waits forever in a collective the others left
  (and their checkpoints would be of different steps). There each process's flag is gathered
  from all at log and checkpoint steps, where the host syncs anyway: any process's signal stops
  every process at the same step, and a run of one process pays for no collective. JAX's
  preemption sync point (multihost_utils.reached_preemption_sync_point) would answer every step,
  but orbax's save_finalize thread calls it with the step it finalizes, which resets the step
  that process reports: a SIGTERM then can stop one process and not the other (seen with jax
  0.10.2 and orbax), so its C++ SIGTERM handler is replaced by ours, as before.
  """

  def __init__(self):
    self.signum = 0  # the first signal received; 0 while none was
    self._previous = {}
    self._processes = jax.process_count()

  @property
  def requested(self) -> bool:
    return self.signum != 0

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested:  # a second Ctrl-C: the user really wants out
      raise KeyboardInterrupt
    self.signum = signum
    when = "" if self._processes == 1 else " at the next log or checkpoint step, with every process"
    log.warning("received %s: saving a checkpoint and stopping%s", signal.Signals(signum).name,
                when)

  def should_stop(self, step: int, synced: bool) -> bool:
    """Whether to save and stop after `step`, the same answer in every process. synced: a step
    at which every process asks (log and checkpoint steps); only there do several agree."""
    if self._processes == 1:
      return self.requested
    if not synced:
      return False
    signums = multihost_utils.process_allgather(np.int32(self.signum))
    if not signums.any():
      return False
    self.signum = self.signum or int(signums[signums != 0][0])  # another process's signal
    log.warning("%s: every process saves and stops at step %d",
                signal.Signals(self.signum).name, step)
    return True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _maybe_init_distributed(config: ml_collections.ConfigDict) -> None:
  """Several processes (hosts): join them where the config or the environment describes a
  cluster, before JAX touches a device. config.distributed (coordinator_address: host:port of
  process 0, num_processes, process_id) names it by hand, each field unset there falling back
  to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID; BYTELM_DISTRIBUTED=1 leaves
  it to JAX's detection of SLURM, Open MPI and TPU pods. On CPUs the processes' collectives go
  through gloo."""
  kwargs = _distributed_args(config.get("distributed") or {}, os.environ)
  if kwargs is None or jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; GPUs use NCCL
  jax.distributed.initialize(**kwargs)


def _distributed_args(dist, env) -> dict | None:
  """jax.distributed.initialize's arguments from config.distributed and the environment (the
  config's value where set), or None for a single process."""
  def setting(field, var, unset, kind):
    value = dist.get(field, unset)
    if value != unset:
      return value
    try:
      return kind(env[var]) if env.get(var) else None
    except ValueError:
      raise ValueError(f"{var}={env[var]!r} is not a whole number; set it to one, or "
                       f"--config.distributed.{field}") from None

  address = setting("coordinator_address", "JAX_COORDINATOR_ADDRESS", "", str)
  num = setting("num_processes", "JAX_NUM_PROCESSES", 0, int)
  pid = setting("process_id", "JAX_PROCESS_ID", -1, int)
  auto = bool(env.get("BYTELM_DISTRIBUTED"))
  if not address:
    if not auto and (dist.get("num_processes", 0) != 0 or dist.get("process_id", -1) != -1):
      raise ValueError(
          "config.distributed sets num_processes or process_id but no coordinator address: set "
          "--config.distributed.coordinator_address=HOST:PORT (process 0's host and a free port) "
          "or JAX_COORDINATOR_ADDRESS, or BYTELM_DISTRIBUTED=1 under SLURM, Open MPI or a TPU pod")
    # BYTELM_DISTRIBUTED: JAX finds what is unset (None) from the cluster's environment.
    return (None if not auto else
            {k: v for k, v in (("num_processes", num), ("process_id", pid)) if v is not None})
  missing = [f"{name} (--config.distributed.{name} or {var})"
             for name, var, value in (("num_processes", "JAX_NUM_PROCESSES", num),
                                      ("process_id", "JAX_PROCESS_ID", pid)) if value is None]
  if missing:
    raise ValueError(f"a coordinator address ({address}) is set but not {' and '.join(missing)}: "
                     "set how many processes there are and this one's id (0 for the "
                     "coordinator's) in every process")
  if not 0 <= pid < num:
    raise ValueError(f"process_id {pid} is not one of the {num} processes' ids 0..{num - 1}: give "
                     "each process its own id below num_processes (--config.distributed.* or "
                     "JAX_PROCESS_ID / JAX_NUM_PROCESSES)")
  return dict(coordinator_address=address, num_processes=num, process_id=pid)


# ---- steps ----------------------------------------------------------------------------------------


def train_step(state, batch, *, graphdef, loss_fn, schedule, z_loss, after_step=None):
  """One optimizer step: (state, batch) -> (state, metrics). Pure; the trainer jits it once.

  after_step(model, metrics), if given, updates the model's non-trained state from this step's
  metrics (MrT5's deletion controller): once per optimizer step, on training batches only.
  """
  model, optimizer = nnx.merge(graphdef, state)
  lr = schedule(optimizer.step[...])
  with batching.for_gradients():  # the model is traced the way this machine's gradients run
    (loss, metrics), grads = nnx.value_and_grad(
        lambda m: loss_fn(m, batch, z_loss=z_loss), has_aux=True)(model)
  optimizer.update(model, grads)
  if after_step is not None:
    after_step(model, metrics)
  metrics = dict(metrics, lr=lr, grad_norm=_global_norm(grads))
  return nnx.state((model, optimizer)), metrics


def train_steps(state, batches, **step_kw):
  """k optimizer steps in one call over batches stacked on a leading axis ([k, B, T]): the
  same `train_step`, run k times by `lax.scan` inside one compiled program. A small model's step
  on a GPU is bound by kernel launches and the host's dispatch, not arithmetic; one call of k
  steps pays the dispatch once. Returns (state, the last step's metrics): what the loop logs."""
  state, metrics_k = jax.lax.scan(lambda s, batch: train_step(s, batch, **step_kw), state,
                                  batches)
  return state, jax.tree.map(lambda m: m[-1], metrics_k)


def call_size(step: int, steps_per_call: int, every: tuple[int, ...], stop: int) -> int:
  """How many steps the call after `step` runs: steps_per_call where that reaches no log,
  evaluation or checkpoint step (a multiple of one of `every`) or `stop` before its end, else 1
  (so every such step ends a call, and only two programs are compiled: k steps and one)."""
  end = step + steps_per_call
  if end > stop or any(s % n == 0 for s in range(step + 1, end) for n in every):
    return 1
  return steps_per_call


def stack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Batches of consecutive steps as one batch of a leading step axis ([k, B, T])."""
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


# ---- the loop -------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> Summary:
  """Train the model described by `config`, resuming from `workdir` if it holds a checkpoint
  of the same run. One run at a time per workdir: another run's lock is an error
  (`bytelm.runs.lock.WorkdirLocked`); a workdir of another config, or any non-empty one with
  config.resume false, is refused before anything is written (`bytelm.runs.workdir.
  ConfigMismatch`)."""
  _maybe_init_distributed(config)
  with workdir_lib.made(workdir) as workdir:  # removed again if the run cannot start
    with lock_lib.WorkdirLock(workdir, enabled=jax.process_index() == 0):
      return _train_and_evaluate(config, workdir)


# The families whose encoder may run one example at a time (bytelm.nn.batching): where their
# inputs are long enough, the machine's choice is calibrated (once) before the step compiles.
_STACKS_OVER_EXAMPLES = ("t5", "mrt5", "tagger")


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Summary:
  # -- set-up --
  is_main = jax.process_index() == 0
  family = models.family(config.model_family)
  model_cfg = model_init.model_config(config, family)
  tc = config.train
  if tc.steps <= 0 or tc.batch_size <= 0:
    raise ValueError(f"train.steps={tc.steps} and train.batch_size={tc.batch_size} must be > 0")
  # A config file written before train.prefetch existed builds batches two steps ahead too.
  prefetch = tc.get("prefetch", 2)
  if not isinstance(prefetch, int) or prefetch < 0:
    raise ValueError(f"train.prefetch={prefetch!r}: give the number of batches to build ahead "
                     "(2 hides the host's batch building behind the device step), or 0 to "
                     "build each batch in the loop")
  # A config file written before train.steps_per_call existed ran one step per call.
  per_call = tc.get("steps_per_call", 1)
  if not isinstance(per_call, int) or per_call < 1:
    raise ValueError(f"train.steps_per_call={per_call!r}: give the optimizer steps to run in "
                     "one compiled call (1, or e.g. 4 where small steps are launch-bound on an "
                     "accelerator; a divisor of train.log_every keeps every call that long)")
  resolved = model_init.resolved(config)
  # Before anything is written. With init_from, the architecture comes from the source (read
  # below), so here only the model fields this config decides; the restore checks the rest.
  unknown_yet = () if not config.init_from else tuple(
      f"model.{f}" for f in resolved["model"] if f not in model_init.from_run(model_cfg))
  workdir_lib.check_resume(workdir, resolved, ignore=unknown_yet)

  # -- mesh --
  mesh = sharding.make_mesh(config.mesh.to_dict())
  sharding.check_batch(tc.batch_size, mesh)
  log.info("devices: %d (%s), mesh %s, process %d/%d", jax.device_count(),
           jax.default_backend(), dict(mesh.shape), jax.process_index(), jax.process_count())
  # This machine's choices, before the step compiles (its trace reads them): the attention
  # kernels first, which the batching calibration then runs with.
  if jax.default_backend() == "cpu" and jax.device_count() == 1:
    log.info("%s", cpu_attention.describe())
  if (config.model_family in _STACKS_OVER_EXAMPLES
      and config.data.get("input_length", 0) >= batching.MIN_LENGTH):
    log.info("%s", batching.prepare(calibration.t5_gradients, calibration.t5_forward))

  # -- data --
  data = data_lib.sources(config, workdir, process_index=jax.process_index(),
                          process_count=jax.process_count(), write=is_main)
  train_data = data["train"]
  # The same held-out bytes at every evaluation: put on the devices once.
  val_batches = [sharding.put_batch(b, mesh)
                 for b in data["validation"].eval_batches(tc.eval_batches)]

  # -- model and optimizer --
  rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  model, model_cfg = model_init.init_model(config, family, model_cfg, rngs)
  tx, schedule = optim.make_optimizer(config.opt, tc.steps)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  del model, optimizer  # the state is the single source of truth from here on
  state_sh = sharding.state_shardings(state, mesh)
  state = sharding.put_state(state, state_sh)
  resolved["model"] = dataclasses.asdict(model_cfg)

  # -- restore --
  checkpoints = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.ckpt.keep)

  streams = data_lib.stream_hashes(data)

  def check_meta(meta):  # the checkpoint's own config, the model as built included
    workdir_lib.check_compatible(workdir, meta["config"], resolved)
    if meta.get("streams", streams) != streams:  # (a checkpoint from before them: none)
      raise workdir_lib.ConfigMismatch(
          f"{workdir}'s run trained on other data than data.train / data.validation name now "
          f"(the SHA-256 of their prepared streams differ: {meta['streams']} then, {streams} "
          "now): a source's files changed since. Restore them to resume the run, or train on "
          "the new data into another --workdir; nothing was changed.")

  start_step = 0
  restored = checkpoints.restore_latest(ckpt_lib.abstract_like(state), check_meta)
  if is_main:  # only now: a refused workdir keeps the config.json of its own run
    workdir_lib.write_config(workdir, resolved)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
  if restored is not None:
    start_step, state, meta = restored
    log.info("resumed from step %d in %s", start_step, checkpoints.directory)
    writer.truncate_after(start_step)
  last_saved = start_step if restored is not None else None

  # -- step functions --
  batch_sh = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  # A hierarchical model's segment ids are computed from the batch inside the step.
  loss_fn = segment_jax.with_segments(family.loss_fn, train_data.device_segmenter)
  step_kw = dict(graphdef=graphdef, loss_fn=loss_fn, schedule=schedule,
                 z_loss=config.opt.z_loss, after_step=family.after_step)
  train_fn = jax.jit(functools.partial(train_step, **step_kw),
                     in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                     donate_argnums=0)
  # train.steps_per_call > 1: that many steps per call where no log, evaluation or checkpoint
  # step falls inside it (call_size), one at a time before those that do.
  train_k_fn = jax.jit(functools.partial(train_steps, **step_kw),
                       in_shardings=(state_sh, sharding.batch_sharding(mesh, stacked=True)),
                       out_shardings=(state_sh, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, graphdef=graphdef, loss_fn=loss_fn,
                                     extra=family.eval_metrics),
                    in_shardings=(state_sh, batch_sh), out_shardings=replicated)

  def save(step: int, train_metrics) -> None:
    nonlocal last_saved
    _check_finite(train_metrics, step, last_saved, checkpoints.directory)
    checkpoints.save(step, state, {"step": step, "data": train_data.state(step),
                                   "config": resolved, "streams": streams})
    last_saved = step

  # -- loop --
  progress = metrics_lib.Progress(start_step, tc.steps, enabled=is_main)
  bytes_per_step = train_data.bytes_per_batch
  # The same batch_fn(step) as building each in the loop, built ahead (bytelm/data/prefetch.py):
  # `prefetch` calls' worth of batches.
  batches = prefetch_lib.Prefetcher(train_data.batch, start_step, tc.steps,
                                    depth=prefetch * per_call)
  cadence = (tc.log_every, tc.eval_every, config.ckpt.every)
  start_time = time.perf_counter()
  last_log = (start_time, 0.0)  # (time, batches.wait_seconds) at the previous log step
  # A mixture's rows per source since the previous log step (global: a pure function of step).
  mixed = train_data.weights is not None
  source_rows = np.zeros(len(train_data.sources), np.int64)
  step, metrics, host_metrics, val = start_step, None, {}, {}
  stop_signal = 0
  try:
    with _StopRequested() as stop:
      while step < tc.steps:
        k = call_size(step, per_call, cadence, tc.steps)
        if k == 1:
          state, metrics = train_fn(state, sharding.put_batch(batches.get(step), mesh))
        else:
          stacked = stack([batches.get(s) for s in range(step, step + k)])
          state, metrics = train_k_fn(state, sharding.put_batch(stacked, mesh, stacked=True))
        if mixed and is_main:
          for s in range(step, step + k):
            source_rows += np.bincount(train_data.row_sources(s), minlength=len(source_rows))
        first_call = step == start_step
        step += k
        if first_call:
          jax.block_until_ready(metrics)
          progress.mark_compiled(step)
        if step % tc.log_every == 0 or step == tc.steps:
          host_metrics = jax.device_get(metrics)  # the only host sync between log steps
          _check_finite(host_metrics, step, last_saved, checkpoints.directory)
          bps, eta = progress.rates(step, bytes_per_step)
          # The share of the time since the previous log step that the loop waited for input
          # (prefetch 0: spent building it); near 0 when the host keeps the device fed.
          now = (time.perf_counter(), batches.wait_seconds)
          wait_frac = (now[1] - last_log[1]) / max(now[0] - last_log[0], 1e-9)
          last_log = now
          per_source = {f"source_bytes/{name}": n * train_data.bytes_per_example
                        for name, n in zip(train_data.sources, source_rows)} if mixed else {}
          source_rows[:] = 0
          writer.write(step, **host_metrics, bytes_per_s=bps, input_wait_frac=wait_frac,
                       **per_source)
          extra = "".join(f"{k} {host_metrics[k]:.3f} " for k in family.eval_metrics)
          progress.update(step, f"loss {host_metrics['loss']:.4f} "
                                f"bpb {host_metrics['bits_per_byte']:.3f} {extra}"
                                f"lr {host_metrics['lr']:.2e} {bps:,.0f} bytes/s "
                                f"input wait {wait_frac:.0%} "
                                f"ETA {metrics_lib.fmt_duration(eta)}")
        if step % tc.eval_every == 0 or step == tc.steps:
          val = evaluate(eval_fn, state, val_batches)
          writer.write(step, **val)
          progress.update(step, f"validation loss {val['val_loss']:.4f} "
                                f"bpb {val['val_bpb']:.3f}")
        if step % config.ckpt.every == 0 or step == tc.steps:
          save(step, metrics)
        if stop.should_stop(step, synced=step % tc.log_every == 0 or step == tc.steps
                            or step % config.ckpt.every == 0):
          stop_signal = stop.signum
          if last_saved != step:
            save(step, metrics)
          break
  finally:
    batches.close()  # stops the thread: a break, an error or Ctrl-C leaves none behind
    progress.close()
    writer.close()
    checkpoints.close()  # waits for the async save: a finished run's checkpoint is complete

  if metrics is not None and not host_metrics:
    host_metrics = jax.device_get(metrics)
  elif metrics is None:  # nothing left to train: report what the finished run logged last
    host_metrics = writer.last_row_with("loss")
  if not val:
    val = evaluate(eval_fn, state, val_batches)
  extras = {k: v for k, v in val.items() if k not in ("val_loss", "val_bpb", "val_targets")}
  if family.report is not None and not stop_signal:
    model, _ = nnx.merge(graphdef, state)
    log.info("measuring the trained model (%s)", config.model_family)
    extras.update(report_lib.end_of_run(family, model, val_batches))
    if metrics is not None:  # a rerun of a finished run logged its report already
      writer.write(step, **extras)
      writer.close()
  summary = Summary(steps=step, seconds=time.perf_counter() - start_time,
                    train_loss=float(host_metrics.get("loss", math.nan)),
                    train_bpb=float(host_metrics.get("bits_per_byte", math.nan)),
                    val_loss=val["val_loss"], val_bpb=val["val_bpb"],
                    checkpoint=str(checkpoints.directory / str(last_saved)),
                    stop_signal=stop_signal, extras=extras)
  return summary


def _check_finite(metrics, step: int, last_saved, directory) -> None:
  """Stop on a NaN/Inf loss, naming the step and the last good checkpoint (never overwritten)."""
  loss = float(jax.device_get(metrics["loss"]))
  if not math.isfinite(loss):
    where = (f"the last good checkpoint is step {last_saved} in {directory}" if last_saved
             is not None else "no checkpoint was saved yet")
    raise FloatingPointError(f"loss is {loss} at step {step}; {where}. Lower opt.lr, raise "
                             "opt.warmup_steps or set opt.grad_clip, then rerun to resume.")
