"""Quantized variants of bytelm's models: int8 (LLM.int8, vector-wise W8A8 with outlier
decomposition, or int8 weights alone) and ternary (BitNet b1.58).

- training: a model config's `quant` ("int8_weight", "int8", "ternary") makes every attention
  and feed-forward matmul (`bytelm.nn.Dense`) quantization-aware, with straight-through
  estimators; "ternary" adds BitNet's RMSNorm before the attention output and `wo`;
- `quantize(model, mode)` (`convert`): the trained model with those matmuls stored as integers
  (`QuantDense`, from `bytelm.nn.quant_dense`), post-training for int8; exports keep them as
  int8 / packed uint8 and `bytelm.load` reads them back;
- `recipe`: the ternary switch of the recipe configs.
The formats themselves (quantize, integer GEMM, straight-through estimators, 2-bit packing)
are pure functions in `bytelm.nn.quant`, below the layers that use them.
"""

from bytelm.nn.quant_dense import QuantDense
from bytelm.quant.convert import quantization_of, quantize

__all__ = ["QuantDense", "quantization_of", "quantize"]
