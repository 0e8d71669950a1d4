"""bytelm-score: bits per byte of text files under a trained model.

  bytelm-score notes.txt other.txt --model workdirs/bytes_decoder
  # 1.9832  notes.txt
  # 2.1057  other.txt
  # 2.0511  total

Each file is one text, its bytes as they are, scored by `bytelm.load(DIR).score` (docs/api.md says what is predicted
for each kind of model); the total is the files' summed bits over their summed predicted bytes.
DIR is a bytelm workdir or export, or a Hugging Face ByT5 directory. An encoder-decoder's bits
are those of its span-corruption evaluation, not comparable with a decoder's (a note on stderr
says so).
"""

import argparse
import pathlib
import sys

import bytelm
from bytelm import console
from bytelm.text import encoding


class _Error(ValueError):
  """Bad input: the message is printed as one line and the exit status is 2 (console)."""


def read_texts(paths: list[str]) -> list[bytes]:
  """Each file's bytes; _Error naming the first file that is missing or empty. A byte model
  scores any bytes, so a file that is not UTF-8 is scored as it is, with a note on stderr (its
  bits measure other bytes than the model was trained on)."""
  texts = []
  for name in paths:
    path = pathlib.Path(name)
    if not path.is_file():
      raise _Error(f"{name}: no such file")
    data = path.read_bytes()
    if not data:
      raise _Error(f"{name} is empty: there is nothing to score")
    try:
      data.decode("utf-8")
    except UnicodeDecodeError as e:
      print(f"note: {encoding.not_utf8(data, e, name)}; scored as the bytes it holds",
            file=sys.stderr)
    texts.append(data)
  return texts


def load_model(directory: str) -> bytelm.LanguageModel:
  """bytelm.load(directory), its refusal as an _Error."""
  path = pathlib.Path(directory).expanduser()
  if not (path / "config.json").is_file():
    raise _Error(f"--model {directory} is not a model: it has no config.json; give a bytelm "
                 "workdir (bytelm-train --workdir DIR) or export, or a Hugging Face ByT5 directory")
  try:
    return bytelm.load(path)
  except (OSError, ValueError, RuntimeError) as e:
    raise _Error(f"--model {directory}: {e}") from None


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog="bytelm-score", description="Bits per byte of text files under a trained bytelm model.")
  parser.add_argument("files", nargs="+", metavar="FILE",
                      help="files, each one text (its bytes, UTF-8 or not)")
  parser.add_argument("--model", required=True, metavar="DIR",
                      help="a bytelm workdir or export, or a Hugging Face ByT5 directory")
  parser.add_argument("--batch-size", type=int, default=8, help="rows scored together")
  parser.add_argument("--debug", action="store_true", help=console.DEBUG_HELP)
  return parser.parse_args(argv)


def main(argv: list[str] | None = None):
  args = _parse(argv)
  with console.reported("bytelm-score", args.debug or console.debugging()):
    _score(args)


def _score(args) -> None:
  texts = read_texts(args.files)  # before the model: bad input fails in a moment
  lm = load_model(args.model)
  if lm.encoder_decoder:
    print(f"note: a {lm.family} model scores bits per target id of its span-corruption "
          "evaluation, not comparable with a decoder's bits per byte", file=sys.stderr)
  for name, bpb in zip(args.files, lm.score(texts, args.batch_size)):
    print(f"{bpb:.4f}  {name}")
  if len(texts) > 1:  # a second pass: score gives either the texts' values or their total
    print(f"{lm.score(texts, args.batch_size, total=True):.4f}  total")


if __name__ == "__main__":
  main()
