"""Exact byte probabilities from tokenized LMs (bytelm/byteprobs): the canonical tokenization."""

import collections
import itertools
import json
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
import regex
import tokenizers
from flax import nnx
from hypothesis import given, settings, strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

import bytelm
from bytelm.byteprobs import adapters, splits
from bytelm.byteprobs.byte_lm import END, FOLLOWERS_BYTES, ByteLM
from bytelm.byteprobs.mixture import chain_logprob, ensemble
from bytelm.byteprobs import tokenization
from bytelm.byteprobs.tokenization import BPE
from bytelm.data import bpe
from bytelm.models import decoder
from bytelm.nn.compiled import Compiled
from bytelm.training import config_file
from byteprobs_world import assert_bulk_is_brute_force, world as _world

TEXTS = ["The quick brown fox jumps over the lazy dog's back, 123 times!",
         "Žluťoučký kůň úpěl ďábelské ódy. Ça va? Tiếng Việt có dấu.",
         "def f(x):\n    return x ** 2  # square\n\n", "日本語のテキスト 😀 emoji"] * 20


def _hf(use_regex: bool, vocab_size: int = 360) -> tokenizers.Tokenizer:
  if use_regex:
    return bpe.train(TEXTS, vocab_size)
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(bpe.SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  return tok


@pytest.fixture(scope="module", params=[True, False], ids=["regex", "no-regex"])
def pair(request):
  hf = _hf(request.param)
  return hf, BPE.from_json(hf.to_str())


TEXT = st.text(st.sampled_from(list("the quick ofx's 12 3!?\n\t  ŽůňÇçệ日本😀")), max_size=40)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_encoding_matches_hugging_face_tokenizers(pair, text):
  hf, ours = pair
  assert ours.encode(text.encode("utf-8")) == hf.encode(text, add_special_tokens=False).ids


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=30))
def test_any_bytes_encode_to_a_valid_sequence_that_spells_them(data):
  ours = BPE.from_json(_hf(True).to_str())
  ids = ours.encode(data)
  assert ours.decode(ids) == data and ours.is_valid(ids)


PIECE_TEXT = st.text(st.sampled_from(list("as'ltrevdm 1!\n\t\u00a0é日")), max_size=14)


@settings(max_examples=300, deadline=None)
@given(PIECE_TEXT, PIECE_TEXT, st.integers(0, 3), st.binary(max_size=2))
def test_the_stable_prefix_separates_what_no_continuation_changes(text, more, trim, junk):
  # Texts cut anywhere (inside a UTF-8 character too), continued by anything.
  ours = BPE.from_json(_hf(True).to_str())
  data = text.encode("utf-8")
  data = data[:max(0, len(data) - trim)]
  s, ids = ours.stable_prefix(data)
  assert 0 <= s <= len(data) and ours.decode(ids) == data[:s]
  for z in (more.encode("utf-8"), junk + more.encode("utf-8"), b""):
    assert ours.encode(data + z) == ids + ours.encode(data[s:] + z)


def test_the_stable_prefix_keeps_the_text_before_the_last_pieces():
  ours = BPE.from_json(_hf(True).to_str())
  data = b"The quick brown fox jumps over"
  assert ours.stable_prefix(data)[0] == len(b"The quick brown fox jumps")
  assert ours.stable_prefix(b"don'")[0] == 3 and ours.stable_prefix(b"a'l")[0] == 1  # 'll
  assert ours.stable_prefix(b"\n\n11") == (2, ours.encode(b"\n") * 2)  # not "\n\n" alone
  assert BPE.from_json(_hf(False).to_str()).stable_prefix(data) == (0, [])  # no locality


def test_a_sequence_other_than_the_canonical_one_is_invalid(pair):
  _, ours = pair
  ids = ours.encode(b"the quick brown fox")
  assert len(ids) < len(b"the quick brown fox")  # merges happened
  singles = [ours.vocab[bytes([b])] for b in b"the quick brown fox"]
  assert ours.is_valid(ids) and not ours.is_valid(singles)
  assert ours.decode(singles) == ours.decode(ids)


def test_the_regex_keeps_merges_inside_pieces():
  ours = BPE.from_json(_hf(True).to_str())
  assert ours.pieces(b"Hello  world's 12!!") == [b"Hello", b" ", b" world", b"'s", b" 12", b"!!"]
  for i in ours.encode(b"the fox jumps over the dog"):  # no token spans ' ' inside a word end
    token = ours.token_bytes[i]
    assert b" " not in token[1:]


def test_bigrams_say_which_token_pairs_bpe_makes(pair):
  _, ours = pair
  ids = [i for i, t in enumerate(ours.token_bytes) if t]
  longest = sorted(ids, key=lambda i: -len(ours.token_bytes[i]))[:20]  # deep merge trees
  rng = np.random.default_rng(0)
  for a in longest + rng.choice(ids, 30, replace=False).tolist():
    ta = ours.token_bytes[a]
    truth = [tokenization.merge(ta + tv, ours.ranks)[0] == (ta, tv)
             for tv in (ours.token_bytes[v] for v in ids)]
    assert ours.bigrams.after(a)[ids].tolist() == truth, ta


def test_bigrams_follow_the_leftmost_of_equal_merges():
  """Runs of one letter, where the same merge applies at several places at once."""
  vocab = {bytes([b]): b for b in range(256)} | {b"aa": 256, b"aaa": 257, b"aaaa": 258}
  ours = BPE(vocab, [(b"a", b"a"), (b"aa", b"a"), (b"aa", b"aa")], use_regex=False)
  runs = [b"a", b"aa", b"aaa", b"aaaa"]
  found = {(x, y): bool(ours.bigrams.after(vocab[x])[vocab[y]]) for x in runs for y in runs}
  assert found == {(x, y): tokenization.merge(x + y, ours.ranks)[0] == (x, y)
                   for x in runs for y in runs}
  assert any(found.values()) and not all(found.values())


def test_merges_out_of_learned_order_take_the_per_token_path():
  """The bigram test holds for merges in learned order, each token made once (as training
  makes them); otherwise ByteLM checks candidates one by one, and agrees with itself."""
  base = {bytes([b]): b for b in range(256)}
  for extra, merges in (([b"aa", b"aaaa"], [(b"aa", b"aa"), (b"a", b"a")]),
                        ([b"aa", b"aaa", b"aaaaa"],
                         [(b"a", b"a"), (b"aa", b"a"), (b"aaa", b"aa"), (b"aa", b"aaa")])):
    ours = BPE(base | {t: 256 + i for i, t in enumerate(extra)}, merges, use_regex=False)
    assert not ours.bigrams.exact
    calls = _same_covers_together_and_one_by_one(ours, [b"aaaaaab"])
    assert calls["together"] == calls["one by one"]
  assert BPE(base | {b"aa": 256}, [(b"a", b"a")]).bigrams.exact


# Prefixes where the pre-tokenization is delicate: whitespace runs of every kind, apostrophes,
# digits, code, invalid bytes and characters cut by the prefix's end.
MIXED = [t.encode() for t in (
    "The dog's 'quoted' can't  we'll I'd \n\n    return x ** 2  # sq\t\r\n end",
    "a  b   1  2 !! ??\n \n  x'  y' s 'll \u00a0nbsp 123456789 a1b2 $100,000.00",
    "Žluťoučký kůň, Ça va? Tiếng Việt 日本語のテキスト 😀 emoji")] + [
    b"abc\xc3\xa9\xc3" + b"\xa9 d\xe6\x97\xa5x\x80\x80y \xe2\x80 \xf0\x9f",
    bytes(np.random.default_rng(1).integers(0, 256, 48).tolist())]


def _same_covers_together_and_one_by_one(ours: BPE, texts) -> collections.Counter:
  """Asserts that ByteLM's covers of every prefix of the texts, most candidate tokens checked
  together (bigrams and the kind of the next token), are exactly those the per-token path
  finds; returns how often each way took the per-token path."""
  together, one_by_one = ByteLM(None, ours, 0), ByteLM(None, ours, 0)
  one_by_one._context = lambda u: None  # every candidate through _local_heads

  def covers(lm, x, past_end):
    return {(h, int(v), int(b)) for h, (vs, bs) in lm._covers(x, past_end).items()
            for v, b in zip(vs, bs)}

  calls = collections.Counter()
  for lm, name in ((together, "together"), (one_by_one, "one by one")):
    slow = lm._local_heads
    lm._local_heads = lambda u, v, slow=slow, name=name: calls.update([name]) or slow(u, v)
  for text in texts:
    for t in range(len(text) + 1):
      for past_end in (True, False) if t else (True,):
        assert covers(together, text[:t], past_end) == covers(one_by_one, text[:t], past_end), \
            (text[:t], past_end)
  return calls


def test_covers_found_for_the_whole_vocabulary_at_once_are_the_per_token_ones(pair):
  ours = pair[1]  # without the regex the per-token path re-merges the whole text: shorter ones
  calls = _same_covers_together_and_one_by_one(
      ours, MIXED if ours.use_regex else [t[:24] for t in MIXED])
  assert calls["together"] < calls["one by one"] / 2  # most candidates go together


def test_stable_cuts_read_along_a_text_equal_those_read_from_its_start(pair):
  """ByteLM cuts each prefix from where the one a byte shorter was cut (not from the start)."""
  lm = ByteLM(None, pair[1], 0)
  for text in MIXED:
    for t in range(len(text) + 1):
      s, ids = pair[1].stable_prefix(text[:t])
      assert lm._stable_ids(text[:t]) == (s, tuple(ids)), text[:t]


def test_a_space_split_off_a_run_of_spaces_starts_a_piece():
  """With "  " a token, " " cannot follow " " in one piece, yet "a  b" is [a, " ", " b"] or
  [a, " ", " ", b]: the last space of a run leaves it for what follows."""
  vocab = {bytes([b]): b for b in range(256)} | {b"  ": 256, b" b": 257}
  ours = BPE(vocab, [(b" ", b" "), (b" ", b"b")])
  assert ours.encode(b"a  b") == [97, 32, 257] and ours.encode(b"a  c") == [97, 32, 32, 99]
  _same_covers_together_and_one_by_one(ours, [b"a  b\n\n c  \t d", b"x \n  y"])
  # The same for the first byte of a no-break space (C2 A0) after a space, where " \xc2" is
  # a token: split off the run, the character stands alone and begins with its own byte.
  ours = BPE(vocab | {b" \xc2": 258}, [(b" ", b" "), (b" ", b"b"), (b" ", b"\xc2")])
  assert ours.encode("x \u00a0a".encode()) == [120, 32, 0xC2, 0xA0, 97]
  _same_covers_together_and_one_by_one(ours, ["x \u00a0a  \u00a0".encode()])


def test_bad_tokenizer_files_are_clear_errors(pair):
  spec = json.loads(pair[0].to_str())
  unknown_split = {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": r"\w+|\W+"}, "behavior": "Isolated",
       "invert": False}, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
  for change, named in (({"model": {"type": "WordPiece"}}, "model is 'WordPiece'"),
                        ({"model": {"type": "Unigram"}}, "model is 'Unigram'.*likeliest"),
                        ({"pre_tokenizer": {"type": "Metaspace"}}, "pre-tokenizer is 'Metaspace'"),
                        ({"pre_tokenizer": unknown_split}, r"pattern '\\\\w\+"),
                        ({"normalizer": {"type": "NFC"}}, "'NFC' normalizer"),
                        ({"model": spec["model"] | {"dropout": 0.1}}, "dropout")):
    with pytest.raises(ValueError, match=named):
      BPE.from_json(json.dumps(spec | change))
  BPE.from_json(json.dumps(spec))  # the file itself is fine
  with pytest.raises(ValueError, match="256 bytes"):
    BPE({b"a": 0}, [])


# ---- exactness against brute force -------------------------------------------------------------

ALPHABET = b"abc"
MAX_BYTES = 5  # the brute force's strings end by this length


@pytest.fixture(scope="module")
def tiny():
  """A BPE with a handful of merges over a, b, c (no regex), and a random token model that puts
  its mass on canonical continuations only, ending every text by MAX_BYTES bytes."""
  hf = _hf(False, vocab_size=len(bpe.SPECIAL_TOKENS) + 256 + 6)
  hf_texts = ["abcabcaab", "aabbcc", "cabcab", "bcabca"] * 30
  hf.train_from_iterator(hf_texts, trainers.BpeTrainer(
      vocab_size=len(bpe.SPECIAL_TOKENS) + 256 + 6, special_tokens=list(bpe.SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  ours = BPE.from_json(hf.to_str())
  eot = 1
  tokens = [i for i, t in enumerate(ours.token_bytes) if t and set(t) <= set(ALPHABET)]
  assert len(tokens) >= 3 + 4, "the tiny BPE should have merges over a, b, c"
  size = len(ours.token_bytes)

  def token_lm(prefixes):
    out = np.full((len(prefixes), size), -np.inf)
    for row, p in zip(out, prefixes):
      text = ours.decode(p)
      support = [v for v in tokens if len(text) + len(ours.token_bytes[v]) <= MAX_BYTES
                 and ours.encode(text + ours.token_bytes[v]) == list(p) + [v]]
      support.append(eot)
      if len(text) >= MAX_BYTES:
        support = [eot]
      logits = np.random.default_rng(list(p) + [7]).normal(size=len(support)) * 1.5
      row[support] = logits - np.log(np.exp(logits).sum())
    return out

  # Brute force: every complete token sequence the model can produce, with its probability.
  complete = {}

  def walk(p, logp):
    row = token_lm([p])[0]
    for v in np.flatnonzero(np.isfinite(row)):
      if v == eot:
        text = ours.decode(p)
        assert text not in complete  # one canonical sequence per text
        complete[text] = math.exp(logp + row[v])
      else:
        walk(p + (int(v),), logp + row[v])

  walk((), 0.0)
  assert abs(sum(complete.values()) - 1.0) < 1e-9
  return ByteLM(token_lm, ours, eot), complete


def _all_strings(max_len):
  for n in range(1, max_len + 1):
    for combo in itertools.product(ALPHABET, repeat=n):
      yield bytes(combo)


def test_prefix_probabilities_equal_the_brute_force_sum(tiny):
  lm, complete = tiny
  for x in _all_strings(MAX_BYTES):
    want = sum(p for text, p in complete.items() if text.startswith(x))
    got = math.exp(lm.prefix_logprob(x))
    assert abs(got - want) < 1e-6 * max(1.0, want), (x, got, want)


def test_next_byte_distributions_sum_to_one_and_are_ratios_of_masses(tiny):
  lm, complete = tiny
  for x in [b"", b"a", b"ab", b"abc", b"ca", b"aab", b"bbca"]:
    logp = lm.next_byte_logprobs(x)
    assert abs(np.exp(logp).sum() - 1.0) < 1e-6, x
    mass = sum(p for text, p in complete.items() if text.startswith(x))
    for b in ALPHABET:
      want = sum(p for text, p in complete.items() if text.startswith(x + bytes([b]))) / mass
      assert abs(math.exp(logp[b]) - want) < 1e-6
    assert abs(math.exp(logp[END]) - complete.get(x, 0.0) / mass) < 1e-6


def test_whole_texts_score_as_their_canonical_tokenization(tiny):
  lm, complete = tiny
  for text, p in complete.items():
    ids = lm.bpe.encode(text) + [lm.eot_id]
    rows = lm.token_lm([tuple(ids[:i]) for i in range(len(ids))])
    token_way = sum(row[t] for row, t in zip(rows, ids))
    assert abs(lm.logprob(text) - token_way) < 1e-5 and abs(math.exp(token_way) - p) < 1e-9


def test_one_pass_next_bytes_agree_with_prefix_ratios(tiny):
  lm, _ = tiny
  for x in [b"", b"a", b"abc", b"cab", b"aabc"]:
    logp = lm.next_byte_logprobs(x)
    base = lm.prefix_logprob(x)
    for b in ALPHABET:
      assert abs(logp[b] - (lm.prefix_logprob(x + bytes([b])) - base)) < 1e-9
    assert abs(logp[END] - (lm.logprob(x) - base)) < 1e-9


def test_byte_samples_are_reproducible_and_follow_the_exact_distribution(tiny):
  lm, complete = tiny
  assert lm.sample(b"a", 5, key=3) == lm.sample(b"a", 5, key=3)
  # Texts sampled from nothing: their frequencies against the brute-force probabilities.
  counts = {}
  for seed in range(1500):
    text = lm.sample(b"", MAX_BYTES + 1, key=seed)
    counts[text] = counts.get(text, 0) + 1
  assert set(counts) <= set(complete)
  expected = {t: p * 1500 for t, p in complete.items()}
  # Chi-square over texts expected at least 5 times, the rest pooled.
  big = [t for t, e in expected.items() if e >= 5]
  obs = [counts.get(t, 0) for t in big] + [1500 - sum(counts.get(t, 0) for t in big)]
  exp = [expected[t] for t in big] + [1500 - sum(expected[t] for t in big)]
  chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp) if e > 0)
  dof = len(big)
  assert chi2 < dof + 4 * math.sqrt(2 * dof), (chi2, dof)  # ~ the 99.99th percentile


@pytest.mark.parametrize("small", [False, True])
def test_the_bulk_path_is_exact(tiny, tiny_regex, small, monkeypatch):
  if small:  # a few starts summed at a time, and a memo of a few heads' followers
    monkeypatch.setattr("bytelm.byteprobs.byte_lm.SPREAD_BLOCK", 40)
    monkeypatch.setattr("bytelm.byteprobs.byte_lm.FOLLOWERS_BYTES", 2000)
  for lm, truth in (tiny, tiny_regex):
    lm.clear(followers=True)
    assert_bulk_is_brute_force(lm, truth)
    assert lm._after_bytes <= (2000 if small else FOLLOWERS_BYTES) or len(lm._after) == 1


def test_chained_next_bytes_give_the_whole_text_probability(tiny):
  lm, complete = tiny
  for text in list(complete)[:25]:
    assert abs(chain_logprob(lm, text) - lm.logprob(text)) < 1e-9


class _Unigram:
  """A byte model that ignores context: its next-byte distribution is fixed."""

  def __init__(self, probs_257):
    with np.errstate(divide="ignore"):
      self.logp = np.log(np.asarray(probs_257, np.float64) / np.sum(probs_257))

  def next_byte_logprobs(self, prefix):
    return self.logp


def test_an_ensemble_averages_probabilities_and_beats_a_bad_member(tiny):
  lm, complete = tiny
  flat = np.zeros(257)
  flat[list(ALPHABET)] = 1.0
  flat[END] = 1.0
  other = _Unigram(flat)
  mix = ensemble([lm, other], [3.0, 1.0])
  for x in [b"", b"ab", b"cab"]:
    want = 0.75 * np.exp(lm.next_byte_logprobs(x)) + 0.25 * np.exp(other.next_byte_logprobs(x))
    np.testing.assert_allclose(np.exp(mix.next_byte_logprobs(x)), want, atol=1e-12)
  texts = [lm.sample(b"", MAX_BYTES + 1, key=s) for s in range(60)]  # the model's own text
  assert mix.bits_per_byte(texts) < ensemble([other]).bits_per_byte(texts)
  with pytest.raises(ValueError, match="weight"):
    ensemble([lm, other], [1.0])


def test_bytelm_decoders_plug_in():
  cfg = decoder.DecoderConfig(**config_file.load(
      pathlib.Path(__file__).resolve().parents[1] / "configs" / "bytes_decoder.py",
      "tiny").model.to_dict())
  model = decoder.DecoderLM(cfg, rngs=nnx.Rngs(0))
  byte_lm = adapters.ByteDecoderLM(model)
  logp = byte_lm.next_byte_logprobs(b"ab")
  assert logp.shape == (257,) and abs(np.exp(logp).sum() - 1) < 1e-9
  np.testing.assert_array_equal(byte_lm.next_byte_logprobs("ab"), logp)  # str: its UTF-8
  # The same numbers as the model's own logits after eos, a, b.
  logits = np.asarray(model(jnp.asarray([[1, 100, 101]]))[0, -1], np.float64)
  want = np.concatenate([logits[3:259], logits[1:2]])
  np.testing.assert_allclose(logp, want - np.logaddexp.reduce(want), atol=1e-5)
  # Unnormalised: the model's softmax over all its ids, mass on pad, unk and sentinels left out.
  own = logits - np.logaddexp.reduce(logits)
  np.testing.assert_allclose(byte_lm.next_byte_logprobs(b"ab", normalize=False),
                             np.concatenate([own[3:259], own[1:2]]), atol=1e-5)
  token_lm = adapters.decoder_token_lm(model, vocab_size=300)
  rows = token_lm([(), (5, 6), (7,)])
  # The model's own probabilities of the tokenizer's 300 ids: the 84 spare rows keep their mass.
  logits = np.asarray(model(jnp.asarray([[1, 5, 6]]))[0, -1], np.float64)
  assert rows.shape == (3, 300) and np.all(np.exp(rows).sum(1) < 1.0)
  np.testing.assert_allclose(rows[1], (logits - np.logaddexp.reduce(logits))[:300], atol=1e-5)
  np.testing.assert_allclose(rows[1], token_lm([(5, 6)])[0], atol=1e-6)  # padding is harmless


# ---- with GPT-2's pre-tokenization regex ------------------------------------------------------

def _trained(texts, extra_tokens: int) -> BPE:
  """A GPT-2-style BPE trained on texts with extra_tokens merges."""
  return BPE.from_json(bpe.train(texts, len(bpe.SPECIAL_TOKENS) + 256 + extra_tokens).to_str())


REGEX_ALPHABET = "as' 1!"
REGEX_MAX = 4


@pytest.fixture(scope="module")
def tiny_regex():
  """Over a, s, apostrophe, space, 1, !: "  " is a token but " 1" is not: "a  " alone is
  [a]["  "], inside "a  1" it is [a][ ][ ] (the regex leaves the last space of a run to what
  follows), the case that makes the tokenization of a prefix differ from the start of the
  tokenization of the whole text."""
  lm, truth = _world(_trained(["a's as aa   s'a", "'s a    as a's!!", "sa 'a     as1!"] * 30, 8),
                     REGEX_ALPHABET, REGEX_MAX)
  assert lm.bpe.encode(b"a  ")[-1] != lm.bpe.encode(b"a  1")[2]
  return lm, truth


def test_a_space_split_off_a_run_before_a_letter_it_does_not_merge_with_is_exact():
  """" " merges with a, 1, ! and ' (the probes' characters), not with b: "  b" is [ , , b]."""
  base = {bytes([b]): b + 2 for b in range(256)}  # ids 0 and 1 left for pad and eot
  extra = [b"  ", b" a", b" 1", b" !", b" '"]
  ours = BPE(base | {t: 258 + i for i, t in enumerate(extra)}, [(t[:1], t[1:]) for t in extra],
             special_ids=[0, 1])
  assert ours.decode(ours.encode(b"  b")) == b"  b" and len(ours.encode(b"  b")) == 3
  lm, truth = _world(ours, "ab ", 4)
  for x in (b"  ", b" ", b"a  ", b"b ", b"  b"):
    want = sum(w for text, w in truth.items() if text.startswith(x))
    assert abs(math.exp(lm.prefix_logprob(x)) - want) < 1e-9, x


def test_a_cut_character_completes_to_one_bpe_leaves_apart():
  """With "\xc3\x80" (À) and "a\xc3" tokens, "aé" is [a\xc3, \xa9]: after "a" + 0xC3 a letter
  follows, but not À, whose bytes BPE merges first. The completion tried for letters must
  be one that leaves the token boundary (the first in code point order, À, does not)."""
  base = {bytes([b]): b + 2 for b in range(256)}
  ours = BPE(base | {b"\xc3\x80": 258, b"a\xc3": 259}, [(b"\xc3", b"\x80"), (b"a", b"\xc3")],
             special_ids=[0, 1])
  assert ours.encode("a\u00e9".encode()) == [259, 0xA9 + 2]
  lm, truth = _world(ours, ["a", "\u00e9", "\u00c0"], 3)
  for x in (b"a", b"a\xc3", "a\u00e9".encode(), b"\xc3"):
    want = sum(w for text, w in truth.items() if text.startswith(x))
    assert abs(math.exp(lm.prefix_logprob(x)) - want) < 1e-9, x


def test_prefixes_cut_inside_a_character_are_exact():
  # Two- and three-byte characters, merged into tokens: every byte prefix of every text, many
  # cut inside a character. "aé" and "aà" make "a" + the lead byte of both a token ("a\xc3"),
  # which is valid when the cut character becomes a letter (one piece with the "a") and not
  # when it becomes punctuation: only completing the character as each class tells.
  lm, truth = _world(_trained(["aé aà aé aà 日日 a日 é", " é日 aà  日"] * 30, 10),
                     ["a", "é", "à", " ", "日"], 3)
  assert b"a\xc3" in lm.bpe.vocab
  prefixes = sorted({t[:k] for t in truth for k in range(1, len(t) + 1)})
  assert sum(1 for x in prefixes if _cut_inside(x)) >= 60
  for x in prefixes:
    want = sum(w for text, w in truth.items() if text.startswith(x))
    assert abs(math.exp(lm.prefix_logprob(x)) - want) < 1e-9, x
  for x in [b"\xc3", b"a\xe6\x97", b"\xe6", b" \xc3", b"\xc3\xa9 "]:
    logp = lm.next_byte_logprobs(x)
    mass = sum(w for text, w in truth.items() if text.startswith(x))
    for b in range(256):
      want = sum(w for text, w in truth.items() if text.startswith(x + bytes([b]))) / mass
      assert abs(math.exp(logp[b]) - want) < 1e-9, (x, b)
  assert_bulk_is_brute_force(lm, truth, count=10)


def _cut_inside(x: bytes) -> bool:
  try:
    x.decode("utf-8")
    return False
  except UnicodeDecodeError:
    return True


def test_with_the_regex_prefix_probabilities_equal_the_brute_force_sum(tiny_regex):
  lm, truth = tiny_regex
  rng = np.random.default_rng(1)
  alphabet = REGEX_ALPHABET.encode()
  prefixes = [bytes(c) for n in range(1, 4) for c in itertools.product(alphabet, repeat=n)]
  prefixes += [bytes(rng.choice(list(alphabet), 4)) for _ in range(60)]
  # The whitespace and contraction cases that break "tokenize the prefix" approaches.
  prefixes += [b"a  ", b"a  a", b"'s", b"a'", b"a's", b" '", b"  1"]
  for x in prefixes:
    want = sum(w for text, w in truth.items() if text.startswith(x))
    got = math.exp(lm.prefix_logprob(x))
    assert abs(got - want) < 1e-9, (x, got, want)


def test_with_the_regex_next_bytes_are_ratios_of_masses(tiny_regex):
  lm, truth = tiny_regex
  for x in [b"", b"a", b"a ", b"a  ", b"'", b"a'", b"s 1"]:
    logp = lm.next_byte_logprobs(x)
    mass = sum(w for text, w in truth.items() if text.startswith(x))
    for b in REGEX_ALPHABET.encode():
      want = sum(w for text, w in truth.items() if text.startswith(x + bytes([b]))) / mass
      assert abs(math.exp(logp[b]) - want) < 1e-9, (x, bytes([b]))
    assert abs(math.exp(logp[END]) - truth.get(x, 0.0) / mass) < 1e-9


def test_a_batch_of_prefixes_is_one_token_lm_call_with_the_same_answers(tiny_regex):
  lm, _ = tiny_regex
  prefixes = [b"a ", b"s'", b"as 1", b"", b"a  "]
  fresh = ByteLM(lm.token_lm, lm.bpe, lm.eot_id)
  batch = fresh.next_byte_logprobs_batch(prefixes)
  assert fresh.batches == 1 and batch.shape == (5, 257)
  for x, row in zip(prefixes, batch):
    np.testing.assert_allclose(row, lm.next_byte_logprobs(x), atol=1e-12)


def _with_context(lm, context):
  """lm's token model behind a context: the same answers, for prefixes that start with it."""
  seen = []

  def token_lm(prefixes):
    assert all(p[:len(context)] == context for p in prefixes)
    seen.extend(prefixes)
    return lm.token_lm([p[len(context):] for p in prefixes])

  return token_lm, seen


def test_the_bulk_path_equals_each_prefix_on_its_own(tiny_regex):
  lm, _ = tiny_regex
  texts = [b"a's ", "s 1".encode(), b""]  # the world's texts have at most 4 characters
  bulk = lm.next_byte_logprobs_along(texts)
  assert bulk.shape == (3, 5, 257)
  for i, text in enumerate(texts):
    for t in range(len(text) + 1):
      np.testing.assert_allclose(bulk[i, t], lm.next_byte_logprobs(text[:t]), atol=1e-12)
    assert np.isnan(bulk[i, len(text) + 1:]).all()  # past the text's end
  np.testing.assert_array_equal(bulk[0], lm.next_byte_logprobs_along(texts[0]))
  lm.next_byte_logprobs_along(texts)
  assert not lm._rows  # the bulk path holds no model rows afterwards
  with pytest.raises(ValueError, match="empty list"):
    lm.next_byte_logprobs_along([])


def test_the_bulk_path_keeps_the_top_k_and_the_mass_left(tiny_regex):
  lm, _ = tiny_regex
  texts = [b"a's ", b"s 1"]
  full = lm.next_byte_logprobs_along(texts)
  top = lm.next_byte_logprobs_along(texts, top_k=3)
  assert top.logprobs.shape == top.ids.shape == (2, 5, 3) and top.rest.shape == (2, 5)
  for i, text in enumerate(texts):
    rows = full[i, :len(text) + 1]
    np.testing.assert_allclose(top.logprobs[i, :len(text) + 1],
                               -np.sort(-rows, axis=1)[:, :3], rtol=1e-6)
    np.testing.assert_allclose(  # the k picked carry those log-probabilities
        np.take_along_axis(rows, top.ids[i, :len(text) + 1].astype(int), 1),
        top.logprobs[i, :len(text) + 1], rtol=1e-6)
    np.testing.assert_allclose(  # with the rest, all the mass
        np.logaddexp(np.logaddexp.reduce(top.logprobs[i, :len(text) + 1], axis=1),
                     top.rest[i, :len(text) + 1]), 0.0, atol=1e-6)
  assert (top.ids[1, 4:] == -1).all() and np.isnan(top.logprobs[1, 4:]).all()
  one = lm.next_byte_logprobs_along(texts[0], top_k=257)
  np.testing.assert_array_equal(one.rest, -np.inf)  # nothing left out
  for bad in (0, 258, 2.5, True):
    with pytest.raises(ValueError, match="top_k"):
      lm.next_byte_logprobs_along(texts, top_k=bad)


def test_a_context_conditions_every_prefix(tiny_regex):
  lm, _ = tiny_regex
  context = (7, 8, 9)
  token_lm, seen = _with_context(lm, context)
  conditioned = ByteLM(token_lm, lm.bpe, lm.eot_id, context=context)
  for x in [b"", b"a'", b"s 1"]:
    np.testing.assert_allclose(conditioned.next_byte_logprobs(x), lm.next_byte_logprobs(x))
  assert seen and conditioned.logprob(b"as") == lm.logprob(b"as")


def test_fill_in_the_middle_reads_the_middle_after_the_sentinels(tiny_regex):
  lm, _ = tiny_regex
  pre, suf, mid = 3, 4, 5
  prefix, suffix = b"a 's", b"1!"
  context = (pre, *lm.bpe.encode(prefix), suf, *lm.bpe.encode(suffix), mid)
  token_lm, seen = _with_context(lm, context)
  fim = ByteLM(token_lm, lm.bpe, lm.eot_id, fim_ids=(pre, suf, mid))
  for key in range(5):
    got = fim.complete(prefix, suffix, max_bytes=6, key=key, temperature=1.0)
    assert got == lm.sample(b"", 6, key=key)  # the middle, sampled as a text of its own
  assert seen and fim.calls > 0
  with pytest.raises(ValueError, match="FIM sentinels"):
    lm.complete(prefix, suffix)


def test_completion_after_a_cut_token_is_the_most_likely_bytes(tiny_regex):
  lm, truth = tiny_regex
  x = b"a "  # most texts continue " as"/" a" differently than the token "  " suggests
  got = lm.complete(x, max_bytes=3)
  want = b""
  for _ in range(3):
    logp = lm.next_byte_logprobs(x + want)
    if int(np.argmax(logp)) == END:
      break
    want += bytes([int(np.argmax(logp))])
  assert got == want
  import jax  # a JAX key works like an int seed
  assert lm.sample(b"a", 4, key=jax.random.key(2)) == lm.sample(b"a", 4, key=jax.random.key(2))


@pytest.mark.parametrize("max_nodes", [4, 7, 512])
def test_token_trees_hold_every_row_once_per_distinct_prefix(max_nodes):
  rng = np.random.default_rng(0)
  rows = [[1] + rng.integers(2, 6, rng.integers(0, 6)).tolist() for _ in range(30)] + [[1] * 9]
  trees, where = adapters.token_trees(rows, max_nodes=max_nodes)
  _assert_paths_are_rows(rows, trees, where)
  for ids, depths, parents in trees:  # only a tree with a path as long goes past the limit
    assert len(ids) <= max_nodes or max(depths) >= max_nodes - 1
  if max_nodes == 512:  # one tree, a node per distinct prefix
    assert len(trees) == 1 and len(trees[0][0]) == len({tuple(r[:k]) for r in rows
                                                          for k in range(1, len(r) + 1)})


def _assert_paths_are_rows(rows, trees, where):
  for row, (t, n) in zip(rows, where):
    ids, depths, parents = trees[t]
    path = []
    while n >= 0:  # parents come before their children
      assert parents[n] < n and depths[n] == (depths[parents[n]] + 1 if parents[n] >= 0 else 0)
      path.append(ids[n])
      n = parents[n]
    assert path[::-1] == row


def test_balanced_trees_fill_the_batch_they_are_padded_to():
  rows = [[1, 2 + i // 40, 100 + i] for i in range(1100)]  # 1,129 distinct prefixes
  assert len(adapters.token_trees(rows)[0]) == 3  # run as 4 trees of 512, one of them padding
  trees, where = adapters.balanced_trees(rows)
  _assert_paths_are_rows(rows, trees, where)
  assert len(trees) == 4 and max(len(ids) for ids, _, _ in trees) <= 320
  few = [[1, 2, 3], [1, 2, 4]]  # one tree stays one tree
  assert adapters.balanced_trees(few)[0] == adapters.token_trees(few)[0]
  path = list(range(1, 1200))  # a long text read along: its path, a leaf off every node
  rows = [path[:k] for k in range(1, len(path) + 1)] + [path[:k] + [0] for k in range(1, 1199)]
  trees, where = adapters.balanced_trees(rows)
  _assert_paths_are_rows(rows, trees, where)
  assert len(trees) == 1 and len(trees[0][0]) == 2 * 1199 - 1  # not a copy of the path a tree
  texts = [[1, t] + list(range(100 * t, 100 * t + 700)) for t in range(2, 6)]  # 4 long texts
  rows = [r[:k] for r in texts for k in range(1, len(r) + 1)] + [r[:k] + [0] for r in texts
                                                                 for k in range(2, len(r))]
  trees, where = adapters.balanced_trees(rows)
  _assert_paths_are_rows(rows, trees, where)
  assert len(trees) == 4 and max(len(ids) for ids, _, _ in trees) < 1410  # a text a tree


def test_token_trees_of_rows_longer_than_a_tree_copy_little():
  rows = [list(range(1, 1001)), list(range(1, 300)) + [7], list(range(1, 900)) + [8]]
  trees, where = adapters.token_trees(rows, max_nodes=512)
  distinct = len({tuple(r[:k]) for r in rows for k in range(1, len(r) + 1)})
  assert sum(len(ids) for ids, _, _ in trees) < 1.5 * distinct and len(trees) <= 2


def test_trees_after_a_kept_path_have_the_logits_of_the_path_written_out():
  """`DecoderLM.tree_logits` after `path_kv` (a sampling loop's stable tokens kept), and
  `adapters._PathCache` choosing it, give the logits of the whole rows' trees."""
  cfg = decoder.DecoderConfig(**config_file.load(
      pathlib.Path(__file__).resolve().parents[1] / "configs" / "bytes_decoder.py",
      "tiny").model.to_dict())
  compiled = Compiled(decoder.DecoderLM(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(2)
  path = [1] + rng.integers(3, 200, 24).tolist()
  rows = [path + rng.integers(3, 200, rng.integers(1, 5)).tolist() for _ in range(6)]
  rows += [r[:len(path) + 1] for r in rows[:3]]  # rows that are others' prefixes
  want = adapters._last_logprobs(compiled, rows)
  padded = np.zeros((1, 64), np.int32)  # the path, padded as _PathCache pads it
  padded[0, :len(path)] = path
  trees, where = adapters.token_trees([r[len(path):] for r in rows])
  ids_BN, depth_BN, attend_BNN = adapters.tree_batch(trees, 1, 32)
  got = np.asarray(compiled("tree_logits", ids_BN, depth_BN + len(path), attend_BNN,
                            compiled("path_kv", padded), np.int32(len(path))))
  got = np.stack([got[t, n] for t, n in where])
  np.testing.assert_allclose(got - got.max(-1, keepdims=True),
                             want - want.max(-1, keepdims=True), atol=1e-5)
  cache = adapters._PathCache(compiled)
  np.testing.assert_allclose(cache(rows), want, atol=1e-5)
  assert cache.path == tuple(path)  # kept: the rows share it and one more token at most
  longer = [r + [7] for r in rows[:4]]  # a step later: the same path, not read again
  past = cache.past
  np.testing.assert_allclose(cache(longer), adapters._last_logprobs(compiled, longer),
                             atol=1e-5)
  assert cache.past is past
  start = [path[:20] + [9, 9], path[:20] + [8], path[:21]]  # a start of the kept path
  np.testing.assert_allclose(cache(start), adapters._last_logprobs(compiled, start), atol=1e-5)
  assert cache.past is past  # (a position's keys and values depend on what is before it)
  apart = [[1, 5, 6], [1, 7]]  # sharing little: the whole trees
  np.testing.assert_allclose(cache(apart), adapters._last_logprobs(compiled, apart), atol=0)


def test_tree_logits_are_the_logits_at_the_end_of_each_path():
  cfg = decoder.DecoderConfig(**config_file.load(
      pathlib.Path(__file__).resolve().parents[1] / "configs" / "bytes_decoder.py",
      "tiny").model.to_dict())
  compiled = Compiled(decoder.DecoderLM(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(1)
  rows = [[1] + rng.integers(3, 200, rng.integers(0, 12)).tolist() for _ in range(12)]
  rows += [r[:k] for r in rows[:4] for k in range(1, len(r))]
  padded = np.zeros((len(rows), 16), np.int32)  # each row written out, as __call__ reads it
  for i, row in enumerate(rows):
    padded[i, :len(row)] = row
  logits = np.asarray(compiled("__call__", padded, padded != 0))
  want = np.stack([logits[i, len(row) - 1] for i, row in enumerate(rows)])
  for max_nodes in (9, 512):
    trees, where = adapters.token_trees(rows, max_nodes=max_nodes)
    for tree, (ids, depths, parents) in enumerate(trees):
      attend = np.eye(len(ids), dtype=bool)
      for n, parent in enumerate(parents):
        attend[n] |= attend[parent] if parent >= 0 else False
      got = np.asarray(compiled("tree_logits", np.asarray([ids]), np.asarray([depths]),
                                attend[None]))[0]
      for i, (t, n) in enumerate(where):
        if t == tree:
          np.testing.assert_allclose(got[n], want[i], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained_bpe_decoder(trained_bpe_decoder_run):
  """configs/bpe_decoder.py:tiny trained for its few steps: a real token model and tokenizer
  (tests/conftest.py: the run test_bpe reads too)."""
  return trained_bpe_decoder_run[0]


@pytest.fixture(scope="module")
def trained_bpe_lm(trained_bpe_decoder):
  """The trained BPE decoder behind bytelm.load, loaded once (its compiled calls shared)."""
  return bytelm.load(trained_bpe_decoder)


def test_a_trained_bpe_decoder_scores_the_same_the_token_way_and_the_byte_way(
    trained_bpe_decoder, trained_bpe_lm):
  from bytelm.runs.load import load as load_run

  lm = trained_bpe_lm.byte_lm()
  model = load_run(trained_bpe_decoder)
  for text in [b"The cat sat.", "Žluťoučký".encode()]:
    ids = [1] + lm.bpe.encode(text) + [1]  # eos, the text, eos
    # The model's own softmax (384 rows), at the tokenizer's 300 ids.
    logits = np.asarray(model(jnp.asarray([ids]))[0], np.float64)
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    logp = logp[:, :len(lm.bpe.token_bytes)]
    token_way = sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1))
    assert abs(lm.logprob(text) - token_way) < 1e-4
    # Byte by byte, the lemma's ratios telescope to the token way; normalised distributions
    # give back the mass this barely trained model puts on non-canonical token sequences.
    assert abs(chain_logprob(lm, text, normalize=False) - token_way) < 1e-4
    assert chain_logprob(lm, text) > token_way + 1e-3
    # Bits per byte leave the end out (docs/api.md): the text's tokens, not the final eos, as
    # score and the training loop's evaluation count them (each text within one window).
    bits = -(token_way - logp[len(ids) - 2, 1]) / math.log(2)
    assert abs(lm.bits_per_byte([text]) - bits / len(text)) < 1e-6
    assert abs(trained_bpe_lm.score([text.decode("utf-8")])[0] - bits / len(text)) < 1e-4
  with pytest.raises(FileNotFoundError, match="bpe_decoder"), \
      pytest.warns(DeprecationWarning, match=r"bytelm\.load\(workdir\)\.byte_lm\(\)"):
    adapters.from_workdir(trained_bpe_decoder.parent)  # deprecated, for one release


def test_a_prefix_is_str_or_bytes(trained_bpe_lm):
  """A str is read as its UTF-8 bytes, by a tokenized LM and by an ensemble of it."""
  lm = trained_bpe_lm.byte_lm()
  want = lm.next_byte_logprobs(b"And G")
  np.testing.assert_array_equal(lm.next_byte_logprobs("And G"), want)
  np.testing.assert_array_equal(ensemble([lm]).next_byte_logprobs("And G"), want)


def test_every_text_is_str_or_bytes(tiny):
  """Every ByteLM and Ensemble call that takes a text takes str (its UTF-8 bytes) or bytes."""
  lm, _ = tiny
  mix = ensemble([lm, lm])
  for model in (lm, mix):
    assert model.logprob("ab") == model.logprob(b"ab")
    assert model.bits_per_byte(["ab", "cab"]) == model.bits_per_byte([b"ab", bytearray(b"cab")])
    np.testing.assert_array_equal(model.next_byte_logprobs_along("ca"),
                                  model.next_byte_logprobs_along(b"ca"))
    with pytest.raises(TypeError, match="wrap a single one"):
      model.bits_per_byte("ab")
  assert lm.prefix_logprob("ab") == lm.prefix_logprob(b"ab")
  np.testing.assert_array_equal(lm.next_byte_logprobs_batch(["a", b"b"]),
                                lm.next_byte_logprobs_batch([b"a", b"b"]))
  assert lm.sample("a", 4, key=2, stop="c") == lm.sample(b"a", 4, key=2, stop=b"c")
  assert isinstance(lm.complete("ab", max_bytes=3), bytes)
  with pytest.raises(TypeError, match="str or bytes for the prefix"):
    lm.next_byte_logprobs(97)


@pytest.mark.hf
def test_a_hugging_face_causal_lm_reads_as_bytes(tmp_path):
  import torch  # the optional [hf] extra: run with pytest -m hf
  import transformers
  tok = bpe.train(TEXTS, 300)
  (tmp_path / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2, eos_token_id=1,
      bos_token_id=1)).eval()  # no dropout
  model.save_pretrained(tmp_path)
  lm = adapters.from_hugging_face(tmp_path)
  text = b"the fox's 12!"
  ids = [1] + lm.bpe.encode(text) + [1]
  with torch.no_grad():
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()
  token_way = sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1))
  assert abs(lm.logprob(text) - token_way) < 1e-6
  assert abs(chain_logprob(lm, text, normalize=False) - token_way) < 1e-6


def test_the_package_exposes_ensemble_as_a_function(tiny):
  import bytelm.byteprobs as byteprobs
  lm, _ = tiny
  mix = byteprobs.ensemble([lm, lm], [1.0, 3.0])
  np.testing.assert_allclose(mix.next_byte_logprobs(b"ab"), lm.next_byte_logprobs(b"ab"),
                             atol=1e-12)  # a mixture of one model with itself is that model


def test_with_the_regex_whole_texts_score_as_their_canonical_tokenization(tiny_regex):
  lm, truth = tiny_regex
  for text in list(truth)[::7]:
    ids = lm.bpe.encode(text) + [lm.eot_id]
    rows = lm.token_lm([tuple(ids[:i]) for i in range(len(ids))])
    token_way = sum(row[t] for row, t in zip(rows, ids))
    assert abs(lm.logprob(text) - token_way) < 1e-5
    assert abs(math.exp(lm.logprob(text)) - truth[text]) < 1e-9
    assert abs(chain_logprob(lm, text) - token_way) < 1e-5  # byte by byte


# ---- a token model with mass off the canonical sequences ---------------------------------------


def _leaky_token_lm(ours, tokens, eot, variant):
  """A token model that also puts mass on sequences the tokenizer never makes, as a real
  model does. After a canonical prefix (one that starts the tokenization of some text) the
  canonical next tokens get probabilities that are the same in every variant; what is left
  of the row, a random 20-70%, goes to the other tokens split differently per variant, and
  after a non-canonical prefix the whole row depends on the variant. So two variants differ
  only in how mass is spread among non-canonical sequences. Canonical is what
  `BPE.prefix_tokenizations` says (without a regex: the tokenization of the text spelled),
  over the given tokens; the others get no mass."""
  size = len(ours.token_bytes)
  rows = {}

  def canonical(s):
    return tuple(s) in ours.prefix_tokenizations(ours.decode(s))

  def row(p):
    if p not in rows:
      valid = [v for v in tokens if canonical(p + (v,))]
      valid += [eot] if ours.encode(ours.decode(p)) == list(p) else []
      others = [v for v in tokens + [eot] if v not in valid]
      out = np.zeros(size)
      if canonical(p):
        rng = np.random.default_rng([*p, 7])
        kept = rng.uniform(0.3, 0.8) if others else 1.0
        out[valid] = rng.dirichlet(np.ones(len(valid))) * kept
        if others:  # concentrated, so the variants disagree a lot
          out[others] = np.random.default_rng([variant, *p, 11]).dirichlet(
              np.full(len(others), 0.3)) * (1 - kept)
      else:
        out[tokens + [eot]] = np.random.default_rng([variant, *p, 13]).dirichlet(
            np.full(len(tokens) + 1, 0.3))
      with np.errstate(divide="ignore"):
        rows[p] = np.log(out)
    return rows[p]

  def token_lm(prefixes):
    return np.stack([row(tuple(p)) for p in prefixes])

  return token_lm


def _leaky_pair(lm, alphabet):
  """Two variants of a leaky token model over lm's tokenizer, as ByteLMs."""
  tokens = [i for i, t in enumerate(lm.bpe.token_bytes) if t and set(t) <= set(alphabet)]
  return [ByteLM(_leaky_token_lm(lm.bpe, tokens, lm.eot_id, variant), lm.bpe, lm.eot_id)
          for variant in (0, 1)]


def test_byte_probabilities_count_only_canonical_token_sequences(tiny):
  # The lemma sums P(h, v) over canonical covers only: mass the model puts on other token
  # sequences, however it is spread, changes neither prefix nor next-byte probabilities.
  # Without a regex a canonical prefix is the tokenization of the text it spells, so the
  # covers of x are the tokenizations of the texts that start with x whose last token starts
  # inside x: a brute force over those texts.
  ours = tiny[0].bpe
  a, b = _leaky_pair(tiny[0], ALPHABET)
  split = [ours.vocab[b"a"], ours.vocab[b"b"]]  # "ab" is one token: [a][b] is not canonical
  assert ours.encode(b"ab") != split
  assert abs(a.sequence_logprob(split) - b.sequence_logprob(split)) > 0.5  # mass was moved

  def brute(x):
    total = 0.0
    for n in range(ours.max_token_bytes):
      for rest in itertools.product(ALPHABET, repeat=n):
        ids = ours.encode(x + bytes(rest))
        if len(ours.decode(ids[:-1])) < len(x):  # the last token starts inside x
          total += math.exp(a.sequence_logprob(ids))
    return math.log(total)

  for x in _all_strings(4):
    want = brute(x)
    assert abs(a.prefix_logprob(x) - want) < 1e-9 and abs(b.prefix_logprob(x) - want) < 1e-9, x
  lost = []  # mass the unnormalised next bytes miss: on non-canonical sequences
  for x in [b"", b"a", b"ab", b"cab", b"abca"]:
    want = np.full(257, -np.inf)
    base = brute(x) if x else 0.0
    for c in ALPHABET:
      want[c] = brute(x + bytes([c])) - base
    want[END] = a.sequence_logprob(ours.encode(x) + [a.eot_id]) - base
    np.testing.assert_allclose(a.next_byte_logprobs(x, normalize=False), want, atol=1e-9)
    np.testing.assert_allclose(b.next_byte_logprobs(x, normalize=False), want, atol=1e-9)
    normal = want - np.logaddexp.reduce(want)
    np.testing.assert_allclose(a.next_byte_logprobs(x), normal, atol=1e-9)
    np.testing.assert_allclose(b.next_byte_logprobs(x), normal, atol=1e-9)
    lost.append(1 - math.exp(np.logaddexp.reduce(want)))
  assert max(lost) > 0.2, lost


def test_with_the_regex_moving_non_canonical_mass_changes_no_byte_probability(tiny_regex):
  # The regex makes the canonical heads of a prefix depend on what follows it ("a  " vs
  # "a  1"): mass on the heads it rules out must not count either.
  a, b = _leaky_pair(tiny_regex[0], REGEX_ALPHABET.encode())
  prefixes = [b"", b"a", b"a ", b"a  ", b"a  a", b"'", b"a'", b"a's", b" '", b"s 1", b"  1",
              b"as!"]
  for x in prefixes:
    assert abs(a.prefix_logprob(x) - b.prefix_logprob(x)) < 1e-9, x
  for normalize in (True, False):
    np.testing.assert_allclose(a.next_byte_logprobs_batch(prefixes, normalize),
                               b.next_byte_logprobs_batch(prefixes, normalize), atol=1e-9)
  kept = np.logaddexp.reduce(a.next_byte_logprobs_batch(prefixes, normalize=False), axis=1)
  assert kept.min() < math.log(0.8)  # the model does leak: unnormalised rows miss mass


def test_a_cut_character_is_completed_once_per_class_it_can_become():
  """The probes after a prompt cut inside a UTF-8 character (`tokenization._completions`): one
  rest per class of character (letter, number, punctuation, ..., space) that the cut can still
  become, found here by encoding every code point, and a last rest that leaves it invalid. A
  class left out would drop the heads of texts that continue into it."""
  cuts = [bytes([lead]) for lead in range(0xC2, 0xF5)]
  cuts += [b"\xc3", b"\xe2\x80", b"\xe3\x81", b"\xef\xbf", b"\xf0\x9f", b"\xf0\x9f\x98",
           b"\xf3\xa0\x80", b"\xf4\x8f\xbf"]
  class_of = splits.character_class  # the completions' classes

  # They are at least as fine as the classes each pattern tells apart (GPT-2's: letters,
  # digits, whitespace, the rest; the Split patterns' own), by the regex module's tables.
  gpt2 = regex.compile(r"(\p{L})|(\p{N})|(\s)")
  splitters = [splits.RegexSplit(p) for p in splits.PATTERNS.values()]
  seen = {}
  for cp in range(0x80, 0x30000):
    if not 0xD800 <= cp < 0xE000:
      ch = chr(cp)
      found = gpt2.match(ch)
      theirs = (found.lastindex if found else 0,) + tuple(r._class_of(ch) for r in splitters)
      assert seen.setdefault(class_of(ch), theirs) == theirs, hex(cp)

  classes = collections.defaultdict(set)
  wanted = set(cuts)
  for cp in range(0x80, 0x110000):
    if 0xD800 <= cp < 0xE000:  # surrogates: no UTF-8
      continue
    ch = chr(cp)
    data = ch.encode("utf-8")
    for k in range(1, len(data)):
      if data[:k] in wanted:
        classes[data[:k]].add(class_of(ch))
  for cut in cuts:
    *rests, invalid = tokenization._completions(cut)
    found = []
    for rest in rests:
      ch = (cut + rest).decode("utf-8")  # each rest completes the character
      assert len(ch) == 1, (cut, rest)
      found.append(class_of(ch))
    assert sorted(found) == sorted(classes[cut]), cut  # every class, each once
    with pytest.raises(UnicodeDecodeError):
      (cut + invalid).decode("utf-8")
  for never in (b"\xc0", b"\xc1", b"\xf5", b"\xe0\x80", b"\xed\xa0"):  # overlong, past
    assert tokenization._completions(never) == [b"!"]  # U+10FFFF, surrogate: nothing valid
