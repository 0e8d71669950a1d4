"""Diacritics restoration as tagging: one label per input byte.

Stripping diacritics (`bytelm.text.diacritics`) turns each decorated Latin letter into one
ASCII letter, so the stripped text and the original line up letter by letter. Restoring is then a
choice at every ASCII letter of the input: keep it, or put back one of the letters that strip to
it (a -> á, à, â, ą, ă, ...). A model that makes that choice per input byte needs no alignment
and cannot change anything but diacritics: its output strips back to its input by construction.

Labels: 0 = no decision here (not an ASCII letter, padding, eos), 1 = keep the letter,
2 + k = `LETTERS[k]`. LETTERS is every letter of Latin-1 Supplement, Latin Extended-A/B and
Latin Extended Additional (Vietnamese) that strips to an ASCII letter; the label set is saved
with a model's config, so a checkpoint stays readable if this table grows.
"""

from __future__ import annotations

import functools
import string
import unicodedata

import numpy as np

from bytelm.text.diacritics import strip_diacritics
from bytelm.text.tokenizer import EOS_ID, OFFSET

IGNORE, KEEP = 0, 1
_RANGES = (range(0x00C0, 0x0250), range(0x1E00, 0x1F00))
LETTERS = "".join(ch for r in _RANGES for ch in map(chr, r)
                  if (base := strip_diacritics(ch)) != ch and len(base) == 1
                  and base in string.ascii_letters)


def num_labels(letters: str = LETTERS) -> int:
  return len(letters) + 2


@functools.cache
def _label_of(letters: str) -> dict[str, int]:
  return {ch: 2 + k for k, ch in enumerate(letters)}


@functools.cache
def allowed_table(letters: str = LETTERS, vocab_size: int = 384) -> np.ndarray:
  """bool [vocab_size, num_labels]: the labels an input id may take. An ASCII letter may be
  kept or take any of its decorated forms; every other id only takes IGNORE."""
  table = np.zeros((vocab_size, num_labels(letters)), bool)
  table[:, IGNORE] = True
  for ch in string.ascii_letters:
    table[ord(ch) + OFFSET, :] = False
    table[ord(ch) + OFFSET, KEEP] = True
  for ch, label in _label_of(letters).items():
    table[ord(strip_diacritics(ch)) + OFFSET, label] = True
  table.flags.writeable = False
  return table


def label(ch: str, letter: str, letters: str = LETTERS) -> int | None:
  """The label that turns the ASCII letter into ch (KEEP for itself); None if none does."""
  if ch == letter:
    return KEEP
  found = _label_of(letters).get(ch)
  return found if found is not None and strip_diacritics(ch) == letter else None


def example(text: str, input_length: int, letters: str = LETTERS
            ) -> tuple[np.ndarray, np.ndarray]:
  """(input ids, labels) for one text: the ids of its stripped form ending in eos, and one label
  per id. Words are dropped from the end until the input fits input_length ids."""
  text = unicodedata.normalize("NFC", text)
  words = text.split(" ")
  while len(strip_diacritics(" ".join(words)).encode("utf-8")) >= input_length \
      and len(words) > 1:
    words = words[:-1]
  ids, labels = [], []
  label_of = _label_of(letters)
  for ch, stripped in _aligned(" ".join(words)):
    data = stripped.encode("utf-8")
    ids.extend(b + OFFSET for b in data)
    if stripped in string.ascii_letters and stripped:
      labels.append(KEEP if ch == stripped else label_of.get(ch, IGNORE))
    else:
      labels.extend([IGNORE] * len(data))
  ids, labels = ids[:input_length - 1] + [EOS_ID], labels[:input_length - 1] + [IGNORE]
  return np.asarray(ids, np.int32), np.asarray(labels, np.int32)


def _aligned(text: str):
  """(character of text, what stripping makes of it) for each character of NFC text; joined,
  the second items are `strip_diacritics(text)`."""
  stripped = strip_diacritics(text)
  if len(stripped) == len(text):  # the common case: one character for one
    return zip(text, stripped)
  return [(ch, strip_diacritics(prev + ch)[len(strip_diacritics(prev)):])
          for prev, ch in ((text[:i], text[i]) for i in range(len(text)))]


def apply(text: str, labels, letters: str = LETTERS) -> str:
  """text with its letters replaced as labels say; labels[i] is the label of text's byte i (a
  label that is not allowed for its byte keeps the letter)."""
  out, position = [], 0
  for ch in text:
    label = int(labels[position]) if position < len(labels) else KEEP
    position += len(ch.encode("utf-8"))
    decorated = letters[label - 2] if label >= 2 and label - 2 < len(letters) else ch
    out.append(decorated if strip_diacritics(decorated) == ch else ch)
  return "".join(out)
