"""The docs' runnable blocks run, so the docs cannot drift from the code.

Every fenced block whose info string is `bash runnable` or `python runnable` in docs/ is run, in
page order, in a scratch directory holding links to train.py, configs/, eval/ and
tests/fixtures/, so relative paths in the docs work. The commands are the docs' own, with tiny
overrides: a recipe's `:tiny` config and two steps for `train.py`, a one-recipe smoke run for
eval/compare.py. Pages run three at a time.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
BLOCK = re.compile(r"^```(bash|python) runnable\n(.*?)^```", re.S | re.M)
TRAIN = re.compile(r"python train\.py --config configs/(\w+)\.py(?::(\w+))?")
TRAIN_STEPS = (" --config.train.steps=2 --config.train.eval_every=2 --config.ckpt.every=2"
               " --config.train.eval_batches=1")
# The byte decoder that docs/recipes/bytes_decoder.md trained, reused (a finished run).
COMPARE_SMOKE = (" --variant tiny --recipes bytes_decoder --budget-minutes 0.01"
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
      line = TRAIN.sub(config, line) + TRAIN_STEPS
    elif "eval/compare.py" in line:
      line += COMPARE_SMOKE
    lines.append(line)
  return "\n".join(lines)


def run_page(page: pathlib.Path, scratch: pathlib.Path) -> tuple[int, str]:
  """(exit status, output) of the page's runnable blocks, in order, stopping at a failure."""
  log = []
  for kind, code in blocks(page):
    if kind == "bash":
      cmd = ["bash", "-e", "-c", tiny(code)]
    else:
      cmd = [sys.executable, "-c", code]
    # `python` in the blocks is this interpreter, whatever PATH says.
    path = os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ["PATH"]])
    done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"})
    log.append(f"$ {' '.join(cmd[-1:])}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    if done.returncode:
      return done.returncode, "\n".join(log)
  return 0, "\n".join(log)


RUNNABLE = [p for p in PAGES if blocks(p)]


@pytest.fixture(scope="session")
def page_results(tmp_path_factory):
  """Every page's result. The pages share one scratch directory, as a reader's checkout would
  (each trains into its own workdir); the index runs last, as its comparison reuses a run."""
  scratch = tmp_path_factory.mktemp("docs")
  for name in ("train.py", "export.py", "configs", "eval"):
    (scratch / name).symlink_to(ROOT / name)
  (scratch / "tests").mkdir()
  (scratch / "tests" / "fixtures").symlink_to(ROOT / "tests" / "fixtures")
  index = ROOT / "docs" / "README.md"
  # Three at a time on 2 cores: each page also waits on process start-up and disk.
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {p: pool.submit(run_page, p, scratch) for p in RUNNABLE if p != index}
    results = {p: f.result() for p, f in futures.items()}
  results[index] = run_page(index, scratch)
  return results


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_page_runs(page, page_results):
  status, log = page_results[page]
  assert status == 0, f"{page.relative_to(ROOT)} failed:\n{log}"


def test_every_recipe_has_a_runnable_page():
  """Each config in configs/ is trained by some page's runnable block."""
  trained = {m.group(1) for p in PAGES for kind, code in blocks(p)
             for m in TRAIN.finditer(code)}
  configs = {p.stem for p in (ROOT / "configs").glob("*.py")}
  assert configs - trained <= {"diacritics"}, configs - trained  # its demo ships the model


def test_tiny_overrides():
  assert tiny("python train.py --config configs/hat.py --workdir w") == (
      "python train.py --config configs/hat.py:tiny --workdir w" + TRAIN_STEPS)
  assert tiny("python train.py --config configs/mrt5.py:ternary").startswith(
      "python train.py --config configs/mrt5.py:tiny_ternary")
