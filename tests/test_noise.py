"""Noise for the correction tasks: diacritic stripping by Unicode name, keyboard typos."""

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
        * 40)


@pytest.mark.parametrize("layout", sorted(noise.LAYOUTS))
def test_typos_hit_their_rate_and_use_neighbouring_keys(layout):
  near = noise.neighbours(layout)
  typeable = sum(ch.lower() in near for ch in TEXT)
  typos = noise.plan_typos(TEXT, rate=0.05, layout=layout, seed=3)
  # Binomial(typeable ~ 2700, 0.05): mean ~135, sd ~11; transpositions skip one character.
  assert 0.8 * 0.05 * typeable < len(typos) < 1.2 * 0.05 * typeable
  assert {t.kind for t in typos} == set(noise.TYPO_KINDS)
  for t in typos:
    if t.char:
      assert t.char.lower() in near[TEXT[t.position].lower()], t
  # Each typo is one edit (a transposition counts as one), apart from neighbouring typos that
  # merge: the distance can only be smaller.
  noisy = noise.add_typos(TEXT[:600], rate=0.05, layout=layout, seed=3)
  n = len(noise.plan_typos(TEXT[:600], rate=0.05, layout=layout, seed=3))
  assert 0.8 * n <= damerau_levenshtein(TEXT[:600], noisy) <= n and n > 5


def test_typos_are_reproducible_per_seed():
  a = noise.add_typos(TEXT, seed=1)
  assert a == noise.add_typos(TEXT, seed=1)
  assert a != noise.add_typos(TEXT, seed=2)
  assert a != TEXT and noise.add_typos(TEXT, rate=0.0) == TEXT
  assert noise.add_typos("ÄÖ 中文 ???", rate=1.0) == "ÄÖ 中文 ???"  # nothing typeable


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
