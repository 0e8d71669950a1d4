"""Quantized variants of bytelm's models: int8 (LLM.int8, vector-wise W8A8 with outlier
decomposition, or int8 weights alone) and ternary (BitNet b1.58). Work in progress (issue 8).

- `numerics`: the formats as pure functions (quantize, integer GEMM, straight-through
  estimators, 2-bit packing).
"""
