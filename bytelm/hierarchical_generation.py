"""Deprecated: generation moved to `bytelm.generation` (removed in the release after 0.1)."""

import warnings

from bytelm.generation import hierarchical as _hierarchical


def generate(model, prompt, max_new_bytes: int = 64, **kwargs):
  """Deprecated: `bytelm.load(path).generate([prompt], max_new_bytes)`, or for a module
  `bytelm.generation.hierarchical_bytes` (the same arguments)."""
  warnings.warn("bytelm.hierarchical_generation.generate is deprecated and will be removed in "
                "the next release: use bytelm.load(path).generate([prompt], max_new_bytes), or "
                "bytelm.generation.hierarchical_bytes(model, prompt, ...) for a module",
                DeprecationWarning, stacklevel=2)
  return _hierarchical.hierarchical_bytes(model, prompt, max_new_bytes, **kwargs)
