"""One training run per workdir at a time: an advisory lock on WORKDIR/lock.

Two runs writing the same checkpoints and metrics.jsonl would corrupt each other's resume. The
lock is `fcntl.flock` on the file, so the kernel drops it when its process ends however it
ends (a SIGKILL leaves no stale lock to clear by hand); the file names the holder (pid, host,
start time) for the message a second run gets. flock is local to a machine: on a file system
shared by several hosts it may not exclude a run on another host (a multi-host job takes it
on its first process only). Where fcntl does not exist (Windows) the lock is skipped.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import socket

try:
  import fcntl
except ImportError:  # not POSIX
  fcntl = None

FILENAME = "lock"


class WorkdirLocked(RuntimeError):
  """Another process is training in this workdir."""


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir's lock, or raises WorkdirLocked naming the
  run that holds it."""

  def __init__(self, workdir, enabled: bool = True):
    self.path = pathlib.Path(workdir) / FILENAME
    self.enabled = enabled and fcntl is not None
    self._fd = None

  def __enter__(self):
    if not self.enabled:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
      os.close(fd)
      raise WorkdirLocked(
          f"{self.path.parent} is in use by another training run ({holder}). Wait for it to "
          "end, or train into another --workdir; nothing was changed.") from None
    # The holder, for a second run's message: rewritten in place (the lock is on this file).
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "since": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the lock
      self._fd = None
