"""All generation, one room: what `LanguageModel.generate` (bytelm/api.py) runs for each family.

- `encoder_decoder`: ByT5 and MrT5. Greedy, sampling (temperature, top-k, top-p) and beam
  search, compiled as one `lax.while_loop` over a KV cache: `encoder_decoder_ids` (ids in, ids
  out) and `encoder_decoder_texts` (texts in, texts out).
- `decoder`: decoder-only LMs over bytes or BPE tokens, one compiled `lax.while_loop` over the
  KV-cached step for a batch of prompts: `decoder_rows`, and `decoder_ids` for one prompt.
- `hierarchical` and `hierarchical_loop`: hierarchical byte models (HAT, BLT, H-Net), one
  compiled loop over the cached byte step, segments settled as in training (a given segmenter
  cut on the device): `hierarchical_rows`, and `hierarchical_bytes` for one prompt;
  `prefix_logits` is the uncached reference.
- `choice`: the next id from logits, greedy or sampled: `choose_B` on the device, `choose` in
  numpy for the host loops that the tests keep as references (`on_host=True`).

These are the library's internal calls on a module (tests and eval/ use them to measure the
loops); users generate through `bytelm.load(path).generate(prompts, ...)`.
"""

from bytelm.generation.choice import choose, choose_B
from bytelm.generation.decoder import decoder_ids, decoder_rows
from bytelm.generation.encoder_decoder import encoder_decoder_ids, encoder_decoder_texts
from bytelm.generation.hierarchical import hierarchical_bytes, prefix_logits
from bytelm.generation.hierarchical_loop import hierarchical_rows

__all__ = ["choose", "choose_B", "decoder_ids", "decoder_rows", "encoder_decoder_ids",
           "encoder_decoder_texts", "hierarchical_bytes", "hierarchical_rows", "prefix_logits"]
