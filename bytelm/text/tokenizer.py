"""Byte-level tokenizer with the ByT5 id layout (Xue et al., 2022, arXiv:2105.13626).

There is no vocabulary to learn: a UTF-8 byte `b` is id `b + 3`, after three special ids
(pad 0, eos 1, unk 2). Ids 0..258 are used; models keep 384 embedding rows, as ByT5 does.

The sentinel trap. Span corruption replaces each masked span with a sentinel id. Hugging Face's
`ByT5Tokenizer` adds `<extra_id_0>` .. `<extra_id_124>` at ids 259..383, but those are *not* the
sentinels ByT5 was pretrained with: pretraining (t5/seqio `ByteVocabulary`, extra_ids=0) counted
down from the last id, `<extra_id_i>` = 258 - i, i.e. 258, 257, ... These collide with the byte
ids of 0xFF, 0xFE, ..., bytes that never occur in valid UTF-8, so there is no ambiguity on text.
Use `sentinel_id(i)` to reproduce pretraining and to fine-tune released ByT5 checkpoints.
Consequently `decode` treats 258, 257, ... as bytes (yielding U+FFFD under errors="replace").
"""

from collections.abc import Sequence

import numpy as np

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
OFFSET = 3  # byte b -> id b + OFFSET
NUM_BYTE_IDS = 256 + OFFSET  # 259: ids 0..258 are specials or bytes
VOCAB_SIZE = 384  # embedding rows in ByT5 checkpoints (259 used, the rest padding)
MAX_SENTINELS = 256  # 258 - i must stay a byte id (>= OFFSET) for i < 256


def sentinel_id(i: int) -> int:
  """Id of the i-th span-corruption sentinel as used in ByT5 pretraining: 258 - i.

  Not HF's `<extra_id_i>` (259 + i); see the module docstring.
  """
  if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
    raise TypeError(f"sentinel index must be an int, got {type(i).__name__}")
  if not 0 <= i < MAX_SENTINELS:
    raise ValueError(
        f"sentinel index {i} out of range [0, {MAX_SENTINELS}): ids count down from "
        f"{NUM_BYTE_IDS - 1} and must stay >= {OFFSET}; use fewer spans per example")
  return NUM_BYTE_IDS - 1 - int(i)


def as_bytes(text: str | bytes, what: str = "text") -> bytes:
  """The bytes of a text: str is UTF-8 encoded, bytes (bytearray, memoryview) are taken as
  they are. Every bytelm call that takes a text takes either (docs/api.md, "str or bytes")."""
  if isinstance(text, str):
    return text.encode("utf-8")  # raises UnicodeEncodeError on lone surrogates
  if isinstance(text, (bytes, bytearray, memoryview)):
    return bytes(text)
  raise TypeError(f"expected str or bytes for the {what}, got {type(text).__name__}; decode "
                  "binary data to str or pass it as bytes")


class ByteTokenizer:
  """UTF-8 bytes <-> ids in the ByT5 layout: pad 0, eos 1, unk 2, byte b -> b + 3.

  Decoding stops at the first eos, skips pad, unk and ids >= 259 (HF's extra ids), and treats
  pretraining sentinels (258, 257, ...) as the bytes 0xFF, 0xFE, ... (see module docstring).
  """

  pad_id = PAD_ID
  eos_id = EOS_ID
  unk_id = UNK_ID
  offset = OFFSET
  vocab_size = VOCAB_SIZE

  def encode(self, text: str | bytes, add_eos: bool = True) -> np.ndarray:
    """Ids (int32, shape [T]) of `text`; str is UTF-8 encoded, bytes are taken as-is."""
    ids = np.frombuffer(as_bytes(text), dtype=np.uint8).astype(np.int32) + OFFSET
    if add_eos:
      ids = np.append(ids, np.int32(EOS_ID))
    return ids

  def decode_bytes(self, ids) -> bytes:
    """Raw bytes of `ids` (list, numpy or jax array, 1-D): stops at eos, skips non-bytes."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
      raise ValueError(f"decode expects a 1-D sequence of ids, got shape {ids.shape}; "
                       "use decode_batch for [B, T]")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
      raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    eos = np.flatnonzero(ids == EOS_ID)
    if eos.size:
      ids = ids[: eos[0]]
    ids = ids[(ids >= OFFSET) & (ids < NUM_BYTE_IDS)]
    return (ids - OFFSET).astype(np.uint8).tobytes()

  def decode(self, ids, errors: str = "replace") -> str:
    """Text of `ids`; invalid UTF-8 becomes U+FFFD unless errors="strict" (then raises)."""
    return self.decode_bytes(ids).decode("utf-8", errors=errors)

  def encode_batch(self, texts: Sequence[str | bytes], length: int | None = None,
                   add_eos: bool = True, truncate: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Encode and right-pad with pad id 0 to a fixed length.

    Args:
      texts: a non-empty sequence of str or bytes.
      length: T of the result; None pads to the longest encoding.
      add_eos: append eos to each text.
      truncate: cut texts longer than `length`. Like HF with truncation=True, the eos is
        kept: the content is cut to `length - 1` ids and eos is the last id. If False, a
        too-long text raises ValueError.

    Returns:
      (ids_BT, mask_BT), int32; mask is 1 on real ids (eos included), 0 on padding.
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError("encode_batch expects a sequence of texts; use encode for one text")
    if len(texts) == 0:
      raise ValueError("encode_batch got an empty list of texts; pass at least one")
    if length is not None and (not isinstance(length, (int, np.integer)) or length < 1):
      raise ValueError(f"length must be a positive int or None, got {length!r}")
    seqs = [self.encode(t, add_eos=add_eos) for t in texts]
    T = max(len(s) for s in seqs) if length is None else length
    ids_BT = np.full((len(seqs), T), PAD_ID, dtype=np.int32)
    mask_BT = np.zeros((len(seqs), T), dtype=np.int32)
    for b, s in enumerate(seqs):
      if len(s) > T:
        if not truncate:
          raise ValueError(
              f"text {b} encodes to {len(s)} ids, more than length={T}; "
              "raise length, shorten the text, or pass truncate=True")
        s = np.append(s[: T - 1], np.int32(EOS_ID)) if add_eos else s[:T]
      ids_BT[b, : len(s)] = s
      mask_BT[b, : len(s)] = 1
    return ids_BT, mask_BT

  def decode_batch(self, ids_BT, errors: str = "replace") -> list[str]:
    """Decode each row of a [B, T] array of ids (see `decode`)."""
    ids_BT = np.asarray(ids_BT)
    if ids_BT.ndim != 2:
      raise ValueError(f"decode_batch expects [B, T] ids, got shape {ids_BT.shape}")
    return [self.decode(row, errors=errors) for row in ids_BT]
