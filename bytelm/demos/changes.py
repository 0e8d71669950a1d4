"""What a correction changed: the pieces of a character diff, and the same marked up for a
terminal (`bytelm-correct --diff`) or a page (`bytelm-correct --serve`)."""

from __future__ import annotations

import difflib

_GREEN, _RED, _RESET = "\x1b[1;32m", "\x1b[9;31m", "\x1b[0m"


def pieces(before: str, after: str) -> list[dict]:
  """after as pieces: {"same": text} where it equals before, {"old": ..., "new": ...} where it
  changed (either may be ""). The "same" and "new" texts join into after, the "same" and
  "old" texts into before."""
  out = []
  for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after,
                                                    autojunk=False).get_opcodes():
    out.append({"same": after[j1:j2]} if op == "equal"
               else {"old": before[i1:i2], "new": after[j1:j2]})
  return out


def marked(before: str, after: str, color: bool) -> str:
  """after with its changes from before marked: in color (inserted green, deleted red and
  struck through), or as [before→after], [+inserted], [-deleted] in plain text."""
  out = []
  for piece in pieces(before, after):
    if "same" in piece:
      out.append(piece["same"])
      continue
    old, new = piece["old"], piece["new"]
    if color:
      out.append((f"{_RED}{old}{_RESET}" if old and not new else "")
                 + (f"{_GREEN}{new}{_RESET}" if new else ""))
    else:
      out.append(f"[{old}→{new}]" if old and new else f"[+{new}]" if new else f"[-{old}]")
  return "".join(out)
