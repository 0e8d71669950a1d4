"""Exact byte-level probabilities from tokenized LMs (Phan et al., 2024): work in progress.

`tokenization.BPE` is the canonical tokenization the exact conversion rests on: a byte-level BPE
read from a Hugging Face tokenizer.json, encoding any bytes, so that a token sequence's validity
(is it what the tokenizer itself produces for its bytes?) can be decided.
"""
