"""bytelm's cache folder on the user's machine, and JAX's compilation cache inside it.

Everything here can be deleted at any time and is rebuilt on next use: prepared training
streams (`bytelm.data.prepare`), JAX's compiled programs (so that a command's second run skips
the compilations of its first), and what the correction demo builds from its data at start
(`cached_json`: lexicons, word-list tables).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable, Sequence


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


def cached_json(kind: str, name: str, files: Sequence[os.PathLike | str],
                build: Callable[[], object], version: int = 1):
  """What build() returns (anything JSON holds), kept in root()/kind/ once built: keyed by
  name, version and the files it is built from (their paths, sizes and modification times),
  so that a changed file builds it again. A missing or damaged entry is built again; a cache
  that cannot be written (read-only, full) is done without."""
  stats = [(str(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
  key = hashlib.sha256(json.dumps([version, name, stats]).encode()).hexdigest()[:16]
  path = root() / kind / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:60]}-{key}.json.gz"
  try:
    with gzip.open(path, "rt", encoding="utf-8") as f:
      return json.load(f)
  except (OSError, EOFError, ValueError):  # not there yet, or damaged
    pass
  value = build()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
      json.dump(value, f, ensure_ascii=False)
    os.replace(tmp, path)
  except OSError:
    pass
  return value


def store_json(path: pathlib.Path, value) -> None:
  """value as JSON at path, written to a temporary file, then renamed (a reader sees the whole
  file or none); a cache that cannot be written (read-only, full) is done without."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
  except OSError:
    pass
