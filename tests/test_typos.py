"""bytelm.demos.typos (the noisy-channel typo corrector) and the word-edit metrics it is
measured with (bytelm.demos.metrics.EditCounts)."""

import math

import numpy as np
import pytest

from bytelm.data import noise
from bytelm.demos import metrics
from bytelm.demos.bigrams import Bigrams
from bytelm.demos.typos import TypoCorrector, channel_cost

pytest.importorskip("symspellpy", reason="symspellpy is a dependency of bytelm: reinstall it")

WORDS = {"the": 5_000_000, "i": 3000, "will": 900, "receive": 40, "package": 30, "tomorrow": 60,
         "from": 2000, "form": 150, "letter": 50, "my": 1500, "got": 400, "a": 4000,
         "see": 700, "you": 3000, "at": 2000, "there": 800, "their": 700, "house": 200,
         "is": 4000, "big": 300, "met": 100, "today": 300, "address": 50, "mail": 80,
         "me": 1000, "on": 2000, "apples": 20, "bought": 60, "hello": 90, "or": 1500,
         "and": 4500}


@pytest.fixture(scope="module")
def corrector():
  return TypoCorrector(WORDS)


def test_the_channel_follows_the_typo_model():
  same = channel_cost("package", "package")
  assert 0 < same < 0.5  # seven letters typed right
  near = channel_cost("form", "fprm")  # o -> p: neighbouring keys
  far = channel_cost("form", "fzrm")
  assert same < near < far
  assert channel_cost("from", "form") < 2 * near  # a transposition is one slip, not two
  assert channel_cost("address", "adress") < channel_cost("address", "addrss")  # undoubling
  assert channel_cost("café", "cafe") < near  # an accent left out costs little
  assert math.isclose(channel_cost("tomorrow", "tommorow") - same,
                      channel_cost("tomorrow", "tommorow") - same)  # deterministic


def test_typos_are_fixed_and_everything_else_kept(corrector):
  assert corrector.correct("I will recieve the pakage tommorow.") == (
      "I will receive the package tomorrow.")
  # case, punctuation and spacing as typed; digits, addresses and URLs never touched
  assert corrector.correct("  TOMMOROW,  I got 12 aples!! mail me: hello@exmaple.com  ") == (
      "  TOMORROW,  I got 12 apples!! mail me: hello@exmaple.com  ")
  assert corrector.correct("see www.pakage.com/tommorow or pakage2") == (
      "see www.pakage.com/tommorow or pakage2")
  assert corrector.correct("Tommorow") == "Tomorrow"


def test_names_and_known_words_are_left_alone_without_strong_evidence(corrector):
  # Capitalised inside a sentence and unknown: a name. Known words need context (no LM here).
  assert corrector.correct("I met Hellu today") == "I met Hellu today"
  assert corrector.correct("I met hellu today") == "I met hello today"  # not a name: fixed
  assert corrector.correct("I got a letter form my house") == "I got a letter form my house"
  clean = ["I will see you there.", "Their house is big!", "", "¿?", "中文 and 123"]
  assert corrector(clean) == clean


class FakeLM:
  """A 'language model' whose bits per byte are low for lines holding a wanted phrase."""

  def __init__(self, wanted: str, gain_bits: float):
    self.wanted, self.gain_bits = wanted, gain_bits

  def score(self, texts, batch_size=8):
    return np.asarray([3.0 - (self.gain_bits / len(t.encode()) if self.wanted in t else 0.0)
                       for t in texts])


def test_context_fixes_a_real_word_error_only_with_strong_evidence():
  line = "I got a letter form my house"
  strong = TypoCorrector(WORDS, FakeLM("letter from my", gain_bits=20.0))
  assert strong.correct(line) == "I got a letter from my house"
  weak = TypoCorrector(WORDS, FakeLM("letter from my", gain_bits=1.0))
  assert weak.correct(line) == line


def test_bigrams_score_a_word_between_its_neighbours():
  pairs = {("letter", "from"): 90, ("letter", "to"): 10, ("from", "my"): 50, ("form", "a"): 5}
  model = Bigrams(pairs, {"from": 300, "form": 100, "my": 100, "a": 500}, weight=0.2)
  assert math.isclose(model.logp("from", "letter"), math.log(0.8 * 0.9 + 0.2 * 0.3))
  assert math.isclose(model.logp("form", "letter"), math.log(0.2 * 0.1))  # unseen pair
  assert math.isclose(model.logp("from", None), math.log(0.3))  # no word before
  assert math.isclose(model.logp("from", "zebra"), math.log(0.3))  # a word without pairs
  assert model.logp("xyzzy", "letter") == model.logp("xyzzy", None) < -20  # unknown anywhere
  assert math.isclose(model.around("letter", "from", "my"),
                      model.logp("from", "letter") + model.logp("my", "from"))
  assert model.around("letter", "from", None) == model.logp("from", "letter")


def test_word_pairs_fix_a_real_word_error_where_the_neighbours_say_so():
  pairs = {("letter", "from"): 900, ("letter", "form"): 1, ("from", "my"): 500,
           ("form", "my"): 1, ("a", "form"): 300, ("a", "from"): 1, ("form", "and"): 50}
  line = "I got a letter form my house"
  with_pairs = TypoCorrector(WORDS, bigrams=Bigrams(pairs, WORDS))
  assert with_pairs.correct(line) == "I got a letter from my house"
  assert with_pairs.correct("I got a form and a letter") == "I got a form and a letter"
  # Punctuation parts the words: "letter;" says nothing of the word after it, and "my"
  # alone is not evidence enough.
  assert with_pairs.correct("I got a letter; form my house") == "I got a letter; form my house"
  assert TypoCorrector(WORDS).correct(line) == line  # no context: a listed word stays


def test_typographic_apostrophes_and_acronyms_are_kept():
  corrector = TypoCorrector({**WORDS, "wasn't": 400, "isn't": 300, "it": 3000, "open": 300})
  assert corrector.correct("It wasn’t me, it isn’t teh mail") == "It wasn’t me, it isn’t the mail"
  # An acronym or a brand is kept as typed; the same words in lower case are typos, and a
  # longer word in capitals is shouted, typos and all.
  assert corrector.correct("Open the OLE or the mAIl") == "Open the OLE or the mAIl"
  assert corrector.correct("the mial") == "the mail" and corrector.correct("the ole") != "the ole"
  assert corrector.correct("RECIEVE IT") == "RECEIVE IT"
  # A listed word in capitals is an acronym too where the line is not shouted ("ole" is in
  # the list, and "le" far commoner), and in a shouted line a short word may be a typo.
  listed = TypoCorrector({**WORDS, "open": 300, "ole": 5, "le": 500_000})
  assert listed.correct("Open the OLE or the mail") == "Open the OLE or the mail"
  assert listed.correct("the ole") == "the le"
  assert corrector.correct("OPEN TEH MAIL") == "OPEN THE MAIL"


def test_edit_counts():
  gold, noisy = "I will receive the package.", "I wil receive teh package."
  perfect = metrics.edit_counts(gold, noisy, gold)
  assert (perfect.errors, perfect.corrected, perfect.clean, perfect.false_changes) == (2, 2, 3, 0)
  assert perfect.accuracy == 1 and perfect.exact_match == 1 and perfect.f_beta() == 1
  copy = metrics.edit_counts(gold, noisy, noisy)
  assert copy.accuracy == 0 and copy.false_change_rate == 0 and copy.proposed == 0
  # one fixed, one clean word broken, punctuation dropped (not counted against it)
  mixed = metrics.edit_counts(gold, noisy, "I will receive tea package")
  assert (mixed.corrected, mixed.false_changes, mixed.proposed) == (1, 0, 2)
  assert mixed.accuracy == 0.5 and not mixed.exact
  precision, recall = 1 / 2, 1 / 2
  assert math.isclose(mixed.f_beta(0.5), 1.25 * precision * recall / (0.25 * precision + recall))
  broken = metrics.edit_counts(gold, noisy, "I wil receives teh package.")
  assert broken.false_change_rate == 1 / 3 and broken.accuracy == 0
  # a word merged away is aligned, not a shift of every later word
  merged = metrics.edit_counts(gold, noisy, "I will receivethe package.")
  assert merged.corrected == 1 and merged.false_changes == 1
  total = perfect + copy
  assert total.sentences == 2 and total.exact_match == 0.5
  with pytest.raises(ValueError, match="word-preserving"):
    metrics.edit_counts(gold, "I will receive", gold)


def test_the_typo_model_keeps_words_aligned_for_the_metrics():
  text = "I will see you at the house tomorrow, a letter from my mail!"
  for seed in range(50):
    noisy = noise.add_typos(text, rate=0.3, seed=seed)
    counts = metrics.edit_counts(text, noisy, noisy)  # raises if a word was lost or split
    assert counts.errors + counts.clean == len(text.split())


def test_the_benchmark_noise_keeps_every_sentence_s_words(monkeypatch):
  """eval/correction.py's three kinds of noise replace words, never add, drop or split one
  (its metrics line the noisy words up with the gold ones), and keep case and punctuation."""
  import importlib.util
  import pathlib

  root = pathlib.Path(__file__).resolve().parents[1]
  monkeypatch.syspath_prepend(str(root / "eval"))
  spec = importlib.util.spec_from_file_location("correction", root / "eval" / "correction.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  misspelled = {"receive": ["recieve"], "tomorrow": ["tommorow", "tomorow"], "the": ["teh"]}
  for lang in ("en", "es", "fr"):
    gold = (root / "eval" / "data" / "everyday" / f"{lang}.txt").read_text().splitlines()
    noised = {"typos": bench.typos(gold, lang), "realword": bench.realword(gold, lang)}
    if lang == "en":  # codespell's misspellings are English ones
      noised["realmiss"] = bench.realmiss(gold, misspelled)
    for kind, noisy in noised.items():
      assert sum(n != g for n, g in zip(noisy, gold)) > len(gold) // 3, (lang, kind)
      for g, n in zip(gold, noisy):
        assert len(g.split()) == len(n.split()), (kind, g, n)
        metrics.edit_counts(g, n, n)
  assert bench.realmiss(["Tomorrow, THE end."], misspelled)[0] in (
      "Tommorow, TEH end.", "Tomorow, TEH end.")


def test_rare_words_are_left_alone_unless_a_common_word_outnumbers_them():
  rare = {"hellu": 2, "tommorow": 1}
  corrector = TypoCorrector(WORDS, rare_words=rare, misspelling_ratio=50)
  assert "hellu" not in corrector.candidates("hellux")  # never proposed
  # hello (90) is less than 50 x hellu's count: a rare word typed right, left alone
  assert corrector.correct("I met hellu today") == "I met hellu today"
  assert TypoCorrector(WORDS).correct("I met hellu today") == "I met hello today"  # unknown
  # tomorrow (60) outnumbers tommorow 50 times: a common misspelling, corrected
  assert corrector.correct("see you tommorow") == "see you tomorrow"
