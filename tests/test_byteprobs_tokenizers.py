"""Exact byte probabilities for the tokenizers released models use (bytelm/byteprobs/splits.py,
tokenizer_json.py): Llama-3's Split pattern with digit groups and ignore_merges, SentencePiece
BPE with byte fallback, added tokens. Each against `tokenizers` itself and by brute force."""

import json
import math

import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings, strategies as st
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

from bytelm.byteprobs import adapters, splits
from bytelm.byteprobs.byte_lm import END, ByteLM
from bytelm.byteprobs.tokenization import BPE
from bytelm.data import bpe as bpe_data
from byteprobs_world import assert_bulk_is_brute_force, world

TEXTS = ["The quick brown fox jumps over the lazy dog's back, 12345 times! They're 3.14159",
         "Žluťoučký kůň úpěl ďábelské ódy. Ça va? Tiếng Việt có dấu. I'll see, we'd go",
         "def f(x):\r\n    return x ** 2  # square\n\n\t1000000", "日本語のテキスト 😀 emoji"] * 20
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


def _llama3_pre_tokenizer(pattern: str):
  """Llama-3's pre-tokenization: its Split pattern, then ByteLevel without a regex."""
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(pattern), "isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _llama3(pattern=splits.LLAMA3, vocab_size=400, added=("<x>",)) -> tokenizers.Tokenizer:
  """A byte-level BPE as Llama-3's: its Split pattern, then ByteLevel without a regex,
  ignore_merges, a BOS from the post-processor, and a non-special added token."""
  tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
  tok.pre_tokenizer = _llama3_pre_tokenizer(pattern)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
  tok.add_tokens(list(added))
  return tok


def _sentencepiece(split=None, vocab_size=300) -> tokenizers.Tokenizer:
  """A SentencePiece-style BPE as Llama-2's: merges over characters within words (trained
  with a Metaspace that splits, as SentencePiece trains), "<0x..>" byte fallback for the
  characters outside the vocabulary, spaces as "▁" and one put before the text, written with
  normalizers and no pre-tokenizer (Llama-2's file), or with a Metaspace that splits or not."""
  tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
      limit_alphabet=60))
  if split is None:
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
  else:
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=split)
  spec = json.loads(tok.to_str())
  vocab = spec["model"]["vocab"]
  for b in range(256):  # the byte tokens SentencePiece's byte_fallback models carry
    vocab[f"<0x{b:02X}>"] = len(vocab)
  return tokenizers.Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module",
                params=["llama3", "qwen2", "o200k", "sp", "sp-metaspace", "sp-split"])
def pair(request):
  """(a `tokenizers` tokenizer, ours). Special tokens spell nothing in the byte view, so HF's
  is asked to read them in a text as characters too."""
  hf = {"llama3": lambda: _llama3(), "qwen2": lambda: _llama3(splits.QWEN2),
        "o200k": lambda: _llama3(splits.O200K),
        "sp": lambda: _sentencepiece(), "sp-metaspace": lambda: _sentencepiece(False),
        "sp-split": lambda: _sentencepiece(True)}[request.param]()
  hf.encode_special_tokens = True
  return hf, BPE.from_json(hf.to_str())


TEXT = st.text(st.sampled_from(list("the quick ofx's 'LL 12345 6!?\n\r\t  ŽůňÇçệ日本😀<x>▁/\u0301")),
               max_size=40)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_encoding_matches_hugging_face_tokenizers(pair, text):
  hf, ours = pair
  # A Metaspace puts no "▁" before a text that starts with one: HF's tokens of " a" are those
  # of "a" (its decoder gives back "a"). The byte view reads tokens as their decoder does, so
  # " a" is the text whose tokens spell "  a".
  spaced = ours.metaspace and hf.pre_tokenizer is not None and text.startswith((" ", "\u2581"))
  want = hf.encode(" " + text if spaced else text, add_special_tokens=False).ids
  assert ours.encode(text.encode("utf-8")) == want
  if "\u2581" not in text or not ours.metaspace:  # "▁" is read as a space
    assert ours.decode(want) == text.encode("utf-8") and ours.is_valid(want)


def test_the_tokenizers_read_are_the_kinds_meant(pair):
  hf, ours = pair
  ids = hf.encode("I'll pay 12345 for <x>", add_special_tokens=True).ids
  if ours.chars is None:  # byte-level, Llama-3's way
    assert ours.ignore_merges and isinstance(ours.split, splits.RegexSplit)
    assert ours.bos == (0,) and ids[0] == 0 and ids[1:] == ours.encode(b"I'll pay 12345 for <x>")
    assert ours.added[b"<x>"] == ids[-1]
  else:
    assert ours.prefix == b" " and ours.metaspace
    assert ours.decode(ours.encode("\u00e5\u0416".encode())) == "\u00e5\u0416".encode()
    assert any(len(ours.token_bytes[i]) == 1 and ours.token_bytes[i][0] >= 0x80
               for i in ours.encode("\u0416".encode()))  # a character outside: its bytes


PIECE_TEXT = st.text(st.sampled_from(list("as'ltrevdmT 1!\n\r\t\u00a0é日<x/\u0301")), max_size=14)


@pytest.mark.parametrize("pattern", list(splits.PATTERNS.values()))
def test_the_split_patterns_match_every_character(pattern):
  """`RegexSplit.spans` takes the matches for the pieces: they must leave nothing between
  them, whatever the characters (every code point, lone surrogates for invalid bytes) and
  their order."""
  every = [chr(c) for c in range(0x110000)]
  rng = np.random.default_rng(0)
  for text in ("".join(every), "".join(rng.permutation(every))):
    spans = splits.RegexSplit(pattern).spans(text)
    assert [a for a, _ in spans] == [0] + [b for _, b in spans[:-1]] and spans[-1][1] == len(text)


@settings(max_examples=200, deadline=None)
@given(PIECE_TEXT, PIECE_TEXT, st.integers(0, 3), st.binary(max_size=2))
def test_the_stable_prefix_separates_what_no_continuation_changes(pair, text, more, trim, junk):
  _, ours = pair
  data = ours.prefix + text.encode("utf-8")
  data = data[:max(0, len(data) - trim)]
  s, ids = ours.stable_prefix(data)
  assert 0 <= s <= len(data) and b"".join(ours.token_bytes[i] for i in ids) == data[:s]
  full = ours.pieces  # what is tokenized, prefix included
  for z in (more.encode("utf-8"), junk + more.encode("utf-8"), b""):
    tokens = [ours.ids[t] for p in full(data + z) for t in ours._merge(p)]
    rest = [ours.ids[t] for p in full(data[s:] + z) for t in ours._merge(p)]
    assert tokens == ids + rest, (data, z)


def test_stable_cuts_advance_through_a_long_text(pair):
  """Even where the text is one piece (`splits.Whole`): no token holds a space after
  something else, so no merge joins across one."""
  _, ours = pair
  data = ours.prefix + b"The quick brown fox jumps over the lazy dog 12345 times."
  s, _ = ours.stable_prefix(data)
  assert s >= len(data) - 12


def test_digit_groups_and_ignore_merges_follow_llama3():
  ours = BPE.from_json(_llama3().to_str())
  groups = [ours.decode([i]) for i in ours.encode(b"1234567")]
  assert b"".join(groups) == b"1234567"
  assert all(len(g) <= 3 for g in groups) and groups[0][:1] == b"1"
  # ignore_merges: a piece that is a token is that token, whatever the merges would make.
  piece = max((t for t in ours.vocab if len(t) > 3 and t.isalpha()), key=len)
  assert ours.encode(piece) == [ours.vocab[piece]]


def _check_prefixes(lm, truth, prefixes):
  for x in prefixes:
    want = sum(w for text, w in truth.items() if text.startswith(x))
    got = math.exp(lm.prefix_logprob(x)) if want or x else 1.0
    assert abs(got - want) < 1e-9, (x, got, want)


def _check_next_bytes(lm, truth, prefixes, alphabet_bytes):
  """Next-byte distributions against the brute force, for those of prefixes that have mass
  in this world (at least four)."""
  masses = {x: sum(w for text, w in truth.items() if text.startswith(x)) for x in prefixes}
  assert sum(m > 0 for m in masses.values()) >= 4
  for x, mass in masses.items():
    if not mass:
      continue
    logp = lm.next_byte_logprobs(x)
    for b in alphabet_bytes:
      want = sum(w for text, w in truth.items() if text.startswith(x + bytes([b]))) / mass
      assert abs(math.exp(logp[b]) - want) < 1e-9, (x, bytes([b]))
    assert abs(math.exp(logp[END]) - truth.get(x, 0.0) / mass) < 1e-9, x


TINY_TEXTS = ["a's 11 1111 aa\n\n  s'a", "'s a  \n 111 a's!!", "sa 'a   é1 as11é"] * 30
TINY_ALPHABET = ["a", "s", "'", " ", "1", "\n", "\u00e9"]
# o200k: cases, contractions after letters, marks, "/" after newlines.
O200K_TEXTS = ["DON'T don't Tt a'T\n/ T\u0301a", "A'ta tA /\n\n/ a\u0301'T", "Ta t'a AAt"] * 30
O200K_ALPHABET = ["a", "T", "'", "t", " ", "\n", "/", "\u0301"]


def _tiny_llama3(pattern, added=(), texts=TINY_TEXTS):
  """Over a, s, apostrophe, space, 1, newline and é (two bytes): contractions, digit groups
  ("111" and "1" after it), whitespace runs before letters and digits, cut characters.
  Without added tokens its candidates are checked by signature, with them one by one."""
  tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
  tok.pre_tokenizer = _llama3_pre_tokenizer(pattern)
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=256 + 16, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eot>"]))
  tok.add_tokens(list(added))  # matched before the pattern
  return BPE.from_json(tok.to_str())


@pytest.fixture(scope="module", params=[(splits.LLAMA3, ()), (splits.QWEN2, ()),
                                        (splits.LLAMA3, ("a1",)), (splits.O200K, ())],
                ids=["llama3", "qwen2", "llama3-added", "o200k"])
def tiny_llama3(request):
  pattern, added = request.param
  if pattern == splits.O200K:
    ours = _tiny_llama3(pattern, texts=O200K_TEXTS)
    assert ours.checks_together
    return world(ours, O200K_ALPHABET, 4, eot=0)
  ours = _tiny_llama3(pattern, added)
  assert ours.checks_together == (not added)
  if pattern == splits.LLAMA3:
    assert any(len(t) == 2 and t.isdigit() for t in ours.vocab), "merges of digits wanted"
  return world(ours, TINY_ALPHABET, 4, eot=0)


def _prefixes(truth, count, seed):
  every = sorted({t[:k] for t in truth for k in range(1, len(t) + 1)})
  rng = np.random.default_rng(seed)
  return [every[i] for i in rng.choice(len(every), count, replace=False)]


def test_llama3_prefix_probabilities_equal_the_brute_force_sum(tiny_llama3):
  lm, truth = tiny_llama3
  # Inside digit groups, contractions, whitespace runs, an added token and characters.
  wanted = [b"11", b"111", b"1111", b"a1", b"aa1", b"a'", b"a's", b"'s", b"  ", b"a  ", b"\n ",
            b"  1", b" \n", b"\xc3", b"a\xc3", b"1\xc3", b"'\xc3", b"T'", b"a'T", b"\n/",
            b"T\xcc", b"a\xcc\x81"]
  _check_prefixes(lm, truth, wanted + _prefixes(truth, 40, 1))


def test_llama3_next_bytes_are_ratios_of_masses(tiny_llama3):
  lm, truth = tiny_llama3
  _check_next_bytes(lm, truth, [b"", b"1", b"11", b"a", b"a ", b"'", b" \n", b"\xc3", b"T",
                                b"a'", b"\n"], "as' 1\nT/t".encode() + b"\xc3\xcc")


def test_llama3_the_bulk_path_is_exact(tiny_llama3):
  assert_bulk_is_brute_force(*tiny_llama3)


def test_a_cut_character_completes_to_each_case_o200k_tells_apart():
  """o200k splits "aÀ" (lower, upper) and keeps "aà" whole; with an "a\xc3" token, the
  character cut after it must be completed as an upper and as a lower letter (completing it
  as a letter alone missed a third of P("a"...))."""
  lows = "àáâãäåæçèéêë"
  texts = [" ".join("a" + c for c in lows) + " " + " ".join("a" + c.upper() for c in lows)] * 30
  ours = _tiny_llama3(splits.O200K, texts=texts)
  assert b"a\xc3" in ours.vocab and ours.checks_together
  lm, truth = world(ours, ["a", "À", "à", " "], 3, eot=0)
  _check_prefixes(lm, truth, sorted({t[:k] for t in truth for k in range(1, len(t) + 1)}))
  assert_bulk_is_brute_force(lm, truth)


MIXED = ["I'll pay 12345 for it, don't you?\n\n  x\t'S\u00e9 \u65e5\u672c 1234567 \U0001f600".encode(),
         "a  b\r\n\n 'll 'LL!! \u00a0z 99 ".encode() + b"\xff\xc3 q\xe6\x97",
         "DON'T HTTPServer x\u0301y /\n/ camelCase".encode()]


@pytest.mark.parametrize("kind", ["llama3", "o200k", "sp", "sp-split"])
def test_covers_by_signature_are_the_per_token_ones(kind):
  """The candidates checked a signature at a time (bigrams and the way the pre-tokenizer cuts
  the text around them) give exactly the per-token path's covers."""
  hf = {"llama3": lambda: _llama3(added=()), "o200k": lambda: _llama3(splits.O200K, added=()),
        "sp": lambda: _sentencepiece(), "sp-split": lambda: _sentencepiece(True)}[kind]()
  ours = BPE.from_json(hf.to_str())
  assert ours.checks_together and ours.ignore_merges == (kind in ("llama3", "o200k"))
  together, one_by_one = ByteLM(None, ours, 0), ByteLM(None, ours, 0)
  one_by_one._by_signature = lambda u, ids: ([], np.ones(len(ids), bool))
  counts = {}
  for lm, name in ((together, "together"), (one_by_one, "one by one")):
    slow = lm._local_heads
    lm._local_heads = lambda u, v, slow=slow, name=name: counts.update(
        {name: counts.get(name, 0) + 1}) or slow(u, v)

  def covers(lm, x, past_end):
    return {(h, int(v), int(b)) for h, (vs, bs) in lm._covers(x, past_end).items()
            for v, b in zip(vs, bs)}

  # One piece (sp): re-merged whole for each candidate, so shorter texts; o200k's own cases.
  texts = {"sp": [t[:32] for t in MIXED], "o200k": MIXED[1:]}.get(kind, MIXED[:2])
  for text in texts:
    text = ours.prefix + text
    for t in range(len(text) + 1):
      for past_end in (True, False) if t else (True,):
        assert covers(together, text[:t], past_end) == covers(one_by_one, text[:t], past_end), \
            (text[:t], past_end)
  assert counts["together"] < counts["one by one"] / 10  # most go together


def _hand_made(merges, added=()) -> BPE:
  """A Llama-3-style BPE (its Split, ignore_merges) with the given merges over GPT-2's byte
  characters, and added tokens (which send every candidate one by one)."""
  chars = bpe_data.byte_chars()
  vocab = {"<eot>": 0} | {c: i + 1 for i, c in enumerate(chars)}
  for a, b in merges:
    vocab[a + b] = len(vocab)
  tok = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
  tok.pre_tokenizer = _llama3_pre_tokenizer(splits.LLAMA3)
  tok.add_special_tokens(["<eot>"])
  tok.add_tokens(list(added))
  return BPE.from_json(tok.to_str())


@pytest.mark.parametrize("added", [(), ("zz",)], ids=["by-signature", "one-by-one"])
def test_a_piece_that_is_a_token_may_go_on_with_a_token_no_probe_spells(added):
  """With ignore_merges "abc" (a token) is one token where the text ends, and [a, bc, z] in
  "abcz": the probes' letters after "c" ("a", "é", "日") all merge with it, "z" does not. So
  ([a], bc) covers "ab" (found by asking the bigrams for a token that leaves the boundary)."""
  c = bpe_data.byte_chars()
  ours = _hand_made([("c", "a"), ("c", c[0xC3]), ("c", c[0xE6]), ("b", "c"), ("a", "b"),
                     ("ab", "c")], added)
  assert ours.checks_together == (not added)
  assert [ours.token_bytes[i] for i in ours.encode(b"abcz")] == [b"a", b"bc", b"z"]
  lm, truth = world(ours, ["a", "b", "c", "z"], 4, eot=0)
  _check_prefixes(lm, truth, [b"a", b"ab", b"abc", b"b", b"bc", b"abca", b"cab"])


def test_an_added_token_is_never_cut_for_a_token_boundary():
  """"\n\n!" is [\n, "\n!"] with "\n!" an added token, so no text that starts with "\n\n"
  has a token boundary after the first "\n" but ["\n\n"] (before a letter)."""
  nl = bpe_data.byte_chars()[ord("\n")]
  ours = _hand_made([(nl, nl)], added=("\n!",))
  got = {tuple(ours.token_bytes[i] for i in t) for t in ours.prefix_tokenizations(b"\n\n")}
  assert got == {(b"\n\n",)}


@pytest.mark.parametrize("added", [(), ("zz",)], ids=["by-signature", "one-by-one"])
def test_a_text_may_end_inside_a_character_as_one_token(added):
  """Texts are any bytes: "!!" + 0xC3 is one piece, and with ignore_merges the token
  "!!\xc3" though merges never make it (they make "!" + "!\xc3")."""
  c = bpe_data.byte_chars()
  ours = _hand_made([("!", c[0xC3]), ("!", "!"), ("!!", c[0xC3])], added)
  assert [ours.token_bytes[i] for i in ours.encode(b"!!\xc3")] == [b"!!\xc3"]
  lm, truth = world(ours, [b"!", b"\xc3", b"\xa9", b"a"], 4, eot=0)
  _check_prefixes(lm, truth, [b"!", b"!!", b"!!\xc3", b"!\xc3", b"\xc3"])
  _check_next_bytes(lm, truth, [b"", b"!", b"!!", b"!!\xc3", b"\xc3"], b"!\xc3\xa9a")


@pytest.fixture(scope="module", params=[None, True], ids=["normalizers", "metaspace-split"])
def tiny_sentencepiece(request):
  """Over a, b, space and é, ж (two bytes each; ж outside the vocabulary, so spelled by byte
  tokens): merges over characters across spaces, a dummy space before every text."""
  texts = ["ab a  ba é abé", "aab b é bé  a"] * 30
  tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True))
  if request.param is None:
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
  else:
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=16, show_progress=False,
                                                     special_tokens=["<eot>"]))
  spec = json.loads(tok.to_str())
  for b in range(256):
    spec["model"]["vocab"][f"<0x{b:02X}>"] = len(spec["model"]["vocab"])
  ours = BPE.from_json(json.dumps(spec))
  assert b"\xd0\xb6" not in ours.chars and "é".encode() in ours.chars and ours.checks_together
  return world(ours, ["a", "b", " ", "\u00e9", "\u0436"], 4, eot=0)


def test_sentencepiece_prefix_probabilities_equal_the_brute_force_sum(tiny_sentencepiece):
  lm, truth = tiny_sentencepiece
  wanted = [b" ", b"  ", b"a ", b"ab", b"\xc3", b"\xd0", b"a\xd0", b"\xd0\xb6", b" \xc3"]
  _check_prefixes(lm, truth, wanted + _prefixes(truth, 40, 2))


def test_sentencepiece_next_bytes_are_ratios_of_masses(tiny_sentencepiece):
  lm, truth = tiny_sentencepiece
  _check_next_bytes(lm, truth, [b"", b"a", b" ", b"\xd0", b"\xc3"],
                    b"ab \xc3\xd0\xb6\xa9")


def test_sentencepiece_the_bulk_path_is_exact(tiny_sentencepiece):
  assert_bulk_is_brute_force(*tiny_sentencepiece)


def test_sentencepiece_reads_its_space_sign_as_a_space(tiny_sentencepiece):
  lm, _ = tiny_sentencepiece
  assert lm.bpe.encode("a\u2581b".encode()) == lm.bpe.encode(b"a b")
  with pytest.raises(ValueError, match="reads as a space"):
    lm.next_byte_logprobs("a\u2581".encode())


def test_an_added_token_that_is_also_in_the_vocabulary_keeps_its_id():
  """`tokenizers` lets an added token be one of the vocabulary (it keeps the id); the merges
  that make it, or the byte it is, stay."""
  for added in ("ab", "'"):
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = _llama3_pre_tokenizer(splits.LLAMA3)
    tok.train_from_iterator(["ab ab abab a'b"] * 10, trainers.BpeTrainer(
        vocab_size=260, show_progress=False, special_tokens=["<eot>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([added])
    ours = BPE.from_json(tok.to_str())
    for text in ("x ab", "a'b 'ab", "abab"):
      assert ours.encode(text.encode()) == tok.encode(text).ids


def test_unsupported_tokenizers_name_the_part():
  sp = json.loads(_sentencepiece().to_str())
  llama = json.loads(_llama3().to_str())
  for spec, named in ((sp | {"normalizer": {"type": "NFKC"}}, "'NFKC' normalizer"),
                      (sp | {"model": sp["model"] | {"byte_fallback": False}},
                       "without byte fallback"),
                      (llama | {"added_tokens": llama["added_tokens"] + [
                          {"id": 999, "content": "<y>", "special": False, "lstrip": True}]},
                       "'<y>' sets lstrip"),
                      (llama | {"normalizer": {"type": "NFC"}}, "'NFC' normalizer"),
                      (sp | {"model": sp["model"] | {"vocab": {
                          t: i for t, i in sp["model"]["vocab"].items() if t != "\u2581"}}},
                       "no '▁' token")):
    with pytest.raises(ValueError, match=named):
      BPE.from_json(json.dumps(spec))


@pytest.mark.hf
@pytest.mark.parametrize("kind", ["llama3", "sentencepiece"])
def test_a_llama_style_hugging_face_model_reads_as_bytes(tmp_path, kind):
  """A tiny random Llama saved by transformers, with a Llama-3-style or a Llama-2-style
  (SentencePiece, byte fallback) tokenizer.json whose post-processor puts a BOS first: the
  byte way's whole-text probability is the token way's, BOS first and eos last."""
  import torch  # the optional [hf] extra: run with pytest -m hf
  import transformers
  hf = _llama3() if kind == "llama3" else _sentencepiece()
  if kind == "sentencepiece":
    hf.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
  (tmp_path / "tokenizer.json").write_text(hf.to_str(), encoding="utf-8")
  bos = hf.token_to_id("<|begin_of_text|>" if kind == "llama3" else "<s>")
  eos = hf.token_to_id("<|end_of_text|>" if kind == "llama3" else "</s>")
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=hf.get_vocab_size() + 7, hidden_size=32, intermediate_size=64,
      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
      max_position_embeddings=64, bos_token_id=bos, eos_token_id=[eos])).eval()
  model.save_pretrained(tmp_path)
  lm = adapters.from_hugging_face(tmp_path)
  assert lm.context == (bos,)
  text = "I'll pay 1234 \u00e9 \u0416"
  ids = hf.encode(text).ids + [eos]
  assert ids[0] == bos and ids[1:-1] == lm.bpe.encode(text.encode())
  with torch.no_grad():
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()
  token_way = sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1))
  assert abs(lm.logprob(text) - token_way) < 1e-6
  # Branching prefixes go through as one tree (a 4-D mask): as each alone, causally.
  rows = [tuple(ids[:k]) for k in (1, 3, 5)] + [tuple(ids[:3]) + (ids[5],), (bos, ids[4])]
  for row, got in zip(rows, lm.token_lm(rows)):
    with torch.no_grad():
      want = torch.log_softmax(model(torch.tensor([row])).logits[0, -1].double(), -1).numpy()
    np.testing.assert_allclose(got, want[:len(got)], atol=1e-5)
  rows = lm.next_byte_logprobs_along([text[:6]])[0]
  assert np.allclose(np.exp(rows).sum(-1), 1.0)  # distributions over the next byte
