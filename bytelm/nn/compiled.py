"""Calling a module's method compiled, from eager code: `jit_call(model, "method", *arrays)`.

The module is split into a static graph and its state once per call, and merged inside one
`jax.jit` function cached on (graph, method, static options): the pattern of
notes/jax_conventions.md (A.4) without a hand-written jitted function per method. Dropout is
off (an inference view of the module). Keyword options are static: each distinct value
compiles once, which is how MrT5 compiles once per compaction bucket.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx


@functools.partial(jax.jit, static_argnames=("graphdef", "method", "options"))
def _call(state, args, *, graphdef, method, options):
  module = nnx.merge(graphdef, state)
  return getattr(module, method)(*args, **dict(options))


def jit_call(module: nnx.Module, method: str, *args, **options):
  """module.method(*args, **options) under jit, with dropout off; options must be hashable."""
  view = nnx.view(module, deterministic=True, raise_if_not_found=False)
  graphdef, state = nnx.split(view)
  return _call(state, args, graphdef=graphdef, method=method,
               options=tuple(sorted(options.items())))
