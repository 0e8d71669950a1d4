"""Orbax checkpoints of a training run: model, optimizer, RNG state, data position and config.

Every save holds two items: `state` (the nnx state of model and optimizer, sharded arrays as
they are) and `meta` (JSON: step, data position, the run's config). Restoring checks the saved
config against the requested one (bytelm.runs.workdir.check_resume) before touching any
array, so a workdir of another run is an error rather than silently continued, and falls back
to the previous checkpoint when the newest cannot be read (a truncated file, a half-copied
directory). A reader of the model alone (bytelm.runs.load) restores only the model's subtree.

Orbax's v0 `CheckpointManager` is wrapped here so a move to its v1 API touches only this file.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """Save / restore the latest K checkpoints of a run under `directory`."""

  def __init__(self, directory, *, keep: int, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    """Start saving (asynchronously); orbax writes to a temporary directory and renames it."""
    self._manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def restore_latest(self, abstract_state, check_meta, set_aside: bool = True,
                     partial: bool = False) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest readable checkpoint, or None when there is none.

    check_meta(meta) raises (bytelm.runs.workdir.ConfigMismatch) for a checkpoint of another
    config: that is not a reason to fall back, it stops the run. An unreadable checkpoint is
    moved aside (so a resumed run can save that step again), or only skipped when set_aside is
    false (readers of another run's workdir leave it as it is). partial: abstract_state is a
    subtree of the saved state (the model without its optimizer); only that is read.
    """
    steps = self.steps()
    for step in reversed(steps):
      try:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
      except Exception as e:  # unreadable JSON: treat like a truncated checkpoint
        self._skip(step, e, set_aside)
        continue
      check_meta(meta)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=_restore_args(abstract_state, partial)))
      except Exception as e:
        self._skip(step, e, set_aside)
        continue
      return step, restored["state"], meta
    if steps:
      raise RuntimeError(f"no checkpoint in {self.directory} could be restored (steps {steps}); "
                         "move the workdir aside to start afresh, or point --workdir elsewhere")
    return None


  def _skip(self, step: int, error: Exception, set_aside: bool) -> None:
    if set_aside:
      self._set_aside(step, error)
    else:
      log.warning("checkpoint %d in %s could not be restored (%s); trying the previous one",
                  step, self.directory, _short(error))

  def _set_aside(self, step: int, error: Exception) -> None:
    """Move an unreadable checkpoint out of the way (kept for inspection, never deleted), so
    the resumed run can save that step again."""
    aside = self.directory / f"{step}.unreadable-{int(time.time())}"
    os.replace(self.directory / str(step), aside)
    self._manager.reload()
    log.warning("checkpoint %d in %s could not be restored (%s); moved it to %s and falling "
                "back to the previous one", step, self.directory, _short(error), aside.name)

  def restore_raw(self, step: int):
    """The `state` item of checkpoint `step` as nested dicts of host arrays (no target needed)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]


def _restore_args(abstract_state, partial: bool):
  if not partial:
    return ocp.args.StandardRestore(abstract_state)
  # StandardRestore insists on the whole tree; PyTreeRestore reads a subtree when told where
  # each leaf goes (restore_args), and never touches the rest's files.
  return ocp.args.PyTreeRestore(
      abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
      partial_restore=True)


def abstract_like(state):
  """Restore target: shapes, dtypes and shardings of `state`, no data."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _short(e: Exception) -> str:
  text = f"{type(e).__name__}: {e}"
  return text if len(text) < 300 else text[:300] + "..."
