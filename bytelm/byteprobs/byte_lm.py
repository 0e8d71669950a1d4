"""A tokenized LM read as a byte LM, exactly (Phan et al. 2024, the Byte-Token Representation
Lemma).

A tokenized LM gives probabilities to token sequences; its tokenizer maps each text to one of
them (the canonical tokenization, `tokenization.BPE`). If the LM puts its mass on canonical
sequences only, the probability that the text starts with the bytes x is

    P(x...) = sum over cover encodings (h, v) of x of P_tok(h, v),

where h + [v] starts the canonical tokenization of some text that begins with x, h spells a
start of x and the last token v, alone, reaches to or past the end of x. v starts at one of the
max_token_bytes positions before the end and begins with the rest of x; the heads h are the
tokens the tokenizer gives that start of x *inside a longer text*. Without a pre-tokenization
regex that is just the tokenization of that start. With GPT-2's regex it can differ: "a  " alone
is [a]["  "], but in "a  1" the run leaves its last space to what follows, [a][" "][" "]...; so
the heads are read off the tokenization of the start and v followed by each of a set of probe
continuations (`BPE.probes`). Tests compare every prefix with a brute-force sum over all texts,
with and without the regex.

Then P(b | x) = P(x b...) / P(x...), computed in one pass: a cover of x whose last token reaches
past x puts its mass on that token's next byte, and the end of text after x is
P(enc(x), eot).

Cost. Text before `BPE.stable_prefix` tokenizes the same whatever follows, so only the text
from there on (u) matters. The candidate last tokens at a start are a range of the vocabulary
sorted by bytes, and are checked against u together, not one by one: which kind of token
follows decides how the pre-tokenization splits u (`BPE.context_heads`, one regex run per
kind; for a Split pattern or SentencePiece, `BPE.signature_heads`, one per signature), and
then BPE's own pairs decide the rest (`bigrams.Bigrams`: whether v may follow u's last token,
for every v in a few array operations). The few tokens whose own bytes matter more than their
kind (those that may finish a UTF-8 character cut at u's end) go one by one through the
probes (`_local_heads`, memoised), and so does every candidate of a tokenizer the bigrams do
not describe (`BPE.checks_together`).

Texts are what the tokens spell after the tokenizer's `prefix` (a SentencePiece dummy space),
which every prefix asked for gets first (`_spelled`). The token LM is asked, per byte of a text read
left to right, for the few new heads (about one), in one batch; its rows are cached per
prefix. Measured on the eval's 2048-token BPE (BENCHMARKS.md): 60 ms of tokenization a byte
one by one, under 1 ms together. Every byte of a text at once (`next_byte_logprobs_along`)
checks each start once against the whole vocabulary and spreads each cover's mass over the
prefixes it covers (`_along`): about 0.2 ms a byte.

token_lm: a callable taking a list of token-id prefixes (tuples) and returning their
next-token log-probabilities, float [len(prefixes), V]. Prefixes of one call share most of
their tokens (a head and its own prefixes, the heads of neighbouring bytes), so an
implementation can serve them from one pass over their tree (`adapters.decoder_token_lm`
does).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from bytelm.byteprobs import mixture
from bytelm.byteprobs.tokenization import (AS_SPACE_ALONE, AS_SPACE_RUN, BPE, CONTRACTION,
                                           ONE_SPACE, PARTIAL, WHITESPACE, cut_character)
from bytelm.text.tokenizer import as_bytes

END = 256  # index of the end of text in next_byte_logprobs
FOLLOWERS_BYTES = 1 << 26  # what `ByteLM._followers` keeps (64 MB)
SPREAD_BLOCK = 1 << 22  # (start, token) pairs `ByteLM._spread` sums at once

TokenLM = Callable[[list[tuple[int, ...]]], np.ndarray]


class ByteLM:
  """A tokenized LM over bytes: next_byte_logprobs, prefix_logprob, logprob, sample, complete,
  bits_per_byte. Texts and prefixes are str (UTF-8 encoded) or bytes (any bytes, UTF-8 or not:
  `BPE` tokenizes them all); what it generates is bytes.

  context: token ids every sequence is conditioned on (e.g. a fill-in-the-middle prompt);
  probabilities are of what follows them.
  """

  def __init__(self, token_lm: TokenLM, bpe: BPE, eot_id: int, context: Sequence[int] = (),
               fim_ids: Sequence[int] | None = None):
    """fim_ids: (prefix, suffix, middle) sentinel ids of a model trained for fill in the middle
    in prefix-suffix-middle order, if it was; `complete` needs them for a suffix."""
    self.token_lm, self.bpe, self.eot_id = token_lm, bpe, int(eot_id)
    self.context = tuple(int(i) for i in context)
    self.fim_ids = None if fim_ids is None else tuple(int(i) for i in fim_ids)
    self._every = bpe.tokens_starting_with(b"")  # every token, the candidates at a start
    self._groups: dict[tuple[bool, bool], list] = {}  # `_kind_groups` of _every
    self.calls = 0  # token prefixes scored by token_lm
    self.batches = 0  # times token_lm was called
    self.clear(followers=True)

  def clear(self, followers: bool = False) -> None:
    """Forget the cached LM rows and tokenizations (they grow with the text read); with
    followers, also which tokens may follow the text after a stable cut (`_followers`, of the
    tokenizer alone, bounded, and kept otherwise: the bulk path reads the same partial words
    again in every batch)."""
    if followers:
      self._after: collections.OrderedDict[bytes, dict] = collections.OrderedDict()
      self._after_bytes = 0
    self._rows: dict[tuple[int, ...], np.ndarray] = {}
    self._logp: dict[tuple[int, ...], float] = {(): 0.0}
    self._stable: dict[bytes, tuple[int, tuple[int, ...]]] = {}
    self._local: dict[tuple[bytes, int], tuple[tuple[int, ...], ...]] = {}
    self._tails: dict[bytes, frozenset[tuple[int, ...]]] = {}
    self._contexts: dict[bytes, dict] = {}

  # ---- token side -------------------------------------------------------------------------

  def _score(self, heads: Sequence[tuple[int, ...]]) -> None:
    """Make rows and log-probabilities of heads (and of their own prefixes) available, asking
    token_lm once for everything not cached."""
    todo = {}
    for h in heads:
      todo[h] = None
      k = len(h)
      while h[:k] not in self._logp:  # the log-probability needs every row before it
        k -= 1
        if h[:k] in todo:  # asked for already, with the rows before it (not again: a long
          break            # text's heads would each walk their whole path, quadratic)
        todo[h[:k]] = None
    todo = [p for p in todo if p not in self._rows]
    if todo:
      out = np.asarray(self.token_lm([self.context + p for p in todo]), np.float64)
      self.calls += len(todo)
      self.batches += 1
      for p, row in zip(todo, out):
        self._rows[p] = row
    for h in heads:
      k = len(h)
      while h[:k] not in self._logp:
        k -= 1
      for i in range(k, len(h)):
        self._logp[h[:i + 1]] = self._logp[h[:i]] + self._rows[h[:i]][h[i]]

  def sequence_logprob(self, ids: Sequence[int]) -> float:
    """log P(the token sequence ids | context), from cached LM rows."""
    ids = tuple(int(i) for i in ids)
    self._score([ids])
    return self._logp[ids]

  def next_token_logprobs(self, ids: Sequence[int]) -> np.ndarray:
    """log P(next token | context + ids), float64 [V], cached."""
    ids = tuple(int(i) for i in ids)
    self._score([ids])
    return self._rows[ids]

  # ---- byte side: cover encodings ------------------------------------------------------------

  def _stable_ids(self, prefix: bytes) -> tuple[int, tuple[int, ...]]:
    """`BPE.stable_prefix` of prefix, memoised. Where the prefix one byte shorter has been
    cut already, only the text after that cut is read again: the pieces before a stable cut
    are the same whatever follows, and those after it depend on the text after it alone (the
    pattern looks behind nothing), so reading a text along costs no pass over it per byte."""
    if prefix not in self._stable:
      s0, ids0 = self._stable.get(prefix[:-1], (0, ()))
      s, ids = self.bpe.stable_prefix(prefix[s0:])
      self._stable[prefix] = s0 + s, ids0 + tuple(ids)
    return self._stable[prefix]

  def _tail_tokens(self, w: bytes) -> frozenset[tuple[int, ...]]:
    if w not in self._tails:
      self._tails[w] = self.bpe.prefix_tokenizations(w)
    return self._tails[w]

  def _local_heads(self, u: bytes, v: int) -> tuple[tuple[int, ...], ...]:
    """The heads h spelling u such that h + [v] starts the tokenization of some text that
    begins with u + token v (u starts at a stable cut)."""
    key = (u, v)
    if key not in self._local:
      y = u + self.bpe.token_bytes[v]
      s, before = self.bpe.stable_prefix(y)
      before = tuple(before)
      # All of y may be stable (it ends with an added token): v is then its last token.
      full = [before + t for t in (self._tail_tokens(y[s:]) if s < len(y) else [()])]
      self._local[key] = tuple(f[:-1] for f in full if f and f[-1] == v)
    return self._local[key]

  def _context(self, u: bytes):
    """`BPE.context_heads` of u, memoised; None (every candidate one by one) where this
    tokenizer's candidates cannot be checked a kind at a time (`BPE.checks_together`)."""
    if u not in self._contexts:
      self._contexts[u] = self.bpe.context_heads(u) if self.bpe.checks_together else None
    return self._contexts[u]

  def _covers(self, x: bytes, past_end: bool
              ) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]:
    """head -> (ids v, the byte of each v at len(x) or -1) over cover encodings (h, v) of x
    whose last token v starts inside x (and at its end, if past_end) and reaches past its end
    (if past_end) or to or past it: the candidates at each start (the tokens beginning with
    the rest of x there, a range of the vocabulary) through `_heads_after`."""
    m = self.bpe.max_token_bytes
    first = max(0, len(x) + 1 - m) if past_end else max(0, len(x) - m)
    found: dict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray]]] = {}
    for pos in range(first, len(x) + 1 if past_end else len(x)):
      tail = x[pos:]
      ids = self.bpe.tokens_starting_with(tail)
      longer = self.bpe.token_lengths[ids] > len(tail)
      if past_end:
        ids, longer = ids[longer], longer[longer]
      if not len(ids):
        continue
      nxt = np.where(longer, self.bpe.byte_table[ids, min(len(tail), m - 1)].astype(np.int64), -1)
      s, base = self._stable_ids(x[:pos])
      for head, ok in self._heads_after(x[s:pos], ids):
        found.setdefault(base + head, []).append((ids[ok], nxt[ok]))
    covers = {}
    for h, parts in found.items():
      if len(parts) == 1:
        covers[h] = parts[0]
      else:  # the start of a character may reach one head two ways: each token once
        vs, first = np.unique(np.concatenate([v for v, _ in parts]), return_index=True)
        covers[h] = vs, np.concatenate([b for _, b in parts])[first]
    return covers

  def _heads_after(self, u: bytes, ids: np.ndarray
                   ) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """[(head h, where in ids the tokens that may follow it are)]: after the tokens before a
    stable cut, h + [v] starts the tokenization of some text that begins with u + token v
    (u: the text from the cut), for the candidates v in ids (a head may come twice, a token
    may follow several heads). The candidates are checked together, by kind (`_checked`);
    for a Split's pattern by signature (`_by_signature`); those that may finish a UTF-8
    character cut at u's end one by one (`_local_heads`)."""
    if self.bpe.signatures is not None and self.bpe.checks_together:  # a Split's pattern
      checked, one = self._by_signature(u, ids)
      return ([(head, np.flatnonzero(ok)) for head, ok in checked]
              + self._one_by_one(u, ids, np.flatnonzero(one)))
    context = self._context(u)
    if context is None:
      return self._one_by_one(u, ids, np.arange(len(ids)))
    after_apostrophe = 0 not in context  # (letters there may finish a contraction)
    out = []
    for kind, mine, pick in self._kind_groups(ids, after_apostrophe, bool(cut_character(u))):
      if kind < 0:
        out += self._one_by_one(u, ids, mine)
        continue
      checked = (self._checked(context, kind, pick) if kind != 0 or 0 in context
                 else self._checked_letters(u, pick))
      out += [(head, mine[ok]) for head, ok in checked]
    return out

  def _followers(self, u: bytes) -> dict[tuple[int, ...], np.ndarray]:
    """head -> which tokens may follow it, bool [V] (`_heads_after` over the whole
    vocabulary; heads no token may follow left out), memoised: the bulk path asks at every
    start, and the same u (" ", " th", ",") recurs. The memo keeps the most recently used,
    up to FOLLOWERS_BYTES (a head costs V bytes: 128 KB for 128,000 tokens)."""
    if u in self._after:
      self._after.move_to_end(u)
      return self._after[u]
    heads: dict[tuple[int, ...], np.ndarray] = {}
    for head, which in self._heads_after(u, self._every):
      if head not in heads:
        heads[head] = np.zeros(len(self.bpe.token_bytes), bool)
      heads[head][self._every[which]] = True  # (a token two ways to one head counts once)
    found = {h: mask for h, mask in heads.items() if mask.any()}
    self._after[u] = found
    self._after_bytes += sum(mask.nbytes for mask in found.values())
    while self._after_bytes > FOLLOWERS_BYTES and len(self._after) > 1:
      _, dropped = self._after.popitem(last=False)
      self._after_bytes -= sum(mask.nbytes for mask in dropped.values())
    return found

  def _kind_groups(self, ids: np.ndarray, apostrophe: bool, cut: bool
                   ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """[(kind, where in ids, the ids there)] by `BPE.token_kinds`, -1 for one by one: after
    an apostrophe (letters may finish a contraction) the start of a character, after a cut
    character the tokens that may finish it. Memoised for the whole vocabulary, which the
    bulk path checks at every start."""
    key = (apostrophe, cut) if ids is self._every else None
    if key in self._groups:
      return self._groups[key]
    kinds = self.bpe.token_kinds[ids]
    if apostrophe:
      kinds = np.where(kinds == PARTIAL, -1, kinds)
    if cut:
      kinds = np.where((self.bpe.byte_table[ids, 0] >> 6) == 2, -1, kinds)
    groups = [(kind, mine, ids[mine]) for kind in np.unique(kinds).tolist()
              for mine in [np.flatnonzero(kinds == kind)]]
    if key is not None:
      self._groups[key] = groups
    return groups

  def _one_by_one(self, u: bytes, ids: np.ndarray, which: np.ndarray
                  ) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """[(head, [i])] for the candidates ids[which], each through the probes on its own
    (`_local_heads`)."""
    return [(h, np.asarray([i])) for i, v in zip(which.tolist(), ids[which].tolist())
            for h in self._local_heads(u, v)]

  def _by_signature(self, u: bytes, ids: np.ndarray):
    """For a Split pre-tokenizer: ([(head, which of ids may follow it)], which go one by
    one), the candidates grouped by signature (`BPE.signature_heads`, memoised per u). A
    token that ends inside a UTF-8 character stands also for each class of character that
    may complete it, with every head of that class's pieces: a completion whose first byte
    BPE never merges with what is before it leaves a token boundary after the token."""
    sigs = self.bpe.signatures
    bigrams = self.bpe.bigrams
    # After an apostrophe a token's first letters may finish a contraction (whose letters
    # are ASCII: the last two bytes are the last two characters where it matters).
    after_apostrophe = "'" in u[-2:].decode("utf-8", "surrogateescape")
    sig, completed, free = ((sigs.exact, sigs.completed_exact, sigs.free_exact)
                            if after_apostrophe else
                            (sigs.plain, sigs.completed_plain, sigs.free_plain))
    sig, completed, free = sig[ids], completed[ids], free[ids]
    one = sig < 0
    if cut_character(u):  # tokens that may finish u's last character go one by one
      one |= (self.bpe.byte_table[ids, 0] >> 6) == 2
    one |= np.any((completed >= 0) & ~free, axis=1)  # no boundary sure inside the character
    out = []

    def heads(k):
      if (u, k) not in self._contexts:
        self._contexts[(u, k)] = self.bpe.signature_heads(u, sigs.texts[k])
      return self._contexts[(u, k)]

    def masks(found, mine):
      for (head, last), part in found.items():
        if last < 0:  # the token starts a piece (ends it: with ignore_merges, any token)
          out.append((head, mine if self.bpe.ignore_merges else mine & bigrams.alone[ids]))
          continue
        ok = mine & bigrams.after(last)[ids]
        if self.bpe.ignore_merges:  # u's part and the token may be one token: one by one
          at = np.flatnonzero(ok)
          joined = np.asarray([part + self.bpe.token_bytes[v] in self.bpe.vocab
                               for v in ids[at].tolist()], bool)
          ok[at[joined]], one[at[joined]] = False, True
        out.append((head, ok))

    for k in np.unique(sig[~one]).tolist():
      mine = (sig == k) & ~one
      ends, goes_on = heads(k)
      if not goes_on.keys() <= ends.keys():
        one |= mine  # a head only a longer piece gives: whether it holds depends on more
        continue
      masks(ends, mine)
    for c in range(completed.shape[1]):
      for k in np.unique(completed[~one, c]).tolist():
        if k >= 0:
          ends, goes_on = heads(k)
          masks(ends | goes_on, (completed[:, c] == k) & ~one)
    return out, one

  def _checked(self, context, kind: int, ids: np.ndarray):
    """[(head, which of ids may follow it)] for candidate tokens of one kind after the text
    `context` (`BPE.context_heads`) describes: the head's last token and the next in one
    piece (`Bigrams.after`), or the token a piece of its own (`Bigrams.alone`)."""
    bigrams = self.bpe.bigrams

    def follow(last):
      return (bigrams.after(last) if last >= 0 else bigrams.alone)[ids]

    if kind == CONTRACTION:  # a piece of its own where a piece starts, else none
      head, last = context[CONTRACTION]
      return [(head, bigrams.alone[ids])] if last < 0 else []
    if kind == ONE_SPACE:  # in a run of whitespace, or split off it (the same tokens of u)
      head, last = context[WHITESPACE]
      return [(head, follow(last) | (self.bpe.split_ok[ids] if last >= 0 else False))]
    if kind != PARTIAL:
      head, last = context[kind]
      return [(head, follow(last))]
    # The start of a character stands for each kind of character it may begin.
    bits, out = self.bpe.partial_kinds[ids], []
    for as_kind in range(3):
      head, last = context[as_kind]
      out.append((head, follow(last) & (bits >> as_kind & 1 == 1)))
    head, last = context[WHITESPACE]
    run, alone = bits & AS_SPACE_RUN != 0, bits & AS_SPACE_ALONE != 0
    out.append((head, follow(last) & (run | alone) if last < 0 else
                (follow(last) & run) | alone))
    return out

  def _checked_letters(self, u: bytes, ids: np.ndarray):
    """`_checked` for runs of letters after u with an apostrophe near its end, grouped by
    their first three letters (`BPE.letter_heads`)."""
    starts, which = np.unique([self.bpe.token_bytes[v].decode("utf-8")[:3]
                               for v in ids.tolist()], return_inverse=True)
    out = []
    for k, start in enumerate(starts.tolist()):
      found = self.bpe.letter_heads(u, start)
      if found is not None:
        head, last = found
        follow = self.bpe.bigrams.after(last) if last >= 0 else self.bpe.bigrams.alone
        out.append((head, (which == k) & follow[ids]))
    return out

  def _spelled(self, x: bytes) -> bytes:
    """What the tokens of a text starting with x spell up to its end: x after the
    tokenizer's `prefix` (a SentencePiece dummy space)."""
    if self.bpe.metaspace and "\u2581".encode() in x:
      raise ValueError(f"{x[-20:]!r} holds '\u2581', which this tokenizer reads as a space: no "
                       "token sequence spells it, so no text with it has a probability")
    return self.bpe.prefix + x

  def _canonical(self, x: bytes) -> tuple[int, ...]:
    """The tokens of the text x: those of its stable part (`_stable_ids`, cached along a
    text), then of the rest, so that reading a text along does not tokenize it whole at
    every byte (one piece, as SentencePiece files make it, costs its length squared)."""
    if not x:
      return tuple(self.bpe.encode(x))
    spelled = self._spelled(x)
    s, base = self._stable_ids(spelled)
    return base + tuple(self.bpe.tokens_of(spelled[s:]))

  def prefix_logprob(self, x: str | bytes) -> float:
    """log P(the text starts with x): the sum over its cover encodings."""
    x = as_bytes(x, "prefix")
    if not x:
      return 0.0
    covers = self._covers(self._spelled(x), past_end=False)
    self._score(list(covers))
    terms = [self._logp[h] + self._rows[h][vs] for h, (vs, _) in covers.items()]
    return _logsumexp(np.concatenate(terms)) if terms else -math.inf

  def logprob(self, text: str | bytes) -> float:
    """log P(the text is exactly `text`): its canonical tokenization, then the end of text."""
    return self.sequence_logprob(self.bpe.encode(as_bytes(text)) + [self.eot_id])

  def next_byte_logprobs(self, prefix: str | bytes, normalize: bool = True) -> np.ndarray:
    """log P(next byte | prefix) for the 256 bytes, and the end of text at index END (257)."""
    return self.next_byte_logprobs_batch([as_bytes(prefix, "prefix")], normalize)[0]

  def next_byte_logprobs_batch(self, prefixes: Sequence[str | bytes],
                               normalize: bool = True) -> np.ndarray:
    """next_byte_logprobs of many prefixes, float64 [len(prefixes), 257], with one token_lm
    call for all their cover encodings (the heads of every prefix in one batch).

    normalize: divide by the mass of the next bytes (a distribution, the default), or by
    P(prefix...) as the lemma writes it. They differ only by the mass a real model puts on
    token sequences the tokenizer never makes, which the lemma drops: unnormalised, the
    chain of next-byte probabilities of a text is exactly the token way's P(canonical tokens,
    eot); normalised, that leaked mass goes back to the valid continuations.
    """
    if isinstance(prefixes, (str, bytes, bytearray)):
      raise TypeError("pass a list of prefixes; wrap a single one: [prefix]")
    prefixes = [as_bytes(x, f"prefix {i}") for i, x in enumerate(prefixes)]
    covers = [self._covers(self._spelled(x), past_end=True) for x in prefixes]
    ends = [self._canonical(x) for x in prefixes]
    self._score([h for c in covers for h in c] + list(ends))
    out = np.empty((len(prefixes), 257))
    for row, x, c, end in zip(out, prefixes, covers, ends):
      # Mass per next byte; log-probabilities are shifted by the largest so long prefixes,
      # whose probabilities underflow, keep their ratios.
      logps = [self._logp[end] + self._rows[end][self.eot_id]]
      nexts = [END]
      for h, (vs, bs) in c.items():
        logps.extend(self._logp[h] + self._rows[h][vs])
        nexts.extend(bs)
      logps = np.asarray(logps)
      top = logps.max()
      if not np.isfinite(top):
        raise ValueError(f"the model gives the prefix {x[-20:]!r} no probability")
      mass = np.bincount(np.asarray(nexts), np.exp(logps - top), minlength=257)
      with np.errstate(divide="ignore"):
        row[:] = np.log(mass) - (np.log(mass.sum()) if normalize
                                 else self.prefix_logprob(x) - top)
    return out

  def next_byte_logprobs_along(self, text: str | bytes | Sequence[str | bytes],
                               normalize: bool = True, top_k: int | None = None):
    """[len(text) + 1, 257]: row t is next_byte_logprobs(text[:t]). Given a list of texts,
    [len(texts), T + 1, 257] for the longest T, rows past a text's end NaN. This is the bulk
    path, e.g. a teacher's distribution at every byte of every training row: the token model
    is asked once for every head of every text (a BPE decoder reads them as trees of token
    prefixes, `adapters.balanced_trees`), and each start in a text is checked once for every
    token that may begin there (`_along`), not once per prefix it covers. A list is read once,
    so it leaves the caches empty (`clear`) rather than holding a model row per byte read (16
    KB each for 2,048 tokens, 1 MB for 128,000).

    top_k: instead of whole rows (2 KB a byte), a `TopBytes` of each row's k likeliest next
    bytes (END for the end of text) and the log of the mass left to the others, in float32
    (about 6k bytes a byte); past a text's end, NaN and ids -1. That is what is returned;
    while it runs, the call holds the model's rows for every text (a row a byte)."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                              or not 1 <= top_k <= 257):
      raise ValueError(f"top_k must be an int between 1 and 257, got {top_k!r}")
    keep = (lambda rows: rows) if top_k is None else (lambda rows: _top_bytes(rows, top_k))
    if isinstance(text, (str, bytes, bytearray)):
      return self._along([as_bytes(text)], normalize, keep)[0]
    texts = [as_bytes(t, f"text {i}") for i, t in enumerate(text)]
    if not texts:
      raise ValueError("next_byte_logprobs_along got an empty list of texts")
    try:
      rows = self._along(texts, normalize, keep)
    finally:
      self.clear()
    width = (len(texts), max(map(len, texts)) + 1)
    if top_k is None:
      out = np.full(width + (257,), np.nan)
      for i, r in enumerate(rows):
        out[i, :len(r)] = r
      return out
    out = TopBytes(np.full(width + (top_k,), np.nan, np.float32),
                   np.full(width + (top_k,), -1, np.int16), np.full(width, np.nan, np.float32))
    for i, r in enumerate(rows):
      for into, got in zip(out, r):
        into[i, :len(got)] = got
    return out

  def _along(self, texts: list[bytes], normalize: bool, keep=lambda rows: rows) -> list:
    """next_byte_logprobs of every prefix of each text, [len(text) + 1, 257] each, or what
    keep makes of them (each text's rows as soon as they are summed: a top-k keeps no text's
    whole rows longer than it takes to pick).

    Whether (h, v) is a cover depends on where v starts (pos), not on the prefix: it covers
    the prefix that ends at pos (v's first byte next), and the one that ends at pos + j
    (v's byte j next) for each 0 < j < len(v) such that v's first j bytes are the text's. So
    each start is checked once against the whole vocabulary (`_followers`), and each valid
    (h, v) adds its mass to those prefixes' next bytes; and, for the unnormalised rows'
    P(prefix...), to the prefix at v's end where all of v is the text's."""
    plans, wanted = [], []
    for text in texts:
      x = self._spelled(text)
      starts = []  # (the tokens before the stable cut, the text after it) at each start
      for pos in range(len(x) + 1):
        s, base = self._stable_ids(x[:pos])
        starts.append((base, x[s:pos]))
        wanted.extend(base + h for h in self._followers(x[s:pos]))
      ends = [self._canonical(text[:k]) for k in range(len(text) + 1)]
      wanted.extend(ends)
      plans.append((x, len(x) - len(text), starts, ends))
    self._score(wanted)
    plans.reverse()
    out = []
    while plans:  # a text's plan dropped as soon as its rows are summed
      out.append(keep(self._rows_along(*plans.pop(), normalize)))
    return out

  def _rows_along(self, x: bytes, off: int, starts: list[tuple[tuple[int, ...], bytes]],
                  ends: list[tuple[int, ...]], normalize: bool) -> np.ndarray:
    """`_along`'s rows for one text: x is it spelled (the text itself starts at off), starts
    the tokens before the stable cut and the text after it at each start of x (`_followers`
    gives the valid heads and tokens), ends the canonical tokens of each prefix of the text.
    Masses are summed shifted by each prefix's largest term, so long texts, whose
    probabilities underflow, keep their ratios."""
    n = len(x) + 1
    text = np.concatenate([np.frombuffer(x, np.uint8), np.full(self.bpe.max_token_bytes, -1)])
    first_L = np.full((n, 256), -np.inf)  # log-mass at each start on the first byte of v
    spread, block, held = [_spread_none()], [], 0
    for p, (base, u) in enumerate(starts):  # a block of starts at a time: each holds about
      for h, mask in self._followers(u).items():  # the whole vocabulary
        block.append((p, base + h, np.flatnonzero(mask)))
        held += len(block[-1][2])
      if block and (held >= SPREAD_BLOCK or p == len(starts) - 1):
        spread.append(self._spread(text, block, first_L))
        block, held = [], 0
    at, byte, logp, end_at, end_logp = (np.concatenate(a) for a in zip(*spread))
    eot = np.full(n, -np.inf)
    eot[off:] = [self._logp[e] + self._rows[e][self.eot_id] for e in ends]
    top = np.maximum(first_L.max(axis=1), eot)
    np.maximum.at(top, at, logp)
    if not np.isfinite(top[off:]).all():
      k = int(np.flatnonzero(~np.isfinite(top[off:]))[0])
      raise ValueError(f"the model gives the prefix {x[off:off + k][-20:]!r} no probability")
    top[:off] = np.where(np.isfinite(top[:off]), top[:off], 0.0)  # (rows not returned)
    mass = np.concatenate([np.exp(first_L - top[:, None]), np.exp(eot - top)[:, None]], axis=1)
    np.add.at(mass, (at, byte), np.exp(logp - top[at]))
    with np.errstate(divide="ignore"):
      if normalize:
        return np.log(mass[off:]) - np.log(mass[off:].sum(axis=1, keepdims=True))
      # P(prefix...), which the lemma divides by: its covers reach past its end (their bytes
      # at j >= 1 there) or to it.
      top_reach = top.copy()
      np.maximum.at(top_reach, end_at, end_logp)
      reach = np.zeros(n)
      np.add.at(reach, at, np.exp(logp - top_reach[at]))
      np.add.at(reach, end_at, np.exp(end_logp - top_reach[end_at]))
      prefix_logp = (np.log(reach) + top_reach)[off:]
      prefix_logp[0] = 0.0  # the empty text: every text starts with it
      return np.log(mass[off:]) + top[off:, None] - prefix_logp[:, None]

  def _spread(self, text: np.ndarray, block: list, first_L: np.ndarray):
    """The masses of a block of (start, head, the tokens that may follow it) for
    `_rows_along`: into first_L, the log-mass at each start on each token's first byte;
    returned, (at, byte, logp) for the prefixes the tokens reach past (their byte there) and
    (end_at, end_logp) for those they reach exactly. text: the spelled text's bytes, then -1."""
    bpe = self.bpe
    vs = np.concatenate([v for _, _, v in block])
    if not len(vs):
      return _spread_none()
    lp = np.concatenate([self._logp[h] + self._rows[h][v] for _, h, v in block])
    pos = np.repeat([p for p, _, _ in block], [len(v) for _, _, v in block])
    first = bpe.byte_table[vs, 0].astype(np.int64)
    new = np.flatnonzero(np.diff(pos, prepend=-1))  # pos is sorted: where each start begins
    p0, p1 = pos[0], pos[-1] + 1
    top = np.zeros(p1 - p0)
    top[pos[new] - p0] = np.maximum.reduceat(lp, new)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
      first_L[p0:p1] = top[:, None] + np.log(np.bincount(
          (pos - p0) * 256 + first, np.exp(lp - top[pos - p0]),
          minlength=(p1 - p0) * 256).reshape(p1 - p0, 256))
    # Byte by byte, the tokens that still agree with the text: a token agreeing on its first
    # j bytes covers the prefix that ends j bytes after its start (with its byte j next), or,
    # all of it agreeing, reaches exactly to that prefix's end.
    at, byte, logp, end_at, end_logp = [], [], [], [], []
    alive = np.flatnonzero(first == text[pos])
    for j in range(1, bpe.max_token_bytes + 1):
      done = bpe.token_lengths[vs[alive]] == j
      end_at.append(pos[alive[done]] + j)
      end_logp.append(lp[alive[done]])
      alive = alive[~done]
      if not len(alive):
        break
      b = bpe.byte_table[vs[alive], j]
      at.append(pos[alive] + j)
      byte.append(b)
      logp.append(lp[alive])
      alive = alive[b == text[pos[alive] + j]]
    return tuple(np.concatenate(a + [none]) for a, none in
                 zip((at, byte, logp, end_at, end_logp), _spread_none()))

  # ---- generation ---------------------------------------------------------------------------

  def sample(self, prefix: str | bytes, max_bytes: int, key=0, temperature: float = 1.0,
             stop: str | bytes | None = None) -> bytes:
    """Bytes drawn one at a time from next_byte_logprobs after prefix (softmax of logprobs /
    temperature; temperature 0 takes the most likely byte) until the end of text, `stop`, or
    max_bytes. key: an int seed or a JAX PRNG key; the same key gives the same bytes."""
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    prefix = as_bytes(prefix, "prefix")
    stop = None if stop is None else as_bytes(stop, "stop")
    rng = np.random.default_rng(_seed(key))
    out = b""
    for _ in range(max_bytes):
      logp = self.next_byte_logprobs(prefix + out)
      if temperature == 0:
        b = int(np.argmax(logp))
      else:
        z = logp / temperature
        p = np.exp(z - z.max())
        b = int(rng.choice(257, p=p / p.sum()))
      if b == END:
        break
      out += bytes([b])
      if stop and out.endswith(stop):
        break
    return out

  def complete(self, prefix: str | bytes, suffix: str | bytes | None = None,
               max_bytes: int = 64, key=0, temperature: float = 0.0,
               stop: str | bytes | None = None) -> bytes:
    """The bytes that follow prefix, which may end anywhere, inside a token or a UTF-8
    character (no token healing needed: the distribution is exact).

    With a suffix, fill in the middle: the model must have been trained with FIM sentinels
    (`fim_ids`, prefix-suffix-middle order). The prompt is [PRE] prefix [SUF] suffix [MID],
    prefix and suffix tokenized each on its own as in FIM training, and the middle is read
    byte by byte up to the end-of-text token (eot_id), which ends the middle.
    """
    if suffix is None:
      return self.sample(prefix, max_bytes, key=key, temperature=temperature, stop=stop)
    if self.fim_ids is None:
      raise ValueError("fill in the middle needs a model trained with FIM sentinels; pass "
                       "fim_ids=(prefix_id, suffix_id, middle_id) to ByteLM")
    pre, suf, mid = self.fim_ids
    context = (self.context + (pre,) + tuple(self.bpe.encode(as_bytes(prefix, "prefix")))
               + (suf,) + tuple(self.bpe.encode(as_bytes(suffix, "suffix"))) + (mid,))
    middle = ByteLM(self.token_lm, self.bpe, self.eot_id, context=context)
    out = middle.sample(b"", max_bytes, key=key, temperature=temperature, stop=stop)
    self.calls, self.batches = self.calls + middle.calls, self.batches + middle.batches
    return out

  def bits_per_byte(self, texts: Sequence[str | bytes]) -> float:
    """Bits per byte of the texts (`mixture.bits_per_byte`: each read from a document start,
    its end not predicted), as a tokenized LM's evaluation counts them: the log-loss of each
    text's canonical tokens, no end of text, over the bytes they spell. This is
    `bytelm.load(path).score(texts, total=True)` of a bytelm BPE decoder (texts within one
    window). -prefix_logprob(text) / ln 2 sums over every token sequence that covers the
    text, the canonical one among them, so it is at most these bits."""
    return mixture.bits_per_byte(lambda t: self.sequence_logprob(self.bpe.encode(t)), texts)


class TopBytes(NamedTuple):
  """The k likeliest next bytes at each position (`ByteLM.next_byte_logprobs_along` with
  top_k), likeliest first: their log-probabilities, their ids (0-255, END for the end of
  text), and the log of the probability left to the other 257 - k."""
  logprobs: np.ndarray  # float32 [..., k]
  ids: np.ndarray  # int16 [..., k]
  rest: np.ndarray  # float32 [...]


def _top_bytes(rows_TV: np.ndarray, k: int) -> TopBytes:
  """`TopBytes` of rows of 257 log-probabilities."""
  ids_TK = np.argsort(-rows_TV, axis=1, kind="stable")[:, :k]
  top_TK = np.take_along_axis(rows_TV, ids_TK, axis=1)
  others_TV = rows_TV.copy()
  np.put_along_axis(others_TV, ids_TK, -np.inf, axis=1)
  rest_T = np.logaddexp.reduce(others_TV, axis=1)
  return TopBytes(top_TK.astype(np.float32), ids_TK.astype(np.int16), rest_T.astype(np.float32))


def _spread_none() -> tuple[np.ndarray, ...]:
  """`ByteLM._spread` of no tokens."""
  return tuple(np.zeros(0, t) for t in (np.int64, np.int64, np.float64, np.int64, np.float64))


def _seed(key) -> int:
  """An int seed from an int or a JAX PRNG key."""
  if isinstance(key, (int, np.integer)):
    return int(key)
  import jax  # only for keys

  data = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(
      getattr(key, "dtype", None), jax.dtypes.prng_key) else key).ravel()
  return int.from_bytes(data.astype(np.uint32).tobytes(), "little")


def _logsumexp(a: np.ndarray) -> float:
  a = np.asarray(a, np.float64)
  top = np.max(a)
  if not np.isfinite(top):
    return float(top)
  return float(top + np.log(np.exp(a - top).sum()))
