"""Fused attention for x86 CPUs (cpu_attention.cc), built on the user's machine.

Axis legend: B batch, H heads, T queries, S keys, K head dim.

XLA:CPU runs attention as separate passes over the B*H*T*S fp32 scores in main memory:
product, softmax, product, and in the backward pass the scores again, their cotangents and
three more products. The C++ kernels beside this file take 16 queries at a time through all
of it while their scores stay in cache: the forward pass in bf16 on the AMX tiles (Intel Xeon
since Sapphire Rapids) and in fp32 on AVX-512 FMA register blocks (any AVX-512 CPU, AMD's Zen
4 included); the backward pass on AVX-512 FMA in both dtypes (bf16 widened to fp32, rounded
where XLA's bf16 backward rounds). Same arithmetic as attention_kernel's `xla_forward` and
`xla_backward`, summed in another order: bf16 outputs equal to the bit for 99.99% of them,
the rest one bf16 rounding apart; fp32 within a few ulps. Measured on a 2-core AMX Xeon
(BENCHMARKS.md): at 8 x 4 heads x 1024 x 1024, the forward pass 17 ms in bf16 against XLA's
97 ms, 30 ms in fp32 against 78 ms; the backward pass about 2x XLA's at one example.

Whether it is used is this machine's choice, per dtype and pass, made once and kept in the
user's cache under `bytelm.machine.key()` and the library's digest: where the CPU has what the
dtype's kernel needs and a C++ compiler ($CXX, else g++) is found, the kernels are compiled (a
few seconds, once: the library is cached under a hash of the source, the compiler and jaxlib),
checked against XLA's attention on random inputs, and timed against it; each is used where it
agrees and is faster, and while the library loads.
$BYTELM_CPU_ATTENTION=fused|xla forces the choice (fused fails with the reason where it
cannot run); unset or "auto", the calibration decides. Only heads of 64, at least MIN_QUERIES
queries, on one CPU device: everything else takes XLA's path.
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
DTYPES = ("bfloat16", "float32")
# Fewer queries (a generation step) leave the kernel's per-call work, k and v rearranged for
# every head, larger than the attention itself: fp32 greedy generation took 0.90 s with the
# kernel in its steps, 0.70 s without.
MIN_QUERIES = 16
_TARGET = "bytelm_attention"
_BACKWARD_TARGET = "bytelm_attention_backward"
_SOURCE = pathlib.Path(__file__).with_name("cpu_attention.cc")
# What the whole file may use; the AMX code adds its own instructions function by function,
# so the fp32 kernel also runs on CPUs without AMX.
_ISA = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma")
_CALIBRATION = "cpu_attention_v4"  # the file's name in the cache; bump when the measure changes
# (a changed kernel or compiler is a new library digest, and calibrated again by itself)


def applies(q_BHTK, k_BHSK, v_BHSK, backward: bool = False) -> bool:
  """Whether this call is the kernel's to take on this machine: q, k, v of one dtype (bf16 or
  fp32) and one batch and head count (not broadcast), heads of 64 and at least MIN_QUERIES
  queries, on one CPU device, and the machine's choice for that dtype and pass (`choice()`)
  is the fused kernel. Called at trace time; the first call on a machine may calibrate
  (seconds)."""
  dtype = jnp.dtype(q_BHTK.dtype).name
  if not (dtype in DTYPES and k_BHSK.dtype == q_BHTK.dtype == v_BHSK.dtype
          and q_BHTK.ndim == k_BHSK.ndim == v_BHSK.ndim == 4
          and q_BHTK.shape[:2] == k_BHSK.shape[:2] and k_BHSK.shape == v_BHSK.shape
          and q_BHTK.shape[-1] == k_BHSK.shape[-1] == HEAD_DIM
          and q_BHTK.shape[2] >= MIN_QUERIES
          and jax.default_backend() == "cpu" and jax.device_count() == 1):
    return False
  return choice(dtype)["backward" if backward else "use"]


def attention(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, abstain: bool):
  """(out_BHTK in q's dtype, m_BHT1, z_BHT1) as attention_kernel's forward computes them:
  pos_bias None, (H, T, S) or (B, H, T, S) fp32 (broadcastable), key_bias_BS None or fp32
  (B, S)."""
  _register()
  B, H, T, _ = q_BHTK.shape
  pos, key, has = _biases(pos_bias, key_bias_BS, B, H, T, k_BHSK.shape[2])
  out_type = (jax.ShapeDtypeStruct(q_BHTK.shape, q_BHTK.dtype),
              jax.ShapeDtypeStruct((B, H, T), jnp.float32),
              jax.ShapeDtypeStruct((B, H, T), jnp.float32))
  out_BHTK, m_BHT, z_BHT = jax.ffi.ffi_call(_TARGET, out_type, vmap_method="sequential")(
      q_BHTK, k_BHSK, v_BHSK, pos, key, abstain=np.int64(abstain), **has)
  return out_BHTK, m_BHT[..., None], z_BHT[..., None]


def attention_backward(q_BHTK, k_BHSK, v_BHSK, pos_bias, key_bias_BS, o_BHTK, m_BHT1, z_BHT1,
                       do_BHTK):
  """(dq, dk, dv, d_pos, d_key) as attention_kernel's backward pass computes them, from the
  forward's inputs, output, m and z and the output's cotangent. d_pos comes in the shape the
  kernel took pos_bias in ((H, T, S) or (B, H, T, S); the caller sums it down to pos_bias's),
  d_key as (B, S)."""
  _register()
  B, H, _, _ = q_BHTK.shape
  S = k_BHSK.shape[2]
  pos, key, has = _biases(pos_bias, key_bias_BS, B, H, q_BHTK.shape[2], S)
  out_type = (jax.ShapeDtypeStruct(q_BHTK.shape, q_BHTK.dtype),
              jax.ShapeDtypeStruct(k_BHSK.shape, k_BHSK.dtype),
              jax.ShapeDtypeStruct(v_BHSK.shape, v_BHSK.dtype),
              jax.ShapeDtypeStruct(pos.shape, jnp.float32),
              jax.ShapeDtypeStruct((B, H, S) if key_bias_BS is not None else (1,), jnp.float32))
  dq, dk, dv, d_pos, d_key_BHS = jax.ffi.ffi_call(
      _BACKWARD_TARGET, out_type, vmap_method="sequential")(
      q_BHTK, k_BHSK, v_BHSK, o_BHTK, do_BHTK, m_BHT1[..., 0], z_BHT1[..., 0], pos, key, **has)
  return (dq, dk, dv, None if pos_bias is None else d_pos,
          None if key_bias_BS is None else jnp.sum(d_key_BHS, axis=1))


def _biases(pos_bias, key_bias_BS, B, H, T, S):
  """(pos, key, attributes) as the kernels take them: pos_bias broadcast to (H, T, S) or
  (B, H, T, S), key_bias_BS to (B, S), fp32, an absent one as a placeholder of one element;
  the attributes say which are there."""
  none = jnp.zeros((1,), jnp.float32)
  pos = none if pos_bias is None else jnp.broadcast_to(
      pos_bias.astype(jnp.float32), (H, T, S) if pos_bias.ndim <= 3 else (B, H, T, S))
  key = none if key_bias_BS is None else jnp.broadcast_to(
      key_bias_BS.astype(jnp.float32), (B, S))
  has = {"has_pos": np.int64(pos_bias is not None), "has_key": np.int64(key_bias_BS is not None)}
  return pos, key, has


@functools.cache
def choice(dtype: str) -> dict:
  """This machine's choice for one dtype, once per process: {"use": bool, "reason": str, ...}.
  $BYTELM_CPU_ATTENTION where it forces one, else the calibration kept in the user's cache,
  else a calibration made now (`calibrate`)."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  forced = os.environ.get(ENV, "auto").strip().lower()
  if forced not in ("fused", "xla", "auto"):
    raise ValueError(f"{ENV} must be fused, xla or auto (calibrated on this machine), got "
                     f"{forced!r}")
  if forced == "xla":
    return {"use": False, "backward": False, "reason": f"{ENV}=xla"}
  if forced == "fused":
    problem = _unavailable(dtype)
    if problem:
      raise RuntimeError(f"{ENV}=fused, but the fused CPU attention cannot run {dtype} here: "
                         f"{problem}. Unset {ENV} (or set it to xla) to use XLA's attention.")
    return {"use": True, "backward": True, "reason": f"{ENV}=fused"}
  found = stored()
  if found is None:
    with jax.ensure_compile_time_eval():  # called while a model is traced: run it, not stage it
      found = calibrate()
  found = found[dtype]
  if found["use"] or found["backward"]:
    problem = _unavailable(dtype)  # the library may be gone, or the AMX state refused now
    if problem:
      return {"use": False, "backward": False, "reason": problem}
  return found


def describe() -> str:
  """One line for logs: whether attention runs fused here, per dtype, and why."""
  parts = []
  for dtype in DTYPES:
    found = choice(dtype)
    parts.append(f"{dtype} {'fused kernel' if found['use'] else 'XLA'} ({found['reason']})")
  return "attention on this CPU: " + "; ".join(parts)


def stored() -> dict | None:
  """This machine's calibration, or None where none was made here."""
  try:
    found = json.loads(_calibration_path().read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  return found if all(isinstance(found.get(d), dict) for d in DTYPES) else None


def calibrate(repeats: int = 5) -> dict:
  """Per dtype: builds the kernel, checks it against XLA's attention and times both. Keeps the
  answers in the user's cache (for this machine's key) and returns them."""
  result = {}
  for dtype in DTYPES:
    problem = _unavailable(dtype)
    result[dtype] = ({"use": False, "backward": False, "reason": problem} if problem
                     else _measure(dtype, repeats))
  result.update(machine=machine.describe(), jax=jax.__version__)
  user_cache.store_json(_calibration_path(), result)
  return result


def _measure(dtype: str, repeats: int) -> dict:
  from bytelm import timing
  from bytelm.nn import attention_kernel  # the reference; it imports this module
  rng = np.random.default_rng(0)
  # Tails on every axis (T, S not multiples of the kernel's blocks), both biases, both softmaxes.
  B, H, T, S = 2, 3, 37, 45
  q, k, v = (jnp.asarray(rng.normal(size=(B, H, n, HEAD_DIM)), dtype) for n in (T, S, S))
  pos = jnp.asarray(rng.normal(size=(H, T, S)), jnp.float32)
  key = jnp.asarray(np.where(rng.random((B, S)) < 0.2, -1e9, 0.0), jnp.float32)
  do = jnp.asarray(rng.normal(size=q.shape), dtype)
  for abstain in (False, True):
    fused = attention(q, k, v, pos, key, abstain)
    plain = attention_kernel.xla_forward(q, k, v, pos, key, abstain)
    if not _agree(fused, plain, dtype):
      return {"use": False, "backward": False,
              "reason": "the compiled kernel disagreed with XLA's attention"}
    res = (q, k, v, pos, key, *plain)
    if not _agree(attention_backward(*res, do), attention_kernel.xla_backward(*res, do), dtype):
      return {"use": False, "backward": False,
              "reason": "the compiled backward kernel disagreed with XLA's"}
  # Timed at one example of the benchmark's shape (4 heads x 1024 bytes): the forward's
  # output alone, as in a forward pass (XLA computes m and z only where they are used; the
  # kernel always does), and the backward pass from the same residuals.
  B, H, T = 1, 4, 1024
  q, k, v, do = (jnp.asarray(rng.normal(size=(B, H, T, HEAD_DIM)), dtype) for _ in range(4))
  pos = jnp.asarray(rng.normal(size=(H, T, T)), jnp.float32)
  res = (q, k, v, pos, None, *attention_kernel.xla_forward(q, k, v, pos, None, False))
  runs = {}
  for name, fn in (("fused", attention), ("xla", attention_kernel.xla_forward)):
    compiled = jax.jit(lambda q, k, v, p, fn=fn: fn(q, k, v, p, None, False)[0])
    runs[name] = lambda compiled=compiled: jax.block_until_ready(compiled(q, k, v, pos))
  for name, fn in (("fused_backward", attention_backward),
                   ("xla_backward", attention_kernel.xla_backward)):
    compiled = jax.jit(fn)
    runs[name] = lambda compiled=compiled: jax.block_until_ready(compiled(*res, do))
  seconds = timing.compare(runs, repeats)
  ms = {name: f"{t * 1e3:.2f}" for name, t in seconds.items()}
  reason = (f"calibrated at 4 heads x {T} x {T}: forward {ms['fused']} ms fused, {ms['xla']} "
            f"XLA; backward {ms['fused_backward']} ms fused, {ms['xla_backward']} XLA")
  return {"use": seconds["fused"] < seconds["xla"],
          "backward": seconds["fused_backward"] < seconds["xla_backward"],
          "reason": reason, "seconds": {k: round(v, 6) for k, v in seconds.items()}}


def _agree(fused, plain, dtype: str) -> bool:
  """Every array within one rounding of the dtype, relative to its largest value: the kernel
  sums in another order."""
  for a, b in zip(fused, plain):
    if (a is None) != (b is None):
      return False
    if a is None:
      continue
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    tol = 2 ** -7 if dtype == "bfloat16" else 1e-5
    if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol * np.abs(b).max()):
      return False
  return True


def _unavailable(dtype: str) -> str | None:
  """Why the kernel cannot run `dtype` here, or None where it can (builds and loads it)."""
  if jax.default_backend() != "cpu":
    return f"the default backend is {jax.default_backend()}, not cpu"
  flags = machine.cpu()["flags"]
  if dtype == "bfloat16" and not (flags["amx_tile"] and flags["amx_bf16"]):
    return "the CPU lists no AMX bf16 tiles"
  if not (flags["avx512f"] and machine.has_flags("avx512bw", "avx512vl", "avx512dq")):
    return "the CPU lists no AVX-512 (F, BW, VL and DQ)"
  try:
    lib = _library()
  except (OSError, RuntimeError) as e:
    return str(e)
  if dtype == "bfloat16" and not lib.bytelm_attention_amx_ready():
    return "Linux refused this process the AMX tile state (arch_prctl)"
  return None


@functools.cache
def _build() -> tuple[list[str], str]:
  """(the compile command without its output, a digest of it, the source, the compiler's
  version and jaxlib's): what the library and this machine's calibration are kept under, so
  that a changed kernel or compiler is built and checked again."""
  compiler = shutil.which(os.environ.get("CXX", "g++"))
  if compiler is None:
    raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH")
  command = [compiler, "-O3", "-w", "-shared", "-fPIC", "-std=c++17", *_ISA,
             f"-I{jax.ffi.include_dir()}", str(_SOURCE)]
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
  import jaxlib
  digest = hashlib.sha256(_SOURCE.read_bytes() + json.dumps(
      [command, version, jaxlib.__version__]).encode()).hexdigest()[:16]
  return command, digest


@functools.cache
def _library() -> ctypes.CDLL:
  """The kernels' shared library: from the user's cache, else compiled there now."""
  command, digest = _build()
  path = user_cache.root() / "kernels" / f"cpu_attention-{digest}.so"
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
      built = pathlib.Path(tmp) / path.name
      try:
        done = subprocess.run(command + ["-o", str(built)], capture_output=True, text=True,
                              timeout=600)
      except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"compiling {_SOURCE.name} took over {e.timeout:.0f} s") from e
      if done.returncode != 0:
        raise RuntimeError(f"compiling {_SOURCE.name} failed: {done.stderr.strip()[-500:]}")
      os.replace(built, path)  # whole or absent: another process may be loading it
  return ctypes.CDLL(str(path))


@functools.cache
def _register() -> None:
  lib = _library()
  jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.BytelmAttention), platform="cpu")
  jax.ffi.register_ffi_target(_BACKWARD_TARGET, jax.ffi.pycapsule(lib.BytelmAttentionBackward),
                              platform="cpu")


def _calibration_path() -> pathlib.Path:
  """Under this machine's key and the library's digest, where there is a compiler."""
  try:
    digest = "-" + _build()[1]
  except RuntimeError:
    digest = ""
  return user_cache.root() / "calibration" / f"{_CALIBRATION}-{machine.key()}{digest}.json"

