"""Batches built ahead, in a background thread, while the device runs the current step.

The trainer's step is dispatched asynchronously: the host returns from `train_fn` long before
the device is done. Building the next batch synchronously then costs nothing only if the host
is faster than the device; when it is not (long windows, span-corruption noise, segmenters),
the device sits idle while numpy works. `Prefetcher` builds the next `depth` batches in one
thread instead, so that host time hides behind the device step. numpy releases the GIL in most
of its array work, so the thread overlaps with the main thread's dispatch too.

The batches are `batch_fn(step)` for each step in order, exactly as the synchronous loop would
build them: `batch_fn` must be a pure function of the step (`BatchSource.batch` is), so a
resumed run sees the same bytes whatever `depth` is. An exception raised by `batch_fn(k)` is
raised in the caller when it asks for step k, not earlier. `wait_seconds` is the time the
caller spent waiting for batches: near zero when input keeps up, the trainer's
`input_wait_frac` when it does not.

One thread, not a pool: batches come out in step order without reordering, memory stays at
`depth` batches, and `close()` has one thread to stop.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class Prefetcher:
  """`get(step)` returns `batch_fn(step)` for start_step, start_step + 1, ... < stop_step, built
  up to `depth` steps ahead in a background thread; depth 0 builds each in the caller.

  Close it (or use it as a context manager): close() stops the thread and waits for it, which
  takes at most the rest of the one batch it is building.
  """

  def __init__(self, batch_fn: Callable[[int], Any], start_step: int, stop_step: int,
               depth: int = 2):
    if depth < 0:
      raise ValueError(f"depth={depth}: give the number of batches to build ahead, or 0 to "
                       "build each when it is asked for")
    self._batch_fn = batch_fn
    self._next = start_step  # the step the caller must ask for next
    self.stop_step = stop_step
    self.depth = depth
    self.wait_seconds = 0.0  # the caller's time in get(): waiting for (depth 0: building) batches
    self._closed = False
    self._thread = None
    if depth and start_step < stop_step:
      # (step, batch, exception): the exception travels to the caller with the step it belongs to
      self._queue = queue.Queue(maxsize=depth)
      self._stopping = threading.Event()
      # A daemon: an interpreter that exits without close() is never held up by it.
      self._thread = threading.Thread(target=self._work, args=(start_step, stop_step),
                                      name="bytelm-prefetch", daemon=True)
      self._thread.start()

  def _work(self, start_step: int, stop_step: int) -> None:
    for step in range(start_step, stop_step):
      if self._stopping.is_set():
        return
      try:
        item = (step, self._batch_fn(step), None)
      except BaseException as e:  # any: the caller must not wait for a step that never comes
        item = (step, None, e)
      # Blocks while `depth` batches wait. close() empties the queue after setting _stopping,
      # so this put, the only one that can be under way then, returns and the loop ends.
      self._queue.put(item)
      if item[2] is not None:
        return

  def get(self, step: int):
    """The batch of `step`, which must be the step after the previous call's (the first:
    start_step). Raises what batch_fn raised for this step."""
    if self._closed:
      raise RuntimeError(f"the prefetcher is closed; step {step} was asked for after close()")
    if step != self._next or step >= self.stop_step:
      raise ValueError(f"batches come in step order up to {self.stop_step}: the next is step "
                       f"{self._next}, step {step} was asked for")
    start = time.perf_counter()
    try:
      if self._thread is None:
        batch = self._batch_fn(step)
      else:
        built, batch, error = self._queue.get()
        assert built == step, (built, step)  # one producer, one consumer, a FIFO queue
        if error is not None:
          self.close()  # the thread has ended; nothing more will come
          raise error
    finally:
      self.wait_seconds += time.perf_counter() - start
    self._next += 1
    return batch

  def __iter__(self) -> Iterator:
    """The remaining batches, in step order."""
    for step in range(self._next, self.stop_step):
      yield self.get(step)

  @property
  def running(self) -> bool:
    """Whether the background thread is alive (False with depth 0 and after close())."""
    return self._thread is not None and self._thread.is_alive()

  def close(self) -> None:
    """Stop building and wait for the thread; the batches built ahead are dropped. Idempotent."""
    self._closed = True
    if self._thread is None:
      return
    self._stopping.set()
    while True:  # frees a put that waits for room (and the batches' memory)
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join()

  def __enter__(self) -> Prefetcher:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
