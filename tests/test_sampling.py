"""Every family's sampler draws from softmax(logits / temperature), cut to the top_k likeliest ids
and the top_p nucleus where the family offers them (the encoder-decoders' `encoder_decoder_ids`): a
chi-square goodness-of-fit of many draws against that distribution, computed here in numpy from
the model's logits, never by the code under test.

The models are random and tiny, their LM head scaled up so that the next id's distribution is
far from uniform: logits * temperature instead of / temperature, uniform draws, or a top-k or
top-p cut one id off each fail with p-values many orders below P_MIN. The seeds are fixed, so a
test passes or fails the same way on every run.

Encoder-decoders draw a batch of rows in one compiled call: the first id, and the second, read
through the KV cache. Decoders and the hierarchical model draw one id per step of their
compiled loop (`generation.choose_B`), and are tested on long generations: step t's draw
against step t's distribution.

Axis legend: N draws, V vocab, R ranks (0: the likeliest id of a draw's distribution).
"""

import pathlib

import numpy as np
import pytest
from flax import nnx
from scipy import stats

from bytelm import generation
from bytelm.models import decoder, hierarchical, t5
from bytelm.nn.compiled import Compiled
from bytelm.text.tokenizer import EOS_ID, NUM_BYTE_IDS, OFFSET, PAD_ID
from bytelm.training import config_file

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A correct sampler fails a test with probability P_MIN (once, for the fixed seeds); the
# mutations above give p-values below 1e-12, an id drawn outside the cut fails outright.
P_MIN = 1e-6
# Logits * SHARPEN: std ~3 instead of ~1, so temperature 0.7 and 1.5 (and their inverses)
# give clearly different distributions.
SHARPEN = 3.0


def sharpened(model):
  kernel = model.lm_head.kernel
  kernel[...] = kernel[...] * SHARPEN
  return model


def expected(logits_NV, temperature, top_k=0, top_p=1.0):
  """p_NV, float64: softmax(logits / temperature), cut to the top_k likeliest ids, then to the
  smallest prefix of those holding top_p of their mass (Hugging Face's order). An id whose
  logit is -inf (one the family never draws) gets probability 0."""
  z_NV = np.asarray(logits_NV, np.float64) / temperature
  order_NV = np.argsort(-z_NV, axis=-1, kind="stable")
  z_NV = np.take_along_axis(z_NV, order_NV, axis=-1)
  p_NV = np.exp(z_NV - z_NV[:, :1])
  if top_k:
    p_NV[:, top_k:] = 0.0
  p_NV /= p_NV.sum(-1, keepdims=True)
  before_NV = np.cumsum(p_NV, axis=-1) - p_NV
  # float32 in the sampler, float64 here: a cut this close to a boundary could go either way.
  assert top_p == 1.0 or np.abs(before_NV - top_p).min() > 1e-4, "pick another top_p"
  p_NV = np.where(before_NV < top_p, p_NV, 0.0)
  p_NV /= p_NV.sum(-1, keepdims=True)
  out_NV = np.zeros_like(p_NV)
  np.put_along_axis(out_NV, order_NV, p_NV, axis=-1)
  return out_NV


def assert_draws_follow(draws_N, p_NV, what):
  """draws_N[n] ~ p_NV[n], each given the draws before it: no draw outside its support, and a
  chi-square test on ranks, counting each draw by its rank in its own distribution against
  sum_n p_n(rank r); ranks expected fewer than 5 times share one bin (or join the last). Where
  the distributions differ between draws, the statistic is smaller than a chi-square's (the
  variance of a sum of unequal Bernoullis is below a binomial's): the test errs on passing."""
  draws_N = np.asarray(draws_N)
  n, v = p_NV.shape
  assert draws_N.shape == (n,)
  outside_N = p_NV[np.arange(n), draws_N] == 0
  assert not outside_N.any(), \
      f"{what}: drew ids outside the allowed set: {sorted(set(draws_N[outside_N].tolist()))}"
  order_NV = np.argsort(-p_NV, axis=-1, kind="stable")
  rank_N = np.argmax(order_NV == draws_N[:, None], axis=-1)
  expected_R = np.take_along_axis(p_NV, order_NV, axis=-1).sum(0)  # non-increasing in r
  observed_R = np.bincount(rank_N, minlength=v).astype(np.float64)
  bins = max(int((expected_R >= 5).sum()), 1)
  if expected_R[bins:].sum() >= 5:
    bins += 1
  expected_R = np.concatenate([expected_R[:bins - 1], [expected_R[bins - 1:].sum()]])
  observed_R = np.concatenate([observed_R[:bins - 1], [observed_R[bins - 1:].sum()]])
  assert bins >= 3, f"{what}: only {bins} bins; the test has no power"
  test = stats.chisquare(observed_R, expected_R)
  assert test.pvalue > P_MIN, (
      f"{what}: the draws do not follow the distribution (chi2 {test.statistic:.1f}, "
      f"{bins - 1} dof, p {test.pvalue:.1e}); draws per rank {observed_R.astype(int).tolist()}, "
      f"expected {np.round(expected_R, 1).tolist()}")


# ---- encoder-decoders: encoder_decoder_ids, a batch of rows ------------------------------------

ROWS = 1000
INPUT = [75, 104, 1]  # "He" and eos
# top_k is static in encoder_decoder_ids and temperature traced: one compilation per cut, each at
# one of the temperatures.
ENCDEC_OPTIONS = [dict(temperature=1.5, top_k=5), dict(temperature=0.7, top_p=0.8)]


@pytest.fixture(scope="module")
def encdec():
  """(model, logits of the first id [V], logits of the second after each first id [V, V])."""
  model = sharpened(t5.T5(t5.preset("tiny"), rngs=nnx.Rngs(0)))
  v = model.config.vocab_size
  inputs_AT = np.tile(np.asarray(INPUT, np.int32), (v, 1))
  # Teacher-forced, no cache: decoder inputs (start, a) for every id a.
  decoder_inputs_A2 = np.stack([np.full(v, model.config.decoder_start_id), np.arange(v)], 1)
  logits_A2V = np.asarray(Compiled(model)("__call__", inputs_AT,
                                          decoder_inputs_A2.astype(np.int32)), np.float64)
  return model, logits_A2V[0, 0], logits_A2V[:, 1]


@pytest.mark.parametrize("options", ENCDEC_OPTIONS, ids=lambda o: f"{o}")
def test_encoder_decoder_draws_follow_the_model(encdec, options):
  model, first_V, second_AV = encdec
  inputs_NT = np.tile(np.asarray(INPUT, np.int32), (ROWS, 1))
  ids_N2 = np.asarray(generation.encoder_decoder_ids(model, inputs_NT, max_new_bytes=2,
                                                     method="sample", rng=0, **options))
  assert_draws_follow(ids_N2[:, 0], expected(np.tile(first_V, (ROWS, 1)), **options),
                      f"first id, {options}")
  # A row that drew eos is finished; the others draw again, through the KV cache.
  go_N = ids_N2[:, 0] != EOS_ID
  assert go_N.mean() > 0.9
  assert_draws_follow(ids_N2[go_N, 1], expected(second_AV[ids_N2[go_N, 0]], **options),
                      f"second id, {options}")


def test_the_cuts_bind(encdec):
  """Each cut above keeps a handful of ids, fewer than its temperature alone would: an id too
  many or too few would show."""
  _, first_V, _ = encdec
  for options in ENCDEC_OPTIONS:
    kept = int((expected(first_V[None], **options) > 0).sum())
    uncut = int((expected(first_V[None], options["temperature"]) > 0).sum())
    assert 2 <= kept <= 8 and kept < uncut, (options, kept)


# ---- decoders (bytes and BPE tokens): decoder_ids, one id per step of its loop ----------------

STEPS = 150


def decoder_draws(model, prompt, temperature):
  """(draws_N, logits_NV): runs of decoder_ids from prompt, seeds 0, 1, ..., each run
  ending at STEPS ids or at an eos (a draw too), until STEPS draws. The logits come from
  replaying each run through the model's cached step (tests/test_decoder.py checks it against
  the whole model)."""
  compiled = Compiled(model)
  draws, logits = [], []
  for seed in range(100):
    new = generation.decoder_ids(model, prompt, STEPS, temperature=temperature, seed=seed)
    run = new + [EOS_ID] if len(new) < STEPS else new
    ids = prompt + run
    cache = model.init_cache(1, len(prompt) + STEPS)  # the generation's shapes: no recompile
    for t in range(len(ids) - 1):
      logits_1V, cache = compiled("step", np.asarray(ids[t:t + 1], np.int32), np.int32(t), cache)
      if t >= len(prompt) - 1:
        logits.append(np.asarray(logits_1V[0], np.float64))
    draws += run
    if len(draws) >= STEPS:
      break
  logits_NV = np.stack(logits)
  logits_NV[:, PAD_ID] = -np.inf  # pad is never drawn
  return np.asarray(draws), logits_NV


# Both families sample with generation.choose_B: one temperature each, one on each side of 1.
@pytest.mark.parametrize("recipe, prompt, temperature", [
    ("bytes_decoder", [EOS_ID, 75, 104], 0.7),  # "He"
    ("bpe_decoder", [EOS_ID, 270, 290], 1.5),  # merged tokens, past the 256 bytes
])
def test_decoder_draws_follow_the_model(recipe, prompt, temperature):
  cfg = config_file.load(ROOT / "configs" / f"{recipe}.py", "tiny").model
  model = sharpened(decoder.DecoderLM(decoder.DecoderConfig(**cfg.to_dict()), rngs=nnx.Rngs(0)))
  draws_N, logits_NV = decoder_draws(model, prompt, temperature)
  assert_draws_follow(draws_N, expected(logits_NV, temperature),
                      f"{recipe} at temperature {temperature}")


# ---- the hierarchical model: hierarchical_bytes, one byte per step of its loop ----------------

HIERARCHICAL = hierarchical.HierarchicalConfig(
    d_model=32, d_ff=64, num_heads=2, d_kv=16, relative_attention_num_buckets=8,
    relative_attention_max_distance=20, num_backbone_layers=2, window=6, byte_d_model=24,
    byte_d_ff=48, byte_num_heads=2, segmenter="learned", max_segment_bytes=3,
    max_segments=STEPS + 4)  # room for every segment of a run


@pytest.fixture(scope="module")
def hierarchical_model():
  return sharpened(hierarchical.Hierarchical(HIERARCHICAL, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_hierarchical_draws_follow_the_model(hierarchical_model, temperature):
  """Over bytes and eos only: never pad, unk or the embedding's rows past the bytes."""
  draws, logits = [], []
  for seed in range(100):
    out, logits_NV = generation.hierarchical_bytes(
        hierarchical_model, b"He", STEPS, temperature=temperature, seed=seed, return_logits=True)
    draws += [b + OFFSET for b in out] + ([EOS_ID] if len(out) < STEPS else [])
    logits.append(logits_NV)  # of each choice, the eos that ended the run included
    if len(draws) >= STEPS:
      break
  logits_NV = np.concatenate(logits).astype(np.float64)
  allowed_V = np.zeros(logits_NV.shape[1], bool)
  allowed_V[OFFSET:NUM_BYTE_IDS] = allowed_V[EOS_ID] = True
  logits_NV[:, ~allowed_V] = -np.inf
  assert_draws_follow(np.asarray(draws), expected(logits_NV, temperature),
                      f"hierarchical model at temperature {temperature}")
