"""Noise for the correction tasks: diacritic stripping by Unicode name, keyboard typos."""

import random
import unicodedata

import pytest

from bytelm.data import noise

# Letter -> stripped letter, across the corrector's languages and the letters NFD misses.
STRIPPED = {
    # Lithuanian
    "ą": "a", "č": "c", "ę": "e", "ė": "e", "į": "i", "š": "s", "ų": "u", "ū": "u", "ž": "z",
    # Czech
    "á": "a", "ď": "d", "é": "e", "ě": "e", "í": "i", "ň": "n", "ó": "o", "ř": "r", "ť": "t",
    "ú": "u", "ů": "u", "ý": "y",
    # Polish (ł has no decomposition)
    "ć": "c", "ł": "l", "ń": "n", "ś": "s", "ź": "z", "ż": "z", "Ł": "L",
    # Romanian (comma below and the cedilla forms)
    "ă": "a", "â": "a", "î": "i", "ș": "s", "ț": "t", "ş": "s", "ţ": "t",
    # Vietnamese (đ, ư, ơ; stacked marks)
    "đ": "d", "Đ": "D", "ư": "u", "ơ": "o", "ệ": "e", "ầ": "a", "ỹ": "y", "ở": "o", "ự": "u",
    # French, Spanish, Nordic, others
    "à": "a", "ç": "c", "è": "e", "ê": "e", "ë": "e", "ï": "i", "ô": "o", "ù": "u", "û": "u",
    "ÿ": "y", "ñ": "n", "ü": "u", "ö": "o", "ø": "o", "Ø": "O", "å": "a", "ħ": "h", "ő": "o",
    # letters of their own, not decorated ones: unchanged
    "ß": "ß", "œ": "œ", "Œ": "Œ", "æ": "æ", "ð": "ð", "þ": "þ", "ı": "ı",
    # other scripts: unchanged
    "й": "й", "ё": "ё", "ά": "ά", "中": "中",
}


def test_stripping_matches_the_table():
  for letter, base in STRIPPED.items():
    assert noise.strip_diacritics(letter) == base, letter
  assert noise.strip_diacritics("q\u0303") == "q"  # a mark with no precomposed letter


def test_stripping_sentences_in_nfc_and_nfd():
  text = "Laba diena, aš esu iš Lietuvos. Tiếng Việt. Łódź. Straße. Привет, мой друг."
  want = "Laba diena, as esu is Lietuvos. Tieng Viet. Lodz. Straße. Привет, мой друг."
  assert noise.strip_diacritics(text) == want
  assert noise.strip_diacritics(unicodedata.normalize("NFD", text)) == want
  ascii_text = "plain ASCII, digits 0-9 and punctuation!?"
  assert noise.strip_diacritics(ascii_text) == ascii_text


def damerau_levenshtein(a: str, b: str) -> int:
  """Edit distance with adjacent transpositions (optimal string alignment)."""
  d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
      if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
        d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
  return d[-1][-1]


TEXT = ("The quick brown fox jumps over the lazy dog while five boxing wizards jump quickly. "
        "Call me at 555-0134 or mail anna@example.org, the address is on www.example.org/x9. "
        "Tomorrow we will see the committee about the ballet. Déjà vu, señor, Ærøskøbing! "
        * 30)


@pytest.mark.parametrize("layout", sorted(noise.LAYOUTS))
def test_typos_hit_their_rate_and_use_neighbouring_keys(layout):
  near = noise.neighbours(layout)
  ok = noise.typeable(TEXT, layout)
  typos = noise.plan_typos(TEXT, rate=0.05, layout=layout, seed=3)
  # Binomial(~4800 letters, 0.05): mean ~240, sd ~15; a transposition or an undoubling also
  # takes the next letter, which then draws nothing.
  assert 0.85 * 0.05 * sum(ok) < len(typos) < 1.15 * 0.05 * sum(ok)
  assert {t.kind for t in typos} == set(noise.TYPO_KINDS)
  for t in typos:
    ch = TEXT[t.position]
    assert ok[t.position], t  # only letters of words, never digits, addresses or URLs
    if t.char:
      assert t.char.isalpha() and t.char.lower() in near[noise.strip_diacritics(ch.lower())], t
      assert t.char.isupper() == ch.isupper(), t
    if t.kind == "transpose":
      assert ok[t.position + 1] and TEXT[t.position + 1] != ch, t
    if t.kind == "undouble":
      assert TEXT[t.position + 1] == ch, t
  # Each typo is one edit (a transposition counts as one), apart from neighbouring typos that
  # merge: the distance can only be smaller.
  noisy = noise.add_typos(TEXT[:600], rate=0.05, layout=layout, seed=3)
  n = len(noise.plan_typos(TEXT[:600], rate=0.05, layout=layout, seed=3))
  assert 0.8 * n <= damerau_levenshtein(TEXT[:600], noisy) <= n and n > 5


def test_kinds_follow_their_weights():
  typos = noise.plan_typos(TEXT * 4, rate=0.3, seed=5)
  share = {k: sum(t.kind == k for t in typos) / len(typos) for k in noise.TYPO_KINDS}
  # transpose and undouble are possible at fewer letters, and fall to the others there
  for kind in ("substitute", "delete", "insert_before", "insert_after", "double"):
    assert share[kind] > noise.KIND_WEIGHTS[kind], (kind, share)
  assert 0 < share["undouble"] < noise.KIND_WEIGHTS["undouble"] / 2 < share["transpose"]


def test_typos_leave_spaces_punctuation_digits_addresses_and_urls_alone():
  noisy = noise.add_typos(TEXT, rate=1.0, seed=0)  # every letter that may be touched is
  assert noisy.count(" ") == TEXT.count(" ")
  for clean_word, noisy_word in zip(TEXT.split(" "), noisy.split(" ")):
    if any(ch.isdigit() for ch in clean_word) or "@" in clean_word or "www." in clean_word:
      assert noisy_word == clean_word
    else:
      assert [c for c in noisy_word if not c.isalpha()] == [c for c in clean_word
                                                             if not c.isalpha()]
  assert not any(ch.isdigit() for ch in noise.add_typos("no digits here " * 50, rate=1.0))
  assert noise.add_typos("中文 ??? 1234", rate=1.0) == "中文 ??? 1234"  # nothing typeable


def test_typos_are_reproducible_per_seed():
  a = noise.add_typos(TEXT, seed=1)
  assert a == noise.add_typos(TEXT, seed=1)
  assert a != noise.add_typos(TEXT, seed=2)
  assert a != TEXT and noise.add_typos(TEXT, rate=0.0) == TEXT


def test_the_default_rate_is_about_one_typo_per_20_characters():
  prose = ("Thanks for the photos, they are lovely. We got home late because the roads were "
           "busy, but the children slept all the way. See you at lunch on Sunday!\n") * 60
  n = len(noise.plan_typos(prose, seed=0))  # Binomial(~7000 letters, 0.065): sd ~2.5%
  assert 1 / 22 < n / len(prose) < 1 / 18


def test_one_typo_is_one_edit_of_the_model():
  rng = random.Random(0)
  for word in ("address", "tomorrow", "from", "señor", "a"):
    for _ in range(50):
      wrong = noise.one_typo(word, rng)
      assert wrong != word and damerau_levenshtein(word, wrong) == 1, (word, wrong)
  assert noise.one_typo("1234", rng) == "1234"


def test_corrupt_and_bad_arguments():
  text = "Aš esu iš Lietuvos"
  assert noise.corrupt(text, "diacritics") == "As esu is Lietuvos"
  both = noise.corrupt(text, "both", rate=0.5, seed=0)
  assert both == noise.add_typos("As esu is Lietuvos", rate=0.5, seed=0) != "As esu is Lietuvos"
  with pytest.raises(ValueError, match="layout"):
    noise.add_typos(text, layout="dvorak")
  with pytest.raises(ValueError, match="task"):
    noise.corrupt(text, "spelling")
  with pytest.raises(ValueError, match="rate"):
    noise.add_typos(text, rate=2.0)


def test_perturbations_change_about_rate_of_the_characters():
  text = "The Quick brown fox jumps over the lazy dog. " * 40
  assert noise.perturb(text, "swap_delete", 0.0) == text
  for kind in noise.PERTURBATIONS:
    out = noise.perturb(text, kind, 0.05, seed=1)
    assert out == noise.perturb(text, kind, 0.05, seed=1) and out != text
  flipped = noise.perturb(text, "case_flip", 0.05, seed=1)
  assert flipped.lower() == text.lower() and len(flipped) == len(text)
  changed = sum(a != b for a, b in zip(flipped, text)) / sum(c.isalpha() for c in text)
  assert 0.02 < changed < 0.08
  spaced = noise.perturb(text, "whitespace", 0.05, seed=1)
  assert spaced.replace(" ", "") == text.replace(" ", "")
  assert 0.03 < (len(spaced) - len(text)) / len(text) < 0.07
  shuffled = noise.perturb(text, "swap_delete", 0.05, seed=1)
  assert sorted(shuffled) != sorted(text) and len(shuffled) < len(text)  # some deletions
  with pytest.raises(ValueError, match="perturbation"):
    noise.perturb(text, "reverse", 0.1)
