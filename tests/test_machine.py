"""What machine this is (bytelm/machine.py), and the FLOP count eval/speed.py reads speed
against."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from bytelm import machine
from bytelm.models import t5

ROOT = pathlib.Path(__file__).resolve().parents[1]

XEON = {"model name": "Intel(R) Xeon(R) Platinum 8488C", "cpu family": "6", "model": "143",
        "stepping": "8", "flags": "fpu avx2 fma avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16"}
EPYC = {"model name": "AMD EPYC", "cpu family": "25", "model": "17", "stepping": "1",
        "flags": "fpu avx2 fma avx512f avx512_bf16"}


@pytest.fixture
def host(monkeypatch):
  """Pretend to be a host with the given /proc/cpuinfo fields."""
  def pretend(fields):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: dict(fields))
    machine.cpu.cache_clear()
  yield pretend
  machine.cpu.cache_clear()


def test_the_cpu_is_named_and_its_flags_read(host):
  host(XEON)
  assert machine.has_amx()
  assert machine.summary() == {"cpu": "Intel_R_Xeon_R_Platinum_8488C_f6m143", "amx": 1,
                               "avx512_bf16": 1}
  host(EPYC)
  assert not machine.has_amx()
  # a virtual machine's bare "AMD EPYC" still tells hosts apart by family and model
  assert machine.summary() == {"cpu": "AMD_EPYC_f25m17", "amx": 0, "avx512_bf16": 1}
  assert "family 25, model 17" in machine.describe()
  host({})  # no /proc/cpuinfo (macOS): still a token, no crash
  assert machine.summary()["cpu"] and " " not in machine.summary()["cpu"]


def test_the_key_changes_with_the_cpu_and_xla_flags(host, monkeypatch):
  host(EPYC)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  epyc = machine.key()
  assert machine.key() == epyc  # stable
  host(XEON)
  assert machine.key() != epyc  # a calibration from another CPU is not reused
  host(EPYC)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=false")
  assert machine.key() != epyc


def test_matmul_peak_is_positive_and_checks_its_dtype():
  assert machine.matmul_peak("float32", n=64, repeats=1) > 0
  assert machine.matmul_peak("int8", n=64, repeats=1) > 0
  with pytest.raises(ValueError, match="dtype"):
    machine.matmul_peak("float16")


def test_speed_counts_the_flops_xla_counts():
  """eval/speed.py's model_flops against XLA's own count of the compiled forward's HLO (one
  example: the count is per example where the model maps over the batch)."""
  sys.path.insert(0, str(ROOT / "eval"))
  try:
    spec = importlib.util.spec_from_file_location("speed", ROOT / "eval" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
  finally:
    sys.path.remove(str(ROOT / "eval"))
  cfg = t5.preset("tiny")
  graphdef, state = nnx.split(t5.T5(cfg, rngs=nnx.Rngs(0)))
  forward = jax.jit(lambda st, x, y: nnx.merge(graphdef, st)(x, t5.shift_right(y)))
  for inputs, targets in ((64, 16), (256, 32), (64, 256)):  # each term dominant once
    x, y = jnp.ones((1, inputs), jnp.int32), jnp.ones((1, targets), jnp.int32)
    xla = forward.lower(state, x, y).cost_analysis()["flops"]
    ours = speed.model_flops(cfg, "forward", 1, inputs, targets)
    assert ours == pytest.approx(xla, rel=0.05), (inputs, targets)  # XLA counts norms too
  assert speed.model_flops(cfg, "train_step", 2, 64, 16) == 3 * speed.model_flops(
      cfg, "forward", 2, 64, 16)
