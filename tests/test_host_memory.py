"""bytelm.host_memory: what a compiled call frees is reused, not faulted in again."""

import os
import platform
import subprocess
import sys

import pytest

from bytelm import host_memory

# The page faults a 64 MiB elementwise call takes per page of its result, in a fresh process
# that imports bytelm before jax, as train.py does.
_PROBE = """
import resource
import bytelm
import jax, jax.numpy as jnp
x = jnp.ones((64, 1024, 256), jnp.float32)  # 64 MiB: above glibc's largest mmap threshold
double = jax.jit(lambda x: x * 2.0)
windows = []
for _ in range(6):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    double(x).block_until_ready()
  windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
# The quietest window of five calls (the heap grows over the first few, as freed blocks and
# new ones interleave), per page of a result.
print(min(windows) / (x.nbytes / 4096))
"""


def _faults_per_page(choice: str) -> float:
  env = {**os.environ, host_memory.ENV: choice}
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       check=True)
  return float(out.stdout.split()[-1])


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_a_compiled_call_reuses_what_the_last_one_freed():
  # glibc as it comes: every page of each call's result is new (a fresh mmap).
  assert _faults_per_page("system") > 0.9
  assert _faults_per_page("keep") < 0.1


def test_a_wrong_setting_is_named(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, "jemalloc")
  with pytest.raises(ValueError, match="BYTELM_MALLOC must be 'keep' or 'system'"):
    host_memory.keep_freed_memory()
