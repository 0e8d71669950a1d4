"""Side-by-side timing: several callables run in alternation, so machine noise hits all alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def compare(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
  """Median seconds per call of each fn, after one warm-up call each (compilation).

  Each fn must wait for its own result (e.g. `jax.block_until_ready`). The calls alternate
  (a, b, c, then b, c, a, ...) rather than running a's repeats then b's, so that a burst of
  load on a shared machine slows every contender, not only one; the ratio of medians is what
  to report.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  names = list(fns)
  for r in range(repeats):
    # Rotated each round: a call can run slower right after a heavy one (caches, memory), so
    # no contender always follows the same one.
    for name in names[r % len(names):] + names[:r % len(names)]:
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
