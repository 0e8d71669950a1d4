"""The docs' runnable blocks run, so the docs cannot drift from the code.

Every fenced block whose info string is `bash runnable` or `python runnable` in docs/ is run, in
page order, in a scratch directory holding links to train.py, configs/, eval/ and
tests/fixtures/, so relative paths in the docs work. The commands are the docs' own, with tiny
overrides: a recipe's `:tiny` config and two steps for `train.py`, a one-recipe smoke run for
eval/compare.py. Pages run three at a time. The hierarchical recipes, which only these pages
train through train.py, are then loaded back and checked against their runs' own evaluations.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import re
import subprocess

import jax
import numpy as np
import pytest

import bytelm
from bytelm import models
from bytelm.data import pipeline
from bytelm.runs import workdir as workdir_lib
from bytelm.text import segment_jax
from bytelm.training import evaluation

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
BLOCK = re.compile(r"^```(bash|python) runnable\n(.*?)^```", re.S | re.M)
TRAIN = re.compile(r"python train\.py --config configs/(\w+)\.py(?::(\w+))?")
TRAIN_STEPS = (" --config.train.steps=2 --config.train.eval_every=2 --config.ckpt.every=2"
               " --config.train.eval_batches=1")
# The byte decoder that docs/recipes/bytes_decoder.md trained, reused (a finished run); the
# steps fixed, so a run that cannot reuse it trains as long on any machine.
COMPARE_SMOKE = (" --variant tiny --recipes bytes_decoder --steps 2"
                 " --eval-bytes 1024 --language-bytes 256 --task-items 3 --timing-steps 1"
                 " --root workdirs --out results/compare")


def blocks(page: pathlib.Path) -> list[tuple[str, str]]:
  return BLOCK.findall(page.read_text(encoding="utf-8"))


def tiny(command: str) -> str:
  """The docs' command with tiny overrides."""
  def config(m):
    variant = "tiny" + (f"_{m.group(2)}" if m.group(2) else "")
    return f"python train.py --config configs/{m.group(1)}.py:{variant}"
  lines = []
  for line in command.splitlines():
    if TRAIN.search(line):
      # Into the workdir the docs' own command uses, which the pages then load.
      default = "" if "--workdir" in line else " --workdir " + str(workdir_lib.default_workdir(
          TRAIN.search(line).group(0).split("--config ")[1]))
      line = TRAIN.sub(config, line) + TRAIN_STEPS + default
    elif "eval/compare.py" in line:
      line += COMPARE_SMOKE
    lines.append(line)
  return "\n".join(lines)


def run_page(page: pathlib.Path, scratch: pathlib.Path, python: str,
             env: dict[str, str]) -> tuple[int, str]:
  """(exit status, output) of the page's runnable blocks, in order, stopping at a failure.
  `python` runs the python blocks, and is the `python` on env's PATH for the bash ones."""
  log = []
  for kind, code in blocks(page):
    if kind == "bash":
      cmd = ["bash", "-e", "-c", tiny(code)]
    else:
      cmd = [python, "-c", code]
    done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, timeout=600,
                          env=env)
    log.append(f"$ {' '.join(cmd[-1:])}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    if done.returncode:
      return done.returncode, "\n".join(log)
  return 0, "\n".join(log)


RUNNABLE = [p for p in PAGES if blocks(p)]


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
  """The scratch checkout the pages run in (and train into: workdirs/<recipe>)."""
  return tmp_path_factory.mktemp("docs")


@pytest.fixture(scope="session")
def page_results(scratch, warm_python):
  """Every page's result. The pages share one scratch directory, as a reader's checkout would
  (each trains into its own workdir); the index runs last, as its comparison reuses a run.

  Their `python` is this interpreter, warm (tests/conftest.py's warm_python): each command
  runs in a fresh process forked from one that has imported jax and bytelm already, instead of
  importing them again, some twenty times. The code is this checkout's (PYTHONPATH), whatever
  is installed."""
  for name in ("train.py", "export.py", "configs", "eval"):
    (scratch / name).symlink_to(ROOT / name)
  (scratch / "tests").mkdir()
  (scratch / "tests" / "fixtures").symlink_to(ROOT / "tests" / "fixtures")
  index = ROOT / "docs" / "README.md"
  python, env = warm_python
  # Three at a time on 2 cores: each page also waits on process start-up and disk.
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {p: pool.submit(run_page, p, scratch, str(python), env)
               for p in RUNNABLE if p != index}
    results = {p: f.result() for p, f in futures.items()}
  results[index] = run_page(index, scratch, str(python), env)
  return results


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_page_runs(page, page_results):
  status, log = page_results[page]
  assert status == 0, f"{page.relative_to(ROOT)} failed:\n{log}"


# The recipes only the docs train and load through train.py, and what their pages say a
# position of the backbone is.
SEGMENTERS = {"hat": "words segments", "blt": "entropy segments", "hnet": "learned boundaries"}


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_a_trained_hierarchical_recipe_loads_as_its_run_evaluated_it(name, page_results,
                                                                      scratch):
  """The page's run loads back with its segmenter, its held-out score is finite and plausible,
  and the loaded model scores the run's validation batches exactly as the run's last
  evaluation did (so the checkpoint, the config and a fitted entropy model all came back)."""
  status, log = page_results[ROOT / "docs" / "recipes" / f"{name}.md"]
  assert status == 0, log
  workdir = scratch / "workdirs" / name
  lm = bytelm.load(workdir)
  assert lm.info()["segmenter"] == SEGMENTERS[name]
  # Two steps from a random start: near log2(259) = 8 bits, and surely finite.
  bpb = lm.score(["In the beginning God created the heaven and the earth."])
  assert bpb.shape == (1,) and 4 < bpb[0] < 12, bpb

  saved = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  dc, tc = saved["data"], saved["train"]
  segments = dc.get("segments")  # none for hnet: its boundaries are the model's own
  if segments and segments["kind"] == "entropy":  # fitted into the workdir by train.py
    segments = {**segments, "entropy_model": str(workdir / "entropy_model.npz")}
  val = pipeline.make_source(
      dc["validation"] or dc["train"], "validation", seed=saved["seed"],
      objective=dc["objective"], batch_size=tc["batch_size"], input_length=dc["input_length"],
      target_length=dc["target_length"], noise_density=dc["noise_density"],
      mean_noise_span_length=dc["mean_noise_span_length"], segments=segments)
  family = models.family(saved["model_family"])
  loss_fn = segment_jax.with_segments(family.loss_fn, val.device_segmenter)  # as the trainer
  eval_fn = jax.jit(lambda _, batch: evaluation.eval_sums(lm.module, batch, loss_fn))
  got = evaluation.evaluate(eval_fn, None, list(val.eval_batches(tc["eval_batches"])))["val_bpb"]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open(encoding="utf-8")]
  ran = [r["val_bpb"] for r in rows if "val_bpb" in r][-1]
  np.testing.assert_allclose(got, ran, rtol=1e-5)


def test_every_recipe_has_a_runnable_page():
  """Each config in configs/ is trained by some page's runnable block."""
  trained = {m.group(1) for p in PAGES for kind, code in blocks(p)
             for m in TRAIN.finditer(code)}
  configs = {p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_")}
  assert configs - trained <= {"diacritics"}, configs - trained  # its demo ships the model


def test_tiny_overrides():
  assert tiny("python train.py --config configs/hat.py --workdir w") == (
      "python train.py --config configs/hat.py:tiny --workdir w" + TRAIN_STEPS)
  assert tiny("python train.py --config configs/mrt5.py:ternary").startswith(
      "python train.py --config configs/mrt5.py:tiny_ternary")


def test_the_readme_and_each_recipe_page_list_the_recipes_variants():
  """Every variant a config accepts (its VARIANTS) is in the README's table and on the
  recipe's page, and nothing else is: the `:tiny` variants, the quick way to try anything,
  are found without reading config files."""
  import importlib.util

  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  table = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", readme, re.M))
  for path in sorted((ROOT / "configs").glob("*.py")):
    if path.stem.startswith("_"):
      continue
    spec = importlib.util.spec_from_file_location(f"_variants_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    variants = {v for v in module.VARIANTS if v != "default"}
    assert set(re.findall(r"`(\w+)`", table[path.stem])) == variants, path.stem
    page = (ROOT / "docs" / "recipes" / f"{path.stem}.md").read_text(encoding="utf-8")
    line = re.search(r"^\*\*Variants\*\* .*?(?=\n\n)", page, re.M | re.S).group(0)
    assert set(re.findall(r"`:(\w+)`", line)) == variants, path.stem
    for variant in module.VARIANTS:  # each one it lists loads
      module.get_config(None if variant == "default" else variant)
