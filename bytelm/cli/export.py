"""bytelm-export: a trained model for shipping, as `python export.py` does (export.py calls main).

  bytelm-export WORKDIR OUT_DIR [--dtype bfloat16] [--note "how it was trained"]

Writes OUT_DIR/config.json (the run's config, the note and the commit), OUT_DIR/model.safetensors
(the model alone) and the files the run fitted to its data that the model reads text with (a BPE
model's tokenizer.json, a BLT model's entropy_model.npz); `bytelm.load(OUT_DIR)` reads it back,
wherever OUT_DIR is moved. WORKDIR may also be an export (to store it in another dtype).
"""

import argparse
import json
import pathlib
import subprocess

from bytelm import console
from bytelm.runs import export
from bytelm.runs.load import load


def _commit() -> str:
  """The git commit of the checkout this bytelm runs from ("unknown" where it is installed)."""
  checkout = pathlib.Path(__file__).resolve().parents[2]
  try:
    out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                         text=True, cwd=checkout, check=True)
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  top, commit = out.stdout.splitlines()
  # An installed bytelm inside some other repository (a venv in a project) is not that commit.
  return commit if pathlib.Path(top).resolve() == checkout else "unknown"


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog="bytelm-export", description="Export a trained bytelm model for shipping.")
  parser.add_argument("workdir", help="a bytelm workdir (bytelm-train --workdir) or export")
  parser.add_argument("out_dir", help="where the export goes: a new or empty directory")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the files of an earlier export in out_dir (config.json, "
                           "model.safetensors, a tokenizer or entropy model; others stay)")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                      help="what floating-point parameters are stored as")
  parser.add_argument("--note", default="", help="kept in config.json, e.g. how it was trained")
  parser.add_argument("--debug", action="store_true", help=console.DEBUG_HELP)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = _parse(argv)
  with console.reported("bytelm-export", args.debug or console.debugging()):
    _export(args)


def _export(args) -> None:
  export.check_destination(args.out_dir, args.overwrite)  # a refusal is known before loading
  model = load(args.workdir)
  config = json.loads((pathlib.Path(args.workdir) / export.CONFIG).read_text(encoding="utf-8"))
  out = export.export(model, config, args.out_dir, args.dtype,
                      extra={"note": args.note, "exported_with_commit": _commit()},
                      overwrite=args.overwrite, source=args.workdir)
  size = (out / export.WEIGHTS).stat().st_size
  print(f"exported {args.workdir} to {out}: {size / 2**20:.1f} MiB of weights ({args.dtype})")


if __name__ == "__main__":
  main()
