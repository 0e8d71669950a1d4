"""Demos: diacritics restoration and typo correction with a byte-level corrector."""
