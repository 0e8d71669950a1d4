"""Exact byte-level probabilities from tokenized LMs (Phan et al., 2024).

- `tokenization.BPE`: the canonical tokenization of any bytes by a BPE read from a Hugging
  Face tokenizer.json (`tokenizer_json`: byte-level with GPT-2's regex, none, or Llama-3's
  Split pattern (`splits`); SentencePiece-style with byte fallback), and which token
  sequences start the tokenization of some text (what makes an encoding valid);
- `byte_lm.ByteLM`: a tokenized LM as a byte LM: prefix, next-byte and whole-text
  probabilities by cover encodings, batched, and every byte of many texts at once (whole
  distributions or their top k, `TopBytes`); byte-by-byte sampling, completion of prompts that
  end mid-token, fill in the middle;
- `mixture.ensemble` (also `bytelm.byteprobs.ensemble`): mixtures of byte LMs' next-byte distributions, whatever their
  vocabularies;
- `adapters`: bytelm's BPE and byte models, and local Hugging Face causal LMs, behind these
  interfaces.
"""

from bytelm.byteprobs.byte_lm import END, ByteLM, TopBytes
from bytelm.byteprobs.mixture import Ensemble, ensemble
from bytelm.byteprobs.tokenization import BPE

__all__ = ["BPE", "END", "ByteLM", "Ensemble", "TopBytes", "ensemble"]
