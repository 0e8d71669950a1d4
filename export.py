"""Export a trained model for shipping: python export.py WORKDIR OUT_DIR [--dtype bfloat16].

Writes OUT_DIR/config.json (the run's config, the note and the commit) and
OUT_DIR/model.safetensors (the model alone); `bytelm.load(OUT_DIR)` reads it back.
"""

import argparse
import json
import pathlib
import subprocess

from bytelm.runs import export
from bytelm.runs.load import load


def _commit() -> str:
  """The git commit this runs from ("unknown" outside a checkout)."""
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).parent, check=True)
    return out.stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="a bytelm workdir (train.py --workdir)")
  parser.add_argument("out_dir", help="where the export goes: a new or empty directory")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the config.json and model.safetensors of an earlier "
                           "export in out_dir (its other files stay)")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                      help="what floating-point parameters are stored as")
  parser.add_argument("--note", default="", help="kept in config.json, e.g. how it was trained")
  args = parser.parse_args()
  try:  # before loading the model: a refused destination is known at once
    export.check_destination(args.out_dir, args.overwrite)
  except FileExistsError as e:
    parser.exit(2, f"export.py: error: {e}\n")
  model = load(args.workdir)
  config = json.loads((pathlib.Path(args.workdir) / export.CONFIG).read_text(encoding="utf-8"))
  out = export.export(model, config, args.out_dir, args.dtype,
                      extra={"note": args.note, "exported_with_commit": _commit()},
                      overwrite=args.overwrite)
  size = (out / export.WEIGHTS).stat().st_size
  print(f"exported {args.workdir} to {out}: {size / 2**20:.1f} MiB of weights ({args.dtype})")


if __name__ == "__main__":
  main()
