"""The training loop: `train_and_evaluate(config, workdir)`.

Reads top to bottom in execution order: set-up, mesh, data, model and optimizer, restore, step
functions, loop, summary. The train step is a pure function of (state, batch) -> (state, metrics),
jitted once with the state donated; the model and optimizer are split once (`nnx.split`) and merged
inside the compiled function, which costs no Python per step (docs/architecture.md, "the step").

A run is reproducible from its workdir: config.json, metrics.jsonl, and checkpoints holding model,
optimizer, RNG state and the data position. The data of step s is a function of (seed, s) only,
so resuming needs nothing but the step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from bytelm import convert, models
from bytelm.data import bpe, pipeline
from bytelm.quant import convert as quant_convert
from bytelm.training import checkpoint as ckpt_lib
from bytelm.training import export as export_lib
from bytelm.training import lock as lock_lib
from bytelm.training import metrics as metrics_lib
from bytelm.training import optimizer as optim
from bytelm.training import report as report_lib
from bytelm.training import sharding

log = logging.getLogger(__name__)

# What init_from takes from this run's config (the family's RUNTIME_FIELDS and these two);
# everything else comes from the source checkpoint.
_FROM_RUN = ("attention_softmax", "param_dtype")


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
  """SIGTERM / Ctrl-C set a flag; the loop saves a checkpoint and returns at the next step."""

  def __init__(self):
    self.signum = 0  # the first signal received; 0 while none was
    self._previous = {}

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
    log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _maybe_init_distributed() -> None:
  """Multi-host runs: initialise when the environment describes a cluster."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("BYTELM_DISTRIBUTED"):
    jax.distributed.initialize()


def _write_json_atomic(path: pathlib.Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
  os.replace(tmp, path)


# ---- model ----------------------------------------------------------------------------------------


def _model_config(config, family):
  """The model's frozen config from config.model, naming any field the family lacks."""
  fields = {f.name for f in dataclasses.fields(family.config_cls)}
  unknown = set(config.model) - fields
  if unknown:
    raise ValueError(f"config.model has unknown fields {sorted(unknown)}; "
                     f"{family.config_cls.__name__} has {sorted(fields)}")
  return family.config_cls(**config.model.to_dict())


def _init_model(config, family, model_cfg, rngs):
  """A fresh model, or one initialised from a Hugging Face directory / another bytelm workdir."""
  init_from = config.init_from
  if not init_from:
    return family.model_cls(model_cfg, rngs=rngs), model_cfg
  path = pathlib.Path(init_from).expanduser()
  if (path / "checkpoints").is_dir():  # a bytelm workdir
    model = _with_config(load(path), None, family, rngs, model_cfg)
  else:  # a Hugging Face T5 / ByT5 directory (or Hub name)
    model, src_cfg = convert.load_hf(init_from, dtype=model_cfg.dtype,
                                     param_dtype=model_cfg.param_dtype)
    model = _with_config(model, src_cfg, family, rngs, model_cfg)
  new_cfg = model.config
  differ = [f for f in dataclasses.asdict(new_cfg)
            if f not in model_cfg.RUNTIME_FIELDS + _FROM_RUN
            and getattr(new_cfg, f) != getattr(model_cfg, f)]
  if differ:
    log.warning("init_from=%s: the model's shape comes from the checkpoint; config.model's %s "
                "were ignored", init_from, differ)
  model.train()
  return model, new_cfg


def _with_config(model, src_cfg, family, rngs, model_cfg):
  """`model`'s parameters in a fresh model with the source's architecture and this run's
  runtime choices (dropout, dtypes, softmax).

  The source may be of another family: a ByT5 initialises an MrT5 (whose gate then starts
  fresh, with this run's gate fields), and an MrT5's T5 parameters initialise a ByT5.
  """
  src_cfg = src_cfg or model.config
  from_run = model_cfg.RUNTIME_FIELDS + _FROM_RUN
  cfg = model_cfg.replace(**{f.name: getattr(src_cfg, f.name)
                             for f in dataclasses.fields(src_cfg)
                             if f.name not in from_run and hasattr(model_cfg, f.name)})
  fresh = family.model_cls(cfg, rngs=rngs)
  params = nnx.state(model, nnx.Param)
  fresh_paths = {path for path, _ in nnx.to_flat_state(nnx.state(fresh, nnx.Param))}
  shared = nnx.from_flat_state(
      [(path, v) for path, v in nnx.to_flat_state(params) if path in fresh_paths])
  nnx.update(fresh, jax.tree.map(lambda x: jnp.asarray(x, cfg.param_dtype), shared))
  return fresh


def evaluated_at(workdir, steps: int) -> bool:
  """Whether the run in workdir was evaluated at step `steps` or later (a finished run: eval
  scripts reuse it rather than train again)."""
  metrics = pathlib.Path(workdir) / "metrics.jsonl"
  if not metrics.exists():
    return False
  records = map(json.loads, metrics.read_text(encoding="utf-8").splitlines())
  return any("val_bpb" in r and r["step"] >= steps for r in records)


def read_config(directory) -> dict:
  """The config.json of a workdir or export (or of a Hugging Face model directory)."""
  directory = pathlib.Path(directory).expanduser()
  config_path = directory / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{directory} is not a bytelm workdir: it has no config.json "
                            "(train into it with `python train.py --config ... --workdir DIR`, "
                            "or give an export or a Hugging Face ByT5 directory)")
  return json.loads(config_path.read_text(encoding="utf-8"))


def load(workdir, **runtime) -> nnx.Module:
  """The model of the newest readable checkpoint in a bytelm workdir, ready for inference.

  `bytelm.load_module(workdir)`: also reads an export (`bytelm.training.export`). The family (T5, MrT5, ...) and its config come from the run's
  config.json; the optimizer state is not kept. The workdir is only read. Keyword arguments
  override the config's runtime fields (those a checkpoint does not depend on, e.g. `dtype`,
  or MrT5's `bucket_multiple`).
  """
  workdir = pathlib.Path(workdir).expanduser()
  saved = read_config(workdir)
  config_path = workdir / "config.json"
  family = models.family(saved.get("model_family", "t5"))
  known = {f.name for f in dataclasses.fields(family.config_cls)}
  unknown = sorted(set(saved["model"]) - known)
  if unknown:
    raise ValueError(f"{config_path} names model fields this version of bytelm does not have: "
                     f"{', '.join(unknown)}. The run was made by another version; load it with "
                     "that version (nothing was changed).")
  fixed = sorted(set(runtime) - set(family.config_cls.RUNTIME_FIELDS))
  if fixed:
    raise ValueError(f"load({workdir}): {', '.join(fixed)} cannot be overridden at load (the "
                     f"checkpoint depends on them); runtime fields: "
                     f"{', '.join(family.config_cls.RUNTIME_FIELDS)}")
  model = family.model_cls(family.config_cls(**{**saved["model"], **runtime}), rngs=nnx.Rngs(0))
  if export_lib.is_export(workdir):
    quantized = saved.get("export", {}).get("quantized")
    if quantized:  # the same integer structure, then its arrays
      model = quant_convert.quantize(model, **quantized)
    model = export_lib.restore(model, workdir)
    model.eval()
    return model
  opt = ml_collections.ConfigDict(saved["opt"])
  optimizer = nnx.Optimizer(model, optim.make_optimizer(opt, saved["train"]["steps"])[0],
                            wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  with ckpt_lib.Checkpointer(workdir / "checkpoints", keep=1_000_000, async_save=False) as ckpt:
    restored = ckpt.restore_latest(ckpt_lib.abstract_like(state), check_meta=lambda meta: None,
                                   set_aside=False)
  if restored is None:
    raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint yet")
  model, _ = nnx.merge(graphdef, restored[1])
  model.eval()
  return model


def _tokenizer(dc, workdir: pathlib.Path, model_cfg, write: bool):
  """The run's BPE tokenizer (workdir/tokenizer.json, trained there on first use), checked to
  fit the model's embedding."""
  tok = bpe.load_or_train(workdir / bpe.FILENAME, dc.train, dc.tokenizer.vocab_size,
                          write=write)
  if tok.get_vocab_size() > model_cfg.vocab_size:
    raise ValueError(f"the tokenizer has {tok.get_vocab_size()} tokens but the model only "
                     f"{model_cfg.vocab_size} embedding rows; set model.vocab_size >= "
                     f"{tok.get_vocab_size()} (a multiple of 128)")
  return tok


# ---- steps ----------------------------------------------------------------------------------------


def train_step(state, batch, *, graphdef, loss_fn, schedule, z_loss, after_step=None):
  """One optimizer step: (state, batch) -> (state, metrics). Pure; the trainer jits it once.

  after_step(model, metrics), if given, updates the model's non-trained state from this step's
  metrics (MrT5's deletion controller): once per optimizer step, on training batches only.
  """
  model, optimizer = nnx.merge(graphdef, state)
  lr = schedule(optimizer.step[...])
  (loss, metrics), grads = nnx.value_and_grad(
      lambda m: loss_fn(m, batch, z_loss=z_loss), has_aux=True)(model)
  optimizer.update(model, grads)
  if after_step is not None:
    after_step(model, metrics)
  metrics = dict(metrics, lr=lr, grad_norm=_global_norm(grads))
  return nnx.state((model, optimizer)), metrics


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _eval_step(state, batch, *, graphdef, loss_fn, extra=()):
  model, _ = nnx.merge(graphdef, state)
  return eval_sums(model, batch, loss_fn, extra)


def eval_sums(model, batch, loss_fn, extra=()) -> dict:
  """What evaluation adds up over a batch: summed cross-entropy, targets (and, for a token
  model, the bytes they spell), and the extra metrics; dropout off. `bytelm.api` scores texts
  with it too."""
  _, metrics = loss_fn(nnx.view(model, deterministic=True, raise_if_not_found=False), batch)
  n = metrics["num_targets"]
  out = {"ce_sum": metrics["ce"] * n, "num_targets": n, **{k: metrics[k] for k in extra}}
  if "num_bytes" in metrics:  # a token model: bits per byte divide by the bytes predicted
    out["num_bytes"] = metrics["num_bytes"]
  return out


def evaluate(eval_fn, state, batches) -> dict[str, float]:
  """Held-out loss and bits per byte, weighted by the number of targets of each batch, and the
  mean over batches of any extra metric of eval_fn (as val_<name>).

  val_loss is per target (a byte, or a token). Where eval_fn reports `num_bytes` (a token
  model), val_bpb is the summed loss over ln 2 * the bytes the targets spell, and val_bytes
  says how many bytes that was; otherwise one target is one byte.

  Sums stay on the device; the host reads them once, after the last batch.
  """
  outs = [eval_fn(state, batch) for batch in batches]
  totals = jax.device_get(jax.tree.map(lambda *x: sum(x), *outs))
  count = float(totals.pop("num_targets"))
  ce_sum = float(totals.pop("ce_sum"))
  loss = ce_sum / max(count, 1.0)
  bpb = {"val_bpb": loss / math.log(2)}
  if "num_bytes" in totals:
    num_bytes = float(totals.pop("num_bytes"))
    bpb = {"val_bpb": ce_sum / (math.log(2) * max(num_bytes, 1.0)), "val_bytes": num_bytes}
  extra = {f"val_{k}": float(v) / len(outs) for k, v in totals.items()}
  return {"val_loss": loss, **bpb, "val_targets": count, **extra}


# ---- the loop -------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> Summary:
  """Train the model described by `config`, resuming from `workdir` if it holds a checkpoint.
  One run at a time per workdir: another run's lock is an error (`lock.WorkdirLocked`)."""
  _maybe_init_distributed()
  workdir = pathlib.Path(workdir).expanduser().absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  with lock_lib.WorkdirLock(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Summary:
  # -- set-up --
  is_main = jax.process_index() == 0
  family = models.family(config.model_family)
  model_cfg = _model_config(config, family)
  tc = config.train
  if tc.steps <= 0 or tc.batch_size <= 0:
    raise ValueError(f"train.steps={tc.steps} and train.batch_size={tc.batch_size} must be > 0")

  # -- mesh --
  mesh = sharding.make_mesh(config.mesh.to_dict())
  sharding.check_batch(tc.batch_size, mesh)
  log.info("devices: %d (%s), mesh %s, process %d/%d", jax.device_count(),
           jax.default_backend(), dict(mesh.shape), jax.process_index(), jax.process_count())

  # -- data --
  dc = config.data
  data_kw = dict(objective=dc.objective, batch_size=tc.batch_size, input_length=dc.input_length,
                 target_length=dc.target_length, noise_density=dc.noise_density,
                 mean_noise_span_length=dc.mean_noise_span_length,
                 process_index=jax.process_index(), process_count=jax.process_count())
  if dc.objective == "correction":  # its noise settings, where the config has them
    data_kw.update({k: dc[k] for k in ("correction_task", "typo_rate", "keyboard") if k in dc})
  if "segments" in dc:  # hierarchical models: segment ids in every batch
    data_kw["segments"] = dc.segments.to_dict()
    if dc.segments.kind == "entropy" and not dc.segments.get("entropy_model"):
      # Fitted on the training text once; kept in the workdir for resume, eval and generation.
      data_kw["segments"]["entropy_model"] = str(pipeline.fit_entropy_model(
          dc.train, workdir / "entropy_model.npz", **data_kw["segments"]))
  if "tokenizer" in dc:  # a subword LM: BPE trained on the training text once, in the workdir
    data_kw["tokenizer"] = _tokenizer(dc, workdir, model_cfg, write=is_main)
  train_data = pipeline.make_source(dc.train, "train", seed=config.seed, **data_kw)
  val_data = pipeline.make_source(dc.validation or dc.train, "validation", seed=config.seed,
                                  **data_kw)
  # The same held-out bytes at every evaluation: put on the devices once.
  val_batches = [sharding.put_batch(b, mesh) for b in val_data.eval_batches(tc.eval_batches)]

  # -- model and optimizer --
  rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  model, model_cfg = _init_model(config, family, model_cfg, rngs)
  tx, schedule = optim.make_optimizer(config.opt, tc.steps)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  del model, optimizer  # the state is the single source of truth from here on
  state_sh = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, state_sh)
  resolved = config.to_dict()
  resolved["model"] = dataclasses.asdict(model_cfg)

  # -- restore --
  checkpoints = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.ckpt.keep)

  def check_meta(meta):
    saved = meta["config"]
    runtime = family.config_cls.RUNTIME_FIELDS
    diff = ckpt_lib.config_diff(
        {k: v for k, v in saved["model"].items() if k not in runtime},
        {k: v for k, v in resolved["model"].items() if k not in runtime})
    # The optimizer state's structure depends on these (clipping and lr_scale add chain links,
    # sgd a partition).
    def structure(opt):
      return {"opt.name": opt["name"], "opt.clipping": bool(opt["grad_clip"]),
              "opt.lr_scale": bool(opt.get("lr_scale")),
              "opt.sgd": sorted(opt.get("sgd") or {})}
    diff += ckpt_lib.config_diff(structure(saved["opt"]), structure(resolved["opt"]))
    if diff:
      raise ckpt_lib.IncompatibleCheckpoint(
          f"{workdir} holds a checkpoint of a different model:\n  " + "\n  ".join(diff) +
          "\nUse another --workdir, or the config that made the checkpoint; nothing was changed.")

  start_step = 0
  restored = checkpoints.restore_latest(ckpt_lib.abstract_like(state), check_meta)
  if is_main:  # only now: a refused workdir keeps the config.json of its own run
    _write_json_atomic(workdir / "config.json", resolved)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
  if restored is not None:
    start_step, state, meta = restored
    log.info("resumed from step %d in %s", start_step, checkpoints.directory)
    writer.truncate_after(start_step)
  last_saved = start_step if restored is not None else None

  # -- step functions --
  batch_sh = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  train_fn = jax.jit(
      functools.partial(train_step, graphdef=graphdef, loss_fn=family.loss_fn,
                        schedule=schedule, z_loss=config.opt.z_loss,
                        after_step=family.after_step),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(_eval_step, graphdef=graphdef, loss_fn=family.loss_fn,
                                      extra=family.eval_metrics),
                    in_shardings=(state_sh, batch_sh), out_shardings=replicated)

  def save(step: int, train_metrics) -> None:
    nonlocal last_saved
    _check_finite(train_metrics, step, last_saved, checkpoints.directory)
    checkpoints.save(step, state, {"step": step, "data": train_data.state(step),
                                   "config": resolved})
    last_saved = step

  # -- loop --
  progress = metrics_lib.Progress(start_step, tc.steps, enabled=is_main)
  bytes_per_step = train_data.bytes_per_batch
  start_time = time.perf_counter()
  step, metrics, host_metrics, val = start_step, None, {}, {}
  stop_signal = 0
  try:
    with _StopRequested() as stop:
      while step < tc.steps:
        batch = sharding.put_batch(train_data.batch(step), mesh)
        state, metrics = train_fn(state, batch)
        step += 1
        if step == start_step + 1:
          jax.block_until_ready(metrics)
          progress.mark_compiled(step)
        if step % tc.log_every == 0 or step == tc.steps:
          host_metrics = jax.device_get(metrics)  # the only host sync between log steps
          _check_finite(host_metrics, step, last_saved, checkpoints.directory)
          bps, eta = progress.rates(step, bytes_per_step)
          writer.write(step, **host_metrics, bytes_per_s=bps)
          extra = "".join(f"{k} {host_metrics[k]:.3f} " for k in family.eval_metrics)
          progress.update(step, f"loss {host_metrics['loss']:.4f} "
                                f"bpb {host_metrics['bits_per_byte']:.3f} {extra}"
                                f"lr {host_metrics['lr']:.2e} {bps:,.0f} bytes/s "
                                f"ETA {metrics_lib.fmt_duration(eta)}")
        if step % tc.eval_every == 0 or step == tc.steps:
          val = evaluate(eval_fn, state, val_batches)
          writer.write(step, **val)
          progress.update(step, f"validation loss {val['val_loss']:.4f} "
                                f"bpb {val['val_bpb']:.3f}")
        if step % config.ckpt.every == 0 or step == tc.steps:
          save(step, metrics)
        if stop.requested:
          stop_signal = stop.signum
          if last_saved != step:
            save(step, metrics)
          break
  finally:
    progress.close()
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
