"""What every console script prints: plain log lines, and one line for a user's error.

A mistake in what a user typed or gave (a mistyped config key, a file that is not UTF-8, a
workdir that holds another run, a mesh the devices cannot form) is printed as one line,
`prog: error: what is wrong and how to fix it`, and the script exits 2, as argparse does for a
usage error. A run that failed by itself (a NaN loss) is one line too, and exits 1. `--debug`,
or BYTELM_DEBUG=1 in the environment, shows the traceback instead. Anything else is a bug in
bytelm and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from bytelm.runs import lock as lock_lib

DEBUG_ENV = "BYTELM_DEBUG"
DEBUG_HELP = f"show the traceback of an error instead of one line (or set {DEBUG_ENV}=1)"

# What a user's input causes. The library raises these with a message naming the problem and
# the fix (ValueError: a bad value, a config of another run, text that is not UTF-8; OSError: a
# missing file, a file where a directory should be; WorkdirLocked: another run in the workdir).
USAGE_ERRORS = (ValueError, OSError, lock_lib.WorkdirLocked)
# What a run can end in through no mistake in the command: reported, not a usage error.
RUN_FAILURES = (FloatingPointError,)


def debugging(argv: list[str] | None = None) -> bool:
  """Whether tracebacks were asked for: --debug in argv, or BYTELM_DEBUG set (not 0)."""
  return "--debug" in (argv or []) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(error: BaseException) -> str:
  """The error's message on one line: a multi-line message (the fields of a config that
  differs, one per line) is joined with "; "."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  out = ""
  for line in lines:
    out += line if not out else (" " if out.endswith(":") else "; ") + line
  return out or type(error).__name__


def fail(prog: str, message: str, status: int = 2):
  """Print `prog: error: message` to stderr and exit with status."""
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


@contextlib.contextmanager
def reported(prog: str, debug: bool = False):
  """Run the body; a usage error or run failure raised in it ends the process with one line
  (see the module docstring). debug: let it raise, traceback and all."""
  try:
    yield
  except USAGE_ERRORS as e:
    if debug:
      raise
    fail(prog, one_line(e), 2)
  except RUN_FAILURES as e:
    if debug:
      raise
    fail(prog, one_line(e), 1)


def plain_logging(name: str = "bytelm") -> None:
  """bytelm's log lines as plain lines beside the progress lines (stdout), warnings on stderr
  prefixed "warning:", instead of absl's `I1206 12:00:00 ... trainer.py:166]` prefix."""
  logger = logging.getLogger(name)
  logger.setLevel(logging.INFO)
  logger.propagate = False  # not again through absl's handler on the root logger
  for handler in list(logger.handlers):
    if getattr(handler, "_bytelm_console", False):
      logger.removeHandler(handler)
  info = logging.StreamHandler(sys.stdout)
  info.addFilter(lambda record: record.levelno < logging.WARNING)
  info.setFormatter(logging.Formatter("%(message)s"))
  warn = logging.StreamHandler(sys.stderr)
  warn.setLevel(logging.WARNING)
  warn.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
  warn.addFilter(_lower_level_name)
  for handler in (info, warn):
    handler._bytelm_console = True
    logger.addHandler(handler)


def _lower_level_name(record: logging.LogRecord) -> bool:
  record.levelname_lower = record.levelname.lower()
  return True
