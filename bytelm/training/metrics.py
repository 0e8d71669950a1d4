"""Metrics of a run: metrics.jsonl and TensorBoard events in the workdir, and progress a person
can read.

One JSON object per log or eval step (big_vision / maxtext style): every later tool can read it.
The same numbers go to TensorBoard event files (WORKDIR/tensorboard, written with tensorboardX,
which needs no TensorFlow): `tensorboard --logdir workdirs` plots every run side by side.
Progress is a tqdm bar on a terminal, one log line per interval otherwise (CI, nohup, files).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time

import tqdm


TENSORBOARD = "tensorboard"  # the event files' directory in the workdir


class MetricsWriter:
  """Appends {"step": ..., ...} lines to workdir/metrics.jsonl and the same scalars to
  TensorBoard events in workdir/tensorboard (process 0 only). Close it when the run ends."""

  def __init__(self, workdir, enabled: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.enabled = enabled
    self._events = None  # a tensorboardX SummaryWriter, opened at the first write
    self._purge_step = None

  def write(self, step: int, **metrics) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())  # a killed run keeps every line it reported
    events = self._tensorboard()
    for key, value in row.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        events.add_scalar(key, value, int(step))
    events.flush()  # as the jsonl line: a killed run's plots end where its log does

  def _tensorboard(self):
    if self._events is None:
      from tensorboardX import SummaryWriter  # only a run that writes metrics needs it
      # purge_step: a resumed run hides the events of the steps it lost and writes again.
      self._events = SummaryWriter(str(self.path.parent / TENSORBOARD),
                                   purge_step=self._purge_step)
      self._purge_step = None  # once: a writer opened again later keeps this run's events
    return self._events

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._events = None

  def truncate_after(self, step: int) -> None:
    """Drop lines after `step` (a resumed run rewrites the steps it lost); TensorBoard hides
    its events after step too."""
    self._purge_step = step + 1
    if not (self.enabled and self.path.exists()):
      return
    rows = [line for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, self.path)


  def last_row_with(self, key: str) -> dict:
    """The newest metrics.jsonl row holding `key` ({} if none)."""
    if not self.path.exists():
      return {}
    rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return next((r for r in reversed(rows) if key in r), {})


def _plain(v):
  """JSON-ready: numpy / jax scalars become floats; ints and strings stay as they are."""
  return v if isinstance(v, (int, str)) else float(v)


class Progress:
  """Step counter with loss, learning rate, bytes/s and ETA; compile time kept out of rates."""

  def __init__(self, start: int, total: int, enabled: bool = True):
    self.start, self.total, self.enabled = start, total, enabled
    self.tty = enabled and sys.stderr.isatty()
    self.bar = tqdm.tqdm(total=total, initial=start, dynamic_ncols=True, disable=not self.tty)
    self._t0 = None  # set after the first (compiling) step
    self._s0 = start

  def mark_compiled(self, step: int) -> None:
    self._t0, self._s0 = time.perf_counter(), step

  def rates(self, step: int, bytes_per_step: int) -> tuple[float, float]:
    """(bytes/s, seconds left) measured since the first compiled step."""
    if self._t0 is None or step <= self._s0:
      return math.nan, math.nan
    dt = time.perf_counter() - self._t0
    per_step = dt / (step - self._s0)
    return bytes_per_step / per_step, per_step * (self.total - step)

  def update(self, step: int, text: str) -> None:
    if not self.enabled:
      return
    if self.tty:
      self.bar.n = step
      self.bar.set_postfix_str(text, refresh=True)
    else:
      print(f"step {step}/{self.total} {text}", flush=True)

  def close(self) -> None:
    self.bar.close()


def fmt_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
