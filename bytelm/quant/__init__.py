"""Quantized variants of bytelm's models: int8 (LLM.int8, vector-wise W8A8 with outlier
decomposition, or int8 weights alone) and ternary (BitNet b1.58).

- training: a model config's `quant` ("int8_weight", "int8", "ternary") makes every attention
  and feed-forward matmul (`bytelm.nn.Dense`) quantization-aware, with straight-through
  estimators; "ternary" adds BitNet's RMSNorm before the attention output and `wo`;
- `quantize(model, mode)`: the trained model with those matmuls stored as integers
  (`dense.QuantDense`), post-training for int8; exports keep them as int8 / packed uint8 and
  `bytelm.load` reads them back;
- `numerics`: the formats as pure functions (quantize, integer GEMM, straight-through
  estimators, 2-bit packing).
"""

__all__ = ["QuantDense", "quantization_of", "quantize"]


def __getattr__(name):
  # Lazily: bytelm.nn's Dense uses `numerics`, and `convert` uses bytelm.nn.
  if name in ("quantize", "quantization_of"):
    from bytelm.quant import convert
    return getattr(convert, name)
  if name == "QuantDense":
    from bytelm.quant.dense import QuantDense
    return QuantDense
  raise AttributeError(f"module 'bytelm.quant' has no attribute {name!r}")
