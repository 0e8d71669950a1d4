"""A BPE decoder read exactly as bytes (bytelm.byteprobs): prompts cut mid-token, whole-text
agreement with the token way, an ensemble with a byte model, and the cost.

  python eval/byteprobs.py [--prompts 300] [--texts 48] [--bpe-workdir DIR] [--byte-workdir DIR]

Models: the BPE decoder of configs/bpe_decoder.py (2048 tokens; by default the run
eval/hierarchical.py trained, 1,481 steps; trained here with --bpe-steps if missing) and the
word-pooled byte model of configs/hat.py trained here for --byte-steps (4,400 steps x 16 x 256
bytes: the ~18M bytes the BPE decoder's 1,481 x 16 x 256 tokens of ~3 bytes spell). Held-out
text: pieces of the validation split of embedded:en, each read from a document start.
1. Prompts: held-out pieces cut at a random byte (at least 8 in, at least --continuation
   before the end); a cut is mid-token when it falls inside a token of the piece's
   tokenization. For each prompt, the most likely next byte and the bits of the next
   --continuation bytes, three ways:
   - exact: `ByteLM` (the next byte's distribution; the continuation's P(x c...) / P(x...));
   - naive: the prompt's own tokenization, then the model's next-token distribution summed
     by first byte; the continuation's own tokenization scored after the prompt's;
   - token healing: the prompt's last token removed and the next token constrained to start
     with its bytes (renormalised); a token equal to them is followed by the naive
     distribution. The continuation: the tokenization of the removed bytes + continuation,
     first token constrained the same way.
2. Whole texts (--texts pieces of --text-bytes): bits per byte of the BPE decoder the token
   way (canonical tokens, then eos) and the byte way (the chain of next-byte probabilities:
   the lemma's ratios, which must equal the token way, and the normalised distributions,
   which return the mass the model puts on token sequences the tokenizer never makes).
3. Ensemble: the mixture of the converted BPE decoder and the byte model against each alone,
   on the same texts; the weight used on each half of the texts is the one that does best on
   the other half (two-fold cross-fitting: no text is scored with a weight tuned on it).
   The bits per byte of 2 and 3 count each text's end as one more predicted byte: the token
   way and the byte way agree on whole documents, P(text, then its end). bytelm's bits per
   byte (`score`, `bits_per_byte`; docs/api.md) leave the end out, so they differ from these
   by the end's bits and one byte per text.
4. Cost, on --cost-texts of the whole texts: every byte's distribution along all of them in
   one batch (`next_byte_logprobs_along(texts)`, caches cleared, compiled shapes warm), against
   the model's own scoring of the same texts' canonical tokens (every token's row, one
   batch); and sampling --sample-bytes bytes greedily after each text's first half
   (`complete`), ms per byte generated. Medians of --cost-repeats alternated runs.
5. The same cost for the other tokenizer kinds: a Llama-3-style byte-level BPE (its Split
   pattern, ignore_merges) and a SentencePiece-style BPE with byte fallback (Llama-2's
   conventions), each trained to the BPE decoder's 2,048 tokens on --kind-train-bytes of its
   training text and read with the same network (whose probabilities mean nothing for them:
   this measures the conversion, whose model calls cost the same).
Writes eval/results/byteprobs.{json,png}. Last line: acc_exact acc_naive acc_healing (next-byte
accuracy on mid-token prompts), bpb_ensemble, bpb_best_member, calls_per_byte (token prefixes
scored per byte), ms_per_byte (scoring along), ms_per_byte_sampling, model_ms_per_byte,
overhead_ratio (ms_per_byte / model_ms_per_byte), and ms_per_byte_K, ms_per_byte_sampling_K
for K in llama3, sentencepiece.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import numpy as np

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

import bytelm
from bytelm.byteprobs import splits
from bytelm.byteprobs.byte_lm import END, ByteLM
from bytelm.byteprobs.mixture import along, mix
from bytelm.byteprobs.tokenization import BPE
from bytelm.data import sources
from bytelm.data.bpe import SPECIAL_TOKENS
from bytelm.training import budget, train_unless_finished

LN2 = math.log(2)


def recipe(name: str, steps: int):
  """configs/<name>.py's config, set to train for `steps` steps (warmup, evaluation and
  checkpoints fitted to them)."""
  c = common.config(name)
  budget.set_steps(c, steps)
  return c


# ---- the two token-level baselines ----------------------------------------------------------


class TokenWays:
  """Naive prompting and token healing with the ByteLM's own token model and caches."""

  def __init__(self, lm: ByteLM):
    self.lm, self.bpe = lm, lm.bpe
    first = np.full(len(self.bpe.token_bytes), END)  # a special token (eos) ends the text
    for i, t in enumerate(self.bpe.token_bytes):
      if t:
        first[i] = t[0]
    self.first_byte = first

  def naive_next(self, x: bytes) -> np.ndarray:
    """P(next byte) from the prompt's own tokens: next-token probabilities by first byte."""
    p = np.exp(self.lm.next_token_logprobs(self.bpe.encode(x)))
    return np.bincount(self.first_byte, p, minlength=257)

  def healing_next(self, x: bytes) -> np.ndarray:
    ids = self.bpe.encode(x)
    removed = self.bpe.token_bytes[ids[-1]]
    p = np.exp(self.lm.next_token_logprobs(ids[:-1]))
    out = np.zeros(257)
    for v in self.bpe.tokens_starting_with(removed):
      t = self.bpe.token_bytes[v]
      if len(t) > len(removed):
        out[t[len(removed)]] += p[v]
    exact = self.bpe.vocab[removed]  # the removed token again: then the naive distribution
    out += p[exact] * self.naive_next(x)
    return out / out.sum()

  def naive_bits(self, x: bytes, cont: bytes) -> float:
    ids, more = self.bpe.encode(x), self.bpe.encode(cont)
    return -(self.lm.sequence_logprob(ids + more) - self.lm.sequence_logprob(ids)) / LN2

  def healing_bits(self, x: bytes, cont: bytes) -> tuple[float, bool]:
    """(bits, whether the constraint allowed the continuation's first token)."""
    ids = self.bpe.encode(x)
    removed = self.bpe.token_bytes[ids[-1]]
    more = self.bpe.encode(removed + cont)
    logp = self.lm.sequence_logprob(ids[:-1] + more) - self.lm.sequence_logprob(ids[:-1])
    allowed = self.bpe.token_bytes[more[0]].startswith(removed)
    if allowed:
      row = self.lm.next_token_logprobs(ids[:-1])
      logp -= np.logaddexp.reduce(row[self.bpe.tokens_starting_with(removed)])
    return -logp / LN2, allowed


def mid_token(bpe, text: bytes, cut: int) -> bool:
  ends = np.cumsum([len(bpe.token_bytes[i]) for i in bpe.encode(text)])
  return cut not in set(ends.tolist())


# ---- main -----------------------------------------------------------------------------------


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--bpe-workdir", default="workdirs/eval_hierarchical/bpe_decoder")
  p.add_argument("--bpe-steps", type=int, default=1481)
  p.add_argument("--byte-workdir", default="workdirs/eval_byteprobs/hat")
  p.add_argument("--byte-steps", type=int, default=4400)
  p.add_argument("--prompts", type=int, default=300)
  p.add_argument("--continuation", type=int, default=16)
  p.add_argument("--texts", type=int, default=48)
  p.add_argument("--text-bytes", type=int, default=128)
  p.add_argument("--cost-texts", type=int, default=8)
  p.add_argument("--cost-repeats", type=int, default=5)
  p.add_argument("--sample-bytes", type=int, default=32)
  p.add_argument("--kind-train-bytes", type=int, default=3_000_000,
                 help="characters of training text for the other tokenizer kinds")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=str(common.RESULTS / "byteprobs"))
  args = p.parse_args()
  machine = common.start()
  lm = bytelm.load(train_unless_finished(recipe("bpe_decoder", args.bpe_steps),
                                         args.bpe_workdir)).byte_lm()
  byte_model = bytelm.load(train_unless_finished(recipe("hat", args.byte_steps),
                                                 args.byte_workdir)).byte_lm()
  ways = TokenWays(lm)
  rng = np.random.default_rng(args.seed)
  pieces = [t.encode() for t in sources.held_out_pieces(
      "embedded:en", args.text_bytes, args.text_bytes * (args.texts + args.prompts) * 4)]
  pieces = [t for t in pieces if len(t) >= 8 + args.continuation + 1]
  texts, prompt_pieces = pieces[:args.texts], pieces[args.texts:]
  if len(prompt_pieces) < args.prompts:
    raise SystemExit(f"only {len(prompt_pieces)} held-out pieces for {args.prompts} prompts")
  results = {**machine, "args": vars(args),
             "max_token_bytes": lm.bpe.max_token_bytes}

  # 1. prompts cut at random bytes
  rows = []
  t0 = time.perf_counter()
  for n, text in enumerate(rng.choice(len(prompt_pieces), args.prompts, replace=False)):
    text = prompt_pieces[text]
    cut = int(rng.integers(8, len(text) - args.continuation + 1))
    x, nxt, cont = text[:cut], text[cut], text[cut:cut + args.continuation]
    lm.clear()
    exact = lm.next_byte_logprobs(x)
    heal_bits, allowed = ways.healing_bits(x, cont)
    rows.append({
        "mid_token": mid_token(lm.bpe, text, cut),
        "exact": int(np.argmax(exact)) == nxt,
        "naive": int(np.argmax(ways.naive_next(x))) == nxt,
        "healing": int(np.argmax(ways.healing_next(x))) == nxt,
        "bits_exact": -(lm.prefix_logprob(x + cont) - lm.prefix_logprob(x)) / LN2,
        "bits_naive": ways.naive_bits(x, cont), "bits_healing": heal_bits,
        "healing_allowed": allowed})
    if (n + 1) % 50 == 0:
      print(f"  prompts {n + 1}/{args.prompts} ({time.perf_counter() - t0:.0f} s)", flush=True)
  prompts = {}
  for subset, keep in (("mid_token", True), ("boundary", False)):
    sel = [r for r in rows if r["mid_token"] == keep]
    prompts[subset] = {"count": len(sel)} | {
        f"acc_{k}": float(np.mean([r[k] for r in sel])) if sel else float("nan")
        for k in ("exact", "naive", "healing")} | {
        f"bpb_{k}": float(np.sum([r[f"bits_{k}"] for r in sel]) / (len(sel) * args.continuation))
        if sel else float("nan") for k in ("exact", "naive", "healing")}
    prompts[subset]["healing_disallowed"] = sum(not r["healing_allowed"] for r in sel)
  results["prompts"] = prompts
  print(f"\nprompts cut at random bytes ({len(rows)}, {prompts['mid_token']['count']} mid-token)")
  print(f"{'cut':10s} {'n':>4s} | next-byte accuracy: exact / naive / healing | "
        f"bpb of the next {args.continuation} bytes: exact / naive / healing")
  for subset, r in prompts.items():
    print(f"{subset:10s} {r['count']:4d} | {r['acc_exact']:.3f} / {r['acc_naive']:.3f} / "
          f"{r['acc_healing']:.3f} | {r['bpb_exact']:.3f} / {r['bpb_naive']:.3f} / "
          f"{r['bpb_healing']:.3f}")

  # 2. whole texts, token way and byte way; 3. the ensemble
  n_bytes = [len(t) + 1 for t in texts]  # the end counted as a byte
  token_bits, lemma_bits, bpe_steps, byte_steps = [], [], [], []
  for text in texts:
    lm.clear()
    token_bits.append(-lm.logprob(text) / LN2)
    targets = list(text) + [END]
    lemma = along(lm, text, normalize=False)
    lemma_bits.append(-lemma[np.arange(len(text) + 1), targets].sum() / LN2)
    bpe_steps.append(along(lm, text)[np.arange(len(text) + 1), targets])
    byte_steps.append(along(byte_model, text)[np.arange(len(text) + 1), targets])
  whole = {"bpb_token_way": sum(token_bits) / sum(n_bytes),
           "bpb_byte_way_lemma": sum(lemma_bits) / sum(n_bytes),
           "bpb_byte_way_normalised": -sum(map(np.sum, bpe_steps)) / LN2 / sum(n_bytes),
           "max_text_bits_difference": float(np.max(np.abs(np.subtract(token_bits,
                                                                       lemma_bits))))}
  results["whole_texts"] = whole
  print(f"\nwhole texts ({len(texts)}, {sum(n_bytes)} bytes): BPE decoder bits per byte the token "
        f"way {whole['bpb_token_way']:.5f}, the byte way {whole['bpb_byte_way_lemma']:.5f} "
        f"(largest difference on a text {whole['max_text_bits_difference']:.2e} bits), "
        f"normalised {whole['bpb_byte_way_normalised']:.5f}")

  # Two folds: the weight for each half is the one that does best on the other half.
  folds = [range(0, len(texts) // 2), range(len(texts) // 2, len(texts))]
  grid = np.round(np.arange(0.05, 1.0, 0.05), 2)

  def bits(w: float, fold) -> float:
    return -sum(mix([bpe_steps[i], byte_steps[i]], [w, 1 - w]).sum() for i in fold) / LN2

  curves = [[bits(w, fold) for w in grid] for fold in folds]
  weights = [float(grid[int(np.argmin(curves[1 - k]))]) for k in range(2)]
  total = sum(n_bytes)
  members = {"bpe_byte_way": -sum(map(np.sum, bpe_steps)) / LN2 / total,
             "bpe_token_way": sum(token_bits) / total,
             "hat": -sum(map(np.sum, byte_steps)) / LN2 / total}
  ens = {"weights_bpe": weights,
         "bpb_ensemble": sum(bits(w, fold) for w, fold in zip(weights, folds)) / total,
         "bpb_equal_weights": sum(bits(0.5, fold) for fold in folds) / total,
         "members": members, "bpb_best_member": min(members.values()),
         "curve": dict(zip(grid.tolist(), (np.sum(curves, axis=0) / total).tolist()))}
  results["ensemble"] = ens
  print(f"\nensemble of the converted BPE decoder and hat ({total} bytes; the weight of each "
        f"half chosen on the other: {weights[0]}, {weights[1]} on the BPE decoder): "
        f"{ens['bpb_ensemble']:.4f} bits per byte; equal weights "
        f"{ens['bpb_equal_weights']:.4f}; members: " +
        ", ".join(f"{k} {v:.4f}" for k, v in members.items()))

  # 4. cost: scoring held-out texts along (the bulk path, from a cold cache), the model's own
  # scoring of the same texts' canonical tokens, and sampling byte by byte.
  cost_texts = texts[:args.cost_texts]
  cost = measure_cost(lm, cost_texts, args)
  results["cost"] = cost
  print(f"\ncost ({len(cost_texts)} texts, {cost['bytes']} bytes, medians of "
        f"{args.cost_repeats}): scoring every byte along them {cost['ms_per_byte']:.3f} ms a "
        f"byte ({cost['prefixes_per_byte']:.2f} token prefixes scored, one LM call); the model "
        f"scoring their canonical tokens {cost['model_ms_per_byte']:.3f} ms a byte (overhead "
        f"{cost['overhead_ratio']:.2f}x); sampling byte by byte "
        f"{cost['ms_per_byte_sampling']:.2f} ms a byte ({cost['bytes_sampled']} bytes, greedy)")

  # 5. the same cost for the other tokenizer kinds (`BPE.from_json`), each trained to the same
  # size on the BPE decoder's training text, read with the same network: its probabilities
  # mean nothing for these tokenizers, its cost per token prefix is the same.
  train_text = training_text(args.kind_train_bytes)
  kinds = {}
  for kind in KINDS:
    t0 = time.perf_counter()
    other = BPE.from_json(train_kind(kind, train_text, len(lm.bpe.token_bytes)).to_str())
    assert other.checks_together, kind
    kinds[kind] = measure_cost(ByteLM(lm.token_lm, other, lm.eot_id), cost_texts, args)
    print(f"{kind}: scoring along {kinds[kind]['ms_per_byte']:.3f} ms a byte, sampling "
          f"{kinds[kind]['ms_per_byte_sampling']:.2f}, the model "
          f"{kinds[kind]['model_ms_per_byte']:.3f} (tokenizer trained and read in "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
  results["kinds"] = kinds

  out = pathlib.Path(args.out)
  common.write_json(out.with_suffix(".json"), results)
  plot(results, out.with_suffix(".png"))
  mid = prompts["mid_token"]
  common.last_line({"acc_exact": mid["acc_exact"], "acc_naive": mid["acc_naive"],
                    "acc_healing": mid["acc_healing"], "bpb_ensemble": ens["bpb_ensemble"],
                    "bpb_best_member": ens["bpb_best_member"],
                    "calls_per_byte": cost["prefixes_per_byte"],
                    "ms_per_byte": cost["ms_per_byte"],
                    "ms_per_byte_sampling": cost["ms_per_byte_sampling"],
                    "model_ms_per_byte": cost["model_ms_per_byte"],
                    "overhead_ratio": cost["overhead_ratio"]} | {
                    f"{key}_{kind}": kinds[kind][key] for kind in KINDS
                    for key in ("ms_per_byte", "ms_per_byte_sampling")})


def measure_cost(lm: ByteLM, texts: list[bytes], args) -> dict:
  """ms a byte of scoring every byte along texts in one batch (caches cleared, shapes warm),
  of the model scoring their canonical tokens (every token's row, one batch), alternated,
  medians of args.cost_repeats; and of sampling args.sample_bytes greedily after each text's
  first half."""
  n_bytes = sum(len(t) + 1 for t in texts)
  canonical = [tuple(lm.bpe.encode(t)) + (lm.eot_id,) for t in texts]
  rows = [lm.context + ids[:k] for ids in canonical for k in range(len(ids))]

  def scoring():
    lm.clear(followers=True)  # cold: what a start may be followed by is found again
    lm.calls = lm.batches = 0
    lm.next_byte_logprobs_along(texts)

  scoring()  # compiles its shapes; each timed run starts from cleared caches
  lm.token_lm(rows)
  ms = {"scoring": [], "model": []}
  for _ in range(args.cost_repeats):
    t0 = time.perf_counter()
    scoring()
    ms["scoring"].append((time.perf_counter() - t0) * 1000 / n_bytes)
    t0 = time.perf_counter()
    lm.token_lm(rows)
    ms["model"].append((time.perf_counter() - t0) * 1000 / n_bytes)
  calls = lm.calls
  sampled = 0
  t0 = time.perf_counter()
  for text in texts:
    lm.clear()
    sampled += len(lm.complete(text[:len(text) // 2], max_bytes=args.sample_bytes))
  out = {"bytes": n_bytes, "ms_per_byte": float(np.median(ms["scoring"])),
         "model_ms_per_byte": float(np.median(ms["model"])),
         "ms_per_byte_sampling": (time.perf_counter() - t0) * 1000 / max(sampled, 1),
         "bytes_sampled": sampled, "prefixes_per_byte": calls / n_bytes,
         "runs_ms_per_byte": ms, "bound": lm.bpe.max_token_bytes}
  out["overhead_ratio"] = out["ms_per_byte"] / out["model_ms_per_byte"]
  return out


# ---- other tokenizer kinds ------------------------------------------------------------------

KINDS = ("llama3", "sentencepiece")


def training_text(max_chars: int) -> list[str]:
  """The first documents of the BPE decoder's training split, up to max_chars characters."""
  docs, n = [], 0
  for text in sources.load_text(common.config("bpe_decoder").data.train)["text"]:
    docs.append(text)
    n += len(text)
    if n >= max_chars:
      break
  return docs


def train_kind(kind: str, texts: list[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A tokenizer of `vocab_size` tokens as released models make them, with bytelm's special
  tokens first: "llama3", byte-level BPE after Llama-3's Split pattern with ignore_merges;
  "sentencepiece", BPE over characters with "<0x..>" byte fallback, "▁" for spaces and one
  before the text (Llama-2's tokenizer.json)."""
  specials = list(SPECIAL_TOKENS)
  if kind == "llama3":
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(splits.LLAMA3), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok
  tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True))
  # Trained within words, as SentencePiece trains; written as Llama-2's file: normalisers, no
  # pre-tokenizer (the text one piece, where no merge joins across a space after a word).
  tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False,
      limit_alphabet=200))
  tok.pre_tokenizer = None
  tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                         normalizers.Replace(" ", "\u2581")])
  spec = json.loads(tok.to_str())
  for b in range(256):
    spec["model"]["vocab"][f"<0x{b:02X}>"] = len(spec["model"]["vocab"])
  return tokenizers.Tokenizer.from_str(json.dumps(spec))


def plot(results, path: pathlib.Path) -> None:
  plt = common.pyplot()
  if plt is None:
    return
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  ways = ("exact", "naive", "healing")
  for k, subset in enumerate(("mid_token", "boundary")):
    r = results["prompts"][subset]
    a.bar(np.arange(3) + 0.38 * k, [r[f"acc_{w}"] for w in ways], 0.36,
          label=f"{subset.replace('_', '-')} cuts ({r['count']})")
  a.set_xticks(np.arange(3) + 0.19, ways)
  a.set_ylabel("next-byte accuracy")
  a.set_title("prompts cut at random bytes")
  a.legend()
  ens = results["ensemble"]
  curve = ens["curve"]
  b.plot(list(map(float, curve)), list(curve.values()), marker=".", label="mixture")
  for (name, value), color in zip(ens["members"].items(), ("C1", "C2", "C3")):
    b.axhline(value, ls=":", color=color, label=f"{name} alone {value:.4f}")
  b.set_xlabel("weight on the converted BPE decoder")
  b.set_ylabel("bits per byte")
  b.set_title(f"ensemble {ens['bpb_ensemble']:.4f} (weights chosen on the other half) vs "
              f"best member {ens['bpb_best_member']:.4f}", fontsize=9)
  b.legend()
  common.save_figure(fig, path)


if __name__ == "__main__":
  main()
