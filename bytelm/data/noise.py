"""Text noise for correction tasks: diacritics stripped, typos typed (host side, deterministic).

Stripping (`strip_diacritics`, from `bytelm.text.diacritics`, which the tag vocabulary shares)
maps each Latin letter with a diacritic to its base letter.

Typos: one model of a person typing on a keyboard, used by every recipe, demo and evaluation
(`plan_typos`, `add_typos`, `one_typo`). Each Latin letter (its base letter, diacritics stripped,
is a key of the layout) gets a typo with probability `rate`, of one of these kinds, drawn by
`KIND_WEIGHTS` among those possible at that letter:

  substitute     a neighbouring key typed instead          form   -> firm
  delete         the letter left out                       from   -> fom
  insert_before  a neighbouring key typed before it        from   -> frrom / feom
  insert_after   a neighbouring key typed after it         from   -> frtom
  transpose      swapped with the next letter (a different letter of the same word)  from -> form
  double         typed twice                               tomorrow -> tommorow
  undouble       one of a doubled letter left out          address -> adress

Words that hold a digit, an `@` or `://`, or start with `www.`, are never touched (numbers,
e-mail addresses and URLs are not typed the way words are), and a typo never types a digit.
Spaces and punctuation are never typed or changed, and a word never loses its last letter, so
the words of the noisy text line up one to one with the words of the clean text. The default
rate, 0.065 a letter, is about one typo per 20 characters of everyday prose (letters are ~77%
of its characters). Everything is deterministic given the seed.
"""

from __future__ import annotations

import functools
import random
import re
from typing import NamedTuple

from bytelm.text.diacritics import strip_diacritics

LAYOUTS = {  # rows of letter and digit keys, top to bottom, each row offset right of the one above
    "qwerty": ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm"),
    "qwertz": ("1234567890", "qwertzuiop", "asdfghjkl", "yxcvbnm"),
    "azerty": ("1234567890", "azertyuiop", "qsdfghjklm", "wxcvbn"),
}
# Relative frequencies of the kinds where all are possible: substitutions and omissions are
# the commonest typing errors, then transpositions, insertions and doubling slips.
KIND_WEIGHTS = {"substitute": 0.30, "delete": 0.20, "insert_before": 0.08,
                "insert_after": 0.08, "transpose": 0.14, "double": 0.10, "undouble": 0.10}
TYPO_KINDS = tuple(KIND_WEIGHTS)
DEFAULT_TYPO_RATE = 0.065
# Whitespace-separated tokens that are not typed as words: anything with a digit, an e-mail
# address, a URL.
PROTECTED = re.compile(r"\S*(?:\d|@|://)\S*|www\.\S+")


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


def typeable(text: str, layout: str = "qwerty") -> list[bool]:
  """Per character of text: whether the typo model may touch it (a Latin letter whose base
  letter is a key of the layout, outside protected words: digits, e-mail addresses, URLs)."""
  neighbours(layout)  # raises for an unknown layout, whatever the text
  out = [_key(ch, layout) is not None for ch in text]
  for m in PROTECTED.finditer(text):
    out[m.start():m.end()] = [False] * (m.end() - m.start())
  return out


@functools.lru_cache(maxsize=4096)
def _key(ch: str, layout: str) -> str | None:
  """The letter key ch is typed with (its base letter, lower case), None for other characters.
  Cached: text repeats its characters, and stripping one is a Unicode normalisation."""
  if not ch.isalpha():
    return None
  base = strip_diacritics(ch.lower())
  return base if len(base) == 1 and base in neighbours(layout) and base.isalpha() else None


def _draw(text: str, i: int, ok: list[bool], layout: str, rng: random.Random,
          can_delete: bool) -> Typo:
  """A typo at letter i (typeable), of a kind possible there; can_delete: whether its word
  keeps a letter if this one is left out."""
  ch, key, near = text[i], _key(text[i], layout), neighbours(layout)
  same_word_next = i + 1 < len(text) and ok[i + 1]
  possible = {k: w for k, w in KIND_WEIGHTS.items()
              if (k != "transpose" or (same_word_next and text[i + 1] != ch))
              and (k != "undouble" or (same_word_next and text[i + 1] == ch))
              and (k != "delete" or can_delete)}
  kind = rng.choices(list(possible), weights=list(possible.values()))[0]
  typed = ""
  if kind in ("substitute", "insert_before", "insert_after"):
    typed = rng.choice([k for k in near[key] if k.isalpha()])
    typed = typed.upper() if ch.isupper() else typed
  return Typo(i, kind, typed)


def plan_typos(text: str, rate: float = DEFAULT_TYPO_RATE, layout: str = "qwerty",
               seed: int = 0) -> list[Typo]:
  """The typos `add_typos` makes, in order of position: each typeable letter gets one with
  probability `rate` (a transposition or an undoubling also takes the next letter, which then
  gets none)."""
  if not 0 <= rate <= 1:
    raise ValueError(f"typo rate must be in [0, 1], got {rate}")
  ok = typeable(text, layout)
  rng = random.Random(f"{seed}:{layout}")
  typos, i, left = [], 0, 0  # left: letters of the current word not left out (so far, and ahead)
  while i < len(text):
    if ok[i] and (i == 0 or not ok[i - 1]):  # a word starts
      left = next((j for j in range(i, len(text)) if not ok[j]), len(text)) - i
    if ok[i] and rng.random() < rate:
      typos.append(_draw(text, i, ok, layout, rng, can_delete=left > 1))
      left -= typos[-1].kind in ("delete", "undouble")  # the word never loses its last letter
      i += 2 if typos[-1].kind in ("transpose", "undouble") else 1
    else:
      i += 1
  return typos


def apply_typos(text: str, typos: list[Typo]) -> str:
  """text with typos (in order of position, as `plan_typos` gives them) made."""
  out, last = [], 0
  for typo in typos:
    out.append(text[last:typo.position])
    ch = text[typo.position]
    last = typo.position + 1
    if typo.kind == "substitute":
      out.append(typo.char)
    elif typo.kind == "insert_before":
      out.append(typo.char + ch)
    elif typo.kind == "insert_after":
      out.append(ch + typo.char)
    elif typo.kind == "double":
      out.append(ch + ch)
    elif typo.kind == "transpose":
      out.append(text[typo.position + 1] + ch)
      last += 1
    elif typo.kind == "undouble":
      out.append(ch)
      last += 1
  out.append(text[last:])
  return "".join(out)


def add_typos(text: str, rate: float = DEFAULT_TYPO_RATE, layout: str = "qwerty",
              seed: int = 0) -> str:
  """text with keyboard typos at about `rate` of its typeable letters (see plan_typos)."""
  return apply_typos(text, plan_typos(text, rate, layout, seed))


def one_typo(word: str, rng: random.Random, layout: str = "qwerty") -> str:
  """word with exactly one typo of the model, at a letter drawn uniformly (word itself if it
  has no typeable letter)."""
  ok = typeable(word, layout)
  letters = [i for i, t in enumerate(ok) if t]
  if not letters:
    return word
  return apply_typos(word, [_draw(word, rng.choice(letters), ok, layout, rng,
                                  can_delete=len(letters) > 1)])


TASKS = ("diacritics", "typos", "both")


def check_settings(task: str, rate: float = DEFAULT_TYPO_RATE, layout: str = "qwerty") -> None:
  """ValueError naming the bad one if a correction task's noise settings are invalid."""
  if task not in TASKS:
    raise ValueError(f"unknown correction task {task!r}; choose one of {TASKS}")
  if not 0 <= rate <= 1:
    raise ValueError(f"typo rate must be in [0, 1], got {rate}")
  neighbours(layout)  # raises for an unknown layout


def corrupt(text: str, task: str, *, rate: float = DEFAULT_TYPO_RATE, layout: str = "qwerty",
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
