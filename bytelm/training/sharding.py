"""Device mesh and the placement of parameters, optimizer state and batches on it.

Mesh axes: `data` (data parallel) and `fsdp` (parameters and optimizer state sharded, batch too).
One table, `PARAM_RULES`, maps a parameter's kind (the end of its path) to a partition spec; every
optimizer-state leaf shaped like its parameter follows the same rule. A dimension the fsdp axis
does not divide stays replicated, so odd shapes never fail to compile.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH = ("data", "fsdp")  # FSDP shards the batch over both axes: each device sees its own rows

# (path regex, spec). Kernels are (in, out); shard the d_model side, which every matrix has.
PARAM_RULES = (
    (r"(^|/)(q|k|v|wi_0|wi_1|lm_head)/kernel$", P("fsdp", None)),
    (r"(^|/)(o|wo)/kernel$", P(None, "fsdp")),
    (r"(^|/)shared/embedding$", P(None, "fsdp")),  # (V, D)
    (r".*", P()),  # norms, relative position bias, counters, RNG state: replicated
)


def make_mesh(mesh_config) -> Mesh:
  """A Mesh from {"data": n, "fsdp": m}; -1 means all remaining devices."""
  unknown = set(mesh_config) - set(AXES)
  if unknown:
    raise ValueError(f"mesh has unknown axes {sorted(unknown)}; use {AXES}")
  sizes = [int(mesh_config.get(a, 1)) for a in AXES]
  n = jax.device_count()
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(zip(AXES, sizes))}: at most one axis may be -1")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % fixed:
      raise ValueError(f"mesh {dict(zip(AXES, sizes))}: the {n} device{'s' if n > 1 else ''} here cannot be split "
                       f"into groups of {fixed}. {_mesh_fix(n)}")
    sizes[sizes.index(-1)] = n // fixed
  if int(np.prod(sizes)) > n:
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"only {n} are present. {_mesh_fix(n)}")
  # A smaller mesh uses the first devices. Auto axes: XLA propagates shardings through the
  # model, which then needs no annotations.
  return jax.make_mesh(tuple(sizes), AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=jax.devices()[:int(np.prod(sizes))])


def _mesh_fix(n: int) -> str:
  """How to ask for a mesh that n devices can form."""
  divisors = [d for d in range(1, n + 1) if n % d == 0]
  return (f"Set mesh.data and mesh.fsdp to sizes whose product divides {n} (e.g. "
          f"--config.mesh.fsdp={divisors[-1]} --config.mesh.data=1, or -1 for \"all the "
          "rest\"), or run where more devices are (on CPU, "
          "XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N).")


def path_str(path) -> str:
  """"a/b/0/kernel" for a pytree key path (nnx's "value" wrappers left out)."""
  parts = []
  for k in path:
    key = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
    parts.append(str(key))
  return "/".join(p for p in parts if p != "value")


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
  """The partition spec of one state leaf (see PARAM_RULES)."""
  for pattern, spec in PARAM_RULES:
    if re.search(pattern, path):
      break
  if len(spec) != len(shape):  # e.g. Adafactor's factored moments: keep replicated
    return P()
  fsdp = mesh.shape["fsdp"]
  return P(*[a if a is None or shape[i] % fsdp == 0 else None for i, a in enumerate(spec)])


def state_shardings(state, mesh: Mesh):
  """NamedShardings for every leaf of a (model, optimizer) state pytree."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, spec_for(path_str(path), np.shape(x), mesh)), state)


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Rows over the batch axes; stacked: batches of several steps ([k, B, T], the trainer's
  train.steps_per_call), whose leading step axis every device holds whole."""
  return NamedSharding(mesh, P(None, BATCH) if stacked else P(BATCH))


def check_batch(batch_size: int, mesh: Mesh) -> None:
  devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % devices:
    raise ValueError(f"train.batch_size={batch_size} is not divisible by the {devices} devices "
                     f"of the mesh {dict(mesh.shape)}; use a multiple of {devices}")


def put_state(state, shardings):
  """A state that every process holds whole (built from the same seed) as global arrays laid
  out by shardings. One process: device_put. Several: device_put cannot place data on another
  process's devices, so each process fills its own devices' shards from its copy."""
  if jax.process_count() == 1:
    return jax.device_put(state, shardings)

  def put(x, sharding):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # dropout streams: as raw key data
      data = put(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, state, shardings)


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh,
              stacked: bool = False) -> dict[str, jax.Array]:
  """This process's rows of the global batch -> global arrays sharded over the batch axes
  (stacked: of several steps' batches, [k, rows, ...], sharded on the rows' axis)."""
  sharding = batch_sharding(mesh, stacked)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
