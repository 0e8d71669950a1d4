"""Checkpoint conversion: Hugging Face T5 / ByT5 (safetensors, never pickle) <-> bytelm."""

from bytelm.convert.hf_t5 import load_hf, save_hf

__all__ = ["load_hf", "save_hf"]
