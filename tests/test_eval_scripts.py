"""eval/ uses the library: no script edits sys.path, imports a private (`_name`) of bytelm, builds
a run's data from the pipeline itself, or does the library's work its own way (scoring, loading,
training unless finished); and every script ends with its key=value line (eval/common.py).

The scripts are read, not run (tests/test_docs.py runs eval/compare.py): `problems` walks each
one's syntax tree. The checker is tested on its own with the patterns eval/ used to have, so a
check that stops finding them fails here, and with the library calls that replaced them, so a
check that fires on legitimate code fails too.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "eval").glob("*.py") if p.name != "common.py")

# The library's functions an eval script must not call: what they do is the library's own
# business (train_unless_finished trains unless finished; bytelm.load loads any run or export;
# the run's data come from one library function of its config).
TRAINING = {"train_and_evaluate", "evaluated_at"}
LOADERS = {"load_module", "from_workdir", "byte_model_from_workdir", "load_hf", "restore_latest",
           "Checkpointer"}
LOADER_PATHS = ("trainer.load", "runs.load", "workdir.load", "export.restore")
PIPELINE = "bytelm.data.pipeline"
# Keys of the loss's metrics that an evaluation adds up: a script subscripting them sums
# cross-entropy itself instead of calling LanguageModel.score or the trainer's evaluate.
LOSS_SUMS = {"ce", "ce_sum", "num_targets"}
# Names of definitions that say "scoring" or "loading"; such a definition is the library's job
# when it also runs the model itself (jit, split/merge, a loss function) or a loader.
JOB_NAME = re.compile(r"scor|(^|_)load($|_)", re.I)
MODEL_WORK = {"jit", "split", "merge", "loss_fn", "eval_sums"}
# Private-looking attributes that are public API elsewhere (namedtuple's).
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make"}


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _bytelm_names(tree: ast.AST) -> dict[str, str]:
  """Local name -> the bytelm object it is bound to ("trainer" -> "bytelm.training.trainer")."""
  bound = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name == "bytelm" or a.name.startswith("bytelm."):
          if a.asname:
            bound[a.asname] = a.name
          else:
            bound[a.name.split(".")[0]] = a.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
        node.module == "bytelm" or node.module.startswith("bytelm.")):
      for a in node.names:
        bound[a.asname or a.name] = f"{node.module}.{a.name}"
  return bound


def _qualified(node: ast.AST, bound: dict[str, str]) -> str | None:
  """The dotted bytelm name an expression like `trainer.load` stands for, else None."""
  if isinstance(node, ast.Name):
    return bound.get(node.id)
  if isinstance(node, ast.Attribute):
    base = _qualified(node.value, bound)
    return f"{base}.{node.attr}" if base else None
  return None


def _is_sys_path(node: ast.AST) -> bool:
  return (isinstance(node, ast.Attribute) and node.attr == "path"
          and isinstance(node.value, ast.Name) and node.value.id == "sys")


def _called_names(node: ast.AST) -> set[str]:
  """The last component of everything called inside node (`jax.jit(...)` -> "jit")."""
  out = set()
  for n in ast.walk(node):
    if isinstance(n, ast.Call):
      f = n.func
      out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
  return out


def problems(source: str) -> list[str]:
  """What in an eval script's source does the library's work or reaches past its public names,
  as "line N: ..." (empty: nothing)."""
  tree = ast.parse(source)
  bound = _bytelm_names(tree)
  found = set()

  def report(node, message):
    found.add((node.lineno, message))

  for node in ast.walk(tree):
    # -- sys.path: scripts run as `python eval/x.py` against the installed bytelm --
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
        _is_sys_path(node.func.value) or node.func.attr == "addsitedir"):
      report(node, "edits sys.path: bytelm is installed (pip install -e .), eval/ is on the "
                   "path already (import common)")
    if isinstance(node, (ast.Assign, ast.AugAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for t in targets:
        if _is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value)):
          report(node, "edits sys.path")
    if isinstance(node, ast.ImportFrom) and node.module == "sys" and any(
        a.name == "path" for a in node.names):
      report(node, "imports sys.path to edit it")

    # -- privates of bytelm, and private attributes of anything but self --
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("bytelm.") and any(map(_private, a.name.split("."))):
          report(node, f"imports a private module of bytelm ({a.name})")
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bytelm":
      for part in node.module.split(".") + [a.name for a in node.names]:
        if _private(part):
          report(node, f"imports a private name of bytelm ({node.module}: {part})")
    if isinstance(node, ast.Attribute) and _private(node.attr) and (
        node.attr not in PUBLIC_UNDERSCORE) and not (
        isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
      report(node, f"reaches a private attribute (.{node.attr}): use a public name of bytelm, "
                   "or add one to the library")

    # -- the run's data: one library function of the config, not the pipeline by hand --
    name = _qualified(node, bound) if isinstance(node, (ast.Name, ast.Attribute)) else None
    imported = []
    if isinstance(node, ast.Import):
      imported = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      imported = [f"{node.module}.{a.name}" for a in node.names]
    for q in imported + [name or ""]:
      if q == PIPELINE or q.startswith(PIPELINE + "."):
        report(node, "uses the data pipeline directly: a run's data come from the library "
                     "(the config-to-data function)")
    last = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
    if last == "make_source":
      report(node, "builds a data source itself (make_source): a run's data come from the "
                   "library (the config-to-data function)")

    # -- training unless finished, loading --
    if last in TRAINING:
      report(node, f"trains or checks for a finished run itself ({last}): "
                   "bytelm.training.train_unless_finished (budget.train_within for a budget)")
    if last in LOADERS or (name and name.endswith(LOADER_PATHS)):
      report(node, f"loads a model its own way ({name or last}): bytelm.load(path)")

    # -- scoring: summing the loss itself, or a scorer of its own --
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and (
        node.slice.value in LOSS_SUMS):
      report(node, f"adds up the loss itself ([{node.slice.value!r}]): LanguageModel.score, "
                   "or the trainer's evaluate")
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and JOB_NAME.search(node.name) and (
        _called_names(node) & (MODEL_WORK | LOADERS)):
      job, use = (("scoring", "LanguageModel.score, or the trainer's evaluate")
                  if "scor" in node.name.lower() else ("loading", "bytelm.load"))
      report(node, f"defines its own {job} ({node.name}): {use}")
  return [f"line {line}: {message}" for line, message in sorted(found)]


def ends_with_key_values(source: str) -> bool:
  """Whether the script prints its last line with common.last_line."""
  return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "last_line" and getattr(n.func.value, "id", "") == "common"
             for n in ast.walk(ast.parse(source)))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_an_eval_script_uses_the_library(script):
  source = script.read_text(encoding="utf-8")
  assert problems(source) == [], f"{script.relative_to(ROOT)}:\n" + "\n".join(problems(source))
  assert ends_with_key_values(source), (
      f"{script.relative_to(ROOT)} must end its output with its figures as one key=value line "
      "(common.last_line): BENCHMARKS.md quotes that line")


def bytelm_names(source: str) -> set[str]:
  """Every dotted bytelm name the source uses ("bytelm.training.trainer.read_config")."""
  tree = ast.parse(source)
  bound = _bytelm_names(tree)
  return {q for n in ast.walk(tree) if isinstance(n, (ast.Name, ast.Attribute))
          for q in [_qualified(n, bound)] if q}


def _resolves(name: str) -> bool:
  parts = name.split(".")
  for cut in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
    try:
      obj = importlib.import_module(".".join(parts[:cut]))
    except ImportError:
      continue
    try:
      for attr in parts[cut:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return False
    return True
  return False


@pytest.mark.parametrize("script", SCRIPTS + [ROOT / "eval" / "common.py"], ids=lambda p: p.name)
def test_every_name_of_bytelm_an_eval_script_uses_exists(script):
  """A renamed or moved library function breaks the script that calls it only when that line
  runs (eval/speed.py called generation.generate_ids after it had gone): read, not run."""
  missing = sorted(n for n in bytelm_names(script.read_text(encoding="utf-8"))
                   if not _resolves(n))
  assert not missing, f"{script.relative_to(ROOT)} uses names bytelm does not have: {missing}"


def test_eval_common_holds_no_library_work():
  assert problems((ROOT / "eval" / "common.py").read_text(encoding="utf-8")) == []


# What eval/ scripts did before they used the library (shortened; two are what they must not
# start doing), and words of the problem each must be reported as.
FOUND = [
    ("sys.path", """
        import sys
        ROOT = pathlib.Path(__file__).resolve().parents[1]
        sys.path.insert(0, str(ROOT))
        """),
    ("private", """
        from bytelm.data.pipeline import _check_segments
        """),
    ("private attribute", """
        from bytelm.training import trainer
        trainer._check_finite(metrics, 3, None, "ckpt")
        """),
    ("private attribute", """
        lm = bytelm.load(path)
        byte_model = lm._byte_model()
        """),
    ("data pipeline", """
        from bytelm.data import pipeline
        source = pipeline.make_source(dc.validation or dc.train, split, seed=c.seed,
                                      objective=dc.objective, batch_size=c.train.batch_size)
        """),
    ("data pipeline", """
        from bytelm.data import pipeline
        batch.update(pipeline.segment_rows(batch["targets"], segmenter=s, max_segments=64))
        """),
    ("finished run", """
        from bytelm.training import config_file, train_and_evaluate, trainer
        def trained(recipe, workdir, steps):
          if not trainer.evaluated_at(workdir, steps):
            c = config_file.load(ROOT / "configs" / f"{recipe}.py")
            train_and_evaluate(c, workdir)
          return workdir
        """),
    ("loads a model", """
        import bytelm
        def load(name, delta):
          return bytelm.load_module(root / name)
        """),
    ("loads a model", """
        from bytelm.byteprobs import adapters
        lm = adapters.from_workdir(workdir)
        hat = adapters.byte_model_from_workdir(other)
        """),
    ("adds up the loss", """
        def val_bpb(model, family, batches):
          graphdef, state = nnx.split(model)
          @jax.jit
          def sums(state, batch):
            _, m = family.loss_fn(nnx.merge(graphdef, state), batch)
            return m["ce"] * m["num_targets"], m["num_targets"]
          ce, n = zip(*(jax.device_get(sums(state, b)) for b in batches))
          return float(sum(ce) / sum(n) / np.log(2))
        """),
    ("own scoring", """
        class Scorer:
          def __init__(self, model, family):
            graphdef, state = nnx.split(model)
            self._ce_sum = jax.jit(lambda s, b: family.loss_fn(nnx.merge(graphdef, s), b))
        """),
]


@pytest.mark.parametrize("expected,snippet", FOUND, ids=[f"{i}-{e}" for i, (e, _) in
                                                        enumerate(FOUND)])
def test_the_checker_finds_what_eval_scripts_used_to_do(expected, snippet):
  found = problems(textwrap.dedent(snippet))
  assert any(expected in p for p in found), (expected, found)


# Legitimate code from the eval scripts: the library's calls, and the script's own helpers.
LEGITIMATE = """
import sys
import common
import bytelm
from bytelm.data import noise, sources
from bytelm.training import budget, reuse, train_unless_finished, trainer

def _deleted(model, inputs_BT):
  return float(inputs_BT.mean())

def recipe(name, steps):
  c = common.config(name)
  c.train.steps = steps
  return c

def main():
  machine = common.start()
  workdir = train_unless_finished(recipe("hat", 40), "workdirs/hat")
  lm = bytelm.load(workdir)
  bits = lm.score(sources.held_out_pieces("embedded:en", 240, 4096), total=True)
  run = budget.train_within(recipe("bpe_decoder", 10), "workdirs/bpe", 1e6)
  source = budget.train_source(recipe("mrt5", 10), workdir, "validation")
  last = reuse.last_evaluation(workdir)
  saved = trainer.read_config(workdir)
  state = self._state
  point = point._replace(x=1)
  print(sys.argv, jax.__version__)
  common.last_line({"bpb": bits, "val": last["val_bpb"]})
"""


def test_the_checker_passes_the_library_calls():
  assert problems(LEGITIMATE) == []
  assert ends_with_key_values(LEGITIMATE)
