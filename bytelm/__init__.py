"""bytelm: tokenizer-free language modeling on raw UTF-8 bytes, in JAX/Flax NNX.

`bytelm.load(path)` -> `LanguageModel` is the way to load and to use any trained model
(score, next_byte_logprobs, generate, info); docs/api.md. Importing bytelm is light: checkpoint
libraries (orbax) and datasets are imported by the calls that need them.
"""

from bytelm import host_memory

host_memory.keep_freed_memory()  # before jax starts its threads (bytelm/host_memory.py)

from bytelm._deprecated import generate, load_hf, load_module  # one release, then removed
from bytelm.api import LanguageModel, load
from bytelm.convert import save_hf
from bytelm.models.mrt5 import MrT5, MrT5Config
from bytelm.models.t5 import T5, T5Config, byt5_small, preset
from bytelm.models.tagger import Tagger, TaggerConfig
from bytelm.text.tokenizer import ByteTokenizer

__version__ = "0.1.0"
