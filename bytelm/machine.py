"""What machine this is: the facts a speed figure is read against, and the key of anything
measured on it.

The same code runs 1.5x faster than its peer on one host and 0.9x on another (the CPU model,
its caches, whether it has AMX tiles or AVX-512 bf16), so every figure carries the machine it
was measured on, and a choice calibrated on one machine is looked up by `key()`, which changes
with anything that changes the compiled code's speed: CPU model and flags, jax and jaxlib,
XLA_FLAGS.

Virtual machines may hide the CPU's name ("AMD EPYC") and some of its flags, so the family,
model and stepping numbers are kept too, and flags are reported as the kernel lists them: a
choice that depends on an instruction set is still made by measuring (AMX, for one, also
needs the kernel's permission, which a process asks for).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re

# The instruction-set extensions a speed figure depends on, as /proc/cpuinfo names them.
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile",
         "amx_bf16", "amx_int8")


@functools.cache
def cpu() -> dict:
  """{"model": name, "family": .., "model_number": .., "stepping": .., "flags": {flag: bool},
  "cores": n, "l2_kib": per core or None, "l3_kib": or None} of this host's CPU (what the
  kernel says; fields it does not give are None)."""
  info = _cpuinfo()
  flags = set(info.get("flags", "").split())
  return {
      "model": " ".join(info.get("model name", platform.processor() or platform.machine()).split()),
      "family": _int(info.get("cpu family")),
      "model_number": _int(info.get("model")),
      "stepping": _int(info.get("stepping")),
      "flags": {f: f in flags for f in FLAGS},
      "cores": os.cpu_count(),
      "l2_kib": _cache_kib(2),
      "l3_kib": _cache_kib(3),
  }


def name() -> str:
  """The CPU as one token for key=value lines: its model, with family/model numbers where the
  name alone does not tell hosts apart ("AMD_EPYC_f25m17")."""
  c = cpu()
  out = re.sub(r"[^A-Za-z0-9.+-]+", "_", c["model"]).strip("_") or "unknown"
  if c["family"] is not None and c["model_number"] is not None:
    out += f"_f{c['family']}m{c['model_number']}"
  return out


def has_flags(*names: str) -> bool:
  """Whether the kernel lists every one of these flags (any /proc/cpuinfo name, not only
  FLAGS), e.g. has_flags("avx512bw", "avx512vl")."""
  listed = set(_cpuinfo().get("flags", "").split())
  return all(n in listed for n in names)


def has_amx() -> bool:
  """Whether the kernel lists AMX tiles (bf16 and int8 matrix units, Intel Xeon since
  Sapphire Rapids)."""
  return cpu()["flags"]["amx_tile"]


def summary() -> dict:
  """The machine fields every eval/ key=value line ends with: cpu=, amx=, avx512_bf16=."""
  f = cpu()["flags"]
  return {"cpu": name(), "amx": int(f["amx_tile"]), "avx512_bf16": int(f["avx512_bf16"])}


def describe() -> str:
  """One line for people: the CPU, its flags of note, cores and caches."""
  c = cpu()
  flags = ", ".join(f for f, on in c["flags"].items() if on) or "none of note"
  caches = ", ".join(f"{k[:2].upper()} {v // 1024} MiB" if v >= 1024 else f"{k[:2].upper()} {v} KiB"
                     for k, v in (("l2_kib", c["l2_kib"]), ("l3_kib", c["l3_kib"])) if v)
  numbers = (f" (family {c['family']}, model {c['model_number']})"
             if c["family"] is not None else "")
  return f"{c['model']}{numbers}, {c['cores']} cores{', ' + caches if caches else ''}; {flags}"


def key() -> str:
  """A short hash of everything that changes how fast compiled code runs here: the CPU (name,
  numbers, flags), jax and jaxlib, XLA_FLAGS, the backend. Calibrations are stored under it."""
  import jax
  import jaxlib
  c = cpu()
  facts = [c["model"], c["family"], c["model_number"], c["stepping"], sorted(c["flags"].items()),
           c["cores"], jax.__version__, jaxlib.__version__, os.environ.get("XLA_FLAGS", ""),
           jax.default_backend()]
  return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()[:16]


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
  """Operations per second (2 n^3 per product) of an n x n matrix product compiled by XLA on
  this host's default device, median of `repeats` after a warm-up: the machine's own limit
  that a model's FLOP/s is read against. dtype: "float32", "bfloat16" (float32 results, as
  bytelm's bf16 matmuls) or "int8" (int32 results, as the integer Dense)."""
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np
  out_type = {"float32": jnp.float32, "bfloat16": jnp.float32, "int8": jnp.int32}
  if dtype not in out_type:
    raise ValueError(f"dtype must be one of {sorted(out_type)}, got {dtype!r}")
  rng = np.random.default_rng(0)
  a_NN, b_NN = (jnp.asarray(rng.integers(-100, 100, (n, n)), dtype) for _ in range(2))
  product = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=out_type[dtype]))
  product(a_NN, b_NN).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    product(a_NN, b_NN).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / sorted(times)[len(times) // 2]


def _cpuinfo() -> dict:
  """The first processor's fields of /proc/cpuinfo ({} where there is none: macOS, Windows)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      text = f.read().split("\n\n", 1)[0]
  except OSError:
    return {}
  out = {}
  for line in text.splitlines():
    k, sep, v = line.partition(":")
    if sep:
      out.setdefault(k.strip(), v.strip())
  return out


def _cache_kib(level: int) -> int | None:
  """Size of a unified or data cache of `level` as the kernel reports it for cpu0, KiB."""
  base = "/sys/devices/system/cpu/cpu0/cache"
  try:
    entries = os.listdir(base)
  except OSError:
    return None
  for entry in sorted(entries):
    try:
      with open(f"{base}/{entry}/level") as f:
        if int(f.read()) != level:
          continue
      with open(f"{base}/{entry}/type") as f:
        if f.read().strip() == "Instruction":
          continue
      with open(f"{base}/{entry}/size") as f:
        size = f.read().strip()
    except (OSError, ValueError):
      continue
    m = re.fullmatch(r"(\d+)([KMG]?)", size)
    if m:
      return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2)] // 1024
  return None


def _int(value: str | None) -> int | None:
  try:
    return int(value) if value is not None else None
  except ValueError:
    return None
