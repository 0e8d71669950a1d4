"""What to say about bytes that are not UTF-8: where they break, and how to convert them.

Text that is not UTF-8 is most often Windows-1252 (cp1252: Latin-1 plus curly quotes, dashes
and the euro sign in 0x80-0x9f) or Latin-1 (ISO-8859-1). Suggesting Latin-1 for cp1252 text
would turn its quotes into C1 control characters, so the advice names cp1252 wherever the
bytes are valid cp1252 and Latin-1 only where they are not (cp1252 leaves five bytes
undefined, which Latin-1 maps to control characters).
"""

from __future__ import annotations


def likely_encoding(data: bytes) -> str:
  """"cp1252" where `data` decodes as Windows-1252, else "latin1" (which decodes any bytes)."""
  try:
    data.decode("cp1252")
  except UnicodeDecodeError:
    return "latin1"
  return "cp1252"


def not_utf8(data: bytes, error: UnicodeDecodeError, name: str, where: str = "byte offset",
             command: str | None = None) -> str:
  """One sentence for `name`'s bytes (`data`) that failed to decode as UTF-8 (`error`): the
  offset and byte, and an iconv command to convert it (`command`: the whole command, else
  one that reads name and writes fixed.txt)."""
  encoding = likely_encoding(data)
  command = command or f"iconv -f {encoding} -t utf-8 {name} > fixed.txt"
  return (f"{name}: not valid UTF-8 at {where} {error.start} ({error.reason}, byte "
          f"0x{data[error.start]:02x}); convert it to UTF-8 first, e.g. `{command}` (these "
          f"bytes read as {encoding})")
