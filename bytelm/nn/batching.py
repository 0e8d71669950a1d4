"""Running a stack one example at a time where that is faster (XLA on CPU).

XLA:CPU keeps whole-batch intermediates in main memory: the B*H*T*T attention scores (134 MB at
8 x 1024 bytes, 4 heads) and the B*T*F feed-forward activations, streamed through several times.
One example's intermediates fit in cache. Measured on the 2-core CI machine, `mini` preset,
8 x 1024 bytes: the encoder takes 1.05 s batched and 0.4 s example by example (eval/speed.py).
On accelerators the batched form is the fast one, so the loop is used on CPU only.
"""

from __future__ import annotations

import jax

# Below this length the per-example matmuls get too small for the loop to pay off.
MIN_LENGTH = 128


def loop_is_faster(length: int, dropout_active: bool) -> bool:
  """Whether `map_over_batch` should loop. Dropout needs its RNG state outside the loop."""
  # With several devices the batch is sharded; a loop over it would gather it onto each device.
  return (jax.default_backend() == "cpu" and jax.device_count() == 1 and length >= MIN_LENGTH
          and not dropout_active)


def map_over_batch(fn, *args_B, loop: bool):
  """fn(*args_B), computed one example at a time with `lax.map` when `loop` is true.

  Every array in args_B has the batch as its leading axis (None entries are passed through);
  fn sees a batch of one and must not mutate module state.

  In the loop each example's forward pass is recomputed for its backward pass
  (`jax.checkpoint`): stacking every example's activations for the backward pass costs more
  memory traffic than the recomputation costs arithmetic (train step at 8 x 1024 bytes:
  3.3 s -> 3.0 s). Forward-only use pays nothing for it.
  """
  if not loop or args_B[0].shape[0] == 1:
    return fn(*args_B)

  @jax.checkpoint
  def one_example(args):
    return fn(*jax.tree.map(lambda x: x[None], args))

  def one(args):
    return jax.tree.map(lambda y: y[0], one_example(args))

  return jax.lax.map(one, args_B)
