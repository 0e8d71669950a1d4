"""What every eval/ script does the same way: the machine line, recipes by name, results written
atomically, plots (matplotlib is the optional [eval] extra), and the last line of key=value
figures that BENCHMARKS.md quotes.

The scripts run as `python eval/<name>.py`, so Python puts eval/ on sys.path and `import common`
finds this file; bytelm itself comes from the installed package (`pip install -e .`). The
measuring (scoring, loading, training, a run's data) is the library's: this file holds none.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import platform
import sys

try:
  import jax

  from bytelm import machine as host
  from bytelm.training import config_file
except ImportError as e:  # a checkout without `pip install -e .`: say so, not a traceback
  raise SystemExit(f"eval/ needs bytelm and its dependencies installed ({e}): from the "
                   "checkout, pip install -e '.[eval]'") from e

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"


def start() -> dict:
  """Prints the machine line every result is read against (and shows the library's progress:
  training, reuse); returns the same facts for the results file."""
  log = logging.getLogger("bytelm")
  if not log.handlers:  # the library's INFO lines, in order with this script's own output
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
  machine = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "jax": jax.__version__, "backend": jax.default_backend(),
             "date": str(datetime.date.today()), "host": host.describe(), **host.summary()}
  print(f"machine: {machine['host']}; jax {machine['jax']} on {machine['backend']}; "
        f"{machine['date']}", flush=True)
  return machine


def config(recipe: str, variant: str | None = None):
  """configs/<recipe>.py's config for variant ("tiny", "ternary", "tiny_ternary", ...; None or
  "" for the default)."""
  return config_file.load(ROOT / "configs" / f"{recipe}.py", variant or None)


def write_text(path, text: str) -> pathlib.Path:
  """Writes text to path through a temporary sibling, so that an interrupted script never
  leaves half a file where the last result was."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)
  return path


def write_json(path, results: dict) -> pathlib.Path:
  """results as indented JSON at path, atomically (numpy scalars and paths as str)."""
  return write_text(path, json.dumps(results, indent=1, default=str) + "\n")


def pyplot():
  """matplotlib.pyplot with a file backend, or None (after saying how to get it): the plots
  are the [eval] extra, the figures do not need them."""
  try:
    import matplotlib
  except ImportError:
    print("(matplotlib is not installed: no plot; pip install 'bytelm[eval]')")
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path, rect=(0, 0, 1, 1)) -> pathlib.Path:
  """Saves fig as path (atomically, as write_text), closes it and says where it went; rect:
  the part of the figure tight_layout fills (leave room for a legend outside the axes)."""
  import matplotlib.pyplot as plt
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout(rect=rect)
  tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix names the format
  fig.savefig(tmp, dpi=120)
  os.replace(tmp, path)
  plt.close(fig)
  print(f"plot: {path}")
  return path


def export_bytes(module, run_config: dict, source=None) -> int:
  """Bytes on disk of a float32 export of module (a quantized layer stays integers), made in a
  temporary directory: a model's size as a user would ship it, with the tokenizer or entropy
  model its run fitted (source: the run's workdir, where a run fitted one)."""
  import tempfile

  from bytelm.runs import export

  with tempfile.TemporaryDirectory() as tmp:
    out = export.export(module, run_config, pathlib.Path(tmp) / "m", dtype="float32",
                        source=source)
    return sum(p.stat().st_size for p in out.iterdir())


def last_line(figures: dict, digits: int | None = 4) -> None:
  """The script's last line: its headline figures as key=value pairs (floats to `digits`
  decimals, or as they are with digits=None; pass a str to format one otherwise), then the
  machine they were measured on (`cpu=`, `amx=`, `avx512_bf16=`: bytelm.machine.summary)."""
  figures = {**figures, **{k: v for k, v in host.summary().items() if k not in figures}}
  print(" ".join(f"{k}={v:.{digits}f}" if isinstance(v, float) and digits is not None else
                 f"{k}={v}" for k, v in figures.items()), flush=True)
