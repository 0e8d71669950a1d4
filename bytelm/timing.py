"""Side-by-side timing: several callables run in alternation, so machine noise hits all alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def compare(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
  """Median seconds per call of each fn, after one warm-up call each (compilation).

  Each fn must wait for its own result (e.g. `jax.block_until_ready`). The calls alternate
  (a, b, a, b, ...) rather than running a's repeats then b's, so that a burst of load on a
  shared machine slows every contender, not only one; the ratio of medians is what to report.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
