"""bytelm-correct: restore diacritics (or fix typos) in text; the command line of
bytelm.demos.correct, which documents it.

  echo "Laba diena, as esu is Lietuvos" | bytelm-correct
  bytelm-correct --diff "Czy chcesz zapisac zmiany?"
"""

import sys

from bytelm.demos import correct


def main(argv: list[str] | None = None):
  sys.exit(correct.main(argv, prog="bytelm-correct"))


if __name__ == "__main__":
  main()
