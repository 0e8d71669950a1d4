"""Canonical tokenization by a BPE, on bytes: what makes a token sequence valid.

A tokenized LM puts mass only on the token sequences its tokenizer produces; the exact byte
probabilities of Phan et al. (2024) sum over those ("valid") sequences and no others, so they
need the tokenizer as a function on bytes that can be run on any candidate: `BPE.encode` and
`BPE.is_valid`. This reimplements a Hugging Face BPE from its tokenizer.json (`BPE.from_json`
says which) rather than calling `tokenizers`, which encodes str only: the byte strings of
candidate token sequences can end inside a UTF-8 character.

Two families. Byte-level BPE (GPT-2, Llama-3, GPT-4-style): every token spells bytes, merges
start from single bytes, a pre-tokenizer splits the text first. SentencePiece-style BPE with
byte fallback (Llama-2, Mistral): merges start from characters, a character that is no token
is spelled by tokens of its bytes ("<0xE2>"), "▁" stands for a space and a space may be put
before the text ("add_dummy_prefix": `prefix`, part of what the tokens spell but not of the
text). Added tokens that are not special are matched in the text before anything else, and
the text between them is tokenized on its own; special tokens spell nothing.

Pre-tokenization. With the ByteLevel pre-tokenizer's `use_regex` (GPT-2's pattern, the default),
text is first split into pieces (a word with the space before it, a number, a run of
punctuation, whitespace) and BPE never merges across pieces, so the split decides which token
sequences are valid: " world" can be one token but "o w" never is. The split is made on the text
decoded from the bytes; a byte that is not valid UTF-8 is decoded as a lone surrogate
(`surrogateescape`), which the pattern treats as punctuation. On valid UTF-8 this is exactly
what `tokenizers` computes (tested); beyond it, where `tokenizers` has no answer, this is the
definition used. Without the regex the whole text is one piece. Other pre-tokenizers (a Split
with Llama-3's pattern, Metaspace) are `splits`.

Merges. Within a piece, starting from single bytes, the adjacent pair whose merge was learned
first is merged, the leftmost where it occurs several times, until no learned pair is left (as
`tokenizers` does). With `ignore_merges` (Llama-3), a piece that is a token is that token.

Axis legend: none (host code on Python bytes and ints).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import regex

from bytelm.byteprobs import splits, tokenizer_json
from bytelm.byteprobs.bigrams import Bigrams

# The ByteLevel pre-tokenizer's pattern (GPT-2's), as `tokenizers` applies it.
GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


class Signatures(NamedTuple):
  """Tokens by signature (`splits.RegexSplit.signature`), indices into `texts`: `plain` and
  `exact` (first letters kept, after an apostrophe) of each token's text (-1: specials,
  added tokens); for a token that ends inside a UTF-8 character, also one per class of
  character completing it (`_completions`), [V, C] (-1 past a token's classes), and whether
  that completion surely leaves a token boundary after the token: its first byte begins no
  right side of a merge whose left side is on the token's right spine (and, where merges
  start from characters, the character is no token)."""
  plain: np.ndarray
  exact: np.ndarray
  completed_plain: np.ndarray
  free_plain: np.ndarray
  completed_exact: np.ndarray
  free_exact: np.ndarray
  texts: list[str]


class BPE:
  """A BPE on bytes: encode(bytes) -> ids, the bytes of each id, and validity of id lists."""

  def __init__(self, vocab: dict[bytes, int], merges: Sequence[tuple[bytes, bytes]],
               use_regex: bool = True, special_ids: Sequence[int] = (), *,
               split=None, added: dict[bytes, int] | None = None, ignore_merges: bool = False,
               chars: frozenset[bytes] | None = None, prefix: bytes = b"",
               metaspace: bool = False, bos: Sequence[int] = ()):
    """vocab: the bytes each (non-special) token spells -> its id; merges: pairs in the order
    they were learned; special_ids: ids that spell nothing (pad, eos). The rest describe
    tokenizers other than GPT-2's (`from_json` sets them): split, a `splits` pre-tokenizer
    in place of GPT-2's regex (use_regex is then ignored); added, tokens matched in the text
    before pre-tokenization (bytes -> id); ignore_merges, a piece that is a token is that
    token; chars, the characters that are tokens where merges start from characters, not
    bytes (SentencePiece; the others are spelled by their bytes' tokens); prefix, what is
    put before every text (a space, for "add_dummy_prefix"); metaspace, "▁" in a text is
    read as a space; bos, the ids put before the tokens of a text by the tokenizer's post
    processor (a model's context, not part of what is tokenized)."""
    missing = [b for b in range(256) if bytes([b]) not in vocab]
    if missing:
      raise ValueError(f"a BPE read as bytes has a token for each of the 256 bytes (byte-level, "
                       f"or byte fallback); {len(missing)} are missing (e.g. {missing[0]:#04x})")
    self.vocab, self.split = dict(vocab), split
    self.use_regex = bool(use_regex) and split is None
    self.added = dict(added or {})
    self.ids = self.vocab | self.added  # the id of each piece and token BPE makes
    self.ignore_merges, self.chars = bool(ignore_merges), chars
    self._chars = chars or frozenset()  # (hashed once: a key of `_completions`' cache)
    self.prefix, self.metaspace, self.bos = bytes(prefix), bool(metaspace), tuple(bos)
    self.ranks = {pair: rank for rank, pair in enumerate(merges)}
    for left, right in self.ranks:
      if left + right not in self.vocab:
        raise ValueError(f"the merge {left!r} + {right!r} makes no token of the vocabulary")
    size = max(list(self.ids.values()) + list(special_ids)) + 1
    self.token_bytes: list[bytes] = [b""] * size  # specials (and unused ids) spell nothing
    for token, i in self.ids.items():
      self.token_bytes[i] = token
    self.max_token_bytes = max(len(t) for t in self.ids)
    # Added tokens, longest first: at one start the longest is taken, as `tokenizers` does.
    contents = sorted((t.decode("utf-8", "surrogateescape") for t in self.added),
                      key=len, reverse=True)
    self._added_pattern = regex.compile("|".join(map(regex.escape, contents))) if contents \
        else None
    self._added_starts = {t[:k] for t in self.added for k in range(1, len(t))}
    # Pieces recur (words, spaces); their merges are memoised per tokenizer.
    self._merge = functools.lru_cache(maxsize=1 << 16)(self._merge_piece)
    # Continuation bytes that begin no merge's right side: BPE never joins one to what is
    # before it, so a character cut there keeps a token boundary (`completions`).
    self._free_bytes = frozenset(range(0x80, 0xC0)) - {right[0] for _, right in self.ranks}
    # The tokens sorted by their bytes: those starting with a prefix are one range of them.
    order = sorted((t, i) for i, t in enumerate(self.token_bytes) if t)
    self._sorted_bytes = [t for t, _ in order]
    self._sorted_ids = np.asarray([i for _, i in order], np.int64)
    self.token_lengths = np.asarray([len(t) for t in self.token_bytes], np.int64)
    # byte_table[i, k]: byte k of token i (0 past its end), for next bytes of many tokens.
    self.byte_table = np.zeros((size, self.max_token_bytes), np.uint8)
    for i, t in enumerate(self.token_bytes):
      self.byte_table[i, :len(t)] = list(t)
    self.token_kinds = np.asarray([_kind(t) if self.use_regex else 0 for t in self.token_bytes],
                                  np.int64)
    # A token that is the start of a UTF-8 character: how its completions leave it a token
    # (`_partial_kinds`).
    self.partial_kinds = np.zeros(size, np.int64)
    for i, t in enumerate(self.token_bytes):
      if self.use_regex and t and cut_character(t) == t:
        self.token_kinds[i], self.partial_kinds[i] = PARTIAL, self._partial_kinds(t)
      elif self.use_regex and t and _ONE_SPACE.fullmatch(t.decode("utf-8", "surrogateescape")):
        self.token_kinds[i] = ONE_SPACE

  @functools.cached_property
  def signatures(self) -> Signatures | None:
    """For a `splits` pre-tokenizer, each token's signature (`Signatures`); None for GPT-2's
    regex or none (`context_heads` serves those)."""
    if self.split is None:
      return None
    index: dict[str, int] = {}
    size = len(self.token_bytes)
    plain, exact = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    completed = [[], []]  # per token that ends inside a character: [(signature, free)]
    starts_of: dict[bytes, list[bytes]] = {}  # a merge's left side -> its right sides
    for x, y in self.ranks:
      starts_of.setdefault(x, []).append(y)
    for i, t in enumerate(self.token_bytes):
      if not t or t in self.added:
        continue
      text = t.decode("utf-8", errors="surrogateescape")  # a cut character: bytes of none
      plain[i] = index.setdefault(self.split.signature(text), len(index))
      exact[i] = index.setdefault(self.split.signature(text, exact_start=True), len(index))
      cut = cut_character(t)
      if not cut:
        continue
      whole = t[:-len(cut)].decode("utf-8", errors="surrogateescape")
      # A merge across the token's end joins something on its right spine to what follows
      # (`bigrams`): a first byte no such merge takes leaves the boundary.
      free = frozenset(range(0x80, 0xC0)) - {
          y[0] for x, _, _ in self.bigrams.right_spine(i)
          for y in starts_of.get(self.token_bytes[x], ())}
      rests = _completions(cut, free, self._chars)[:-1]  # the last leaves it no character
      for k, start in enumerate((False, True)):
        options = []
        for rest in rests:
          char = (cut + rest).decode("utf-8")
          sig = self.split.signature(whole, start) + self.split.signature(char)
          options.append((index.setdefault(sig, len(index)),
                          rest[0] in free and cut + rest not in self._chars))
        completed[k].append((i, options))
    width = max((len(o) for _, o in completed[0]), default=0)
    tables = []
    for per_token in completed:
      sig = np.full((size, width), -1, np.int64)
      free = np.zeros((size, width), bool)
      for i, options in per_token:
        for c, (k, f) in enumerate(options):
          sig[i, c], free[i, c] = k, f
      tables.append((sig, free))
    return Signatures(plain, exact, *tables[0], *tables[1], list(index))

  def signature_heads(self, u: bytes, signature: str):
    """For tokens of one signature (`signatures`) after u, read from a stable cut: two dicts
    (head, last) -> part, for the pieces that end with the token and those that go on past
    it. Each probe after the signature (`splits.RegexSplit.probes`) splits u + signature +
    probe; where the token lies in one piece, the tokens of the pieces before that piece,
    and of the piece's part in u, are a head; last is the last of them where the piece
    starts in u (the token must follow it as BPE would put it: `Bigrams.after`), else -1
    (the token starts the piece: it must be its own bytes' tokenization, `Bigrams.alone`,
    or with ignore_merges be the whole piece); part, the piece's bytes in u. Where the piece
    goes on, a token boundary after the token depends on what follows (`ByteLM` takes such
    heads for tokens cut inside a character, completed by a byte BPE never merges with what
    is before it, and leaves the others to the per-token path). Tests compare the covers
    with the per-token path's."""
    text = u.decode("utf-8", errors="surrogateescape")
    a, b = len(text), len(text) + len(signature)
    ends, goes_on = {}, {}
    for r in self.split.class_probes(text + signature):
      spans = self.split.spans(text + signature + r)
      start, end = next((s, e) for s, e in spans if s <= a < e)
      if end < b:
        continue  # the token would span two pieces
      head = tuple(self.ids[t] for s, e in spans if e <= start
                   for t in self._merge(text[s:e].encode("utf-8", "surrogateescape")))
      last, part = -1, text[start:].encode("utf-8", "surrogateescape")
      if start < a:
        head += tuple(self.ids[t] for t in self._merge_part(part))
        last = head[-1]
      (ends if end == b else goes_on)[head, last] = part
    return ends, goes_on

  @functools.cached_property
  def _junctions(self) -> frozenset[tuple[int, int]]:
    """The pairs of bytes next to each other inside some token. A merge joins the bytes
    either side of a place only if they are such a pair (the token it makes holds them), so
    where they are not, BPE tokenizes the text before and after apart: a text that is one
    piece (SentencePiece-style files without a pre-tokenizer) is stable up to there. With
    SentencePiece's own vocabularies, whose tokens hold "▁" only at their start or in runs of
    it, that is before every space after something else."""
    return frozenset((t[i], t[i + 1]) for t in self.token_bytes for i in range(len(t) - 1))

  @functools.cached_property
  def bigrams(self) -> Bigrams:
    """Which tokens BPE puts after which, for the whole vocabulary (built at first use)."""
    return Bigrams(self.token_bytes, self.vocab, self.ranks, self._merge_symbols,
                   base=lambda x: len(x) == 1 or x in self._chars)

  @property
  def checks_together(self) -> bool:
    """Whether candidate tokens can be checked a kind at a time (`context_heads`, or
    `signature_heads` for a Split, and `bigrams`): for byte-level BPE whose merges are as
    training makes them, with GPT-2's regex or none (without ignore_merges) or a Split of
    `splits.PATTERNS`, and no added tokens. Otherwise `byte_lm.ByteLM` checks them one by
    one through the probes: exact, slower."""
    return (not self.added and self.bigrams.exact
            and (self.signatures is not None or self.split is None and not self.ignore_merges))

  @functools.cached_property
  def split_ok(self) -> np.ndarray:
    """bool [V]: for a token of one whitespace character, whether it ends a token when split
    off a run of whitespace before a non-space. Any character but a space is then a piece of
    its own (a token if BPE makes it of its bytes). A space joins the run of letters, digits
    or other characters after it, and ends a token where BPE may put some token of that run
    right after it: one of the same kinds (`token_kinds` 0-2) does, at the end of the text."""
    ok = self.bigrams.alone & (self.token_kinds == ONE_SPACE)
    space = self.vocab[b" "]
    ok[space] = bool(np.any(self.bigrams.after(space) & (self.token_kinds <= 2)
                            & (self.token_kinds >= 0)))
    return ok

  @classmethod
  def from_json(cls, text: str) -> "BPE":
    """From the contents of a Hugging Face tokenizer.json: a BPE model with either a
    ByteLevel pre-tokenizer (with GPT-2's regex or none, or after a Split with a pattern of
    `splits.PATTERNS`, as Llama-3's), or SentencePiece's conventions with byte fallback
    ("▁" for spaces by a Replace normalizer or a Metaspace pre-tokenizer, an optional "▁"
    prepended). Anything else is refused with the part named (`tokenizer_json`)."""
    return tokenizer_json.from_spec(cls, json.loads(text))

  @classmethod
  def from_file(cls, path) -> "BPE":
    return cls.from_json(pathlib.Path(path).read_text(encoding="utf-8"))

  # ---- pre-tokenization ----------------------------------------------------------------------

  def _sections(self, text: str) -> list[tuple[str, bool]]:
    """text cut at the added tokens in it: (section, whether it is an added token)."""
    if self._added_pattern is None:
      return [(text, False)] if text else []
    return [(text[a:b], matched) for a, b, matched in splits.isolated(self._added_pattern, text)]

  def _split(self, text: str) -> list[str]:
    """The pre-tokenizer's pieces of a text with no added token in it."""
    if self.split is not None:
      return self.split.pieces(text)
    if self.use_regex:
      return GPT2_PATTERN.findall(text)
    return [text] if text else []

  def pieces(self, data: bytes) -> list[bytes]:
    """The pre-tokenization of data: pieces that BPE merges within, never across (an added
    token is a piece of its own)."""
    text = data.decode("utf-8", errors="surrogateescape")
    return [p.encode("utf-8", errors="surrogateescape")
            for section, added in self._sections(text)
            for p in ([section] if added else self._split(section))]

  def probes(self, y: bytes) -> list[bytes]:
    """Continuations that show every way text after y can change the tokens of y: without a
    regex none can (a token boundary inside a piece sees nothing to its right), so [b""];
    with GPT-2's, the split near the end of y depends on the next character's class (a
    space before a word joins it, whitespace before a non-space leaves its last space to
    it, an apostrophe makes "'s", "'re", ... with the letters after it), and a character cut
    at the end of y on how it is completed. Other pre-tokenizers: `splits`' probes, after
    each completion of a cut character."""
    cut = cut_character(y)
    if self.split is not None:
      text = y[:len(y) - len(cut)].decode("utf-8", errors="surrogateescape")
      if not cut:
        return [p.encode("utf-8") for p in self.split.probes(text)]
      return [b""] + [c + p.encode("utf-8") for c in self.completions(cut)
                      for p in self.split.probes(text + (cut + c).decode("utf-8",
                                                                          "surrogateescape"))]
    if not self.use_regex:
      return [b""]
    # Letters differ only after an apostrophe, where they may finish a contraction.
    probes = _PROBES if b"'" in y[-2:] else _PROBES_AWAY_FROM_APOSTROPHES
    if cut:  # the text may end there too (with ignore_merges the cut bytes may be a token)
      probes = [b""] + [c + p for c in self.completions(cut) for p in probes]
    return probes

  def _stable_end(self, text: str) -> int:
    """In a text with no added token: the end (in characters) of the pieces no
    continuation changes (`stable_prefix`)."""
    if self.split is not None:
      return self.split.stable_end(text)
    if not self.use_regex:
      return 0
    end = 0
    for match in list(GPT2_PATTERN.finditer(text))[:-1]:
      p = match.start()
      run = _SPACE_RUN.match(text, p)
      if (text[p] == "'" and p + 3 > len(text)) or (run and run.end() == len(text)):
        break
      end = match.end()
    return end

  def stable_prefix(self, data: bytes) -> tuple[int, list[int]]:
    """(s, ids): the end s of the pieces of data that no continuation can change, and their
    tokens, so that encode(data + z) == ids + encode(data[s:] + z) for every z ((0, [])
    without a regex). data is what the tokens spell (`prefix` included).

    GPT-2's pattern has no look-behind, so the pieces from s on depend only on the text
    from s on; a piece before s is fixed if matching it never read past the end of data. A
    greedy run that read to the end would have matched to it (that piece is the last), so
    only two reads go further than one character past a piece: the contractions read three
    characters from an apostrophe ("'l" may become "'ll"), and whitespace tries its whole run
    before leaving the last space to what follows ("\n\n1" is "\n", "\n", "1"). Every piece
    but the last is fixed unless it is an apostrophe within three characters of the end or
    whitespace whose run reaches the end (a cut UTF-8 character at the end not counted). The
    ids are those of the pieces as matched in data: data[:s] alone can split differently
    ("\n\n" is one piece). Other pre-tokenizers: `splits`' stable_end; a text that is one
    piece (`splits.Whole`) is cut where no merge can join the bytes either side
    (`_junctions`). Added tokens: one
    that starts before the text's end could begin another (`_open`) is fixed, with the text
    before it. Tested against random continuations.
    """
    if not self.use_regex and self.split is None and not self.added:
      return 0, []
    whole = data[:len(data) - len(cut_character(data))]
    if type(self.split) is splits.Whole and not self.added:  # one piece: cut where no merge
      end = next((p for p in range(len(whole) - 1, 0, -1)    # can join the bytes either side
                  if (whole[p - 1], whole[p]) not in self._junctions), 0)
      return end, [self.ids[t] for t in self._merge(whole[:end])] if end else []
    text = whole.decode("utf-8", errors="surrogateescape")
    open_at = self._open(whole)
    fixed, start = [], 0
    if self._added_pattern is not None:
      for m in self._added_pattern.finditer(text):
        if m.start() >= open_at:
          break
        fixed += self._split(text[start:m.start()]) + [m.group()]
        start = m.end()
    rest = text[start:open_at]
    end, n = self._stable_end(rest), 0
    for piece in self._split(rest):
      if n + len(piece) > end:
        break
      fixed.append(piece)
      n += len(piece)
    fixed = [p.encode("utf-8", errors="surrogateescape") for p in fixed]
    return sum(map(len, fixed)), [self.ids[t] for piece in fixed for t in self._merge(piece)]

  def _open(self, whole: bytes) -> int:
    """Where (in characters of whole) the longest end of whole that may begin an added token
    starts; len of its text where none does. No added token that starts before it can be
    changed by what follows."""
    for k in range(min(len(whole), max(map(len, self.added), default=1) - 1), 0, -1):
      if whole[-k:] in self._added_starts:
        return len(whole[:-k].decode("utf-8", errors="surrogateescape"))
    return len(whole.decode("utf-8", errors="surrogateescape"))

  def prefix_tokenizations(self, w: bytes) -> frozenset[tuple[int, ...]]:
    """Every token sequence that spells exactly w and starts the tokenization of some text
    that begins with w: the tokenization of w + r cut at len(w), over the probes r, where a
    token ends there.

    A piece of w + r that crosses len(w) holds a token boundary there only for some r, but
    when it does, the tokens before it are the merges of the piece's part inside w (merges
    are applied lowest rank first, so none crossing the boundary was ever chosen, and the
    left part merged as it would alone, `_merge_part`). So each distinct way the probes
    split w into pieces is one candidate, checked once.
    """
    found, tried, missed = set(), set(), {}
    for r in self.probes(w):
      if self.metaspace and _LOWER_BLOCK in w + r:
        continue  # read as a space: no text holds it
      parts, crossing = [], None
      n = 0
      for piece in self.pieces(w + r):
        if n + len(piece) <= len(w):
          parts.append(piece)
        elif n < len(w):
          parts.append(piece[:len(w) - n])
          crossing = piece
        n += len(piece)
      # With ignore_merges a last piece that is a token is that token where the text ends,
      # and merged when the piece goes on: two candidates.
      key = tuple(parts), crossing is not None
      if key in tried:
        continue
      if crossing is not None:  # is there a token boundary at len(w) in this crossing piece?
        inside = len(parts[-1])
        ends = itertools.accumulate(len(t) for t in self._merge(crossing))
        if inside not in ends:
          if crossing not in self.added:  # (an added token is never cut)
            missed[key] = r
          continue
      tried.add(key)
      found.add(self._tokens_of(parts, crossing is not None))
    for key in missed.keys() - tried:  # no probe left a boundary there: might a token?
      if self._boundary_before_a_token(w, key[0]):
        found.add(self._tokens_of(key[0], True))
    return frozenset(found)

  def _tokens_of(self, parts: Sequence[bytes], crossing: bool) -> tuple[int, ...]:
    """The ids of pieces, the last one cut before a token boundary where crossing."""
    whole = parts[:-1] if crossing else parts
    tokens = [t for piece in whole for t in self._merge(piece)]
    if crossing:
      tokens += self._merge_part(parts[-1])
    return tuple(self.ids[t] for t in tokens)

  def _boundary_before_a_token(self, w: bytes, parts: Sequence[bytes]) -> bool:
    """Whether some token v, put after w, goes on w's last piece (split as parts) with a
    token boundary before it: BPE puts v after the last token of the piece's part
    (`Bigrams.after`), the piece ends with v, and (with ignore_merges) is no token. The
    probes' few characters may all merge with the part's last bytes where another does not.
    Where the bigram test does not hold for these merges (`Bigrams.exact`), only the probes
    count."""
    if not self.bigrams.exact:
      return False
    last = self.ids[self._merge_part(parts[-1])[-1]]
    start = len(w) - len(parts[-1])
    for v in np.flatnonzero(self.bigrams.after(last)).tolist():
      tail = self.token_bytes[v]
      if self.ignore_merges and w[start:] + tail in self.vocab:
        continue
      pieces = self.pieces(w + tail)
      n = sum(map(len, pieces[:-1]))
      if (n == start and tuple(pieces[:len(parts) - 1]) == tuple(parts[:-1])
          and pieces[-1] not in self.added):
        return True
    return False

  def _merge_piece(self, piece: bytes) -> tuple[bytes, ...]:
    if piece in self.added or (self.ignore_merges and piece in self.vocab):
      return (piece,)
    return self._merge_part(piece)

  def _merge_part(self, part: bytes) -> tuple[bytes, ...]:
    """BPE's merges of a piece, or of the part of one before a token boundary."""
    return self._merge_symbols(part, self.ranks)[0]

  def _merge_symbols(self, part: bytes, ranks) -> tuple[tuple[bytes, ...], tuple | None]:
    """`merge` from the bytes of part, or from its characters that are tokens (`chars`) and
    the bytes of the others."""
    if self.chars is None:
      return merge(part, ranks)
    symbols = []
    for ch in part.decode("utf-8", errors="surrogateescape"):
      b = ch.encode("utf-8", errors="surrogateescape")
      symbols += [b] if b in self.chars else [b[i:i + 1] for i in range(len(b))]
    return merge(part, ranks, symbols)

  def normalize(self, data: bytes) -> bytes:
    """What the tokens of data spell: `prefix`, then data ("▁" a space where `metaspace`);
    nothing for an empty text, as `tokenizers` does."""
    data = bytes(data)
    return self.prefix + (data.replace(_LOWER_BLOCK, b" ") if self.metaspace else data) \
        if data else b""

  def encode(self, data: bytes) -> list[int]:
    """The canonical token ids of data (any bytes), without `bos`."""
    return self.tokens_of(self.normalize(data))

  def tokens_of(self, spelled: bytes) -> list[int]:
    """The ids of the tokens that spell `spelled` (`normalize`d already), from the start of a
    text or from a stable cut (`stable_prefix`)."""
    return [self.ids[token] for piece in self.pieces(spelled) for token in self._merge(piece)]

  def tokens_starting_with(self, prefix: bytes) -> np.ndarray:
    """The ids of the (non-special) tokens whose bytes start with prefix, in byte order."""
    lo = bisect.bisect_left(self._sorted_bytes, prefix)
    stripped = prefix.rstrip(b"\xff")  # the first bytes past all that start with prefix:
    past = stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else None  # its last non-FF up
    hi = bisect.bisect_left(self._sorted_bytes, past) if past else len(self._sorted_bytes)
    return self._sorted_ids[lo:hi]

  def completions(self, cut: bytes) -> list[bytes]:
    """`_completions` of a cut character, preferring in each class a character whose first
    byte after the cut begins no merge's right side (so BPE leaves it apart from the cut)."""
    return _completions(cut, self._free_bytes, self._chars)

  def _partial_kinds(self, p: bytes) -> int:
    """For a token p that is the start of a UTF-8 character, how it may be the first token
    of what it begins (one character of each class completing it, `_completions`, then each
    of the probes `probes` would try): bits 0-2, as the start of a letter, digit or other
    character (an invalid completion makes p bytes of the other kind); for whitespace,
    AS_SPACE_RUN after a probe that is empty or whitespace (the character in a run of it),
    AS_SPACE_ALONE after one that is not (the character a piece of its own, split off any
    run before it)."""
    kinds = 0
    for rest in self.completions(p):
      char = (p + rest).decode("utf-8", errors="surrogateescape")[0]
      space = bool(_ONE_SPACE.fullmatch(char))
      for probe in _PROBES_AWAY_FROM_APOSTROPHES:
        first = self.pieces(p + rest + probe)[0]
        if len(first) < len(p) or self._merge(first)[0] != p:
          continue
        if not space:
          kinds |= 1 << next(k for k, pattern in enumerate(_KIND_PATTERNS[:3])
                             if pattern.match(char))
          break
        kinds |= AS_SPACE_ALONE if _starts_word(probe) else AS_SPACE_RUN
    return kinds

  def context_heads(self, u: bytes) -> dict[int, tuple[tuple[int, ...], int]]:
    """For text u read from a stable cut (`stable_prefix`) and each kind of token that may
    follow it (`token_kinds`): (the tokens of u when such a token follows, and -1 or the last
    of them). -1: a piece starts where u ends, so the token need only be its own bytes'
    tokenization; a token id: u's last piece goes on into the token, which must then follow
    that last token of u as BPE would put it (`bigrams.Bigrams.after`). No run of letters
    (kind 0) where u has an apostrophe in its last three characters (the letters decide
    whether a contraction takes them: `letter_heads`). Where u ends inside a UTF-8
    character, the answers hold for tokens that do not go on with it (they leave its bytes
    no character, as the pattern reads them).

    Why the kind suffices: GPT-2's pattern decides where the piece around u's end begins
    from u and the first character after it (a letter, digit or other character continues a
    run of its class; a space before one joins it; whitespace continues a run of it); a token
    of one kind is one such piece of a single class, which with nothing after it ends where
    the token ends. That continuation (the end of the text) is the one that matters: a
    token of two or more whitespace characters followed by more text is split before its
    last character (then it is no token) or joined with more whitespace, which gives it no
    other tokens before it. (A single whitespace character after whitespace is another case:
    split off from the run, it starts a piece.) `tests/test_byteprobs.py` compares the
    covers with the per-token path's."""
    if not self.use_regex:
      tokens = tuple(self.encode(u))
      return {0: (tokens, tokens[-1] if tokens else -1)}
    text = u.decode("utf-8", errors="surrogateescape")  # a cut character: bytes of no character
    out = {}
    for kind, follower in enumerate(_KIND_EXAMPLES):
      if kind == 0 and "'" in text[-3:]:
        continue  # a contraction begun in u may take the token's first letters: letter_heads
      out[kind] = self._split_before(text, follower)[:2]
    return out

  def letter_heads(self, u: bytes, start: str) -> tuple[tuple[int, ...], int] | None:
    """`context_heads` for a run of letters that begins with `start` (its first three
    letters, or all of it if shorter) after u with an apostrophe in its last three
    characters, where those letters may finish a contraction ("'" + "re"): the tokens of u
    and -1 or the last of them, or None where the token would not be one piece (a
    contraction took some of its letters; one takes at most two)."""
    text = u.decode("utf-8", errors="surrogateescape")
    tokens, last, end = self._split_before(text, start)
    return (tokens, last) if end == len(text) + len(start) else None

  def _split_before(self, text: str, follower: str) -> tuple[tuple[int, ...], int, int]:
    """(the tokens of text followed by follower, -1 or the last of them when the piece
    around text's end begins inside text, where that piece ends in text + follower)."""
    pieces = [m.span() for m in GPT2_PATTERN.finditer(text + follower)]
    start, end = next((a, b) for a, b in pieces if a <= len(text) < b)
    tokens = tuple(self.vocab[t] for a, b in pieces if b <= start
                   for t in self._merge(text[a:b].encode("utf-8", errors="surrogateescape")))
    if start == len(text):
      return tokens, -1, end
    joined = tuple(self.vocab[t] for t in self._merge(
        text[start:].encode("utf-8", errors="surrogateescape")))
    return tokens + joined, joined[-1], end

  def decode(self, ids: Sequence[int]) -> bytes:
    """The bytes ids spell, less `prefix` where they start with it."""
    data = b"".join(self.token_bytes[int(i)] for i in ids)
    return data[len(self.prefix):] if data.startswith(self.prefix) else data

  def is_valid(self, ids: Sequence[int]) -> bool:
    """Whether ids is the canonical tokenization of the bytes it spells."""
    text = self.decode(ids)
    return (self.normalize(text) == b"".join(self.token_bytes[int(i)] for i in ids)
            and self.encode(text) == [int(i) for i in ids])


def merge(piece: bytes, ranks: dict[tuple[bytes, bytes], int], symbols=None
          ) -> tuple[tuple[bytes, ...], tuple[bytes, bytes] | None]:
  """(tokens, last pair merged): BPE on one piece, starting from single bytes (or the given
  symbols that spell it), merging the adjacent pair whose merge was learned first (the
  leftmost where it occurs several times) until no learned pair is left, as `tokenizers`
  does."""
  parts = list(symbols) if symbols is not None else [piece[i:i + 1] for i in range(len(piece))]
  last = None
  while len(parts) > 1:
    rank, i = min((ranks.get((a, b), len(ranks)), i)
                  for i, (a, b) in enumerate(zip(parts, parts[1:])))
    if rank == len(ranks):
      break
    last = (parts[i], parts[i + 1])
    parts[i:i + 2] = [parts[i] + parts[i + 1]]
  return tuple(parts), last


_SPACE_RUN = regex.compile(r"\s+")
_LOWER_BLOCK = "\u2581".encode()  # SentencePiece's "▁", its space

# The kinds of token `BPE.context_heads` answers for: a run of letters, of digits or of other
# characters, each with or without a space before it, a run of two or more whitespace
# characters, and a contraction; and an example of each, before which GPT-2's pattern splits a
# text as before any token of the kind (whitespace at the end of the text: a run of it is one
# piece). An apostrophe in a run of other characters is part of the run: a contraction is
# tried only where a piece starts, and in the run the character after it is no letter. An
# apostrophe alone may begin a contraction with what follows, but at the end of the text it
# is a piece (or ends the run of other characters before it), which is all a cover needs.
_KIND_PATTERNS = [regex.compile(p) for p in (
    r"\p{L}+", r"\p{N}+", r"[^\s\p{L}\p{N}]+", r" \p{L}+", r" \p{N}+", r" [^\s\p{L}\p{N}]+",
    r"\s\s+", r"'(?:s|t|re|ve|m|ll|d)")]
_KIND_EXAMPLES = ("a", "1", "!", " a", " 1", " !", "\n", "'s")
WHITESPACE = 6  # the kind of a run of two or more whitespace characters
CONTRACTION = 7  # "'s", "'t", "'re", "'ve", "'m", "'ll", "'d": a piece wherever a piece starts
PARTIAL = len(_KIND_PATTERNS)  # the kind of a token that is the start of a UTF-8 character
ONE_SPACE = PARTIAL + 1  # the kind of a token of one whitespace character
AS_SPACE_RUN, AS_SPACE_ALONE = 1 << 3, 1 << 4  # `BPE._partial_kinds`' bits for whitespace
_ONE_SPACE = regex.compile(r"\s")


def _starts_word(probe: bytes) -> bool:
  """Whether the probe begins with a character that is not whitespace."""
  return bool(probe) and not _ONE_SPACE.match(probe.decode("utf-8", errors="surrogateescape"))


def _kind(token: bytes) -> int:
  """The token's kind: the index of the first of _KIND_PATTERNS it matches whole, or -1 (no
  pattern takes it whole, it ends in a cut character, or it is special)."""
  if not token or cut_character(token):
    return -1
  text = token.decode("utf-8", errors="surrogateescape")
  return next((k for k, p in enumerate(_KIND_PATTERNS) if p.fullmatch(text)), -1)

# Characters after a text that stand for every class the GPT-2 pattern tells apart: end of text,
# the space that joins a word, other whitespace, letters (with the contraction endings), digits,
# other symbols, and pairs of them (two characters decide every look-ahead of the pattern).
_PROBES = [p.encode("utf-8") for p in [
    "", " ", "  ", " a", "  a", "\n", "\n\n", "\u00a0", "a", "a ", "1", "!", "'",
    "A", "s", "t", "m", "d", "re", "ve", "ll", "e", "l", "\u00e9", "\u65e5"]]
_PROBES_AWAY_FROM_APOSTROPHES = _PROBES[:13]


def cut_character(y: bytes) -> bytes:
  """The bytes of a UTF-8 character that y ends inside of (b"" if none)."""
  for back in (1, 2, 3):
    if len(y) < back:
      break
    lead = y[-back]
    width = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if lead >= 0xF0 else 0
    if width:
      return y[-back:] if width > back else b""
    if lead < 0x80 or lead >= 0xC0:
      break
  return b""


_COMPLETIONS: dict[bytes, list[bytes]] = {}


def _completions(cut: bytes, free: frozenset[int] = frozenset(), avoid=frozenset()
                 ) -> list[bytes]:
  """The rest of a cut character, one completion per class of character it can become (and
  a byte that completes nothing, which leaves it invalid): the first in code point order
  whose first byte is in `free` (and whose bytes are not in `avoid`) where one is, else the
  first. BPE merges the bytes of some characters and not others'; a first byte that begins
  no merge's right side is never merged with the cut bytes before it, so the character
  leaves a token boundary where it begins whenever one of its class can (`BPE.completions`;
  where merges start from characters, one that is no token is spelled by its bytes)."""
  key = cut, free, avoid
  if key not in _COMPLETIONS:
    width = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}[cut[0] >> 4]
    missing = width - len(cut)
    # The rests in increasing order are the code points base + n, n < 64 ** missing; those
    # UTF-8 rejects (overlong, surrogates, past U+10FFFF, a lead byte it never uses) are
    # skipped, as a failed decode would skip them, without building and decoding each one.
    base = cut[0] & (0x7F >> width)
    for b in cut[1:]:
      base = base << 6 | b & 0x3F
    base <<= 6 * missing
    lowest = {2: 0x80, 3: 0x800, 4: 0x10000}[width]
    valid = all(0x80 <= b < 0xC0 for b in cut[1:]) and 0xC2 <= cut[0] <= 0xF4
    seen, seen_free = {}, {}
    for n in range(64 ** missing) if valid else ():
      cp = base + n
      if cp < lowest or 0xD800 <= cp < 0xE000 or cp > 0x10FFFF:
        continue
      ch = chr(cp)
      cls = splits.character_class(ch)
      rest = ch.encode("utf-8")[len(cut):]
      seen.setdefault(cls, rest)
      if rest[0] in free and cut + rest not in avoid:
        seen_free.setdefault(cls, rest)
    _COMPLETIONS[key] = [seen_free.get(cls, rest) for cls, rest in seen.items()] + [b"!"]
  return _COMPLETIONS[key]
