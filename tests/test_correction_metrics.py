"""The corrector's word accuracies on hand-counted sentences, and the lexicon baseline."""

import math

from bytelm.demos import metrics

GOLD = "Aš esu iš Lietuvos, 2024 m."  # alpha words: Aš esu iš Lietuvos, m. (not 2024)


def test_word_counts_by_hand():
  seen = {"esu", "iš", "m."}
  c = metrics.word_counts(GOLD, "As esu iš Lietuvos, 2024 m.", seen)
  assert (c.alpha, c.alpha_total) == (4, 5)  # only "Aš" is wrong
  assert (c.diacritic, c.diacritic_total) == (1, 2)  # Aš (wrong), iš (right)
  assert (c.unseen, c.unseen_total) == (1, 2)  # Aš (wrong), Lietuvos, (right)
  assert c.accuracy() == 0.8 and c.accuracy("diacritic") == 0.5
  # Case matters, and so does punctuation attached to a word.
  assert metrics.word_counts(GOLD, "aš esu iš Lietuvos 2024 m.").alpha == 3  # esu iš m.


def test_a_different_word_count_makes_every_word_wrong():
  c = metrics.word_counts(GOLD, "Aš esu iš Lietuvos,2024 m.")  # 5 words against 6
  assert (c.alpha, c.alpha_total, c.diacritic, c.diacritic_total) == (0, 5, 0, 2)
  assert c.unseen_total == 0 and math.isnan(c.accuracy("unseen"))  # no vocabulary given


def test_corpus_counts_add_sentences():
  golds = [GOLD, "Čia gera."]
  preds = ["As esu iš Lietuvos, 2024 m.", "Čia gera."]
  c = metrics.corpus_counts(golds, preds, metrics.vocabulary(["esu iš m. gera."]))
  assert (c.alpha, c.alpha_total) == (6, 7)
  assert (c.diacritic, c.diacritic_total) == (2, 3)
  assert (c.unseen, c.unseen_total) == (2, 3)  # Aš, Lietuvos, and Čia are unseen


def test_lexicon_restores_the_most_frequent_form():
  lex = metrics.Lexicon(["Aš esu čia.", "aš esu", "Ąžuolas auga.", "šalis salis salis"])
  assert lex("As esu cia.") == "Aš esu čia."
  assert lex("AS, azuolas!") == "AŠ, ąžuolas!"  # case put back, punctuation kept
  assert lex("salis") == "salis"  # 2 of 3
  assert lex("xyz 42") == "xyz 42"  # unknown words stay
  assert lex.candidates("Salis") == {"Šalis": 1, "Salis": 2}  # counts, capital put back
  assert lex.candidates("xyz") == {}


def test_typo_counts_align_words_by_edit_distance():
  gold = "the cat sat on the mat"
  # A lost word costs only itself, not the sentence (word_counts would count all 6 wrong).
  c = metrics.aligned_word_counts(gold, "the cat sat the mat")
  assert (c.alpha, c.alpha_total) == (5, 6)
  assert metrics.word_counts(gold, "the cat sat the mat").alpha == 0
  # A split word: "sat" is wrong, the rest stays aligned.
  c = metrics.aligned_word_counts(gold, "the cat s at on the mat")
  assert (c.alpha, c.alpha_total) == (5, 6)
  # A wrong word in place, and unseen counting.
  c = metrics.aligned_word_counts("Laba diena, aš esu", "Laba dienq, aš esu", seen={"Laba", "esu"})
  assert (c.alpha, c.diacritic, c.diacritic_total, c.unseen, c.unseen_total) == (3, 1, 1, 1, 2)
  assert metrics.corpus_counts([gold], ["the cat sat the mat"], aligned=True).alpha == 5
