"""Exact byte-level probabilities from tokenized LMs (Phan et al., 2024). Work in progress
(issue 7): completion / fill-in-the-middle, batched evaluation and eval/byteprobs.py are next.

- `tokenization.BPE`: the canonical tokenization of any bytes by a byte-level BPE read from a
  Hugging Face tokenizer.json, and the validity of token sequences;
- `byte_lm.ByteLM`: a tokenized LM as a byte LM: prefix, next-byte and whole-text probabilities
  by cover encodings, byte-by-byte sampling;
- `ensemble.ensemble`: mixtures of byte LMs' next-byte distributions;
- `adapters`: bytelm's own models behind these interfaces.
"""
