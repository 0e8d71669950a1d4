"""Suite-wide settings."""

import os
import shutil
import tempfile

from hypothesis import settings

# No per-example deadline: a property either holds or fails whatever the machine's speed, and
# a 2-core CI host busy with other tests can take longer than Hypothesis's default 200 ms for
# an example (a JAX call compiling, a garbage collection) without anything being wrong.
settings.register_profile("bytelm", deadline=None)
settings.load_profile("bytelm")

# One persistent compilation cache for the whole session, shared with every process the tests
# start (train.py, the docs' blocks, eval/ scripts inherit os.environ): a computation compiled
# once, by the suite or by a subprocess, is read back by the next process instead of compiled
# again (the resume tests run the same train step in four processes, and in-process runs
# rebuild the same jitted steps again and again). A fresh directory per session, so that a clean checkout
# gets the same benefit as a developer's and no session reads a stale entry; a cache the user
# points JAX_COMPILATION_CACHE_DIR at is used as it is (so pytest-xdist's workers, which
# inherit the controller's environment, share the controller's). Every entry is kept: the
# small models here compile in well under JAX's default one-second threshold.
_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _OWN_CACHE = tempfile.mkdtemp(prefix="bytelm-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the environment, which jax reads when imported)

# A plugin may have imported jax before this file: set the options on the live config too.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
