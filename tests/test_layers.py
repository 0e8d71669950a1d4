"""Dependencies point down only: every module's bytelm imports, read from its source (imports
inside functions included), go to its own room or a lower one (docs/architecture.md).

A room is a package or module directly under bytelm/ (`bytelm.models.t5` is in room "models").
Rooms of one rank are siblings and do not import each other (models and data). A new room gets
a rank in ROOMS before anything is put in it.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "bytelm"

# The layer order, lowest first; docs/architecture.md describes each room.
ROOMS = {
    "text": 0,  # byte ids, segmenters and word boundaries on bytes, diacritics, tag vocabularies
    "timing": 0,  # side-by-side timing
    "machine": 0,  # what host this is: CPU, flags, caches; the key of what is calibrated on it
    "user_cache": 0,  # the cache folder on the user's machine, JAX's compilation cache in it
    "host_memory": 0,  # malloc keeps what compiled calls free (set at import, before jax)
    "nn": 1,  # layers, attention, kernels, batching, compiled calls, quantization numerics
    "models": 2,  # model families and their shared blocks (not data)
    "data": 2,  # sources, pipeline, prefetch, objectives, noise, BPE (not models)
    "quant": 3,  # quantize a trained model; recipe helpers
    "convert": 3,  # Hugging Face T5 <-> bytelm
    "generation": 3,  # all generation
    "runs": 4,  # a run's workdir: config.json, lock, checkpoints, export, load, its data
    "byteprobs": 5,  # exact byte probabilities from tokenized LMs
    "training": 6,  # the loop, optimizer, sharding, metrics, evaluation, budget
    "api": 7,  # bytelm.load, LanguageModel
    "console": 7,  # what command lines print: one line per user error, plain log lines
    "_deprecated": 7,  # old public names, one release: they warn and call their replacements
    "hierarchical_generation": 7,  # the same (moved to bytelm.generation)
    "demos": 8,  # the correction demo, built on the api
    "bytelm": 9,  # the package's __init__: the public names, re-exported
    "cli": 10,  # console scripts: anything below
}


def room_of(module: str) -> str:
  """"models" for bytelm.models.t5; "bytelm" for the package itself."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "bytelm"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
  """(line, bytelm module) of every import in source, at any depth of the syntax tree: top
  level, inside functions, under `if TYPE_CHECKING`, and `importlib.import_module("...")` with a
  literal name. `from bytelm import x` names bytelm.x where x is a module or package under
  bytelm/, else the package itself."""
  base = module.split(".") if is_package else module.split(".")[:-1]
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: resolved against the importing module's package
        anchor = base[:len(base) - node.level + 1]
        target = ".".join(anchor + ([node.module] if node.module else []))
      else:
        target = node.module
      if target == "bytelm":
        found += [(node.lineno, f"bytelm.{alias.name}" if _is_submodule(alias.name)
                   else "bytelm") for alias in node.names]
      else:
        found.append((node.lineno, target))
    elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)
          and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
               or (isinstance(node.func, ast.Name) and node.func.id in ("import_module",
                                                                         "__import__")))):
      found.append((node.lineno, node.args[0].value))
  return [(line, name) for line, name in found
          if name == "bytelm" or name.startswith("bytelm.")]


def _is_submodule(name: str) -> bool:
  return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def violations() -> list[str]:
  """One line per import that goes up a layer or sideways, or leaves an unplaced room."""
  out = []
  for path in sorted(PACKAGE.rglob("*.py")):
    module = module_name(path)
    room = room_of(module)
    where = path.relative_to(PACKAGE.parent)
    if room not in ROOMS:
      out.append(f"{where}: room {room!r} has no rank in tests/test_layers.py ROOMS; place it "
                 "there and in docs/architecture.md")
      continue
    for line, target in imported_modules(path.read_text(encoding="utf-8"), module,
                                         path.name == "__init__.py"):
      to = room_of(target)
      if to == room:
        continue
      if to not in ROOMS:
        out.append(f"{where}:{line}: imports {target}, whose room {to!r} has no rank")
      elif ROOMS[to] >= ROOMS[room]:
        kind = "sideways" if ROOMS[to] == ROOMS[room] else "up"
        out.append(f"{where}:{line}: {room} (rank {ROOMS[room]}) imports {target} "
                   f"({to}, rank {ROOMS[to]}): {kind}")
  return out


def test_imports_point_down_only():
  found = violations()
  assert not found, ("imports against the layer order (docs/architecture.md); move the code "
                     "to the lower room, or pass what it needs in from above:\n  "
                     + "\n  ".join(found))


def test_the_checker_sees_every_kind_of_import():
  """Lazy, relative, `from bytelm import` and importlib imports are all read: a checker that
  missed one would pass a tree with an upward import in it."""
  source = (
      "import numpy\n"
      "from bytelm.nn import Dense\n"
      "from bytelm import data, load\n"
      "def f():\n"
      "  from bytelm.training import trainer\n"
      "  import bytelm.runs.workdir\n"
      "  return importlib.import_module('bytelm.api')\n"
      "from .. import text\n"
      "from .pooling import pool\n")
  found = sorted(name for _, name in imported_modules(source, "bytelm.models.t5"))
  assert found == sorted(["bytelm.nn", "bytelm.data", "bytelm", "bytelm.training",
                          "bytelm.runs.workdir", "bytelm.api", "bytelm.text",
                          "bytelm.models.pooling"])
  assert room_of("bytelm.models.t5") == "models" and room_of("bytelm") == "bytelm"


def test_models_and_data_are_siblings():
  """The two rooms of rank 2 neither import each other (the cut the text room made possible)."""
  assert ROOMS["models"] == ROOMS["data"]
  assert not [v for v in violations() if v.startswith(("bytelm/models/", "bytelm/data/"))]
