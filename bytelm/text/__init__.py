"""Bytes and text on the host, below every other room: the ByT5 byte ids (`tokenizer`), where
words and segments start (`segment`), diacritics stripped (`diacritics`) and the diacritics tag
vocabulary (`tags`). numpy and the standard library only: both the data pipeline and the models
build on these, so neither has to import the other."""
