"""Properties of bytelm.generation.encoder_decoder: the KV-cache loop equals recomputing the
prefix, beam search with one beam is greedy and four beams find a likelier output, sampling is
reproducible (what it draws from: tests/test_sampling.py), eos ends a row, one trace per shape,
bad input fails loudly.

Random tiny models either repeat themselves or say eos at once, so two variants are used:
`no_eos` (the eos column of the LM head is zeroed: its logit 0 never beats the best of 383 ~N(0,1)
logits, so every row runs the full length) and `eos_prone` (the eos column is a scaled copy of a
frequent id's column, so rows end at different places).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bytelm.generation import encoder_decoder
from bytelm.generation.encoder_decoder import encoder_decoder_ids, encoder_decoder_texts
from bytelm.models import t5
from bytelm.text.tokenizer import EOS_ID, ByteTokenizer

N = 24  # new ids per row in most tests


def _tiny(seed=0):
  return t5.T5(t5.preset("tiny"), rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 259, (3, 20)).astype(np.int32)
  ids[0, 19] = ids[1, 12] = ids[2, 6] = EOS_ID
  ids[1, 13:] = 0  # padding
  ids[2, 7:] = 0
  return jnp.asarray(ids), jnp.asarray(ids != 0)


@pytest.fixture(scope="module")
def no_eos():
  model = _tiny()
  kernel = model.lm_head.kernel
  kernel[...] = kernel[...].at[:, EOS_ID].set(0.0)
  return model


@pytest.fixture(scope="module")
def eos_prone(no_eos, inputs):
  frequent = np.bincount(np.asarray(encoder_decoder_ids(no_eos, *inputs, max_new_bytes=N)).ravel())
  model = nnx.clone(no_eos)
  kernel = model.lm_head.kernel
  kernel[...] = kernel[...].at[:, EOS_ID].set(1.05 * kernel[:, int(np.argmax(frequent))])
  return model


@functools.partial(jax.jit, static_argnums=0)
def _teacher_forced(graphdef, state, inputs, mask, decoder_inputs):
  return nnx.merge(graphdef, state)(inputs, decoder_inputs, mask).astype(jnp.float32)


def teacher_forced_logits(model, inputs, mask, targets):
  """logits_BSV of `targets` given `inputs`, recomputed from scratch (no cache)."""
  graphdef, state = nnx.split(model)
  return _teacher_forced(graphdef, state, inputs, mask,
                         t5.shift_right(jnp.asarray(targets), model.config.decoder_start_id))


def log_prob(model, inputs, mask, ids):
  """Total log-probability of each row of ids, up to and including its first eos."""
  ids = np.asarray(ids)
  logp = jax.nn.log_softmax(teacher_forced_logits(model, inputs, mask, ids), axis=-1)
  logp = np.take_along_axis(np.asarray(logp), ids[..., None], axis=-1)[..., 0]
  eos_before = np.cumsum(ids == EOS_ID, axis=1) - (ids == EOS_ID)
  return (logp * (eos_before == 0)).sum(axis=1)


def reference_greedy(model, inputs, mask, n):
  """Greedy decoding in plain Python, recomputing the whole prefix every step."""
  b = inputs.shape[0]
  out = np.zeros((b, n), np.int32)
  done = np.zeros(b, bool)
  for i in range(n):
    # Positions after i hold zeros; the decoder is causal, so they do not affect position i.
    logits = teacher_forced_logits(model, inputs, mask, out)
    nxt = np.where(done, 0, np.argmax(np.asarray(logits[:, i]), axis=-1))
    out[:, i] = nxt
    done |= nxt == EOS_ID
  return out


def assert_pad_after_eos(ids):
  ids = np.asarray(ids)
  after_eos = (np.cumsum(ids == EOS_ID, axis=1) - (ids == EOS_ID)) > 0
  assert (ids[after_eos] == 0).all(), ids


def first_eos(ids):
  """Index of the first eos in each row, or the row length."""
  ids = np.asarray(ids)
  return np.where((ids == EOS_ID).any(1), np.argmax(ids == EOS_ID, axis=1), ids.shape[1])


def _beam_via_jit(model, inputs, mask, n, num_beams, length_penalty):
  """The beam loop itself, also for num_beams=1 (which encoder_decoder_ids routes to greedy)."""
  graphdef, state = nnx.split(nnx.view(model, deterministic=True))
  enc, cross_bias = model.encode_for_inference(inputs, mask)
  return encoder_decoder._generate_jit(
      state, enc, cross_bias, jax.random.key(0), jnp.float32(1), jnp.float32(1), graphdef=graphdef,
      max_new=n, min_new=0, method="beam", top_k=0, use_top_p=False, num_beams=num_beams,
      length_penalty=length_penalty)


# ---- the KV cache ------------------------------------------------------------------------------

def test_cached_step_logits_equal_teacher_forced(no_eos, inputs):
  """decode_step fed a sequence id by id gives the teacher-forced logits at every position."""
  ids, mask = inputs
  targets = np.asarray(encoder_decoder_ids(no_eos, ids, mask, max_new_bytes=N))
  graphdef, state = nnx.split(no_eos)

  @jax.jit
  def stepwise(state, ids, mask, dec_inputs):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(model.encode(ids, mask), dec_inputs.shape[1])
    bias = model.cross_bias(mask)

    def step(cache, i):
      logits, cache = model.decode_step(dec_inputs[:, i], cache, i, bias)
      return cache, logits
    _, logits_SBV = jax.lax.scan(step, cache, jnp.arange(dec_inputs.shape[1]))
    return jnp.swapaxes(logits_SBV, 0, 1)

  cached = stepwise(state, ids, mask, t5.shift_right(jnp.asarray(targets)))
  full = teacher_forced_logits(no_eos, ids, mask, targets)
  assert float(jnp.max(jnp.abs(cached - full))) < 1e-5


@pytest.mark.parametrize("variant", ["no_eos", "eos_prone"])
def test_greedy_equals_recomputing_the_prefix(variant, inputs, request):
  model = request.getfixturevalue(variant)
  ids, mask = inputs
  got = np.asarray(encoder_decoder_ids(model, ids, mask, max_new_bytes=N))
  assert got.dtype == np.int32 and got.shape == (3, N)
  np.testing.assert_array_equal(got, reference_greedy(model, ids, mask, N))
  ends = first_eos(got)
  if variant == "no_eos":
    assert (ends == N).all()  # the comparison covered every position
    assert len(set(got.ravel().tolist())) > 5  # not one id repeated
  else:
    assert (ends < N).any() and (ends > 2).any(), ends  # eos mid-row exercised
    assert_pad_after_eos(got)


# ---- beam search -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["no_eos", "eos_prone"])
def test_one_beam_is_greedy(variant, inputs, request):
  model = request.getfixturevalue(variant)
  ids, mask = inputs
  greedy = np.asarray(encoder_decoder_ids(model, ids, mask, max_new_bytes=N))
  np.testing.assert_array_equal(
      np.asarray(encoder_decoder_ids(model, ids, mask, max_new_bytes=N, method="beam",
                                     num_beams=1)),
      greedy)
  # The beam loop itself with one beam follows the greedy path; it keeps every hypothesis that
  # ended in eos on the way, so it returns greedy's output or a likelier one that ended earlier.
  beam1 = np.asarray(_beam_via_jit(model, ids, mask, N, 1, 0.0))
  if variant == "no_eos":
    np.testing.assert_array_equal(beam1, greedy)
  else:
    assert_pad_after_eos(beam1)
    assert (log_prob(model, ids, mask, beam1) >= log_prob(model, ids, mask, greedy) - 1e-4).all()
    n = first_eos(beam1)
    assert all((beam1[r, :n[r]] == greedy[r, :n[r]]).all() for r in range(3))  # a greedy prefix


@pytest.mark.parametrize("variant", ["no_eos", "eos_prone"])
def test_four_beams_find_likelier_outputs(variant, inputs, request):
  model = request.getfixturevalue(variant)
  ids, mask = inputs
  greedy = encoder_decoder_ids(model, ids, mask, max_new_bytes=N)
  beam = encoder_decoder_ids(model, ids, mask, max_new_bytes=N, method="beam", num_beams=4,
                      length_penalty=0.0)
  assert_pad_after_eos(beam)
  lp_greedy, lp_beam = log_prob(model, *inputs, greedy), log_prob(model, *inputs, beam)
  assert (lp_beam >= lp_greedy - 1e-4).all(), (lp_beam, lp_greedy)
  assert (lp_beam > lp_greedy + 1e-3).any(), "beam search never beat greedy: is it searching?"


def test_length_penalty_prefers_longer_outputs(eos_prone, inputs):
  ids, mask = inputs
  short = encoder_decoder_ids(eos_prone, ids, mask, max_new_bytes=N, method="beam",
                              length_penalty=0.0)
  long = encoder_decoder_ids(eos_prone, ids, mask, max_new_bytes=N, method="beam",
                             length_penalty=2.0)
  assert_pad_after_eos(long)
  assert (first_eos(long) >= first_eos(short)).all()


# ---- sampling ----------------------------------------------------------------------------------

def test_sampling_reproducible_and_key_dependent(no_eos, inputs):
  kw = dict(max_new_bytes=N, method="sample", top_p=0.95)
  a = encoder_decoder_ids(no_eos, *inputs, rng=jax.random.key(1), **kw)
  b = encoder_decoder_ids(no_eos, *inputs, rng=jax.random.key(1), **kw)
  c = encoder_decoder_ids(no_eos, *inputs, rng=jax.random.key(2), **kw)
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).mean() > 0.5


def test_degenerate_sampling_is_greedy(no_eos, inputs):
  greedy = np.asarray(encoder_decoder_ids(no_eos, *inputs, max_new_bytes=N))
  for kw in (dict(top_k=1), dict(temperature=1e-4), dict(temperature=0.0), dict(top_p=1e-6)):
    got = encoder_decoder_ids(no_eos, *inputs, max_new_bytes=N, method="sample", rng=3, **kw)
    np.testing.assert_array_equal(np.asarray(got), greedy, err_msg=str(kw))


def test_filter_keeps_top_k_and_nucleus():
  logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
  kept = lambda **kw: np.isfinite(
      np.asarray(encoder_decoder._filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=2, top_p=1.0, use_top_p=False) == [False, True, False, True]
  assert kept(top_k=0, top_p=0.7, use_top_p=True) == [False, True, False, True]
  assert kept(top_k=0, top_p=0.9, use_top_p=True) == [False, True, True, True]
  assert kept(top_k=0, top_p=0.4, use_top_p=True) == [False, True, False, False]


def test_every_method_pads_after_eos(eos_prone, inputs):
  for kw in (dict(method="greedy"), dict(method="sample", rng=0), dict(method="beam")):
    out = encoder_decoder_ids(eos_prone, *inputs, max_new_bytes=N, **kw)
    assert out.shape == (3, N) and out.dtype == jnp.int32
    assert_pad_after_eos(out)


# ---- compilation -------------------------------------------------------------------------------

def test_no_retrace_for_same_shapes(no_eos, eos_prone, inputs):
  kw = dict(max_new_bytes=N, method="sample", rng=0, top_k=4, top_p=0.9)
  encoder_decoder_ids(no_eos, *inputs, **kw)
  before = encoder_decoder._NUM_TRACES
  encoder_decoder_ids(no_eos, *inputs, **kw)
  # Traced values and new weights of the same architecture reuse the compilation too.
  encoder_decoder_ids(no_eos, *inputs, **{**kw, "rng": 5, "temperature": 0.7, "top_p": 0.5})
  encoder_decoder_ids(eos_prone, *inputs, **kw)
  assert encoder_decoder._NUM_TRACES == before
  encoder_decoder_ids(no_eos, *inputs, **{**kw, "max_new_bytes": N + 1})
  assert encoder_decoder._NUM_TRACES == before + 1


def test_model_is_not_mutated(no_eos, inputs):
  assert no_eos.decoder.dropout.deterministic is not True  # the user's model keeps its mode
  before = jax.tree.map(np.asarray, nnx.state(no_eos, nnx.Param))
  encoder_decoder_ids(no_eos, *inputs, max_new_bytes=N)
  after = jax.tree.map(np.asarray, nnx.state(no_eos, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert no_eos.decoder.dropout.deterministic is not True


# ---- text in, text out -------------------------------------------------------------------------

def test_generate_returns_strings(eos_prone):
  tok = ByteTokenizer()
  texts = ["hello", "a longer input of several words", "é"]
  out = encoder_decoder_texts(eos_prone, tok, texts, max_new_bytes=N)
  assert isinstance(out, list) and len(out) == 3 and all(isinstance(s, str) for s in out)
  # Bucketing pads the input to 64 ids; padding is masked and changes nothing.
  ids, mask = tok.encode_batch(texts)
  assert out == tok.decode_batch(encoder_decoder_ids(eos_prone, ids, mask, max_new_bytes=N))
  assert encoder_decoder_texts(eos_prone, tok, texts, max_new_bytes=N, max_input_bytes=32) == out


@pytest.mark.parametrize("kwargs, match", [
    (dict(texts=[]), "empty"),
    (dict(texts="just one"), r"\[text\]"),
    (dict(max_new_bytes=0), "max_new_bytes"),
    (dict(max_new_bytes=2.5), "max_new_bytes"),
    (dict(method="nucleus"), "unknown method"),
    (dict(method="sample", top_p=0.0), "top_p"),
    (dict(method="sample", top_p=1.5), "top_p"),
    (dict(method="sample", temperature=-1.0), "temperature"),
    (dict(method="sample", top_k=-1), "top_k"),
    (dict(method="sample"), "rng"),
    (dict(method="beam", num_beams=0), "num_beams"),
    (dict(method="beam", num_beams=500), "num_beams"),
    (dict(texts=["x" * 40], max_input_bytes=32), "max_input_bytes"),
])
def test_bad_input_raises(no_eos, kwargs, match):
  kwargs = {"texts": ["hi"], "max_new_bytes": 4, **kwargs}
  with pytest.raises(ValueError, match=match):
    encoder_decoder_texts(no_eos, ByteTokenizer(), **kwargs)


def test_bad_arrays_raise(no_eos):
  with pytest.raises(ValueError, match="ids\\[None\\]"):
    encoder_decoder_ids(no_eos, jnp.array([5, 6, 1]), max_new_bytes=4)
  with pytest.raises(ValueError, match="must match"):
    encoder_decoder_ids(no_eos, jnp.ones((2, 3), jnp.int32), jnp.ones((2, 4), bool),
                        max_new_bytes=4)


def test_min_new_bytes_forbids_an_early_eos(eos_prone, inputs):
  """min_new_bytes (HF's min_new_tokens) delays eos for every method; benchmarks rely on it."""
  free = encoder_decoder_ids(eos_prone, *inputs, max_new_bytes=N)
  assert first_eos(free).min() < N // 2  # without it some row stops early
  for kw in (dict(method="greedy"), dict(method="sample", rng=0), dict(method="beam", num_beams=2)):
    forced = encoder_decoder_ids(eos_prone, *inputs, max_new_bytes=N, min_new_bytes=N, **kw)
    assert (np.asarray(forced) != 0).all() and (np.asarray(forced) != EOS_ID).all(), kw
  with pytest.raises(ValueError, match="min_new_bytes"):
    encoder_decoder_ids(eos_prone, *inputs, max_new_bytes=4, min_new_bytes=5)
