"""bytelm: tokenizer-free language modeling on raw UTF-8 bytes, in JAX/Flax NNX."""

from bytelm.api import LanguageModel, load
from bytelm.convert import load_hf, save_hf
from bytelm.generation import generate, generate_ids
from bytelm.models.mrt5 import MrT5, MrT5Config
from bytelm.models.t5 import T5, T5Config, byt5_small, preset
from bytelm.models.tagger import Tagger, TaggerConfig
from bytelm.tokenizer import ByteTokenizer
from bytelm.runs.load import load as load_module

__version__ = "0.1.0"
