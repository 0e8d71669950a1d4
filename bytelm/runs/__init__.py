"""A run's workdir and what is made from it.

A workdir holds one training run: config.json (the resolved config it was trained with),
metrics.jsonl, checkpoints/, and what the run fitted to its data (a BPE tokenizer, an entropy
segmenter). One concept per module:

  workdir     config.json, its default name, and whether a requested config may resume it
  lock        one run per workdir at a time
  checkpoint  orbax checkpoints of model, optimizer, data position and config
  export      a model-only directory (config.json + model.safetensors) for shipping
  load        the model of any workdir or export, without an optimizer
  data        the one mapping from a run's config to its training and validation batches

Nothing here imports orbax at import time (checkpoint does, and is imported where it is used).
"""
