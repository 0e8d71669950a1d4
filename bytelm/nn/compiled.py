"""Calling a module's method compiled, from eager code: `jit_call(model, "method", *arrays)`.

The module is split into a static graph and its state once per call, and merged inside one
`jax.jit` function cached on (graph, method, static options): NNX's split/merge pattern (the
jitted function takes plain arrays, so a call costs no graph traversal inside jit; plain
`nnx.jit` walks the module graph in Python on every call), without a hand-written jitted
function per method. Dropout is
off (an inference view of the module). Keyword options are static: each distinct value
compiles once, which is how MrT5 compiles once per compaction bucket.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx


def _call(leaves, args, *, graphdef, treedef, method, options):
  module = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
  return getattr(module, method)(*args, **dict(options))


@functools.lru_cache(maxsize=256)
def _jitted(graphdef, treedef, method: str, options: tuple):
  """The jitted call of (graph, method, options), shared by every split of one graph
  (generation splits its model once per call). Passing the graph to one jitted function as a
  static argument instead would hash it on every call: 1.3 ms a call for a small decoder,
  most of a byteprobs sampling step."""
  return jax.jit(functools.partial(_call, graphdef=graphdef, treedef=treedef, method=method,
                                   options=options))


class Compiled:
  """A module split once (dropout off), whose methods are then called compiled.

  Splitting walks the whole module graph in Python (about 10-20 ms for a small model on a CPU);
  an inference routine that makes several compiled calls pays it once this way. The split is
  a snapshot: build a new one after the module's parameters change.
  """

  def __init__(self, module: nnx.Module):
    view = nnx.view(module, deterministic=True, raise_if_not_found=False)
    self.graphdef, self.state = nnx.split(view)
    # The state's arrays as a flat list: flattening the nested state on every call cost
    # about 0.5 ms for a small decoder.
    self._leaves, self._treedef = jax.tree.flatten(self.state)
    self._calls: dict = {}  # (method, options) -> _jitted's function, the graph hashed once

  def __call__(self, method: str, *args, **options):
    """module.method(*args, **options) under jit; options must be hashable (they are static)."""
    key = (method, tuple(sorted(options.items())))
    if key not in self._calls:
      self._calls[key] = _jitted(self.graphdef, self._treedef, *key)
    return self._calls[key](self._leaves, args)


def jit_call(module: nnx.Module, method: str, *args, **options):
  """module.method(*args, **options) under jit, with dropout off; options must be hashable."""
  return Compiled(module)(method, *args, **options)
