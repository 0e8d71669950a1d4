"""One interface to every trained bytelm model: `bytelm.load(path)` -> `LanguageModel`.

    lm = bytelm.load("workdirs/mrt5")            # a workdir, an export, or a HF ByT5 directory
    lm.score(["Le chat dort.", b"caf\\xe9"])  # bits per byte of each text, str or any bytes
    lm.next_byte_logprobs("The quick brown f")   # [257]: bytes 0..255, then the end of text
    lm.generate(["The quick"], max_new_bytes=32)  # decoders continue; encoder-decoders answer
    lm.generate([b"The quick"], as_bytes=True)    # the bytes generated, no U+FFFD
    lm.info()                                    # parameters, bytes, quantization, segmenter
    lm.module                                    # the nnx.Module (to quantize, export, ...)
    lm.byte_lm()                                 # a decoder as a bytelm.byteprobs byte LM

Texts are str (UTF-8 encoded) or bytes, anywhere a text is taken; a byte model scores any
bytes, a BPE model too (bytes that are not UTF-8 through bytelm.byteprobs' tokenization, which
extends the tokenizer to them). Generation returns str, or the raw bytes with as_bytes=True.

What a score is, per kind of model, is what its training loop evaluates:
- decoders (byte, BPE and hierarchical): each text is a document, read from its start (after an
  eos, as the trainer's windows read a document after the eos that separates it from the
  previous one); every byte of it is predicted and its end is not (the text may go on, as an
  evaluation window does), in windows of the run's input length that share one boundary byte,
  as the evaluation windows do. A BPE model's bits are its tokens' log-loss, divided by the
  bytes they spell. This is bits per byte's one definition (docs/api.md):
  `byte_lm().bits_per_byte(texts)` gives the same number for a text within one window.
- encoder-decoders (ByT5, MrT5), trained on span corruption: each text is cut into the run's
  raw windows, corrupted with the evaluation's fixed noise (window w of a text gets the mask the
  pipeline gives evaluation window w), and scored as the trainer does: bits per target id
  (sentinels and eos included). These bits are not comparable with a decoder's: they measure
  filling in 15% of the bytes from the rest.
A text that is exactly the validation split's window gives the trainer's evaluation to float
precision (tests/test_api.py).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bytelm import generation, models
from bytelm.convert import hf_t5
from bytelm.data import bpe, objectives, pipeline
from bytelm.text import segment, segment_jax
from bytelm.nn.compiled import Compiled
from bytelm.nn.quant_dense import QuantDense
from bytelm.text.tokenizer import EOS_ID, NUM_BYTE_IDS, OFFSET, PAD_ID, ByteTokenizer

# Checkpoints (orbax) and the byteprobs adapters are imported inside the functions that use them:
# `import bytelm` stays light (tests/test_api.py checks that it does not import orbax).

ENCODER_DECODERS = ("t5", "mrt5")
# A Hugging Face ByT5 has no run config: it was trained with ByT5's span corruption.
_HF_DATA = {"objective": "span_corruption", "input_length": 1024,
            "noise_density": objectives.NOISE_DENSITY,
            "mean_noise_span_length": objectives.MEAN_NOISE_SPAN_LENGTH}


def load(path, **runtime) -> "LanguageModel":
  """The model in `path` behind one interface (see the module docstring).

  path: a bytelm workdir (the newest checkpoint), an export (`bytelm.runs.export`), or a
  Hugging Face T5/ByT5 directory (config.json with "model_type": "t5" and safetensors
  weights). runtime: overrides of the model config's runtime fields (those a checkpoint does
  not depend on: e.g. dtype="bfloat16", MrT5's bucket_multiple). `.module` is the nnx.Module.
  """
  from bytelm.runs import export as export_lib
  from bytelm.runs import workdir as workdir_lib
  from bytelm.runs.load import load as load_module
  path = pathlib.Path(path).expanduser()
  saved = workdir_lib.read_config(path)
  if "model_family" not in saved and saved.get("model_type") in ("t5", "mt5"):
    module, _ = hf_t5.load_hf(path, **runtime)
    return LanguageModel(module, "t5", _HF_DATA, path, source="hugging_face")
  module = load_module(path, **runtime)
  family = saved.get("model_family", "t5")
  if family == "tagger":
    raise ValueError(f"{path} holds a tagger (a labeller of bytes, e.g. the diacritics "
                     "restorer), not a language model: load it with "
                     "bytelm.demos.correct.Corrector.load(path)")
  if not isinstance(saved.get("data"), dict):
    raise ValueError(f"{path}: its config.json has no \"data\" (the run's input length, "
                     "objective, segments or tokenizer), which scoring and generation follow; "
                     "export with the run's whole config.json, or read the module alone with "
                     "bytelm.runs.load.load")
  return LanguageModel(module, family, saved["data"], path,
                       source="export" if export_lib.is_export(path) else "workdir",
                       quantized=saved.get("export", {}).get("quantized"))


@dataclasses.dataclass
class LanguageModel:
  """A trained byte model and the data settings it was trained with.

  module: the `nnx.Module` (for the family's own methods); family: its `model_family`; data:
  the run's data config (objective, input_length, noise, segments, tokenizer).
  The module is split once, for compiled calls: to change it (`bytelm.quant.quantize` converts
  a module in place), make a new one, `dataclasses.replace(lm, module=quantize(...))`, from a
  module no other LanguageModel holds.
  """

  module: nnx.Module
  family: str
  data: dict
  path: pathlib.Path
  source: str = "workdir"
  quantized: dict | None = None

  def __post_init__(self):
    from bytelm.runs import data as data_lib
    self.encoder_decoder = self.family in ENCODER_DECODERS
    # What the run fitted to its data, where the trainer keeps it (its workdir, or the export).
    fitted = data_lib.fitted_files({"data": self.data}, self.path)
    self.tokenizer = None  # a BPE decoder's tokenizers.Tokenizer
    self._tokenizer_file = fitted.get(bpe.FILENAME)
    if self._tokenizer_file is not None:
      self.tokenizer = bpe.load(self._tokenizer_file)
      # UTF-8 bytes each token id spells (pad 0): what bits per byte divide by
      self._token_bytes = np.asarray([len(b) for b in bpe.token_bytes(self.tokenizer)],
                                     np.int32)
      self._token_bytes[PAD_ID] = 0
    segments = self.data.get("segments")
    if data_lib.ENTROPY_MODEL in fitted:
      segments = {**segments, "entropy_model": str(fitted[data_lib.ENTROPY_MODEL])}
    self.segments = (pipeline.segment_settings(segments, "causal_lm")
                     if segments and self.family == "hierarchical" else None)
    self._device_segmenter = (None if self.segments is None
                              else segment_jax.DeviceSegmenter(**self.segments))
    self._compiled = Compiled(self.module)
    self._row_sums = None
    self._byte_lm = None

  # ---- scoring ----------------------------------------------------------------------------------

  def score(self, texts: Sequence[str | bytes], batch_size: int = 8, *, total: bool = False):
    """Bits per byte of each text, str or bytes (float64 [len(texts)]); see the module
    docstring for what is predicted: every byte, not the end of text. Texts are scored
    batch_size rows at a time, each row alone (no text sees another). total: one number
    instead, the texts' summed bits over their summed predicted bytes (targets, for an
    encoder-decoder), as an evaluation over all of them reports."""
    bits, count = self._bits(texts, batch_size)
    return float(bits.sum() / count.sum()) if total else bits / count

  def _bits(self, texts: Sequence[str | bytes], batch_size: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(bits, predicted bytes or targets) of each text."""
    texts = _check_texts(texts)
    rows, owner = [], []
    for i, text in enumerate(texts):
      if not text:
        raise ValueError(f"text {i} is empty: there is nothing to score")
      for row in self._rows(text):
        rows.append(row)
        owner.append(i)
    bits, count = np.zeros(len(texts)), np.zeros(len(texts))
    for lo in range(0, len(rows), batch_size):
      chunk = rows[lo:lo + batch_size]
      batch = self._stack(chunk + [None] * (batch_size - len(chunk)))
      ce_R, n_R = jax.device_get(self._per_row(batch))
      for r in range(len(chunk)):
        bits[owner[lo + r]] += ce_R[r] / math.log(2)
        count[owner[lo + r]] += n_R[r]
    return bits, count

  def continuation_bits(self, prompt: str | bytes,
                        continuations: Sequence[str | bytes]) -> np.ndarray:
    """Bits of each continuation after the prompt (each str or bytes), float64
    [len(continuations)]. The likeliest continuation is the model's answer to a
    multiple-choice prompt (eval/compare.py's character tasks).

    A decoder gives -log2 P(the document goes on with the continuation | it starts with the
    prompt), prefix probabilities: the text may go on after the continuation, so no end of
    text is predicted (an option is the start of an answer; `score` predicts none either). A
    byte decoder reads prompt + continuation as one document and subtracts the prompt's bits.
    A BPE decoder cannot: a prompt ending in a space ends in a lone space token that the
    whole text merges into the next word, so one tokenization does not extend the other. It
    takes the byteprobs ratio P(prompt + continuation...) / P(prompt...), each summed over
    the canonical token sequences that cover it, in one pass (not the run's windows). Mass
    the model puts on other sequences is not counted, where next_byte_logprobs renormalises
    it away, so these bits can exceed the sum of those bytes' bits. An encoder-decoder reads
    the prompt as its input and the continuation as its output, eos included.
    """
    continuations, start = _check_texts(continuations), _as_bytes(prompt, "prompt")
    if self.tokenizer is not None:
      lm = self._byte_model()
      before = lm.prefix_logprob(start)
      return np.asarray([before - lm.prefix_logprob(start + c)
                         for c in continuations]) / math.log(2)
    if not self.encoder_decoder:
      if not start:
        return self._bits(continuations, 8)[0]
      bits, _ = self._bits([start] + [start + c for c in continuations], 8)
      return bits[1:] - bits[0]
    x = ByteTokenizer().encode(start, add_eos=True)
    out = []
    for c in continuations:
      y = ByteTokenizer().encode(c, add_eos=True)
      if len(y) > self._target_length():
        raise ValueError(f"a continuation of {len(y)} ids (eos included) is longer than the "
                         f"model's {self._target_length()} target positions; shorten it")
      rows = self._stack([(x[:int(self.data["input_length"])], y)])
      ce, _ = jax.device_get(self._per_row(rows))
      out.append(float(ce[0]) / math.log(2))
    return np.asarray(out)

  def _rows(self, data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) rows covering the text's bytes, as the trainer's evaluation windows
    do."""
    length = int(self.data["input_length"])
    if self.encoder_decoder:
      raw, _ = objectives.span_corruption_lengths(
          length, self.data["noise_density"], self.data["mean_noise_span_length"])
      ids = ByteTokenizer().encode(data, add_eos=False)
      return [objectives.span_corruption(
          ids[w * raw:(w + 1) * raw], pipeline.eval_rng(w),
          self.data["noise_density"], self.data["mean_noise_span_length"])
          for w in range(-(-len(ids) // raw))]
    if self.tokenizer is not None:
      ids = self._bpe_ids(data)
    else:
      ids = ByteTokenizer().encode(data, add_eos=False)
    stream = np.concatenate([[EOS_ID], ids]).astype(np.int32)  # read from a document start
    return [objectives.causal_lm(stream[s:s + length + 1])
            for s in range(0, len(stream) - 1, length)]

  def _bpe_ids(self, data: bytes) -> np.ndarray:
    """A BPE decoder's token ids of data: its tokenizer's, as the trainer encodes text. Hugging
    Face `tokenizers` takes str only; bytes that are not UTF-8 are tokenized by
    bytelm.byteprobs' reading of the same tokenizer.json, which is the tokenizer on UTF-8 and
    extends it to any bytes (bytelm/byteprobs/tokenization.py)."""
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError:
      return np.asarray(self._byte_model().bpe.encode(data), np.int32)
    return bpe.encode_documents(self.tokenizer, [text])[0]

  def _stack(self, rows) -> dict[str, jax.Array]:
    """A batch of rows padded with 0 (ignored targets) to the run's shapes."""
    length = int(self.data["input_length"])
    inputs = np.full((len(rows), length), PAD_ID, np.int32)
    targets = np.full((len(rows), self._target_length()), PAD_ID, np.int32)
    for r, row in enumerate(rows):
      if row is not None:
        inputs[r, :len(row[0])], targets[r, :len(row[1])] = row
    batch = {"inputs": inputs, "targets": targets}
    if self.tokenizer is not None:
      batch["target_bytes"] = self._token_bytes[targets]
    return {k: jnp.asarray(v) for k, v in batch.items()}

  def _target_length(self) -> int:
    """Targets per row: the input length, or span corruption's targets for it."""
    length = int(self.data["input_length"])
    if not self.encoder_decoder:
      return length
    return objectives.span_corruption_lengths(
        length, self.data["noise_density"], self.data["mean_noise_span_length"])[1]

  def _per_row(self, batch):
    """(summed cross-entropy [B], targets or bytes [B]): the trainer's evaluation step on each
    row alone."""
    if self._row_sums is None:
      from bytelm.training import evaluation
      # A hierarchical model's segments are cut from each row inside the compiled call.
      loss_fn = segment_jax.with_segments(models.family(self.family).loss_fn,
                                          self._device_segmenter)
      graphdef, state = self._compiled.graphdef, self._compiled.state

      def one(row):
        out = evaluation.eval_sums(nnx.merge(graphdef, state),
                                   jax.tree.map(lambda x: x[None], row), loss_fn)
        return out["ce_sum"], out.get("num_bytes", out["num_targets"])

      self._row_sums = jax.jit(jax.vmap(one))
    return self._row_sums(batch)

  # ---- next byte --------------------------------------------------------------------------------

  def next_byte_logprobs(self, prefix: str | bytes, inputs: str | bytes = b"") -> np.ndarray:
    """log P(next byte | prefix), float64 [257]: bytes 0..255, then the end of text (eos),
    renormalised over those 257. A decoder reads prefix from a document start; an
    encoder-decoder reads it as the start of its output for `inputs`."""
    prefix = _as_bytes(prefix, "prefix")
    if not self.encoder_decoder:
      return self._byte_model().next_byte_logprobs(prefix)
    x = ByteTokenizer().encode(_as_bytes(inputs, "inputs"), add_eos=True)
    y = [self.module.config.decoder_start_id] + ByteTokenizer().encode(prefix,
                                                                       add_eos=False).tolist()
    x_1T, y_1S = _padded(x), _padded(y)
    # The decoder's start id is the pad id: the masks come from the lengths.
    logits = np.asarray(self._compiled(
        "__call__", x_1T, y_1S, np.arange(x_1T.shape[1])[None] < len(x),
        np.arange(y_1S.shape[1])[None] < len(y))[0, len(y) - 1], np.float64)
    out = np.concatenate([logits[OFFSET:NUM_BYTE_IDS], logits[EOS_ID:EOS_ID + 1]])
    return out - np.logaddexp.reduce(out)

  def byte_lm(self):
    """The model as a `bytelm.byteprobs` byte LM (decoders only): exact next-byte
    distributions, prefix and text probabilities, byte-by-byte sampling and completion, and
    ensembles with other byte LMs (`bytelm.byteprobs.ensemble`). A BPE decoder's is a `ByteLM`
    that sums over the token sequences covering each prefix."""
    if self.encoder_decoder:
      raise ValueError(f"a {self.family} model is an encoder-decoder: its output depends on an "
                       "input, so it is no byte LM; use next_byte_logprobs(prefix, inputs=...)")
    return self._byte_model()

  def _byte_model(self):
    """The byteprobs view of a decoder: exact next-byte distributions (a BPE decoder's through
    its covering token sequences)."""
    if self._byte_lm is None:
      from bytelm.byteprobs import adapters
      if self.tokenizer is not None:
        self._byte_lm = adapters.from_model(self.module, self._tokenizer_file)
      elif self.family == "hierarchical":
        self._byte_lm = adapters.HierarchicalLM(self.module, self._segmenter())
      else:
        self._byte_lm = adapters.ByteDecoderLM(self.module)
    return self._byte_lm

  def _segmenter(self) -> segment.Segmenter | None:
    return None if self.segments is None else self.segments["segmenter"]

  # ---- generation -------------------------------------------------------------------------------

  def generate(self, prompts: Sequence[str | bytes], max_new_bytes: int = 64, *,
               temperature: float = 0.0, seed: int = 0, num_beams: int = 1, top_k: int = 0,
               top_p: float = 1.0, as_bytes: bool = False) -> list[str] | list[bytes]:
    """One continuation per prompt (str or bytes; greedy at temperature 0, else sampled with
    `seed`), up to max_new_bytes bytes or the end of text. Encoder-decoders take each prompt as
    their input and return their output; decoders continue the prompt (returned without it).
    Returned as str, where invalid UTF-8 (a character cut by the byte limit) becomes U+FFFD, or
    with as_bytes=True as the bytes generated, whose decode("utf-8", "replace") is that str.
    All prompts run together in one compiled loop; a sample is a `jax.random` draw (for
    decoders, not the numpy stream that versions with a host loop drew for the same seed).

    Encoder-decoders also search: num_beams > 1 is beam search (at temperature 0), and a sample
    can be cut to the top_k likeliest bytes (0: off) and the top_p nucleus (1.0: off)."""
    prompts = _check_texts(prompts)
    if max_new_bytes < 1:
      raise ValueError(f"max_new_bytes must be >= 1, got {max_new_bytes}")
    if self.encoder_decoder:
      if num_beams > 1 and temperature != 0:
        raise ValueError(f"beam search (num_beams={num_beams}) picks the likeliest output, it "
                         "does not sample: pass temperature=0, or num_beams=1 to sample")
      method = "beam" if num_beams > 1 else "greedy" if temperature == 0 else "sample"
      return generation.encoder_decoder_texts(
          self.module, ByteTokenizer(), prompts, max_new_bytes=max_new_bytes, method=method,
          temperature=temperature or 1.0, top_k=top_k, top_p=top_p, num_beams=num_beams,
          rng=seed, as_bytes=as_bytes)
    if (num_beams, top_k, top_p) != (1, 0, 1.0):
      raise ValueError(f"num_beams, top_k and top_p are for encoder-decoders; a {self.family} "
                       "model generates greedily or samples with temperature: leave them out")
    out = self._continue(prompts, max_new_bytes, temperature, seed)
    return out if as_bytes else [o.decode("utf-8", "replace") for o in out]

  def _continue(self, prompts: list[bytes], max_new_bytes: int, temperature: float,
                seed: int) -> list[bytes]:
    """Each prompt's continuation, all prompts in one compiled generation loop."""
    if self.family == "hierarchical":
      return generation.hierarchical_rows(self.module, prompts, max_new_bytes,
                                          segmenter=self._segmenter(),
                                          temperature=temperature, seed=seed)
    if self.tokenizer is None:
      rows = [[EOS_ID] + ByteTokenizer().encode(p, add_eos=False).tolist() for p in prompts]
      new = generation.decoder_rows(self.module, rows, max_new_bytes, temperature=temperature,
                                    seed=seed)
      return [bytes(i - OFFSET for i in n if OFFSET <= i < NUM_BYTE_IDS) for n in new]
    # Tokens: at least one byte each, so max_new_bytes tokens are enough.
    rows = [[EOS_ID] + self._bpe_ids(p).tolist() for p in prompts]
    new = generation.decoder_rows(self.module, rows, max_new_bytes, temperature=temperature,
                                  seed=seed)
    spelled = bpe.token_bytes(self.tokenizer)
    # Ids past the tokenizer's vocabulary (the embedding's padding rows) spell nothing.
    return [bpe.decode_bytes([i for i in n if i != EOS_ID and i < len(spelled)],
                             spelled)[:max_new_bytes] for n in new]

  # ---- description ------------------------------------------------------------------------------

  def info(self) -> dict:
    """What the model is: family, kind, parameters (a quantized layer's weights counted as
    parameters), bytes of its weights in memory and of its files on disk, quantization, and
    what a position of its backbone is (the segmenter)."""
    arrays = jax.tree.leaves(nnx.state(self.module))
    params = sum(p.size for p in jax.tree.leaves(nnx.state(self.module, nnx.Param)))
    # A quantized layer's weights are not Params (nothing trains them) but still parameters.
    params += sum(node.in_features * node.out_features
                  for _, node in nnx.iter_graph(self.module) if isinstance(node, QuantDense))
    cfg = self.module.config
    return {
        "family": self.family,
        "kind": "encoder-decoder" if self.encoder_decoder else "decoder",
        "parameters": int(params),
        "weight_bytes": int(sum(a.nbytes for a in arrays)),
        "bytes_on_disk": _disk_bytes(self.path, self.source),
        "quantization": (self.quantized or {}).get("mode") or getattr(cfg, "quant", None),
        "segmenter": self._segmenter_name(),
        "source": self.source,
        "path": str(self.path),
    }

  def _segmenter_name(self) -> str:
    if self.tokenizer is not None:
      return f"BPE tokens ({self.tokenizer.get_vocab_size()})"
    if self.family == "hierarchical":
      cfg = self.module.config
      if cfg.segmenter == "learned":
        return "learned boundaries"
      return f"{self.data['segments']['kind']} segments"
    if self.family == "mrt5":
      return f"bytes, delete gate after encoder layer {self.module.config.gate_layer}"
    return "bytes"


# ---- helpers --------------------------------------------------------------------------------------


def _check_texts(texts) -> list[bytes]:
  """The bytes of each text of a list; a text is str (UTF-8 encoded) or bytes."""
  if isinstance(texts, (str, bytes, bytearray)):
    raise TypeError("pass a list of texts; wrap a single one: [text]")
  return [_as_bytes(t, f"text {i}") for i, t in enumerate(texts)]


def _as_bytes(x, what: str) -> bytes:
  """x's bytes: str is UTF-8 encoded, bytes are taken as they are (bytelm.text.tokenizer's
  as_bytes); what names x in the error."""
  if isinstance(x, str):
    return x.encode("utf-8")
  if isinstance(x, (bytes, bytearray, memoryview)):
    return bytes(x)
  raise TypeError(f"{what} must be str or bytes (str is UTF-8 encoded), got {type(x).__name__}")


def _padded(ids, multiple: int = 64) -> np.ndarray:
  """[1, L] ids padded with 0 to a multiple of `multiple` (few compilations)."""
  out = np.zeros((1, max(multiple, -(-len(ids) // multiple) * multiple)), np.int32)
  out[0, :len(ids)] = ids
  return out


def _disk_bytes(path: pathlib.Path, source: str) -> int:
  """The model's files: an export's or a Hugging Face directory's weights and config (and the
  tokenizer or entropy model an export carries), or a workdir's newest checkpoint (which also
  holds the optimizer state)."""
  if source != "workdir":
    return sum(p.stat().st_size for p in path.iterdir()
               if p.is_file() and p.suffix in (".safetensors", ".json", ".npz"))
  steps = [p for p in (path / "checkpoints").iterdir() if p.name.isdigit()]
  newest = max(steps, key=lambda p: int(p.name))
  return sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())
