"""bytelm's cache folder on the user's machine, and JAX's compilation cache inside it.

Everything here can be deleted at any time and is rebuilt on next use: prepared training
streams (`bytelm.data.prepare`), JAX's compiled programs (so that a command's second run skips
the compilations of its first), and the correctors' lexicons (`bytelm.demos.correct`).
"""

from __future__ import annotations

import os
import pathlib


def root() -> pathlib.Path:
  """$BYTELM_CACHE, else $XDG_CACHE_HOME/bytelm, else ~/.cache/bytelm."""
  path = os.environ.get("BYTELM_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bytelm")
  return pathlib.Path(path).expanduser()


def enable_compilation_cache() -> None:
  """Keep every program JAX compiles in root()/jax, however quick its compilation: a command
  line tool compiles the same small programs at each start (a model's initialisation, one
  forward pass), which together cost seconds.

  A cache the user chose (JAX_COMPILATION_CACHE_DIR, or jax.config set by the program) is
  kept as it is."""
  import jax
  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", str(root() / "jax"))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
