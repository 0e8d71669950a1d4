"""Building blocks shared by every bytelm model."""

from bytelm.nn.attention import (Attention, RelativePositionBias, key_mask_bias, relative_position_bucket,
                                 softmax1)
from bytelm.nn.layers import Dense, Embed, GatedGeluMLP, RMSNorm
