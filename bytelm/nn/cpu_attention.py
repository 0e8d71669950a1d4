"""A fused bf16 attention for CPUs with AMX tiles (cpu_attention.cc), built on the user's machine.

Axis legend: B batch, H heads, T queries, S keys, K head dim.

XLA:CPU runs bf16 attention as separate passes over the B*H*T*S fp32 scores in main memory:
product, softmax, product. The C++ kernel beside this file takes 16 queries at a time through
all three while their scores stay in cache, both products on the AMX tiles (Intel Xeon since
Sapphire Rapids). Same arithmetic as attention_kernel's forward (fp32 scores and softmax, p
rounded to bf16, fp32 accumulation): 99.99% of outputs equal to the bit, the rest one bf16
rounding apart. Measured on a 2-core AMX Xeon, 8 x 4 heads x 1024 x 1024: 17 ms against XLA's
97 ms (BENCHMARKS.md). It serves the forward pass and a gradient's forward half; the backward
pass stays attention_kernel's, which recomputes p from the m and z this kernel returns.

Whether it is used is this machine's choice, made once and kept in the user's cache under
`bytelm.machine.key()`: where the CPU lists AMX and a C++ compiler ($CXX, else g++) is found,
the kernel is compiled (a few seconds, once: the library is cached under a hash of the source,
the compiler and jaxlib), checked against XLA's attention on random inputs, and timed against
it; it is used where it agrees and is faster. $BYTELM_CPU_ATTENTION=fused|xla forces the
choice (fused fails with the reason where it cannot run); unset or "auto", the calibration
decides. Only bf16 heads of 64 on one CPU device: everything else takes XLA's path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from bytelm import machine, user_cache

ENV = "BYTELM_CPU_ATTENTION"  # fused | xla | auto (the default: calibrated)
HEAD_DIM = 64  # the kernel's one head size (ByT5's and every preset's d_kv)
_TARGET = "bytelm_attention_bf16"
_SOURCE = pathlib.Path(__file__).with_name("cpu_attention.cc")
_ISA = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mamx-tile",
        "-mamx-bf16")
_CALIBRATION = "cpu_attention_v1"  # the file's name in the cache; bump when the kernel changes


def applies(q_BHTK, k_BHSK, v_BHSK) -> bool:
  """Whether this call is the kernel's to take on this machine: bf16 q, k, v with heads of 64
  on one CPU device, and the machine's choice (`choice()`) is the fused kernel. Called at
  trace time; the first call on a machine may calibrate (seconds)."""
  if not (q_BHTK.ndim == k_BHSK.ndim == v_BHSK.ndim == 4
          and q_BHTK.shape[-1] == HEAD_DIM and k_BHSK.shape[-1] == HEAD_DIM
          and v_BHSK.shape[-1] == HEAD_DIM
          and all(x.dtype == jnp.bfloat16 for x in (q_BHTK, k_BHSK, v_BHSK))
          and jax.default_backend() == "cpu" and jax.device_count() == 1):
    return False
  return choice()["use"]


def attention(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain: bool):
  """(out_BHTK bf16, m_BHT1, z_BHT1) as attention_kernel's forward computes them: pos_bias
  None, (H, T, S) or (B, H, T, S) fp32 (broadcastable), key_bias_BS None or fp32 (B, S)."""
  _register()
  B, H, T, _ = q_BHTK.shape
  S = k_BHSK.shape[2]
  none = jnp.zeros((1,), jnp.float32)
  if pos_bias is not None:
    shape = (H, T, S) if pos_bias.ndim <= 3 else (B, H, T, S)
    pos_bias = jnp.broadcast_to(pos_bias.astype(jnp.float32), shape)
  if key_bias_BS is not None:
    key_bias_BS = jnp.broadcast_to(key_bias_BS.astype(jnp.float32), (B, S))
  out_type = (jax.ShapeDtypeStruct(q_BHTK.shape, jnp.bfloat16),
              jax.ShapeDtypeStruct((B, H, T), jnp.float32),
              jax.ShapeDtypeStruct((B, H, T), jnp.float32))
  out_BHTK, m_BHT, z_BHT = jax.ffi.ffi_call(_TARGET, out_type, vmap_method="sequential")(
      q_BHTK, k_BHSK, v_BHSK, none if pos_bias is None else pos_bias,
      none if key_bias_BS is None else key_bias_BS, abstain=np.int64(abstain),
      has_pos=np.int64(pos_bias is not None), has_key=np.int64(key_bias_BS is not None))
  return out_BHTK, m_BHT[..., None], z_BHT[..., None]


@functools.cache
def choice() -> dict:
  """This machine's choice, once per process: {"use": bool, "reason": str, ...timings}.
  $BYTELM_CPU_ATTENTION where it forces one, else the calibration kept in the user's cache,
  else a calibration made now (`calibrate`)."""
  forced = os.environ.get(ENV, "auto").strip().lower()
  if forced not in ("fused", "xla", "auto"):
    raise ValueError(f"{ENV} must be fused, xla or auto (calibrated on this machine), got "
                     f"{forced!r}")
  if forced == "xla":
    return {"use": False, "reason": f"{ENV}=xla"}
  if forced == "fused":
    problem = _unavailable()
    if problem:
      raise RuntimeError(f"{ENV}=fused, but the fused CPU attention cannot run here: {problem}. "
                         f"Unset {ENV} (or set it to xla) to use XLA's attention.")
    return {"use": True, "reason": f"{ENV}=fused"}
  found = stored()
  if found is None:
    with jax.ensure_compile_time_eval():  # called while a model is traced: run it, not stage it
      found = calibrate()
  return found


def describe() -> str:
  """One line for logs: whether bf16 attention runs fused here, and why."""
  found = choice()
  return f"bf16 attention: {'fused AMX kernel' if found['use'] else 'XLA'} ({found['reason']})"


def stored() -> dict | None:
  """This machine's calibration, or None where none was made here."""
  try:
    return json.loads(_calibration_path().read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def calibrate(repeats: int = 5) -> dict:
  """Builds the kernel, checks it against XLA's attention and times both; keeps the answer in
  the user's cache (for this machine's key) and returns it."""
  problem = _unavailable()
  if problem:
    result = {"use": False, "reason": problem}
  else:
    result = _measure(repeats)
  result.update(machine=machine.describe(), jax=jax.__version__)
  user_cache.store_json(_calibration_path(), result)
  return result


def _measure(repeats: int) -> dict:
  from bytelm.nn import attention_kernel  # the reference; it imports this module
  from bytelm import timing
  rng = np.random.default_rng(0)
  # Tails on every axis (T, S not multiples of the kernel's blocks), both biases, both softmaxes.
  B, H, T, S = 2, 3, 37, 45
  q, k, v = (jnp.asarray(rng.normal(size=(B, H, n, HEAD_DIM)), jnp.bfloat16) for n in (T, S, S))
  pos = jnp.asarray(rng.normal(size=(H, T, S)), jnp.float32)
  key = jnp.asarray(np.where(rng.random((B, S)) < 0.2, -1e9, 0.0), jnp.float32)
  for abstain in (False, True):
    fused = attention(q, k, v, pos, key, abstain)
    plain = attention_kernel.xla_forward(q, k, v, pos, key, abstain)
    if not _agree(fused, plain):
      return {"use": False, "reason": "the compiled kernel disagreed with XLA's attention"}
  # Timed at one example of the benchmark's shape (4 heads x 1024 bytes).
  B, H, T = 1, 4, 1024
  q, k, v = (jnp.asarray(rng.normal(size=(B, H, T, HEAD_DIM)), jnp.bfloat16) for _ in range(3))
  pos = jnp.asarray(rng.normal(size=(H, T, T)), jnp.float32)
  runs = {}
  for name, fn in (("fused", attention), ("xla", attention_kernel.xla_forward)):
    compiled = jax.jit(lambda q, k, v, p, fn=fn: fn(q, k, v, p, None, False))
    runs[name] = lambda compiled=compiled: jax.block_until_ready(compiled(q, k, v, pos))
  seconds = timing.compare(runs, repeats)
  use = seconds["fused"] < seconds["xla"]
  return {"use": use, "reason": f"calibrated: {seconds['fused'] * 1e3:.2f} ms fused, "
          f"{seconds['xla'] * 1e3:.2f} ms XLA at 4 heads x {T} x {T}",
          "seconds": {k: round(v, 6) for k, v in seconds.items()}}


def _agree(fused, plain) -> bool:
  """Outputs within one bf16 rounding (values are O(1)), m and z within fp32 summation order."""
  (o1, m1, z1), (o2, m2, z2) = ([np.asarray(x, np.float32) for x in r] for r in (fused, plain))
  return (np.allclose(o1, o2, rtol=2 ** -7, atol=2 ** -7) and np.allclose(m1, m2, rtol=1e-5, atol=1e-5)
          and np.allclose(z1, z2, rtol=1e-5))


def _unavailable() -> str | None:
  """Why the kernel cannot run here, or None where it can (builds and loads it)."""
  if jax.default_backend() != "cpu":
    return f"the default backend is {jax.default_backend()}, not cpu"
  if not (machine.has_amx() and machine.cpu()["flags"]["amx_bf16"]):
    return "the CPU lists no AMX bf16 tiles"
  try:
    _library()
  except (OSError, RuntimeError) as e:
    return str(e)
  return None


@functools.cache
def _library() -> ctypes.CDLL:
  """The kernel's shared library: from the user's cache, else compiled there now."""
  compiler = shutil.which(os.environ.get("CXX", "g++"))
  if compiler is None:
    raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH")
  command = [compiler, "-O3", "-w", "-shared", "-fPIC", "-std=c++17", *_ISA,
             f"-I{jax.ffi.include_dir()}", str(_SOURCE)]
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
  import jaxlib
  digest = hashlib.sha256(_SOURCE.read_bytes() + json.dumps(
      [command, version, jaxlib.__version__]).encode()).hexdigest()[:16]
  path = user_cache.root() / "kernels" / f"cpu_attention-{digest}.so"
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
      built = pathlib.Path(tmp) / path.name
      done = subprocess.run(command + ["-o", str(built)], capture_output=True, text=True)
      if done.returncode != 0:
        raise RuntimeError(f"compiling {_SOURCE.name} failed: {done.stderr.strip()[-500:]}")
      os.replace(built, path)  # whole or absent: another process may be loading it
  lib = ctypes.CDLL(str(path))
  if not lib.bytelm_attention_amx_ready():
    raise RuntimeError("the kernel refused the AMX tile state (Linux arch_prctl)")
  return lib


@functools.cache
def _register() -> None:
  jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(_library().BytelmAttentionBf16),
                              platform="cpu")


def _calibration_path() -> pathlib.Path:
  return user_cache.root() / "calibration" / f"{_CALIBRATION}-{machine.key()}.json"

