"""Pre-tokenizers besides GPT-2's ByteLevel regex, as `tokenization.BPE` reads them: how a text
is split into pieces that BPE merges within, never across; where the pieces that no
continuation of the text can change end; and continuations ("probes") that show every way a
continuation can change the pieces near the end.

Texts are str; bytes that are not UTF-8 are read as lone surrogates, which every pattern here
treats as characters of no class (not letters, digits or whitespace).

- `Whole`: no pre-tokenization: the text is one piece (ByteLevel without its regex, and
  SentencePiece-style models whose tokenizer.json only replaces spaces by "▁").
- `SpaceSplit`: a piece starts at every space (Metaspace with `split`, spaces being "▁").
- `RegexSplit`: Split(pattern, "Isolated") with a pattern of GPT-4's family (Llama-3's,
  Qwen2's with digits one at a time, GPT-4o's o200k with letters by case); `PATTERNS` lists
  them. Other patterns are refused: the stable cut and the probes below are argued for these.

Axis legend: none (host code on Python strings).
"""

from __future__ import annotations

import regex

# Split patterns read exactly, as they appear in tokenizer.json files.
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
O200K = "|".join([  # GPT-4o's o200k (gpt-oss): letter runs by case, contractions after them
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTION,
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTION,
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+"])
PATTERNS = {"llama-3 (GPT-4's cl100k)": LLAMA3, "qwen2": QWEN2, "o200k (GPT-4o)": O200K}
# GPT-2's pattern written as a Split: the same as ByteLevel's own regex.
GPT2_AS_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


class Whole:
  """One piece: nothing after the text changes how BPE tokenizes it, up to where a token
  ends (the tokens before a boundary are the merges of the text before it)."""

  def pieces(self, text: str) -> list[str]:
    return [text] if text else []

  def stable_end(self, text: str) -> int:
    return 0

  def spans(self, text: str) -> list[tuple[int, int]]:
    """(start, end) of each piece."""
    out, n = [], 0
    for piece in self.pieces(text):
      out.append((n, n + len(piece)))
      n += len(piece)
    return out

  def probes(self, text: str) -> list[str]:
    return [""]

  def class_probes(self, text: str) -> list[str]:
    return [""]

  def signature(self, text: str, exact_start: bool = False) -> str:
    """Any text is cut the same way (not at all): `RegexSplit.signature`."""
    return "a"


class SpaceSplit(Whole):
  """A piece starts at every space (and at the start of the text)."""

  _PIECE = regex.compile(r" [^ ]*|[^ ]+")

  def pieces(self, text: str) -> list[str]:
    return self._PIECE.findall(text)

  def stable_end(self, text: str) -> int:
    """The pieces before the last space are complete: each ended at the space after it."""
    return max(text.rfind(" "), 0)

  def signature(self, text: str, exact_start: bool = False) -> str:
    """Spaces kept (two at most in a row), the rest one character a run."""
    return regex.sub(r"[^ ]+", "a", regex.sub(r"   +", "  ", text))


class RegexSplit:
  """Split(pattern, "Isolated") for a pattern of `PATTERNS`: each match a piece, and the text
  between matches too (these patterns match every character, so there is none)."""

  # Characters kept after the first non-whitespace character that follows a fixed piece.
  # Matching a piece reads no further than that character (a run of letters, digits or
  # others stops on it, whitespace on it, a contraction reads three from an apostrophe
  # inside the piece); three more are a margin, at the cost of re-reading a few characters.
  READ = 3

  def __init__(self, pattern: str):
    if pattern not in PATTERNS.values():
      raise ValueError(
          f"its Split pre-tokenizer's pattern {pattern!r} is not one bytelm.byteprobs knows "
          f"(it reads GPT-2's, and those of {', '.join(PATTERNS)}): which texts a "
          "continuation can change is argued per pattern")
    self.pattern = regex.compile(pattern)
    # o200k tells letters apart by case, marks and "/" too.
    self.cased = pattern == O200K
    self._singles = _SINGLES + (["A", "\u00aa", "\u0301", "/"] if self.cased else [])
    self._class_probes: dict[tuple[str, bool], list[str]] = {}

  def pieces(self, text: str) -> list[str]:
    return [text[a:b] for a, b in self.spans(text)]

  def spans(self, text: str) -> list[tuple[int, int]]:
    """(start, end) of each piece: the matches, which cover the text (every character is a
    letter, a digit, whitespace or another character, and some alternative of each pattern
    takes one of each kind wherever it stands; a test checks every code point)."""
    return [m.span() for m in self.pattern.finditer(text)]

  def stable_end(self, text: str) -> int:
    """The end of the pieces that no continuation changes. Matching a piece reads up to the
    first non-whitespace character after it at most (whitespace to the end of its run:
    `\\s*[\\r\\n]+` backs off to the run's last newline, `\\s+(?!\\S)` to its last
    character), so where that character is more than READ from the end of the text, every
    read was inside the text and any continuation leaves the match as it is.
    The pattern has no look-behind, so pieces after a fixed one depend on the text after
    it alone (`BPE.stable_prefix`)."""
    last = len(text) - self.READ - 1  # the last place for that non-whitespace character
    while last >= 0 and text[last].isspace():
      last -= 1
    if last < 0:
      return 0
    end = 0
    for piece in self.pieces(text):
      if end + len(piece) > last:
        break
      end += len(piece)
    return end

  def probes(self, text: str) -> list[str]:
    """Continuations standing for each class of character these patterns tell apart, after
    the text's last character: after a letter or digit only whether the run goes on matters;
    after other characters, the one that follows (a letter joins an apostrophe, a space or
    another non-newline before it; newlines join a run of others); after whitespace two
    characters (a run leaves its last character to a letter or other character that follows;
    it ends at its last newline). Letters after an apostrophe may finish a contraction.
    Several letters of different bytes: BPE must leave a token boundary before one of them
    where a piece goes on past the text."""
    if not text:
      return [""]
    last = self._class_of(text[-1])
    if last in _SPACES:
      out = [""] + self._singles + [w + s for w in _SPACES for s in self._singles]
    elif last in "aA\u00aa":
      out = ["", *_LETTERS, "1"] + (["A", "\u0301"] if self.cased else [])
    elif last == "1":
      out = ["", "1", "a"]
    else:
      out = [""] + self._singles
    if "'" in text[-2:]:
      out += _CONTRACTION_ENDS
    return out

  def class_probes(self, text: str) -> list[str]:
    """`probes`, one of each signature: those of one class cut a text alike (their bytes
    matter to BPE, not to the pattern)."""
    key = (self._class_of(text[-1]) if text else "", "'" in text[-2:])
    if key not in self._class_probes:
      self._class_probes[key] = list({self.signature(r, exact_start=True): r
                                      for r in self.probes(text)}.values())
    return self._class_probes[key]

  def signature(self, text: str, exact_start: bool = False) -> str:
    """A short text that these patterns cut exactly as text, wherever it stands: each
    character replaced by one of its class (a letter, digit, apostrophe, space, newline,
    other whitespace, other character), runs of a class cut to two characters (letters to
    one, digits to four: groups of three), and letters that may finish a contraction kept
    as the contraction letter they match, case folded: those within two characters after an
    apostrophe, and with exact_start the first two (an apostrophe may come before the
    text). Tokens with one signature follow a text the same way (`BPE.signature_heads`)."""
    out, run = [], 0
    for i, ch in enumerate(text):
      c = self._class_of(ch)
      if c in "aA" and (exact_start and i < 2 or "'" in text[max(0, i - 2):i]):
        c = next((l if c == "a" else l.upper() for l, fold in _CONTRACTION_LETTERS
                  if fold.fullmatch(ch)), c)
        out.append(c)
        run = 0
        continue
      run = run + 1 if out and out[-1] == c else 1
      if run <= {"1": 4, "a": 1, "A": 1, "\u00aa": 1}.get(c, 2):
        out.append(c)
    return "".join(out)


  def _class_of(self, ch: str) -> str:
    """The character standing for ch's class in `signature`: a letter ("a"; with o200k's
    cases "a" lower, "A" upper or title, "ª" neither, and marks "\u0301"), a digit, the
    apostrophe, a space, a newline, other whitespace, "/" for o200k, anything else ("!")."""
    if self.cased:
      for c, pattern in _CASED:
        if pattern.match(ch):
          return c
    if _LETTER.match(ch):
      return "a"
    if _DIGIT.match(ch):
      return "1"
    if ch in "' ":
      return ch
    if ch in "\r\n":
      return "\n"
    return "\t" if _SPACE.match(ch) else "!"


def character_class(ch: str) -> int:
  """The class of ch in a partition finer than the classes each pattern here (and GPT-2's)
  tells apart: whitespace; lower, upper and other letters (o200k's cases); marks; digits;
  punctuation; symbols; separators; the rest (0). From the `regex` module's Unicode tables,
  the patterns' own (newer than Python's `unicodedata`)."""
  found = _CHARACTER_CLASS.match(ch)
  return found.lastindex if found else 0


def isolated(pattern, text: str) -> list[tuple[int, int, bool]]:
  """(start, end, whether it matched) of each match of a compiled pattern in text and of the
  text between matches, in order: the "Isolated" split of `tokenizers`."""
  out, end = [], 0
  for m in pattern.finditer(text):
    a, b = m.span()
    if a > end:
      out.append((end, a, False))
    out.append((a, b, True))
    end = b
  if end < len(text):
    out.append((end, len(text), False))
  return out


_CHARACTER_CLASS = regex.compile(r"(\s)|(\p{Ll})|([\p{Lu}\p{Lt}])|([\p{Lm}\p{Lo}])|(\p{M})"
                                 r"|(\p{N})|(\p{P})|(\p{S})|(\p{Z})")
_LETTER, _DIGIT, _SPACE = regex.compile(r"\p{L}"), regex.compile(r"\p{N}"), regex.compile(r"\s")
_CASED = [(c, regex.compile(p)) for c, p in (("a", r"\p{Ll}"), ("A", r"[\p{Lu}\p{Lt}]"),
                                            ("\u00aa", r"[\p{Lm}\p{Lo}]"), ("\u0301", r"\p{M}"),
                                            ("/", "/"))]
_CONTRACTION_LETTERS = [(l, regex.compile(f"(?i){l}")) for l in "stmdrevl"]
_LETTERS = ["a", "\u00e9", "\u65e5"]
_SPACES = [" ", "\t", "\n", "\r"]
_SINGLES = _LETTERS + ["1", "!", "'"] + _SPACES
_CONTRACTION_ENDS = ["s", "t", "m", "d", "re", "ve", "ll", "r", "v", "l", "e"]
