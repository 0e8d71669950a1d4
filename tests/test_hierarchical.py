"""The hierarchical byte LM (models/hierarchical.py): no byte is predicted from itself or later."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bytelm import generation
from bytelm.text import tokenizer
from bytelm.data import pipeline
from bytelm.models import hierarchical
from bytelm.nn import Embed
from bytelm.nn.compiled import Compiled
from bytelm.text import segment

CFG = hierarchical.HierarchicalConfig(
    d_model=32, d_ff=64, num_heads=2, d_kv=16, relative_attention_num_buckets=8,
    relative_attention_max_distance=20, num_backbone_layers=2, window=6, max_segments=8,
    byte_d_model=24, byte_d_ff=48, byte_num_heads=2)
# Learned boundaries: max_segment_bytes 3 makes sure segments end inside the test strings.
LEARNED = CFG.replace(segmenter="learned", max_segment_bytes=3, max_segments=16)


def batch_of(text: bytes, length: int = 40) -> dict:
  """The causal_lm pair of one row (targets = text, inputs = text shifted right) + segments."""
  targets = np.zeros(length, np.int32)
  targets[: len(text)] = np.frombuffer(text, np.uint8) + 3
  inputs = np.concatenate([[0], targets[:-1]])
  starts = segment.split_long(text, segment.word_starts(text), 16)
  ids, _ = segment.segment_ids(len(text), starts, CFG.max_segments, length)
  ctx = segment.context_ids(text, starts, CFG.max_segments, length)
  return {k: jnp.asarray(v)[None] for k, v in
          dict(inputs=inputs, targets=targets, segment_ids=ids, context_ids=ctx).items()}


def make(cfg):
  m = hierarchical.Hierarchical(cfg, rngs=nnx.Rngs(0))
  # A start state that differs from every segment's, so a wrong context would show.
  m.start[...] = jnp.full((cfg.byte_d_model,), 3.0)
  return m


@pytest.fixture(scope="module", params=["words", "learned", "words-query"])
def model(request):
  """Word segments pooled by the last byte; learned segments by their mean; word segments by
  a learned query (trained a little away from zero, so it is not the mean)."""
  if request.param == "words":
    return make(CFG)
  if request.param == "learned":
    return make(LEARNED.replace(pool="mean"))
  m = make(CFG.replace(pool="query"))
  m.pooler.query[...] = jax.random.normal(jax.random.key(1), (CFG.byte_d_model,)) * 3.0
  return m


def logits(model, batch):
  """The model on a batch, compiled (dropout off): one compile, not an eager op-by-op run."""
  args = ((batch["inputs"], batch["targets"]) if model.config.segmenter == "learned" else
          (batch["inputs"], batch["targets"], batch["segment_ids"], batch["context_ids"]))
  return np.asarray(Compiled(model)("__call__", *args))


def test_changing_bytes_from_t_on_leaves_their_predictions_and_earlier_ones_alone(model):
  text = "Hello, world! don't 日本 ok😀!".encode("utf-8")
  changes = [(t, tail) for t in range(1, len(text)) for tail in (b"X", b" z", b"'s", "é".encode())]
  # The text and every changed text a row of one batch (rows are independent): one compiled
  # call, not 129 eager ones.
  rows = [batch_of(text)] + [batch_of((text[:t] + tail * 8)[:len(text)]) for t, tail in changes]
  out = logits(model, {k: jnp.concatenate([r[k] for r in rows]) for k in rows[0]})
  base, out = out[:1], out[1:]
  for row, (t, tail) in enumerate(changes):
    # Position t predicts byte t: it, too, must not see byte t.
    np.testing.assert_allclose(out[row, :t + 1], base[0, :t + 1], rtol=1e-5, atol=1e-5,
                               err_msg=f"t={t} tail={tail!r}")


def test_gradients_of_a_prediction_never_reach_its_byte_or_later_ones(model, monkeypatch):
  """d logits[t] / d (byte j) is zero for every j >= t, in both places byte j enters: the
  encoder's position j and the decoder's position j + 1."""
  batch = batch_of("Gradients: tell no tales!".encode("utf-8"), length=30)
  T, d = 30, model.config.byte_d_model
  # Nudges added to the byte embedding's output: its first call embeds the targets (the
  # encoder's input), its second the shifted inputs (the decoder's).
  nudging = {}
  embed_call = Embed.__call__

  def nudged(self, ids_BT):
    out = embed_call(self, ids_BT)
    if self is model.shared and nudging:
      nudging["calls"] += 1
      out = out + nudging["nudges"][nudging["calls"] - 1]
    return out

  monkeypatch.setattr(Embed, "__call__", nudged)

  def prediction(nudges, t):
    nudging.update(nudges=nudges, calls=0)
    out = (model(batch["inputs"], batch["targets"]) if model.config.segmenter == "learned"
           else model(batch["inputs"], batch["targets"], batch["segment_ids"],
                      batch["context_ids"]))
    assert nudging["calls"] == 2
    return out[0, t].sum()

  zeros = (jnp.zeros((1, T, d)), jnp.zeros((1, T, d)))
  # One compile for every t (t traced), not an eager op-by-op backward pass per t.
  grad_fn = jax.jit(jax.grad(prediction))
  for t in (0, 4, 11, 20, 29):
    enc_TD, dec_TD = (np.abs(np.asarray(g[0])).sum(-1) for g in
                      grad_fn(zeros, jnp.int32(t)))
    assert not enc_TD[t:].any() and not dec_TD[t + 1:].any(), t
    assert dec_TD[t] > 0  # byte t - 1 is read, so the test can see gradients at all
    if t >= 11:
      assert enc_TD[:t - model.config.window].max() > 0  # the backbone carries old bytes


def test_segments_do_reach_the_byte_decoder(model):
  """The backbone is used: a byte far outside the window still changes later predictions."""
  text = b"alpha beta gamma delta epsilon zeta"
  other = b"omega" + text[5:]
  a, b = logits(model, batch_of(text)), logits(model, batch_of(other))
  assert np.abs(a[0, -1] - b[0, -1]).max() > 1e-4  # 30 bytes on, window 6


def test_loss_runs_on_a_batch(model):
  # Compiled: one XLA program, not an eager op-by-op run of the loss.
  loss, metrics = nnx.jit(hierarchical.loss_fn)(model, batch_of(b"a small test of the loss"))
  assert np.isfinite(float(loss)) and float(metrics["num_targets"]) == 24
  assert 1 <= float(metrics["bytes_per_segment"]) <= 16
  assert ("ratio_loss" in metrics) == (model.config.segmenter == "learned")


def test_the_device_segmenter_cuts_the_targets_of_pipeline_batches():
  docs = ["Hello, world! How are you today?", "日本語 text"] * 10
  segments = dict(kind="words", max_segments=6, max_segment_bytes=8)
  src = pipeline.BatchSource(docs, objective="causal_lm", batch_size=4, input_length=24,
                             segments=segments)
  batch = src.batch(0)
  assert set(batch) == {"inputs", "targets"}  # the ids are cut inside the compiled step
  batch.update(jax.jit(src.device_segmenter)(jnp.asarray(batch["targets"])))
  for row, ids, ctx in zip(batch["targets"], batch["segment_ids"], batch["context_ids"]):
    data = bytes(np.where(row == 1, 0xFF, row - 3).astype(np.uint8))
    starts = segment.split_long(data, segment.word_starts(data), 8)
    np.testing.assert_array_equal(ids, segment.segment_ids(len(data), starts, 6, 24)[0])
    np.testing.assert_array_equal(ctx, segment.context_ids(data, starts, 6, 24))
  with pytest.raises(ValueError, match="kind"):
    pipeline.BatchSource(docs, objective="causal_lm", batch_size=4, input_length=24,
                         segments={"kind": "bpe"})
  with pytest.raises(ValueError, match="entropy_model"):
    pipeline.BatchSource(docs, objective="causal_lm", batch_size=4, input_length=24,
                         segments={"kind": "entropy"})
  with pytest.raises(ValueError, match="causal_lm"):
    pipeline.BatchSource(docs, objective="span_corruption", batch_size=4, input_length=24,
                         segments=segments)


def test_the_learned_segmenter_moves_toward_its_target_compression():
  cfg = LEARNED.replace(target_segment_bytes=8.0, ratio_loss_weight=1.0, max_segment_bytes=16)
  model = hierarchical.Hierarchical(cfg, rngs=nnx.Rngs(1))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  text = b"the quick brown fox jumps over the lazy dog; " * 2
  batch = batch_of(text[:64], length=64)

  @nnx.jit
  def step(model, optimizer, batch):
    (_, metrics), grads = nnx.value_and_grad(hierarchical.loss_fn, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    return metrics["bytes_per_segment"]

  # Measured compiled (one compile for both), not by two eager runs of the loss.
  measure = nnx.jit(lambda model, batch:
                    hierarchical.loss_fn(model, batch)[1]["bytes_per_segment"])
  before = float(measure(model, batch))
  for _ in range(40):
    step(model, optimizer, batch)
  after = float(measure(model, batch))
  assert before < 4 and abs(after - 8.0) < 0.5 * abs(before - 8.0), (before, after)


def test_cached_generation_computes_what_the_whole_model_computes(model):
  """The host loop (the reference of the compiled one, tested below) against the whole model
  run on the whole prefix for every byte."""
  segmenter = None if model.config.segmenter == "learned" else segment.Segmenter("words", 16)
  prompt = "The cat sat on the mat, and then "  # longer than the window, several segments
  out, logits = generation.hierarchical_bytes(model, prompt, 24, segmenter=segmenter,
                                              on_host=True, return_logits=True)
  ref, ref_logits = generation.hierarchical_bytes(model, prompt, 24, segmenter=segmenter,
                                                  cached=False, return_logits=True)
  assert out == ref and logits.shape == ref_logits.shape
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
  # Both sample from the same distribution with one numpy stream: the same seed gives the same
  # bytes (the compiled loop draws with jax.random: tests/test_sampling.py).
  assert generation.hierarchical_bytes(model, prompt, 12, segmenter=segmenter,
                                       temperature=1.0, seed=3, on_host=True) == \
      generation.hierarchical_bytes(model, prompt, 12, segmenter=segmenter,
                                    temperature=1.0, seed=3, cached=False)


def eos_prone(model, byte: int):
  """A copy of model whose eos logit is byte's times 1.05: it ends where it would write that
  byte (a positive logit). Same shapes, so the same compilations."""
  prone = nnx.clone(model)
  kernel = prone.lm_head.kernel
  kernel[...] = kernel[...].at[:, tokenizer.EOS_ID].set(kernel[:, byte + tokenizer.OFFSET] * 1.05)
  return prone


@pytest.mark.parametrize("cfg", [CFG, LEARNED.replace(pool="mean")], ids=["words", "learned"])
def test_the_compiled_loop_gives_the_host_loops_bytes(cfg):
  """A batch of rows in one compiled loop equals the host loop on each prompt alone: prompts of
  different lengths, multi-byte UTF-8 and invalid bytes (b"\\xf0\\x80\\x80": four word
  segments settle at one byte, each a backbone step); then a copy that ends one row at eos
  while the other goes on."""
  model = make(cfg)
  segmenter = None if model.config.segmenter == "learned" else segment.Segmenter("words", 16)
  # 29 and 41 bytes: with 16 new, the host loop's cache lengths of the test above (compiled).
  prompts = ["Où 日本".encode() + b"\xf0\x80\x80x ok, and my dog",
             b"The cat sat on the mat, and then the dogs"]

  def compare(m):
    out, logits = generation.hierarchical_rows(m, prompts, 16, segmenter=segmenter,
                                               return_logits=True)
    for p, o, l in zip(prompts, out, logits):
      ref, ref_logits = generation.hierarchical_bytes(m, p, 16, segmenter=segmenter,
                                                      on_host=True, return_logits=True)
      assert o == ref, (p, o, ref)
      np.testing.assert_allclose(l, ref_logits, rtol=1e-4, atol=1e-4)
    return out

  out = compare(eos_prone(model, compare(model)[0][8]))
  lengths = sorted(len(o) for o in out)
  assert lengths[0] < lengths[1], lengths  # one row ended while the other went on
