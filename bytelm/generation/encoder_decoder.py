"""Decoding for encoder-decoders: greedy, sampling (temperature, top-k, top-p) and beam search.

Every method encodes the input once (`encode_for_inference`: for MrT5, with hard deletion),
builds the KV cache once (`T5.init_cache`), then runs `T5.decode_step` inside one
`jax.lax.while_loop`: no per-step Python, no host sync, the cache updated in place. The loop
stops as soon as every sequence is finished, or after `max_new_bytes` steps. A finished sequence
emits pad (0) from then on, so the result is a dense int32 [B, N] array: the generated ids, the
eos, then zeros.

Compilation. `encoder_decoder_ids` splits the model once per call (`Compiled`) and hands the
state to a `jax.jit` function that merges it inside: splitting walks the module in Python, so it
is done once per call, never per step. One compile per (graphdef, batch, encoder-output length,
max_new_bytes, method, top_k, num_beams, length_penalty, and whether top-p is on); temperature
and top_p are traced, so sweeping them does not recompile. `encoder_decoder_texts` pads inputs
up to a multiple of `pad_to_multiple` ids (64 by default) for the same reason.

Beam search scores like Hugging Face: a finished hypothesis of n ids (eos included) scores
sum(log p) / n**length_penalty; length_penalty=0 ranks by total log-probability, > 0 favours
longer outputs. `num_beams` finished hypotheses are kept per input, and a hypothesis that reaches
`max_new_bytes` without eos is scored with n = max_new_bytes at the end. An input stops early
only when no live beam can still beat its worst kept hypothesis (an exact bound, not HF's
heuristic). Unlike HF, an eos candidate counts even when it ranks below the top `num_beams`
(t5x does the same), so no finished hypothesis is lost to a worse one. As in HF, `num_beams=1`
is greedy search; the beam loop with one beam would keep the greedy path alive but could return
a likelier hypothesis that ended earlier.

Axis legend: B batch, T input positions, N new positions, V vocab, K beams, C candidates per
step (2K), J live + finished hypotheses (2K).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bytelm.nn.compiled import Compiled

METHODS = ("greedy", "sample", "beam")

# Incremented each time the jitted generation function is traced: tests assert that a second call
# with the same shapes and options does not retrace.
_NUM_TRACES = 0


# -- validation ---------------------------------------------------------------------------------


def _check_options(max_new_bytes, method, temperature, top_k, top_p, num_beams, length_penalty):
  if not isinstance(max_new_bytes, (int, np.integer)) or isinstance(max_new_bytes, bool) \
      or max_new_bytes <= 0:
    raise ValueError(f"max_new_bytes must be a positive int, got {max_new_bytes!r}; it is the "
                     "length of the output (eos included), e.g. max_new_bytes=128")
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
  if not (isinstance(temperature, (int, float, np.number)) and math.isfinite(temperature)
          and temperature >= 0):
    raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got "
                     f"{temperature!r}")
  if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 0:
    raise ValueError(f"top_k must be an int >= 0 (0 turns it off), got {top_k!r}")
  if not (isinstance(top_p, (int, float, np.number)) and 0.0 < top_p <= 1.0):
    raise ValueError(f"top_p must be in (0, 1] (1.0 turns it off), got {top_p!r}")
  if not isinstance(num_beams, (int, np.integer)) or isinstance(num_beams, bool) \
      or num_beams < 1:
    raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
  if not (isinstance(length_penalty, (int, float, np.number)) and math.isfinite(length_penalty)):
    raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")


def _as_key(rng) -> jax.Array:
  if rng is None:
    raise ValueError("method='sample' needs a random key: pass rng=jax.random.key(0) "
                     "(or an int seed) to make the samples reproducible")
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
    return jax.random.key(int(rng))
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    if rng.shape != ():
      raise ValueError(f"rng must be a single key, got a key array of shape {rng.shape}")
    return rng
  if rng.shape == (2,) and rng.dtype == jnp.uint32:  # a raw jax.random.PRNGKey
    return jax.random.wrap_key_data(rng)
  raise ValueError(f"rng must be jax.random.key(seed) or an int seed, got {rng!r}")


# -- token choice -------------------------------------------------------------------------------


def _filter_logits(logits_BV, top_k: int, top_p, use_top_p: bool):
  """Set to -inf every logit outside the top_k (static) and outside the top-p nucleus."""
  neg_inf = jnp.asarray(-jnp.inf, logits_BV.dtype)
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, neg_inf, logits_BV)
  if use_top_p:
    # Keep the smallest prefix of the sorted distribution whose mass reaches top_p: a token is
    # kept if the mass strictly before it is < top_p (so the most likely token always is).
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_BV = mass_before_BV < top_p
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, neg_inf, logits_BV)
  return logits_BV


def _suppress_eos(logits_BV, i, min_new: int, eos_id: int):
  """Forbid eos before step min_new (HF's min_new_tokens); a no-op when min_new is 0."""
  if not min_new:
    return logits_BV
  is_eos_V = jnp.arange(logits_BV.shape[-1]) == eos_id
  return jnp.where(is_eos_V & (i < min_new), jnp.finfo(logits_BV.dtype).min, logits_BV)


def _choose_fn(method, rng, temperature, top_k, top_p, use_top_p):
  """next_id_B = choose(logits_BV, step) for greedy or sampling."""
  if method == "greedy":
    return lambda logits_BV, i: jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)

  def sample(logits_BV, i):
    logits_BV = _filter_logits(logits_BV / temperature, top_k, top_p, use_top_p)
    # fold_in(step) rather than splitting in the carry: the same key gives the same samples
    # regardless of how far other sequences in the batch run.
    return jax.random.categorical(jax.random.fold_in(rng, i), logits_BV).astype(jnp.int32)

  return sample


# -- loops --------------------------------------------------------------------------------------


def _sequential_loop(model, enc_BTD, cross_bias_B, max_new: int, min_new: int, choose):
  """Greedy or sampled decoding; returns ids_BN (pad after eos)."""
  cfg = model.config
  b = enc_BTD.shape[0]
  cache = model.init_cache(enc_BTD, max_new)

  def cond(carry):
    i, _, done_B, _, _ = carry
    return (i < max_new) & ~jnp.all(done_B)

  def body(carry):
    i, prev_B, done_B, ids_BN, cache = carry
    logits_BV, cache = model.decode_step(prev_B, cache, i, cross_bias_B)
    logits_BV = _suppress_eos(logits_BV.astype(jnp.float32), i, min_new, cfg.eos_id)
    next_B = choose(logits_BV, i)
    next_B = jnp.where(done_B, cfg.pad_id, next_B)
    ids_BN = jax.lax.dynamic_update_slice_in_dim(ids_BN, next_B[:, None], i, axis=1)
    return i + 1, next_B, done_B | (next_B == cfg.eos_id), ids_BN, cache

  carry = (jnp.int32(0), jnp.full((b,), cfg.decoder_start_id, jnp.int32),
           jnp.zeros((b,), bool), jnp.full((b, max_new), cfg.pad_id, jnp.int32), cache)
  return jax.lax.while_loop(cond, body, carry)[3]


def _gather_beams(x_BK, idx_BJ):
  """x_BK...[b, idx[b, j]] for each j: pick beams (or candidates) per batch element."""
  return jax.vmap(lambda x, i: x[i])(x_BK, idx_BJ)


def _beam_loop(model, enc_BTD, cross_bias_B, max_new: int, min_new: int, num_beams: int,
               length_penalty: float):
  """Beam search; returns the best hypothesis per input, ids_BN (pad after eos)."""
  cfg = model.config
  b, k = enc_BTD.shape[0], num_beams
  neg_inf = jnp.float32(-jnp.inf)
  lp = lambda n: jnp.asarray(n, jnp.float32) ** length_penalty  # n ids, eos included

  # The cross-attention k/v and bias are equal across the beams of one input: computed on B rows
  # and repeated, never reordered. Only the self-attention k/v follow the beams.
  cache = model.init_cache(enc_BTD, max_new)
  cache = [{name: jnp.repeat(x, k, axis=0) for name, x in layer.items()} for layer in cache]
  cross_bias_BK = jnp.repeat(cross_bias_B, k, axis=0)

  def best_alive_bound(alive_logp_BK, i):
    # An upper bound on the score any live beam can still reach: log p only falls as ids are
    # added, so for length_penalty >= 0 the best case divides by the largest length, else by the
    # smallest length it can still finish at (i + 2 ids, the current i + 1 is a safe bound).
    n = max_new if length_penalty >= 0 else i + 1
    return jnp.max(alive_logp_BK, axis=-1) / lp(n)

  def cond(carry):
    i, _, alive_logp_BK, _, fin_score_BK, _, _ = carry
    worst_fin_B = jnp.min(fin_score_BK, axis=-1)
    can_improve_B = best_alive_bound(alive_logp_BK, i) > worst_fin_B
    return (i < max_new) & jnp.any(can_improve_B)

  def body(carry):
    i, alive_BKN, alive_logp_BK, fin_BKN, fin_score_BK, prev_BK, cache = carry
    logits_BV, cache = model.decode_step(prev_BK.reshape(b * k), cache, i, cross_bias_BK)
    logits_BV = _suppress_eos(logits_BV.astype(jnp.float32), i, min_new, cfg.eos_id)
    logp_BKV = jax.nn.log_softmax(logits_BV, axis=-1).reshape(b, k, -1)
    v = logp_BKV.shape[-1]
    # 2K candidates: at most K of them end in eos (one per beam), so K live ones remain.
    cand_logp_BC, cand_idx_BC = jax.lax.top_k(
        (alive_logp_BK[:, :, None] + logp_BKV).reshape(b, k * v), 2 * k)
    cand_parent_BC, cand_id_BC = cand_idx_BC // v, (cand_idx_BC % v).astype(jnp.int32)
    cand_BCN = _gather_beams(alive_BKN, cand_parent_BC)
    cand_BCN = jax.lax.dynamic_update_slice_in_dim(cand_BCN, cand_id_BC[:, :, None], i, axis=2)
    is_eos_BC = cand_id_BC == cfg.eos_id

    # Live beams: the K best candidates that did not end in eos.
    live_logp_BC = jnp.where(is_eos_BC, neg_inf, cand_logp_BC)
    alive_logp_BK, pick_BK = jax.lax.top_k(live_logp_BC, k)
    alive_BKN = _gather_beams(cand_BCN, pick_BK)
    prev_BK = _gather_beams(cand_id_BC, pick_BK)
    parent_BK = _gather_beams(cand_parent_BC, pick_BK)
    rows = (jnp.arange(b)[:, None] * k + parent_BK).reshape(b * k)
    cache = [dict(layer, k=layer["k"][rows], v=layer["v"][rows]) for layer in cache]

    # Finished: merge the candidates that ended in eos into the K best kept so far. As in t5x,
    # every eos among the 2K counts (HF drops those ranked below K); a finished hypothesis is
    # never thrown away for a worse one.
    new_score_BC = jnp.where(is_eos_BC, cand_logp_BC / lp(i + 1), neg_inf)
    fin_score_BK, pick_BK = jax.lax.top_k(
        jnp.concatenate([fin_score_BK, new_score_BC], axis=1), k)
    fin_BKN = _gather_beams(jnp.concatenate([fin_BKN, cand_BCN], axis=1), pick_BK)
    return i + 1, alive_BKN, alive_logp_BK, fin_BKN, fin_score_BK, prev_BK, cache

  # Only beam 0 is live at the start, so the first step does not pick K copies of one id.
  alive_logp_BK = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, neg_inf), (b, 1))
  empty_BKN = jnp.full((b, k, max_new), cfg.pad_id, jnp.int32)
  carry = (jnp.int32(0), empty_BKN, alive_logp_BK, empty_BKN, jnp.full((b, k), neg_inf),
           jnp.full((b, k), cfg.decoder_start_id, jnp.int32), cache)
  _, alive_BKN, alive_logp_BK, fin_BKN, fin_score_BK, _, _ = jax.lax.while_loop(cond, body, carry)

  # Beams still live were cut at max_new ids (if the loop stopped early they cannot win anyway).
  score_BJ = jnp.concatenate([fin_score_BK, alive_logp_BK / lp(max_new)], axis=1)
  seqs_BJN = jnp.concatenate([fin_BKN, alive_BKN], axis=1)
  return _gather_beams(seqs_BJN, jnp.argmax(score_BJ, axis=1)[:, None])[:, 0]


# -- the compiled entry point -------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "min_new", "method", "top_k",
                                             "use_top_p", "num_beams", "length_penalty"))
def _generate_jit(state, enc_BTD, cross_bias_B, rng, temperature, top_p, *, graphdef, max_new,
                  min_new, method, top_k, use_top_p, num_beams, length_penalty):
  global _NUM_TRACES
  _NUM_TRACES += 1  # runs at trace time only
  model = nnx.merge(graphdef, state)
  if method == "beam":
    return _beam_loop(model, enc_BTD, cross_bias_B, max_new, min_new, num_beams, length_penalty)
  choose = _choose_fn(method, rng, temperature, top_k, top_p, use_top_p)
  return _sequential_loop(model, enc_BTD, cross_bias_B, max_new, min_new, choose)


def encoder_decoder_ids(model, inputs_BT, input_mask_BT=None, *, max_new_bytes: int,
                        method: str = "greedy", temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, num_beams: int = 4, length_penalty: float = 1.0,
                 rng: Any = None, min_new_bytes: int = 0) -> jax.Array:
  """Generate ids_BN (int32, N = max_new_bytes) from an encoder-decoder such as `T5`.

  Args:
    model: an `nnx.Module` with `encode_for_inference`, `init_cache`, `decode_step` and a config
      holding `pad_id`, `eos_id`, `decoder_start_id`. It is used with dropout off and not mutated.
    inputs_BT: int input ids [B, T]. input_mask_BT: [B, T], true on real ids; defaults to
      `inputs != pad`.
    max_new_bytes: N, the most ids generated per input (eos included).
    method: "greedy", "sample" or "beam".
    temperature, top_k, top_p: sampling only. Logits are divided by temperature (0 = greedy),
      then cut to the top_k most likely ids (0 = off), then to the smallest set holding top_p of
      the probability (1.0 = off), as in Hugging Face.
    num_beams, length_penalty: beam search only; see the module docstring. num_beams=1 is greedy.
    rng: sampling only: `jax.random.key(seed)` or an int seed. Same key, same samples.
    min_new_bytes: eos is forbidden before this many ids (benchmarks use it to force equal work).

  Returns:
    ids_BN: the generated ids of each input; after its eos a row holds pad (0) only.
  """
  _check_options(max_new_bytes, method, temperature, top_k, top_p, num_beams, length_penalty)
  inputs_BT = jnp.asarray(inputs_BT)
  if inputs_BT.ndim != 2 or inputs_BT.shape[0] == 0 or inputs_BT.shape[1] == 0:
    raise ValueError(f"inputs_BT must be a non-empty [batch, length] array of ids, got shape "
                     f"{inputs_BT.shape}; wrap a single sequence as ids[None]")
  if not jnp.issubdtype(inputs_BT.dtype, jnp.integer):
    raise ValueError(f"inputs_BT must hold integer ids, got dtype {inputs_BT.dtype}")
  cfg = model.config
  if input_mask_BT is None:
    input_mask_BT = inputs_BT != cfg.pad_id
  input_mask_BT = jnp.asarray(input_mask_BT)
  if input_mask_BT.shape != inputs_BT.shape:
    raise ValueError(f"input_mask_BT has shape {input_mask_BT.shape}, inputs_BT "
                     f"{inputs_BT.shape}; they must match")
  if not isinstance(min_new_bytes, (int, np.integer)) or not 0 <= min_new_bytes <= max_new_bytes:
    raise ValueError(f"min_new_bytes must be an int in [0, max_new_bytes={max_new_bytes}], got "
                     f"{min_new_bytes!r}")
  if method == "beam" and 2 * num_beams > cfg.vocab_size:
    raise ValueError(f"num_beams={num_beams} needs 2 * num_beams <= vocab_size "
                     f"({cfg.vocab_size}); use fewer beams")

  # Canonical static options, so that equivalent calls share one compilation.
  if method == "sample" and temperature == 0:
    method = "greedy"  # the limit of temperature -> 0
  if method == "beam" and num_beams == 1:
    method = "greedy"  # as in HF; the beam loop with one beam and length_penalty=0 agrees
  key = _as_key(rng) if method == "sample" else jax.random.key(0)
  sampling = method == "sample"
  top_k = int(top_k) if sampling and 0 < top_k < cfg.vocab_size else 0
  use_top_p = sampling and top_p < 1.0
  beam = method == "beam"

  # The encoder runs first, in its own compiled call: MrT5's hard deletion chooses the length of
  # its output from the data, so the decoding loop compiles per encoder-output length.
  compiled = Compiled(model)  # one split of the model for both compiled calls
  enc_BTD, cross_bias_BT = model.encode_for_inference(
      inputs_BT.astype(jnp.int32), input_mask_BT.astype(bool), compiled=compiled)
  graphdef, state = compiled.graphdef, compiled.state
  return _generate_jit(
      state, enc_BTD, cross_bias_BT, key,
      jnp.float32(temperature if sampling else 1.0), jnp.float32(top_p if use_top_p else 1.0),
      graphdef=graphdef, max_new=int(max_new_bytes), min_new=int(min_new_bytes), method=method,
      top_k=top_k, use_top_p=use_top_p, num_beams=int(num_beams) if beam else 1,
      length_penalty=float(length_penalty) if beam else 0.0)


# -- text in, text out --------------------------------------------------------------------------


def encoder_decoder_texts(model, tokenizer, texts: Sequence[str | bytes], *,
                          max_new_bytes: int = 128, method: str = "greedy",
                          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                          num_beams: int = 4, length_penalty: float = 1.0, rng: Any = None,
                          max_input_bytes: int | None = None,
                          pad_to_multiple: int = 64, as_bytes: bool = False
                          ) -> list[str] | list[bytes]:
  """Generate a continuation (the decoder output) for each text (str or bytes); returns one str
  per text, or with as_bytes=True the bytes generated.

  Texts are UTF-8 encoded with an eos (`tokenizer.encode_batch`) and right-padded to the longest,
  rounded up to a multiple of `pad_to_multiple` ids so that nearby lengths share a compilation
  (padding is masked, it does not change the output). `max_input_bytes` bounds each encoding,
  counted in ids (UTF-8 bytes + 1 for the eos); longer texts raise ValueError rather than being
  cut silently. Decoding stops at eos and turns invalid UTF-8 into U+FFFD (not with as_bytes).
  Other arguments as in `encoder_decoder_ids`.
  """
  if isinstance(texts, (str, bytes)):
    raise ValueError("texts must be a list of strings; wrap a single text as [text]")
  texts = list(texts)
  if not texts:
    raise ValueError("texts is empty; pass at least one text")
  if not isinstance(pad_to_multiple, (int, np.integer)) or pad_to_multiple < 1:
    raise ValueError(f"pad_to_multiple must be an int >= 1, got {pad_to_multiple!r}")
  if max_input_bytes is not None and (not isinstance(max_input_bytes, (int, np.integer))
                                      or max_input_bytes < 1):
    raise ValueError(f"max_input_bytes must be a positive int or None, got {max_input_bytes!r}")
  _check_options(max_new_bytes, method, temperature, top_k, top_p, num_beams, length_penalty)

  ids_BT, mask_BT = tokenizer.encode_batch(texts)
  longest = ids_BT.shape[1]
  if max_input_bytes is not None and longest > max_input_bytes:
    lengths = mask_BT.sum(axis=1)
    bad = int(np.argmax(lengths))
    raise ValueError(f"text {bad} encodes to {int(lengths[bad])} ids (UTF-8 bytes + eos), more "
                     f"than max_input_bytes={max_input_bytes}; shorten it or raise "
                     "max_input_bytes")
  length = -(-longest // pad_to_multiple) * pad_to_multiple
  if max_input_bytes is not None:
    length = max(longest, min(length, max_input_bytes))
  pad = length - longest
  ids_BT, mask_BT = np.pad(ids_BT, ((0, 0), (0, pad))), np.pad(mask_BT, ((0, 0), (0, pad)))

  ids_BN = encoder_decoder_ids(model, ids_BT, mask_BT, max_new_bytes=max_new_bytes,
                               method=method, temperature=temperature, top_k=top_k, top_p=top_p,
                               num_beams=num_beams, length_penalty=length_penalty, rng=rng)
  if as_bytes:
    return [tokenizer.decode_bytes(row) for row in np.asarray(ids_BN)]
  return tokenizer.decode_batch(np.asarray(ids_BN))
