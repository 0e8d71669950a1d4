"""The HLO census counts what a compiled program launches: loop bodies times their trip count,
dots inside fusions, and the Python line each launch comes from."""

import jax
import jax.numpy as jnp
import pytest

from bytelm.training import hlo


def _compiled_text(unroll: bool) -> str:
  def f(x_BD, w_DD):
    def body(h_BD, _):
      return jnp.tanh(h_BD @ w_DD), None

    h_BD, _ = jax.lax.scan(body, x_BD, None, length=5, unroll=unroll)
    return (h_BD**2).sum()

  return jax.jit(f).lower(jnp.ones((4, 8)), jnp.ones((8, 8))).compile().as_text()


def test_a_loop_launches_its_body_once_per_trip_and_an_unrolled_one_is_straight_code():
  looped, unrolled = hlo.census(_compiled_text(False)), hlo.census(_compiled_text(True))
  assert (looped.while_loops, looped.unknown_trips, looped.dots) == (1, 0, 1)
  # The body (a matmul and a tanh at least) runs 5 times, its condition 6.
  assert looped.launches >= looped.instructions + 4 * 2
  assert (unrolled.while_loops, unrolled.dots) == (0, 5)
  assert unrolled.launches == unrolled.instructions
  assert sum(n for where, n in looped.by_source.items() if "body" in where) >= 5 * 2
  assert looped.row()["fusions"] == looped.fusions > 0


def test_text_that_is_not_a_compiled_program_is_refused():
  with pytest.raises(ValueError, match="compile"):
    hlo.census("HloModule nothing\n")
