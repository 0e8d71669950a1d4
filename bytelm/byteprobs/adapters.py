"""bytelm's models behind the byteprobs interfaces.

- `decoder_token_lm(model)`: a decoder-only LM over BPE tokens (configs/bpe_decoder.py) as the
  `token_lm` callable of `ByteLM`: next-token log-probabilities for a batch of token prefixes.
- `from_model(model, tokenizer_file)`: the same, with the tokenizer.json the recipe trained, as
  a `ByteLM` (`bytelm.load(workdir).byte_lm()` loads one);
- `from_hugging_face(model_dir)`: a local Hugging Face causal LM and its tokenizer.json, the
  same way, its prefixes as token trees too (PyTorch, an optional extra);
- `ByteDecoderLM(model)`, `HierarchicalLM(model, segmenter)` (`bytelm.load(workdir).byte_lm()`):
  bytelm's byte models with `next_byte_logprobs` (and `next_byte_logprobs_along` a text, one
  pass), so they can join an ensemble, and `bits_per_byte`.

Probabilities are the model's own, a softmax over its whole output as its training loss
counts them: a BPE decoder's embedding rows past the tokenizer's vocabulary (padding to a
multiple of 128) are ids the tokenizer never makes, like token sequences it never makes, so
the mass on them is dropped, not spread over the real tokens; so is the mass a byte model puts
on pad, unk and sentinels. Next-byte distributions renormalise it away (`normalize`); bits per
byte do not, so they are `bytelm.load(path).score`'s.

bytelm's models were trained on documents separated by eos, so a prefix is read after an eos:
the start of a document. A batch of prefixes goes through a bytelm decoder as trees of
their distinct prefixes (`balanced_trees`, `DecoderLM.tree_logits`): the heads ByteLM asks for
share all but their last token or two, so a text's every byte costs about one node. A
Hugging Face model runs the same trees, through a 4-D attention mask and position ids.

Axis legend: B trees (leaves for Hugging Face), N tree nodes, T positions, V vocab, R requested
prefixes.
"""

from __future__ import annotations

import json
import math
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np

from bytelm.byteprobs import mixture
from bytelm.byteprobs.byte_lm import ByteLM
from bytelm.byteprobs.tokenization import BPE
from bytelm.data import bpe
from bytelm import generation
from bytelm.text import segment
from bytelm.nn.compiled import Compiled
from bytelm.runs import data as data_lib
from bytelm.runs.load import load as load_module
from bytelm.text.tokenizer import EOS_ID, NUM_BYTE_IDS, OFFSET, ByteTokenizer, as_bytes

# Nodes of one token tree (`token_trees`): attention over a tree costs its size squared.
TREE_NODES = 512
# The size of a tree at which a node's attention costs about as much as the rest of it
# (measured for the eval's 4-layer, 256-wide decoder on a 2-core CPU: 33 us a node plus 0.022
# us per node of its tree); `balanced_trees` weighs layouts with it.
ATTENTION_NODES = 1500
# At most this many nodes go as one tree without copies (its mask is their number squared).
ONE_TREE_NODES = 4096


def token_trees(rows: Sequence[Sequence[int]], max_nodes: int = TREE_NODES
                ) -> tuple[list[tuple[list[int], list[int], list[int]]], list[tuple[int, int]]]:
  """(trees, where): the rows as trees of their distinct prefixes, a node per prefix, for
  `DecoderLM.tree_logits`: each tree (ids, depths, parents: an earlier node of the tree or
  -1) in depth-first order; and for each row, (tree, node) of its last prefix. A tree that
  would grow past max_nodes is closed, and the next starts with a copy of the path down to
  where it goes on; below a path of max_nodes or more, nodes join the tree that holds it
  (which then grows past max_nodes)."""
  return _layout(_prefixes(rows), rows, max_nodes)


def balanced_trees(rows: Sequence[Sequence[int]], pad_to: int = 64):
  """`token_trees` of rows laid out for the least work once padded (their number to a power
  of two, their nodes to a multiple of pad_to: `_padded_cost`). The layouts weighed: trees of
  TREE_NODES; the same number of trees, each about as large (three full trees run as four of
  about 300, not as four of 512, one of them padding); one tree (up to ONE_TREE_NODES); and a
  tree for the subtree of each text, packed (`_packed_subtrees`). The last two copy no path:
  a long text's token path would otherwise be copied into every tree below it. Their costs
  are known before they are laid out; a size's is bounded below (no copies) and it is laid
  out only where that bound could win."""
  children = _prefixes(rows)
  nodes = len(children) - 1
  if nodes <= TREE_NODES:  # one tree whichever way
    return _layout(children, rows, TREE_NODES)
  best_cost, best = math.inf, None
  if nodes <= ONE_TREE_NODES:
    best_cost, best = _padded_cost([nodes], pad_to), lambda: _layout(children, rows, nodes)
  shared, bins = _packed_subtrees(children, rows)
  cost = _padded_cost([size for size, _, _ in bins], pad_to)
  if cost < best_cost:
    best_cost, best = cost, lambda: _layout_bins(children, rows, shared, bins)
  batch = 1 << (-(-nodes // TREE_NODES) - 1).bit_length()
  for size in sorted({_round_up(-(-nodes // batch), pad_to), TREE_NODES}):
    count = -(-nodes // size)
    if _padded_cost([size] * count, pad_to) >= best_cost:
      continue  # even without copied paths it would cost more
    trees, where = _layout(children, rows, size)
    cost = _padded_cost([len(ids) for ids, _, _ in trees], pad_to)
    if cost < best_cost:
      best_cost, best = cost, lambda found=(trees, where): found
  return best()


def _padded_cost(sizes: list[int], pad_to: int) -> float:
  """The work of running trees of these sizes padded as `_last_logprobs` pads them, in
  nodes."""
  length = _round_up(max(sizes), pad_to)
  return (1 << (len(sizes) - 1).bit_length()) * length * (1 + length / ATTENTION_NODES)


def _packed_subtrees(children, rows):
  """(shared, [(nodes, subtrees, rows)]): below the path every row shares (shared, its last
  prefix), each subtree (a text's, on the bulk path) goes whole, first-fit and largest
  first, into trees as large as the largest of them or TREE_NODES, with the shared path in
  each; a tree's nodes, the subtrees' first prefixes and the rows it holds."""
  shared = ()
  while len(children[shared]) == 1 and all(len(row) > len(shared) for row in rows):
    shared = next(iter(children[shared].values()))
  sizes = {}
  for top in children[shared].values():
    stack, count = [top], 0
    while stack:
      count += 1
      stack.extend(children[stack.pop()].values())
    sizes[top] = count
  groups: dict[tuple[int, ...], list[int]] = {top: [] for top in sizes}
  for i, row in enumerate(rows):  # (a row on the shared path goes with any subtree)
    groups[tuple(row[:len(shared) + 1])
           if len(row) > len(shared) else next(iter(groups))].append(i)
  room = max(max(sizes.values()), TREE_NODES)
  bins: list[list] = []  # [nodes, subtrees, rows]
  for top in sorted(sizes, key=sizes.get, reverse=True):
    fit = next((b for b in bins if b[0] + sizes[top] <= room), None)
    if fit is None:
      fit = [len(shared), [], []]
      bins.append(fit)
    fit[0] += sizes[top]
    fit[1].append(top)
    fit[2].extend(groups[top])
  return shared, bins


def _layout_bins(children, rows, shared, bins):
  """`token_trees` of `_packed_subtrees`' bins, a tree each (the shared path, then its
  subtrees)."""
  trees, where = [], [None] * len(rows)
  for size, tops, members in bins:
    mine = dict(children)
    mine[shared] = {top[-1]: top for top in tops}
    (tree,), places = _layout(mine, [rows[i] for i in members], max_nodes=size + 1)
    for i, (_, node) in zip(members, places):
      where[i] = (len(trees), node)
    trees.append(tree)
  return trees, where


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _prefixes(rows) -> dict[tuple[int, ...], dict[int, tuple[int, ...]]]:
  """prefix -> {next id: the prefix one longer} over the distinct prefixes of rows, () first."""
  children: dict[tuple[int, ...], dict[int, tuple[int, ...]]] = {(): {}}
  for row in map(tuple, rows):
    k = len(row)
    while row[:k] not in children:  # from the end: rows share all but their last prefixes
      k -= 1
    for j in range(k, len(row)):
      children[row[:j + 1]] = {}
      children[row[:j]][row[j]] = row[:j + 1]
  return children


def _layout(children, rows, max_nodes: int):
  """`token_trees` from `_prefixes`."""
  trees, place = [], {}
  ids, depths, parents, index = [], [], [], {}

  def close():
    if ids:
      trees.append((list(ids), list(depths), list(parents)))
    ids.clear(), depths.clear(), parents.clear(), index.clear()

  stack = list(reversed(children[()].values()))
  while stack:
    node = stack.pop()
    # In depth-first order a tree that holds node's parent holds its whole path.
    missing = 1 if len(node) == 1 or node[:-1] in index else len(node)
    if ids and len(ids) + missing > max_nodes and len(node) < max_nodes:
      close()  # (a path as long as a tree stays in the tree it is in: a copy would be no smaller)
    path = [node] if node[:-1] in index or len(node) == 1 else \
        [node[:k] for k in range(1, len(node) + 1) if node[:k] not in index]
    for prefix in path:  # the path down to node, where this tree lacks it
      index[prefix] = len(ids)
      ids.append(prefix[-1]), depths.append(len(prefix) - 1)
      parents.append(index.get(prefix[:-1], -1))
    place[node] = (len(trees), index[node])
    stack.extend(reversed(children[node].values()))
  close()
  return trees, [place[tuple(row)] for row in rows]


def tree_batch(trees, batch: int, length: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids_BN, depth_BN, attend_BNN) of `token_trees`' trees padded to batch x length nodes:
  each node's id, its depth (its position on its path) and the nodes it reads (itself and its
  ancestors); padding reads itself only."""
  ids_BN = np.zeros((batch, length), np.int32)
  depth_BN = np.zeros((batch, length), np.int32)
  attend_BNN = np.broadcast_to(np.eye(length, dtype=bool), (batch, length, length)).copy()
  for b, (ids, depths, parents) in enumerate(trees):
    ids_BN[b, :len(ids)], depth_BN[b, :len(ids)] = ids, depths
    for n, parent in enumerate(parents):  # parents come first: a node reads its parent's path
      if parent >= 0:
        attend_BNN[b, n] |= attend_BNN[b, parent]
  return ids_BN, depth_BN, attend_BNN


def _last_logprobs(compiled: Compiled, rows: list[list[int]], pad_to: int = 64) -> np.ndarray:
  """log_softmax of the logits after each row, float64 [len(rows), V] (V: the model's whole
  output): one pass over the rows' prefix trees (`balanced_trees`), each padded to a multiple of
  pad_to nodes and their number to a power of two, so that few shapes are compiled."""
  trees, where = balanced_trees(rows, pad_to)
  length = _round_up(max(len(t[0]) for t in trees), pad_to)
  ids_BN, depth_BN, attend_BNN = tree_batch(trees, 1 << (len(trees) - 1).bit_length(), length)
  return _log_softmax_at(compiled("tree_logits", ids_BN, depth_BN, attend_BNN), where)


def _log_softmax_at(logits_BNV, where) -> np.ndarray:
  """log_softmax of the logits at each (tree, node) of where, in float64 [len(where), V]."""
  logits_RV = np.asarray(logits_BNV)[tuple(np.asarray(where).T)].astype(np.float64)
  top_R1 = logits_RV.max(axis=-1, keepdims=True)
  return logits_RV - top_R1 - np.log(np.exp(logits_RV - top_R1).sum(axis=-1, keepdims=True))


class _PathCache:
  """`_last_logprobs` for a sampling loop: keys and values of the token path its calls share
  (the stable tokens of the text so far) are kept (`DecoderLM.path_kv`), and a call whose rows
  all continue the kept path, or its first SHARED tokens or more, runs only their own nodes
  over it (`DecoderLM.tree_logits` with a past): a byte's few new heads instead of their
  whole path. A position's keys and values depend on the tokens up to it alone, so the kept
  path serves any call that shares a start of it. It is read again when the rows share
  REFRESH tokens past it; calls that share little (the bulk path's) go the usual way."""

  SHARED = 16  # tokens the rows must share with the kept path before their own nodes go alone
  REFRESH = 8  # tokens shared past the kept path after which it is read again
  # The kept path is padded to a power of two from PATH_PAD, the rows' own nodes to a
  # multiple of NODE_PAD: few compiled shapes.
  PATH_PAD, NODE_PAD = 64, 16

  def __init__(self, compiled: Compiled):
    self.compiled, self.path, self.past = compiled, (), None

  def __call__(self, rows: list[list[int]]) -> np.ndarray:
    rows = [tuple(r) for r in rows]
    shared = min(_shared_length(rows), min(map(len, rows)) - 1)  # a node each of its own
    if shared < self.SHARED:
      return _last_logprobs(self.compiled, [list(r) for r in rows])
    kept = _shared_length([rows[0][:shared], self.path])
    if kept < self.SHARED or shared - kept >= self.REFRESH:
      padded = np.zeros((1, max(self.PATH_PAD, 1 << (shared - 1).bit_length())), np.int32)
      padded[0, :shared] = rows[0][:shared]
      self.path, self.past, kept = rows[0][:shared], self.compiled("path_kv", padded), shared
    trees, where = token_trees([r[kept:] for r in rows])
    if len(trees) > 1:  # (more than a tree's worth of nodes: not a sampling loop's call)
      return _last_logprobs(self.compiled, [list(r) for r in rows])
    ids_BN, depth_BN, attend_BNN = tree_batch(trees, 1, _round_up(len(trees[0][0]),
                                                                  self.NODE_PAD))
    return _log_softmax_at(self.compiled("tree_logits", ids_BN, depth_BN + kept, attend_BNN,
                                         self.past, np.int32(kept)), where)


def _shared_length(rows) -> int:
  """The length of the start every row shares."""
  shortest = min(map(len, rows))
  for k in range(shortest):
    if any(r[k] != rows[0][k] for r in rows):
      return k
  return shortest


def decoder_token_lm(model, vocab_size: int | None = None):
  """token_lm(prefixes) -> log-probabilities [len(prefixes), vocab_size] of the next token, from
  a `models.decoder.DecoderLM` over BPE ids: the model's softmax over all its embedding rows,
  cut to the tokenizer's vocab_size (not renormalised: the module docstring says why). Calls
  whose prefixes share a long path (sampling) keep its keys and values (`_PathCache`)."""
  logprobs = _PathCache(Compiled(model))
  size = vocab_size or model.config.vocab_size

  def token_lm(prefixes):
    return logprobs([[EOS_ID] + list(p) for p in prefixes])[:, :size]

  return token_lm


def from_workdir(workdir) -> ByteLM:
  """Deprecated (removed in the next release): `bytelm.load(workdir).byte_lm()`. A bytelm BPE
  decoder (python train.py --config configs/bpe_decoder.py) read as bytes: its model and the
  tokenizer.json in its workdir (or export)."""
  warnings.warn("bytelm.byteprobs.adapters.from_workdir(workdir) is deprecated and will be "
                "removed in the next release: use bytelm.load(workdir).byte_lm()",
                DeprecationWarning, stacklevel=2)
  path = pathlib.Path(workdir) / bpe.FILENAME
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: from_workdir needs the workdir (or export) of a "
                            f"BPE recipe (configs/bpe_decoder.py), which keeps its tokenizer there")
  return from_model(load_module(workdir), path)


def from_model(model, tokenizer_file) -> ByteLM:
  """A loaded BPE decoder and its tokenizer.json as a `ByteLM` (`bytelm.load` for a BPE
  model's byte probabilities)."""
  tokenizer = BPE.from_file(tokenizer_file)
  return ByteLM(decoder_token_lm(model, len(tokenizer.token_bytes)), tokenizer, EOS_ID)


def from_hugging_face(model_dir, tokenizer_file=None, device: str = "cpu",
                      batch_size: int = 16) -> ByteLM:
  """A local Hugging Face causal LM directory (and its tokenizer.json: byte-level BPE as
  GPT-2's or Llama-3's, or SentencePiece-style BPE with byte fallback, `BPE.from_json`) as a
  `ByteLM`. Needs PyTorch and transformers (pip install "bytelm[hf]"); nothing else in
  bytelm does. Every prefix is read after what the tokenizer's post-processor puts before a
  text (a BOS), or where it puts nothing after the model's eos token (GPT-2's <|endoftext|>
  starts documents too); the eos ends texts. The prefixes asked for at once go through as
  trees of their distinct prefixes (`balanced_trees`), batch_size trees a pass, each node at its
  depth and attending to its own path through a 4-D attention mask (which transformers'
  GPT-2 and Llama models take, and which `tests/test_byteprobs_tokenizers.py` checks against
  the plain causal pass). A model whose output is wider than the tokenizer's vocabulary
  (padded) keeps its softmax over all of it, as in training.
  """
  try:
    import torch
    import transformers
  except ImportError as e:
    raise ImportError("from_hugging_face needs PyTorch and transformers: "
                      "pip install 'bytelm[hf]'") from e
  model_dir = pathlib.Path(model_dir)
  tokenizer = BPE.from_file(tokenizer_file or model_dir / "tokenizer.json")
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
  eos = model.config.eos_token_id
  if isinstance(eos, (list, tuple)):  # Llama-3 names several: the first is the end of text
    eos = eos[0] if eos else None
  if eos is None:
    raise ValueError(f"{model_dir}: the model config names no eos_token_id, which bytelm uses "
                     f"to start and end texts")
  size = len(tokenizer.token_bytes)
  if model.config.vocab_size < size:
    raise ValueError(f"{model_dir}: the model's output has {model.config.vocab_size} tokens, "
                     f"fewer than its tokenizer's {size}")

  dtype = next(model.parameters()).dtype

  def token_lm(prefixes):
    """The rows as trees of their distinct prefixes (`balanced_trees`), batch_size trees a
    pass: each node at its depth (position_ids), attending to its own path (a 4-D mask)."""
    trees, where = balanced_trees([list(p) for p in prefixes])
    out = []
    with torch.no_grad():
      for start in range(0, len(trees), batch_size):
        chunk = trees[start:start + batch_size]
        ids_BN, depth_BN, attend_BNN = map(torch.from_numpy, tree_batch(
            chunk, len(chunk), max(len(ids) for ids, _, _ in chunk)))
        mask_B1NN = torch.where(attend_BNN[:, None], 0.0, torch.finfo(dtype).min).to(dtype)
        logits = model(input_ids=ids_BN.long().to(device), position_ids=depth_BN.long().to(device),
                       attention_mask=mask_B1NN.to(device)).logits
        out.append(torch.log_softmax(logits.double(), -1)[..., :size].cpu().numpy())
    return np.stack([out[t // batch_size][t % batch_size, n] for t, n in where])

  return ByteLM(token_lm, tokenizer, eos, context=tokenizer.bos or (eos,))


class _ByteModel:
  """A bytelm byte model's next-byte distributions: its 256 byte ids and eos (the end of text).
  One causal pass over a text gives them at every position. Texts are str (UTF-8 encoded) or
  any bytes."""

  def next_byte_logprobs(self, prefix: str | bytes, normalize: bool = True) -> np.ndarray:
    """log P(next byte | prefix), float64 [257]: bytes 0..255, then the end of text."""
    return self.next_byte_logprobs_along(as_bytes(prefix, "prefix"), normalize)[-1]

  def next_byte_logprobs_along(self, text: str | bytes, normalize: bool = True) -> np.ndarray:
    """[len(text) + 1, 257]: row t is log P(next byte | text[:t]). normalize: renormalised
    over the 257 (a distribution, the default), or the model's own softmax over all its ids,
    which also gives mass to pad, unk and sentinels (what its training loss counts)."""
    text = as_bytes(text)
    logits_TV = np.asarray(self._logits(text), np.float64)[:len(text) + 1]
    logp_TV = logits_TV - np.logaddexp.reduce(logits_TV, axis=1, keepdims=True)
    out = np.concatenate([logp_TV[:, OFFSET:NUM_BYTE_IDS], logp_TV[:, EOS_ID:EOS_ID + 1]], 1)
    return out - np.logaddexp.reduce(out, axis=1, keepdims=True) if normalize else out

  def bits_per_byte(self, texts: Sequence[str | bytes]) -> float:
    """Bits per byte of the texts (`mixture.bits_per_byte`: each read from a document start,
    its end not predicted) under the model's own probabilities: `bytelm.load(path).score(texts,
    total=True)` (texts within one window)."""
    return mixture.bits_per_byte(
        lambda t: mixture.bytes_logprob(self, t, normalize=False), texts)


class ByteDecoderLM(_ByteModel):
  """A decoder-only byte LM (`models.decoder.DecoderLM` over bytes) as a byte LM."""

  def __init__(self, model):
    self.compiled = Compiled(model)

  def _logits(self, text: bytes):
    ids = [EOS_ID] + ByteTokenizer().encode(text, add_eos=False).tolist()
    length = _round_up(len(ids), 64)
    ids_1T = np.zeros((1, length), np.int32)
    ids_1T[0, :len(ids)] = ids
    mask_1T = np.arange(length)[None] < len(ids)
    return self.compiled("__call__", ids_1T, mask_1T)[0]


class HierarchicalLM(_ByteModel):
  """A word-pooled or learned-boundary byte LM (`models.hierarchical`) as a byte LM; segmenter:
  the host segmenter it was trained with (None for learned boundaries). Segments settled by
  position t only are read there (tested in tests/test_hierarchical.py), so one pass over a
  text gives each prefix's next-byte distribution."""

  def __init__(self, model, segmenter: segment.Segmenter | None = None):
    if model.config.segmenter != "learned" and segmenter is None:
      raise ValueError("a model trained on given segments needs its segmenter")
    self.model, self.segmenter = model, segmenter
    self.compiled = Compiled(model)  # one compiled pass per text, not an eager op-by-op run

  def _logits(self, text: bytes):
    return generation.prefix_logits(self.model, text, self.segmenter, compiled=self.compiled)


def byte_model_from_workdir(workdir) -> _ByteModel:
  """Deprecated (removed in the next release): `bytelm.load(workdir).byte_lm()`. The byte LM a
  bytelm workdir holds: a decoder (configs/bytes_decoder.py) or a hierarchical model
  (configs/hat.py, blt.py, hnet.py)."""
  warnings.warn("bytelm.byteprobs.adapters.byte_model_from_workdir(workdir) is deprecated and "
                "will be removed in the next release: use bytelm.load(workdir).byte_lm()",
                DeprecationWarning, stacklevel=2)
  workdir = pathlib.Path(workdir)
  config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  model = load_module(workdir)
  if config["model_family"] == "decoder" and "tokenizer" not in config["data"]:
    return ByteDecoderLM(model)
  if config["model_family"] == "hierarchical":
    segments = config["data"].get("segments")
    fitted = data_lib.fitted_files(config, workdir)
    if data_lib.ENTROPY_MODEL in fitted:  # "" in config.json: the one fitted beside it
      segments = {**segments, "entropy_model": str(fitted[data_lib.ENTROPY_MODEL])}
    return HierarchicalLM(model, segment.Segmenter.from_settings(segments)
                          if model.config.segmenter != "learned" else None)
  raise ValueError(f"{workdir} holds a {config['model_family']!r} model over "
                   f"{'tokens' if 'tokenizer' in config['data'] else 'bytes'}; a byte LM is "
                   f"a byte decoder or a hierarchical model (a BPE decoder: from_workdir)")
