"""Side-by-side timing: several callables run in alternation, so machine noise hits all alike."""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable


def compare(fns: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
  """Median seconds per call of each fn, after one warm-up call each (compilation).

  Each fn must wait for its own result (e.g. `jax.block_until_ready`). The calls alternate,
  in a new (seeded) order each round, rather than running a's repeats then b's, so that a burst
  of load on a shared machine slows every contender, not only one; the ratio of medians is what
  to report.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  names, rng = list(fns), random.Random(0)
  for _ in range(repeats):
    # A fresh order each round: a call can run slower right after a heavy one (caches,
    # memory), so no contender should always follow the same one.
    for name in rng.sample(names, len(names)):
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
