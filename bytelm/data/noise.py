"""Text noise for correction tasks: diacritics stripped, typos typed (host side, deterministic).

Stripping (`strip_diacritics`, from `bytelm.text.diacritics`, which the tag vocabulary shares)
maps each Latin letter with a diacritic to its base letter.

Typos (`add_typos`): each typeable character (its lower case is a key of the keyboard layout)
is, with probability `rate`, deleted, replaced by a neighbouring key, doubled with a
neighbouring key before or after it, or swapped with the next character. Everything is
deterministic given the seed.
"""

from __future__ import annotations

import functools
import random
from typing import NamedTuple

from bytelm.text.diacritics import strip_diacritics

LAYOUTS = {  # rows of letter and digit keys, top to bottom, each row offset right of the one above
    "qwerty": ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm"),
    "qwertz": ("1234567890", "qwertzuiop", "asdfghjkl", "yxcvbnm"),
    "azerty": ("1234567890", "azertyuiop", "qsdfghjklm", "wxcvbn"),
}
TYPO_KINDS = ("delete", "substitute", "insert_before", "insert_after", "transpose")


@functools.cache
def neighbours(layout: str) -> dict[str, str]:
  """{key: the keys around it} on a staggered keyboard (same row left and right; the row above
  at the same and the next column; the row below at the previous and the same column)."""
  if layout not in LAYOUTS:
    raise ValueError(f"unknown keyboard layout {layout!r}; choose one of {sorted(LAYOUTS)}")
  rows = LAYOUTS[layout]
  near = {}
  for r, row in enumerate(rows):
    for c, key in enumerate(row):
      around = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
      near[key] = "".join(rows[i][j] for i, j in around
                          if 0 <= i < len(rows) and 0 <= j < len(rows[i]))
  return near


class Typo(NamedTuple):
  position: int  # index into the original text
  kind: str  # one of TYPO_KINDS
  char: str  # the neighbouring key typed (substitute / insert_*), else ""


def plan_typos(text: str, rate: float = 0.02, layout: str = "qwerty",
               seed: int = 0) -> list[Typo]:
  """The typos `add_typos` makes, in order of position: each typeable character gets one with
  probability `rate` (a transposition also moves the next character, which then gets none)."""
  if not 0 <= rate <= 1:
    raise ValueError(f"typo rate must be in [0, 1], got {rate}")
  near = neighbours(layout)
  rng = random.Random(f"{seed}:{layout}")
  typos, i = [], 0
  while i < len(text):
    ch = text[i]
    if ch.lower() in near and rng.random() < rate:
      kind = rng.choice(TYPO_KINDS)
      if kind == "transpose" and (i + 1 >= len(text) or text[i + 1] == ch):
        kind = "delete"  # nothing (different) to swap with
      typed = ""
      if kind in ("substitute", "insert_before", "insert_after"):
        typed = rng.choice(near[ch.lower()])
        typed = typed.upper() if ch.isupper() else typed
      typos.append(Typo(i, kind, typed))
      i += 2 if kind == "transpose" else 1
    else:
      i += 1
  return typos


def add_typos(text: str, rate: float = 0.02, layout: str = "qwerty", seed: int = 0) -> str:
  """text with keyboard typos at about `rate` of its typeable characters (see plan_typos)."""
  out, last = [], 0
  for typo in plan_typos(text, rate, layout, seed):
    out.append(text[last:typo.position])
    ch = text[typo.position]
    last = typo.position + 1
    if typo.kind == "substitute":
      out.append(typo.char)
    elif typo.kind == "insert_before":
      out.append(typo.char + ch)
    elif typo.kind == "insert_after":
      out.append(ch + typo.char)
    elif typo.kind == "transpose":
      out.append(text[typo.position + 1] + ch)
      last += 1
  out.append(text[last:])
  return "".join(out)


TASKS = ("diacritics", "typos", "both")


def check_settings(task: str, rate: float = 0.02, layout: str = "qwerty") -> None:
  """ValueError naming the bad one if a correction task's noise settings are invalid."""
  if task not in TASKS:
    raise ValueError(f"unknown correction task {task!r}; choose one of {TASKS}")
  if not 0 <= rate <= 1:
    raise ValueError(f"typo rate must be in [0, 1], got {rate}")
  neighbours(layout)  # raises for an unknown layout


def corrupt(text: str, task: str, *, rate: float = 0.02, layout: str = "qwerty",
            seed: int = 0) -> str:
  """The model's input for a correction task whose target is `text`."""
  check_settings(task, rate, layout)
  if task in ("diacritics", "both"):
    text = strip_diacritics(text)
  if task in ("typos", "both"):
    text = add_typos(text, rate, layout, seed)
  return text


# ---- perturbations for robustness studies (HAT's: eval/hierarchical.py) -----------------------

PERTURBATIONS = ("swap_delete", "case_flip", "whitespace")


def perturb(text: str, kind: str, rate: float, seed: int = 0) -> str:
  """text with each character, with probability `rate`:
  - "swap_delete": swapped with the next character or deleted (even odds);
  - "case_flip": upper-cased if lower, lower-cased if upper (other characters never change);
  - "whitespace": followed by an extra space.
  Deterministic given the seed; rate 0 returns the text."""
  if kind not in PERTURBATIONS:
    raise ValueError(f"unknown perturbation {kind!r}; use one of {PERTURBATIONS}")
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate must be in [0, 1], got {rate}")
  rng = random.Random(seed)
  chars, out, i = list(text), [], 0
  while i < len(chars):
    ch = chars[i]
    if rng.random() >= rate:
      out.append(ch)
    elif kind == "swap_delete":
      if rng.random() < 0.5 and i + 1 < len(chars):
        out += [chars[i + 1], ch]
        i += 1
      # else: deleted
    elif kind == "case_flip":
      out.append(ch.lower() if ch.isupper() else ch.upper() if ch.islower() else ch)
    else:
      out += [ch, " "]
    i += 1
  return "".join(out)
