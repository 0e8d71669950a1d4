"""Freed memory kept in the process, so that XLA:CPU's buffers are not faulted in every step.

XLA:CPU allocates a compiled call's buffers with malloc and frees them when the call returns.
glibc's malloc serves a block above 32 MiB with a fresh mmap, unmaps it on free and trims its
heaps' free tops, so every train step touches gigabytes of new pages, each of which the kernel
zero-fills on first touch. On a 2-core Intel Xeon (2026-12-08, `eval/hierarchical.py`'s step
timers, 256 rows): hat's train step took 811,000 page faults (3.3 GB of pages) and the flat
byte decoder's 2.0 million; with freed memory kept, none, and (one run each) the steps took
2.59 s instead of 2.99 s and 10.1 s instead of 12.6 s.

`keep_freed_memory()` asks glibc (mallopt) to serve large blocks from the heap (M_MMAP_MAX 0),
never to trim it (M_TRIM_THRESHOLD -1), and to give every thread the one main arena
(M_ARENA_MAX 1: a thread's own arena falls back to mmap for a block its 64 MiB heap cannot
hold, whatever M_MMAP_MAX says). The cost: memory freed stays with the process, so its resident
size stays at its peak (which a training loop reaches every step anyway; the eval's processes
peaked at the same size), and threads share one malloc lock.

`import bytelm` calls it before it imports jax. Threads get their arena at their first
allocation, so where jax was imported first only part of it takes effect. Set
BYTELM_MALLOC=system to leave malloc as it is. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV = "BYTELM_MALLOC"  # keep (the default) | system
# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep what is freed (the module docstring says why). Returns
  whether it did: False where BYTELM_MALLOC=system, off Linux or without glibc."""
  choice = os.environ.get(ENV, "keep")
  if choice not in ("keep", "system"):
    raise ValueError(f"{ENV} must be 'keep' or 'system', got {choice!r}")
  if choice == "system" or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return False
  mallopt = ctypes.CDLL(None).mallopt
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  # Each set whatever the others answer (a generator inside all() would stop at the first
  # refusal). -1 is SIZE_MAX once glibc widens it: never trim.
  done = [mallopt(param, value) == 1 for param, value in
          ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))]
  return all(done)
