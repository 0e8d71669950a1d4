"""Diacritics stripped from Latin letters: the host-side rule the correction noise
(`bytelm.data.noise`) and the tag vocabulary (`bytelm.text.tags`) both build on.

`strip_diacritics` maps each Latin letter with a diacritic to its base letter.
Unicode decomposition (NFD) alone misses letters whose mark is part of the glyph: ł, đ, ø,
ħ have no decomposition. So a letter is stripped by its Unicode name: "LATIN SMALL LETTER L
WITH STROKE" -> "LATIN SMALL LETTER L" = l. Letters whose name has no "WITH" stay what they
are (ß, œ, æ, ð, þ, ı: separate letters, not decorated ones), as do other scripts (й is a
letter of its own in Russian). Combining marks after a Latin letter (text in NFD) go too.
"""

from __future__ import annotations

import functools
import unicodedata


@functools.cache
def _strip_char(ch: str) -> str:
  """The base letter of one Latin letter with diacritics ("" for a combining mark), else ch."""
  if unicodedata.combining(ch):
    return ""
  name = unicodedata.name(ch, "")
  if not name.startswith("LATIN ") or " WITH " not in name:
    return ch
  try:
    return unicodedata.lookup(name.split(" WITH ")[0])
  except KeyError:  # no undecorated letter of that name: keep it
    return ch


def strip_diacritics(text: str) -> str:
  """text with every diacritic of the Latin script removed, in NFC (see the module docstring).

  >>> strip_diacritics("Laba diena, aš esu iš Lietuvos. Łódź, Đà Nẵng, Øre, Straße")
  'Laba diena, as esu is Lietuvos. Lodz, Da Nang, Ore, Straße'
  """
  if text.isascii():  # nothing to strip (most words of most text: the lexicons strip millions)
    return text
  out, after_latin = [], False
  for ch in unicodedata.normalize("NFC", text):
    if unicodedata.combining(ch):
      if not after_latin:  # a mark on another script's letter (or alone) stays
        out.append(ch)
      continue
    out.append(_strip_char(ch))
    after_latin = _is_latin(ch)
  return "".join(out)


@functools.cache
def _is_latin(ch: str) -> bool:
  return unicodedata.name(ch, "").startswith("LATIN ")
