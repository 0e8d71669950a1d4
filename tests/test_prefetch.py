"""bytelm.data.prefetch: batches built ahead are the synchronous batches, in step order; a
failure surfaces at its own step; closing never hangs and leaves no thread; waiting is
measured and, when the host keeps up, hidden behind the caller's work."""

import contextlib
import threading
import time

import numpy as np
import pytest

from bytelm.data.prefetch import Prefetcher


def batch_fn(step):
  """A pure function of the step, like BatchSource.batch."""
  rng = np.random.default_rng([7, step])
  return {"inputs": rng.integers(0, 259, (2, 8), dtype=np.int32), "step": step}


def assert_batches_equal(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g["step"] == w["step"]
    np.testing.assert_array_equal(g["inputs"], w["inputs"])


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_yields_the_synchronous_batches_in_step_order(depth):
  with Prefetcher(batch_fn, 3, 12, depth=depth) as batches:
    got = list(batches)
  assert_batches_equal(got, [batch_fn(s) for s in range(3, 12)])
  assert not batches.running


def test_a_slow_early_step_still_comes_first():
  """The worker is one thread: a batch that takes long is not overtaken by later ones."""
  def uneven(step):
    time.sleep(0.05 if step == 0 else 0)
    return batch_fn(step)
  with Prefetcher(uneven, 0, 6, depth=3) as batches:
    assert [batches.get(s)["step"] for s in range(6)] == list(range(6))


def test_steps_must_be_asked_for_in_order():
  with Prefetcher(batch_fn, 0, 4) as batches:
    batches.get(0)
    with pytest.raises(ValueError, match="the next is step 1, step 2 was asked for"):
      batches.get(2)
    batches.get(1)  # nothing was lost
  with pytest.raises(RuntimeError, match="closed"):
    batches.get(2)


@pytest.mark.parametrize("depth", [0, 4])
def test_an_error_surfaces_at_its_own_step(depth):
  reached = threading.Event()

  def failing(step):
    if step == 3:
      reached.set()
      raise KeyError("no batch 3")
    return batch_fn(step)

  with Prefetcher(failing, 0, 10, depth=depth) as batches:
    if depth:
      assert reached.wait(5)  # the worker failed before the caller asked for step 0 ...
    got = [batches.get(s) for s in range(3)]  # ... and steps 0-2 still come
    with pytest.raises(KeyError, match="no batch 3"):
      batches.get(3)
  assert_batches_equal(got, [batch_fn(s) for s in range(3)])
  assert not batches.running


@pytest.mark.parametrize("how", ["break", "KeyboardInterrupt", "mid-batch"])
def test_closing_early_does_not_hang_and_ends_the_thread(how):
  """The worker waits on a full queue (or is inside batch_fn) when the caller stops."""
  def slow(step):
    time.sleep(0.2 if how == "mid-batch" else 0)
    return batch_fn(step)

  start = time.perf_counter()
  with pytest.raises(KeyboardInterrupt) if how == "KeyboardInterrupt" else contextlib.nullcontext():
    with Prefetcher(slow, 0, 10**9, depth=2) as batches:
      batches.get(0)
      time.sleep(0.05)  # break: the queue is full and the worker blocked on it
      if how == "KeyboardInterrupt":
        raise KeyboardInterrupt
  assert not batches.running
  assert time.perf_counter() - start < 3
  assert "bytelm-prefetch" not in [t.name for t in threading.enumerate()]


def test_waiting_is_measured_and_hidden_behind_the_callers_work():
  """Building takes as long as the caller's own step: ahead of time the caller hardly waits;
  built in the caller (depth 0), all of the building counts as waiting."""
  build, steps = 0.03, 8

  def slow(step):
    time.sleep(build)  # sleeps, as numpy's GIL-free work, leave the caller running
    return batch_fn(step)

  waits = {}
  for depth in (0, 2):
    with Prefetcher(slow, 0, steps, depth=depth) as batches:
      for step in range(steps):
        batches.get(step)
        time.sleep(build)  # the caller's "device step"
      waits[depth] = batches.wait_seconds
  assert waits[0] >= steps * build
  # The first batch is waited for in full; later ones were built during the caller's sleeps.
  assert waits[2] < 0.5 * waits[0], waits


def test_a_negative_depth_is_refused():
  with pytest.raises(ValueError, match="depth=-1"):
    Prefetcher(batch_fn, 0, 4, depth=-1)
