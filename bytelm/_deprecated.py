"""Names the README showed before `bytelm.load` became the one way to load and generate: each
still works for one release and warns, naming its replacement. Removed in the release after 0.1.
"""

import warnings


def _warn(old: str, new: str) -> None:
  warnings.warn(f"{old} is deprecated and will be removed in the next release: use {new}",
                DeprecationWarning, stacklevel=3)


def load_module(path, **runtime):
  """Deprecated: `bytelm.load(path).module`."""
  _warn("bytelm.load_module(path)", "bytelm.load(path).module (a LanguageModel's nnx.Module)")
  from bytelm.runs.load import load  # orbax: only when called, `import bytelm` stays light
  return load(path, **runtime)


def load_hf(path, **kwargs):
  """Deprecated: `bytelm.load(path)`, or `bytelm.convert.load_hf(path)` for (T5, T5Config)."""
  _warn("bytelm.load_hf(path)",
        "bytelm.load(path) (a LanguageModel), or bytelm.convert.load_hf(path) for (model, config)")
  from bytelm.convert import hf_t5
  return hf_t5.load_hf(path, **kwargs)


def generate(model, tokenizer, texts, **kwargs):
  """Deprecated: `bytelm.load(path).generate(texts, ...)`."""
  _warn("bytelm.generate(model, tokenizer, texts)",
        "bytelm.load(path).generate(texts, max_new_bytes=..., num_beams=...), or "
        "bytelm.generation.encoder_decoder_texts(model, tokenizer, texts, ...) for a module")
  from bytelm import generation
  return generation.encoder_decoder_texts(model, tokenizer, texts, **kwargs)
