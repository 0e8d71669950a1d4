"""Data: text sources, byte-level objectives, and deterministic (seed, step) batches."""

from bytelm.data.objectives import (causal_lm, random_spans_noise_mask, span_corruption,
                                    span_corruption_from_mask, span_corruption_lengths)
from bytelm.data.pipeline import BatchSource, make_source
from bytelm.data.sources import embedded_names, load_text

__all__ = [
    "BatchSource", "causal_lm", "embedded_names", "load_text", "make_source",
    "random_spans_noise_mask", "span_corruption", "span_corruption_from_mask",
    "span_corruption_lengths",
]
