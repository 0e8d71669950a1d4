"""A byte-level BPE tokenizer (GPT-2's scheme), trained with Hugging Face `tokenizers`.

The subword baseline of the byte models: `bytelm.models.decoder` over these tokens is scored
in bits per byte like every other model (its total log-loss divided by the bytes of the text
it predicted), so the comparison needs, besides the ids, the bytes each token spells
(`token_bytes`).

Byte level means no unknown token and an exact round trip: text is UTF-8 encoded, each byte is
written as one printable character (`byte_chars`), and BPE merges those characters; the 256
byte characters are all in the vocabulary whatever the training text, so any text, in any
script, encodes to tokens whose bytes concatenate back to the text's bytes. There is no
normalizer (it would change the bytes) and no prefix space.

Ids follow bytelm's conventions: pad 0 and eos 1 (bytelm.text.tokenizer), the 256 byte characters
after them, then the merges in the order BPE learned them. The special tokens' strings are
never matched in text: a document containing the characters "<eos>" encodes them as text.

Training is deterministic (same text and vocab_size -> the same tokenizer.json, byte for byte,
in any process). A run keeps its tokenizer in its workdir (`load_or_train`), so a resumed run or
a later evaluation uses the tokenizer the model was trained with.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from bytelm.data import sources
from bytelm.text.tokenizer import EOS_ID, PAD_ID

FILENAME = "tokenizer.json"  # in the run's workdir
SPECIAL_TOKENS = ("<pad>", "<eos>")  # ids 0 and 1, in this order
NUM_BASE_TOKENS = len(SPECIAL_TOKENS) + 256  # specials and byte characters: the smallest vocab
_ENCODE_CHUNK = 64  # pieces per encode_batch call: bounds the memory of the Encodings
_PIECE_CHARS = 1 << 20  # characters of text encoded (or trained on) at a time, at most about


def byte_chars() -> list[str]:
  """The character standing for each byte value (GPT-2's byte-to-unicode table).

  Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
  themselves; the other 68 (controls, space, soft hyphen) are moved, in byte order, to code
  points 256, 257, ... so that no token contains whitespace or a control character.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
  chars, moved = {b: chr(b) for b in printable}, 0
  for b in range(256):
    if b not in chars:
      chars[b] = chr(256 + moved)
      moved += 1
  return [chars[b] for b in range(256)]


def _new_tokenizer() -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return tok


def train(texts: Iterable[str], vocab_size: int = 2048) -> tokenizers.Tokenizer:
  """A byte-level BPE tokenizer of `vocab_size` tokens (specials and 256 bytes included)."""
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
     or vocab_size < NUM_BASE_TOKENS:
    raise ValueError(f"vocab_size must be an int >= {NUM_BASE_TOKENS} (2 special tokens and "
                     f"256 bytes), got {vocab_size!r}")
  if isinstance(texts, str):
    raise TypeError("texts must be an iterable of documents, not one string; wrap it: [text]")
  tok = _new_tokenizer()
  tok.encode_special_tokens = True  # "<eos>" in training text is text, as when encoding
  trainer = trainers.BpeTrainer(
      vocab_size=int(vocab_size), special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  if tok.get_vocab_size() < vocab_size:
    raise ValueError(f"the training text supports only {tok.get_vocab_size()} BPE tokens (it "
                     f"has too few distinct pairs), not the {vocab_size} asked for; lower "
                     "vocab_size or train on more text")
  return check(tok, "the trained tokenizer")


def check(tok: tokenizers.Tokenizer, what: str = "the tokenizer") -> tokenizers.Tokenizer:
  """tok, after checking that it is a byte-level BPE with bytelm's special ids (a ValueError
  naming `what` if not), set to encode the special tokens' strings as text."""
  for token, want in zip(SPECIAL_TOKENS, (PAD_ID, EOS_ID)):
    if tok.token_to_id(token) != want:
      raise ValueError(f"{what} has {token!r} at id {tok.token_to_id(token)}, not {want}; it "
                       "was not made by bytelm.data.bpe.train (pad must be 0 and eos 1)")
  known = set(byte_chars())
  missing = known - set(tok.get_vocab())
  if missing or not isinstance(tok.pre_tokenizer, pre_tokenizers.ByteLevel):
    raise ValueError(f"{what} is not a byte-level BPE over all 256 bytes ({len(missing)} byte "
                     "characters missing or no ByteLevel pre-tokenizer); train it with "
                     "bytelm.data.bpe.train")
  tok.encode_special_tokens = True  # not saved in tokenizer.json: set on every load
  return tok


def save(tok: tokenizers.Tokenizer, path) -> None:
  """Write tok as JSON to path, atomically (a temporary file, then a rename)."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(tok.to_str(pretty=True), encoding="utf-8")
  os.replace(tmp, path)


def load(path) -> tokenizers.Tokenizer:
  """The tokenizer saved at path; a clear error if it is missing, corrupt or not ours."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no tokenizer at {path}; train one with bytelm.data.bpe.train")
  try:
    text = path.read_text(encoding="utf-8")
    json.loads(text)  # a truncated file fails here with a line and column
    tok = tokenizers.Tokenizer.from_str(text)
  except Exception as e:  # tokenizers raises a plain Exception on bad JSON structure
    raise ValueError(f"{path} is not a readable tokenizer ({type(e).__name__}: {e}). Delete it "
                     "to train a new one, which also means starting the run again: the model "
                     "was trained with the old ids") from e
  return check(tok, str(path))


def load_or_train(path, spec: str, vocab_size: int, *, write: bool = True,
                  invalid_utf8: str = "error") -> tokenizers.Tokenizer:
  """The tokenizer at path if there is one (a resumed run), else one trained on the training
  split of the text source `spec` (bytelm.data.sources; a mixture: all of its sources), never
  on held-out text. The documents stream through `tokenizers`' trainer one at a time, from the
  prepared stream (bytelm.data.prepare), so a corpus larger than memory trains one.

  The trained one is saved to path when `write` (in multi-process runs, process 0 writes; the
  others train the same tokenizer, training being deterministic).
  """
  path = pathlib.Path(path)
  if path.exists():
    tok = load(path)
    if tok.get_vocab_size() != vocab_size:
      raise ValueError(f"{path} has {tok.get_vocab_size()} tokens but the config asks for "
                       f"{vocab_size}; use the vocab_size the run was started with, or another "
                       "workdir")
    return tok
  from bytelm.data import prepare  # prepare's streams are read here, its cache written there
  streams = [prepare.open_split(s, "train", invalid_utf8) for s, _ in
             sources.parse_mixture(spec)]
  for stream in streams:
    check_text(stream)
  tok = train((p for s in streams for d in s.documents()
               for p in pieces(d.decode("utf-8"), _PIECE_CHARS)), vocab_size)
  if write:
    save(tok, path)
  return tok


def check_text(stream) -> None:
  """A ValueError unless stream (bytelm.data.stream.ByteStream) holds text: BPE reads text."""
  if stream.kind != "text":
    raise ValueError(f"{stream.name} holds raw bytes, not text: a BPE tokenizer is trained on "
                     "and reads text; train a byte model on it (bytes_decoder, hat, byt5, ...)")


def token_bytes(tok: tokenizers.Tokenizer) -> list[bytes]:
  """The UTF-8 bytes each id spells, indexed by id; special tokens spell nothing (b"").

  A token may hold part of a character's bytes (a merge across a character's bytes, or a lone
  byte of a 4-byte emoji), so this is read from the byte characters, not from `tok.decode`,
  which would replace such pieces by U+FFFD.
  """
  byte_of = {c: b for b, c in enumerate(byte_chars())}
  spelled = [b""] * tok.get_vocab_size()
  for token, i in tok.get_vocab().items():
    if token in SPECIAL_TOKENS:
      continue
    try:
      spelled[i] = bytes(byte_of[c] for c in token)
    except KeyError as e:
      raise ValueError(f"token {token!r} (id {i}) has the character {e.args[0]!r}, which "
                       "stands for no byte: the tokenizer is not byte-level") from None
  return spelled


def decode_bytes(ids: Sequence[int], spelled: Sequence[bytes]) -> bytes:
  """The bytes that ids spell (spelled = token_bytes(tok)); special ids spell nothing."""
  return b"".join(spelled[int(i)] for i in ids)


def encode_documents(tok: tokenizers.Tokenizer, documents: Sequence[str]
                     ) -> list[np.ndarray]:
  """int32 ids of each document (no eos added); encoded in parallel, a chunk at a time, a long
  document in pieces (`pieces`), so the Encodings held at once stay bounded."""
  # encode_batch_fast: the same ids without the character offsets, which nothing here reads
  # (a training stream's encoding costs ~40% less CPU); encode_batch where it is missing.
  encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
  ids = [[] for _ in documents]
  pending, owners, chars = [], [], 0

  def flush():
    for owner, e in zip(owners, encode(pending, add_special_tokens=False)):
      ids[owner].append(np.asarray(e.ids, dtype=np.int32))
    pending.clear()
    owners.clear()

  for i, document in enumerate(documents):
    for piece in pieces(document, _PIECE_CHARS):
      pending.append(piece)
      owners.append(i)
      chars += len(piece)
      if len(pending) == _ENCODE_CHUNK or chars >= _PIECE_CHARS:
        flush()
        chars = 0
  if pending:
    flush()
  return [np.concatenate(p) if len(p) > 1 else (p[0] if p else np.zeros(0, np.int32))
          for p in ids]


def pieces(text: str, max_chars: int = _PIECE_CHARS) -> list[str]:
  """text cut into pieces of at most about max_chars where the tokens cannot change: after a
  newline between two characters that are not whitespace (the ByteLevel pre-tokenizer's regex
  makes such a newline a pre-token of its own, and BPE merges inside pre-tokens). Text without
  such a place for max_chars is cut at max_chars. Shorter text is one piece."""
  out, start = [], 0
  while len(text) - start > max_chars:
    cut = text.rfind("\n", start, start + max_chars)
    while cut > start and (text[cut + 1].isspace() or text[cut - 1].isspace()):
      cut = text.rfind("\n", start, cut)
    cut = cut + 1 if cut > start else start + max_chars
    out.append(text[start:cut])
    start = cut
  out.append(text[start:])
  return out
