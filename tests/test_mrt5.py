"""MrT5: the delete gate, soft vs hard deletion, compaction, the PI controller, and training,
loading and generating through the public API."""

import dataclasses
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bytelm
from bytelm import generation, models
from bytelm.models import mrt5, t5
from bytelm.nn import key_mask_bias
from bytelm.nn.compiled import jit_call
from bytelm.runs import workdir as workdir_lib
from bytelm.training import model_init, train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]

K = -30.0


def tiny_config(**overrides):
  fields = dict(t5.PRESETS["tiny"], num_encoder_layers=3, gate_layer=1, bucket_multiple=8,
                attention_softmax="softmax1")
  return mrt5.MrT5Config(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model():
  return mrt5.MrT5(tiny_config(), rngs=nnx.Rngs(0))


def text_batch(texts, length=64):
  tok = bytelm.ByteTokenizer()
  ids, _ = tok.encode_batch(texts)
  ids = np.asarray(ids)
  out = np.zeros((len(texts), length), np.int32)
  out[:, :ids.shape[1]] = ids[:, :length]
  return jnp.asarray(out)


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Ça va? Dobrý den, ačiū!",
         "def f(x):\n    return x + 1"]


def saturated(model, seed=0, scale=1e5):
  """A copy of model whose gate is 0 or k everywhere (|z| huge): soft and hard then agree."""
  m = nnx.clone(model)
  d = m.config.d_model
  m.gate.kernel[...] = scale * jax.random.normal(jax.random.key(seed), (d, 1)) / np.sqrt(d)
  m.gate.bias[...] = jnp.zeros((1,))
  return m


def test_gate_starts_by_keeping():
  """configs/mrt5.py's init (b = +4) keeps every byte at step 0, with G near 0; the
  reference's b = +1 deletes about a quarter of them at random (MrT5Config.gate_init_bias)."""
  inputs = text_batch(TEXTS)
  real = np.asarray(inputs != 0)
  e = mrt5.MrT5(tiny_config(gate_init_bias=4.0), rngs=nnx.Rngs(0)).encode(inputs)
  gate = np.asarray(e.gate_BT)
  assert float(e.deleted_frac) < 0.02
  assert np.median(gate[real]) > -2.0
  assert (gate[~real] == K).all()  # padding is always deleted
  reference = mrt5.MrT5(tiny_config(gate_init_bias=1.0), rngs=nnx.Rngs(0)).encode(inputs)
  assert 0.1 < float(reference.deleted_frac) < 0.4
  # Exactly the share of the real bytes at or below k/2: the batch is half padding, which
  # would pull the fraction down by about half were it counted.
  for enc in (e, reference):
    np.testing.assert_allclose(float(enc.deleted_frac),
                               np.mean(np.asarray(enc.gate_BT)[real] <= K / 2), rtol=1e-6)


def gate_logits(gate_BT):
  """z from G = k sigmoid(-z) (-inf on padding)."""
  with np.errstate(divide="ignore"):
    return np.log(np.asarray(K / gate_BT, np.float64) - 1.0)


def test_centered_gate_scores_bytes_against_their_own_sequence():
  """gate_centering: z - b averages to 0 over each sequence's real positions, so b alone sets
  how many positions fall below the threshold, and padding does not move the real positions."""
  m = mrt5.MrT5(tiny_config(gate_centering=True), rngs=nnx.Rngs(0))
  inputs = text_batch(TEXTS)
  mask = inputs != 0
  x, gate = m.gate_prefix(inputs, mask)
  z = gate_logits(gate)
  b = float(m.gate.bias[...][0])
  real = np.asarray(mask)
  for row in range(len(TEXTS)):
    assert abs(np.mean(z[row][real[row]]) - b) < 1e-3
  # More padding: the same gate values on the real positions.
  longer = jnp.pad(inputs, ((0, 0), (0, 32)))
  _, gate_long = m.gate_prefix(longer, longer != 0)
  np.testing.assert_allclose(np.where(mask, gate_long[:, :64], 0), np.where(mask, gate, 0),
                             atol=1e-4)
  # Without centering the mean is not pinned to b (the check above can fail).
  _, plain = mrt5.MrT5(tiny_config(), rngs=nnx.Rngs(0)).gate_prefix(inputs, mask)
  zp = gate_logits(plain)
  assert max(abs(np.mean(zp[r][real[r]]) - 1.0) for r in range(len(TEXTS))) > 0.05


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="gate_layer"):
    tiny_config(gate_layer=3)
  with pytest.raises(ValueError, match="target_deletion"):
    tiny_config(target_deletion=1.0)
  with pytest.raises(ValueError, match="deletion must be one of"):
    mrt5.MrT5(tiny_config(), rngs=nnx.Rngs(0)).encode(text_batch(TEXTS), deletion="hardest")


@pytest.mark.parametrize("softmax", ["softmax", "softmax1"])
def test_saturated_gate_soft_and_hard_deletion_agree(model, softmax):
  m = saturated(mrt5.MrT5(tiny_config(attention_softmax=softmax), rngs=nnx.Rngs(0)))
  inputs = text_batch(TEXTS)
  mask = inputs != 0
  gate = np.asarray(m.encode(inputs).gate_BT)[np.asarray(mask)]
  assert np.all((gate > -1e-3) | (gate < K + 1e-3))  # really saturated
  frac = float(m.encode(inputs).deleted_frac)
  assert 0.2 < frac < 0.8, frac  # a real mix of kept and deleted bytes

  targets = text_batch(["jumps over", "den", "return"], length=12)
  dec = t5.shift_right(targets)
  soft = jax.nn.log_softmax(m(inputs, dec, deletion="soft"))
  enc, bias = m.encode_for_inference(inputs, mask)  # compacted
  assert enc.shape[1] < inputs.shape[1]
  hard = jax.nn.log_softmax(m.decode_memory(dec, enc, bias))
  np.testing.assert_allclose(np.asarray(soft), np.asarray(hard), atol=1e-3)


def test_hard_deletion_compacted_equals_masked_in_place(model):
  """Compaction changes nothing but the layout: kept positions compute what they compute
  with the deleted ones masked in place, so they kept their original relative positions."""
  m = saturated(model, seed=1)
  inputs = text_batch(TEXTS)
  mask = inputs != 0
  x, gate = m.gate_prefix(inputs, mask)
  keep = (gate > K / 2) & mask
  enc = m.encoder  # deleted positions masked where they are, original positions throughout
  in_place = enc.finish(enc.run(x, jnp.arange(inputs.shape[1]), key_mask_bias(keep),
                                m.config.gate_layer, gate_bias_BT=gate)[0])
  keep = np.asarray(keep)
  length = mrt5.bucket_length(int(keep.sum(1).max()), inputs.shape[1], 8)
  compact, valid, _ = m.encode_kept(x, gate, mask, length)
  assert length < inputs.shape[1] and int(np.asarray(valid).sum()) == keep.sum()
  for b in range(len(TEXTS)):
    np.testing.assert_allclose(np.asarray(compact)[b][np.asarray(valid)[b]],
                               np.asarray(in_place)[b][keep[b]], atol=1e-5)


def test_compacted_positions_keep_their_relative_position_bias(model):
  keep = jnp.asarray([[1, 0, 0, 1, 1, 0, 1, 0], [0, 1, 1, 1, 0, 0, 0, 0]], bool)
  index, valid = mrt5.compaction(keep, 4)
  np.testing.assert_array_equal(np.asarray(index), [[0, 3, 4, 6], [1, 2, 3, 0]])
  np.testing.assert_array_equal(np.asarray(valid), [[1, 1, 1, 1], [1, 1, 1, 0]])
  rel = model.encoder.rel_bias
  full = np.asarray(rel(jnp.arange(8), jnp.arange(8)))  # H, T, T
  compact = np.asarray(rel(index, index))  # B, H, L, L
  for b in range(2):
    idx = np.asarray(index[b])
    np.testing.assert_array_equal(compact[b], full[:, idx][:, :, idx])
  # Not the bias of the compacted slots 0..3: bytes 0 and 3 are 3 apart, not 1.
  assert not np.array_equal(compact[0], full[:, :4, :4])


def test_gate_disabled_is_exactly_byt5(model):
  fields = {f.name: getattr(model.config, f.name) for f in dataclasses.fields(t5.T5Config)}
  byt5 = t5.T5(t5.T5Config(**fields), rngs=nnx.Rngs(5))
  model_copy = nnx.clone(model)
  nnx.update(model_copy, nnx.state(byt5, nnx.Param))
  inputs = text_batch(TEXTS)
  dec = t5.shift_right(text_batch(["a", "b", "c"], length=8))
  np.testing.assert_array_equal(np.asarray(model_copy(inputs, dec, deletion="none")),
                                np.asarray(byt5(inputs, dec)))
  ours = jax.jit(lambda m, x: m.encode_memory(x, x != 0, deletion="none"))(model_copy, inputs)
  theirs = jax.jit(lambda m, x: m.encode_memory(x, x != 0))(byt5, inputs)  # both compiled
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture
def compaction_traces(monkeypatch):
  """A list that grows by one each time hard-deletion compaction (MrT5.encode_kept) is traced:
  the method runs in Python only while jax traces it, so its calls count compilations."""
  traces = []
  encode_kept = mrt5.MrT5.encode_kept

  def counting(self, *args, **kwargs):
    traces.append(1)
    return encode_kept(self, *args, **kwargs)

  monkeypatch.setattr(mrt5.MrT5, "encode_kept", counting)
  return traces


def test_hard_deletion_compiles_once_per_bucket(model, compaction_traces):
  m = nnx.clone(model)
  m.gate.kernel[...] = jnp.zeros_like(m.gate.kernel[...])
  m.gate.bias[...] = jnp.full((1,), 50.0)  # keep every real byte: kept count = length

  def batch(lengths):
    x = np.zeros((2, 64), np.int32)
    for row, n in enumerate(lengths):
      x[row, :n] = 70
    return jnp.asarray(x)

  def traces(lengths):
    before = len(compaction_traces)
    x = batch(lengths)
    enc, _ = m.encode_for_inference(x, x != 0)
    return len(compaction_traces) - before, enc.shape[1]

  assert traces([40, 30]) == (1, 40)
  assert traces([35, 33]) == (0, 40)  # same bucket: no new compile
  assert traces([20, 10]) == (1, 24)
  assert traces([17, 24]) == (0, 24)
  assert traces([64, 1]) == (1, 64)

  # Each example to its own bucket: one compile per bucket (of one example), reused across
  # batches; the outputs padded to the largest.
  def traces_per_example(lengths):
    before = len(compaction_traces)
    x = batch(lengths)
    enc, bias = m.encode_for_inference(x, x != 0, per_example=True)
    assert (np.asarray(bias[:, max(lengths):]) < -1e8).all()  # padding beyond each row
    return len(compaction_traces) - before, enc.shape[1]

  assert traces_per_example([40, 10]) == (2, 40)
  assert traces_per_example([12, 36]) == (0, 40)
  assert traces_per_example([12, 14]) == (0, 16)


def test_per_example_compaction_gives_the_batched_result(model):
  """Compacting each example to its own bucket changes only the layout, not the decoder's
  log-probabilities."""
  m = saturated(model, seed=2)
  inputs = text_batch(TEXTS)
  mask = inputs != 0
  dec = t5.shift_right(text_batch(["over", "den", "x"], length=8))
  enc, bias = m.encode_for_inference(inputs, mask, per_example=False)
  enc_rows, bias_rows = m.encode_for_inference(inputs, mask, per_example=True)
  kept = np.asarray(bias_rows > -1e8).sum(1)
  assert len(set(kept)) > 1  # the rows really keep different numbers of bytes
  np.testing.assert_allclose(np.asarray(m.decode_memory(dec, enc_rows, bias_rows)),
                             np.asarray(m.decode_memory(dec, enc, bias)), atol=1e-4)


# ---- a gate set by hand: exact deletion figures -----------------------------------------------

DELETED = " aeiou"  # the bytes byte_gates(..., deleting(DELETED)) deletes


@pytest.fixture(scope="module")
def reads_bytes():
  """A tiny MrT5 whose gate reads the byte embeddings directly (gate_layer 0)."""
  return mrt5.MrT5(tiny_config(gate_layer=0), rngs=nnx.Rngs(0))


def byte_id(char):
  return int(bytelm.ByteTokenizer().encode(char, add_eos=False)[0])


def deleting(chars):
  """Gate logits that delete these bytes outright: G = k sigmoid(-z) is k exactly at z = -200."""
  return {c: -200.0 for c in chars}


def byte_gates(model, logits, scale=100.0):
  """A copy of model (gate_layer 0) whose gate logit z is logits[c] at every byte c given and
  +200 (G = 0 exactly: kept) on every other id, so that each G is known by hand.

  With w = scale e_0 and b = 0 the gate computes z = scale x_0 / rms(x) of the embedding row x;
  each row's x_0 is solved for x_0 / rms(x) = z / scale, its other coordinates stay as
  initialised (so the bytes stay distinguishable to the rest of the model). z = 0 gives
  x_0 = 0 and G = k/2 exactly.
  """
  m = nnx.clone(model)
  emb_VD = np.array(m.shared.embedding[...], np.float64)
  num_ids, d = emb_VD.shape
  z_V = np.full(num_ids, 200.0)
  for char, z in logits.items():
    z_V[byte_id(char)] = z
  t_V = z_V / scale  # x_0^2 (d - t^2) = t^2 (sum of the other squares)
  assert np.all(t_V ** 2 < d), "z / scale must stay below sqrt(d_model)"
  rest_V = np.sum(emb_VD[:, 1:] ** 2, axis=1)
  emb_VD[:, 0] = t_V * np.sqrt(rest_V / (d - t_V ** 2))
  m.shared.embedding[...] = jnp.asarray(emb_VD, jnp.float32)
  m.gate.norm.scale[...] = jnp.ones_like(m.gate.norm.scale[...])
  m.gate.kernel[...] = jnp.zeros((d, 1)).at[0, 0].set(scale)
  m.gate.bias[...] = jnp.zeros((1,))
  return m


def deleted_share(texts, chars):
  """Share of the real input bytes (each text's UTF-8 bytes and its eos) that are in chars,
  counted on the strings."""
  real = sum(len(t.encode()) + 1 for t in texts)
  return sum(t.encode().count(ord(c)) for t in texts for c in chars) / real


def test_deleted_frac_counts_only_the_real_bytes(reads_bytes):
  """deleted_frac, what the controller reads, is the share of the real input bytes with
  G <= k/2, in soft and in hard deletion; the padding (G = k, half the batch) is in neither
  count."""
  m = byte_gates(reads_bytes, deleting(DELETED))
  inputs = text_batch(TEXTS)
  assert np.mean(np.asarray(inputs) == 0) > 0.4  # counting padding would show
  expected = deleted_share(TEXTS, DELETED)
  for deletion in ("soft", "hard"):
    frac = float(jit_call(m, "encode", inputs, deletion=deletion).deleted_frac)
    np.testing.assert_allclose(frac, expected, rtol=1e-6, err_msg=deletion)


def test_hard_deletion_threshold_is_k_over_2(reads_bytes):
  """Gates a hair either side of k/2: 'a' at k/2 + 7.5e-5 is kept, 'b' at k/2 - 7.5e-5 and 'c'
  at k/2 exactly are deleted (G <= k/2 is dropped), every other byte (G = 0) is kept. The
  compacted positions carry exactly the kept bytes' gate values, in order."""
  m = byte_gates(reads_bytes, {"a": 1e-5, "b": -1e-5, "c": 0.0})
  inputs = text_batch(TEXTS)
  ids, mask = np.asarray(inputs), inputs != 0
  _, gate = jit_call(m, "gate_prefix", inputs, mask)
  gate = np.asarray(gate)
  above, below, at = (ids == byte_id(c) for c in "abc")
  assert above.any() and below.any() and at.any()
  assert np.all((gate[above] > K / 2) & (gate[above] < K / 2 + 1e-4))
  assert np.all((gate[below] < K / 2) & (gate[below] > K / 2 - 1e-4))
  assert np.all(gate[at] == K / 2)

  keep = (ids != 0) & ~below & ~at  # by hand
  e = jit_call(m, "encode", inputs, deletion="hard")  # compacted, to the input length
  np.testing.assert_allclose(float(e.deleted_frac), 1 - keep.sum() / (ids != 0).sum(),
                             rtol=1e-6)
  _, bias = m.encode_for_inference(inputs, mask)  # compacted to a bucket, as inference runs
  for compact_gate, valid in ((e.key_gate_BT, e.mask_BT), (bias, bias > -1e8)):
    compact_gate, valid = np.asarray(compact_gate), np.asarray(valid)
    for b in range(len(TEXTS)):
      np.testing.assert_array_equal(compact_gate[b][valid[b]], gate[b][keep[b]])


def test_report_figures_equal_a_hand_computation(reads_bytes):
  """report's hard figures for a gate that deletes exactly the vowels and spaces (G = k) and
  keeps every other byte (G = 0): hard_deletion is their share of the real bytes pooled over
  the batches, and hard_val_loss the cross-entropy of the same weights run as plain ByT5 with
  those bytes masked like padding (no gate, no compaction). With the gate at layer 0 no block
  sees a deleted byte, so the two computations are the same one."""
  m = byte_gates(reads_bytes, deleting(DELETED))
  inputs = [TEXTS, ["Hello, world", "abc", "MrT5 deletes bytes"]]  # different real counts
  targets = [["jumps over", "den", "return"], ["world", "b", "bytes"]]
  batches = [dict(inputs=text_batch(i), targets=text_batch(t, length=12))
             for i, t in zip(inputs, targets)]
  figures = mrt5.report(m, batches)

  np.testing.assert_allclose(figures["hard_deletion"],
                             deleted_share(inputs[0] + inputs[1], DELETED), rtol=1e-6)

  deleted_ids = [byte_id(c) for c in DELETED]
  ce, ce_all, n = 0.0, 0.0, 0
  for batch in batches:
    ids, targets_BS = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
    dec_BS = t5.shift_right(batch["targets"], m.config.decoder_start_id)
    real_BS = targets_BS != 0
    nll = []
    for keep_BT in ((ids != 0) & ~np.isin(ids, deleted_ids), ids != 0):
      # ByT5's computation (deletion="none"), the deleted bytes masked like padding.
      enc_BTD, bias_BT = jit_call(m, "encode_memory", batch["inputs"], jnp.asarray(keep_BT),
                                  deletion="none")
      logits_BSV = np.asarray(jit_call(m, "decode_memory", dec_BS, enc_BTD, bias_BT), np.float64)
      logp_BSV = logits_BSV - np.log(np.exp(logits_BSV).sum(-1, keepdims=True))
      nll.append(-np.take_along_axis(logp_BSV, targets_BS[..., None], -1)[..., 0][real_BS].sum())
    ce, ce_all, n = ce + nll[0], ce_all + nll[1], n + real_BS.sum()
  np.testing.assert_allclose(figures["hard_val_loss"], ce / n, rtol=1e-5)
  assert abs(ce_all - ce) / n > 1e-2  # the deleted bytes matter: keeping them would show


def test_pi_controller_drives_a_toy_deleted_fraction_to_its_target():
  """Toy plant: the gate logit u moves with the deletion pressure alpha against a constant pull
  back (0.03), and the deleted fraction is sigmoid(u). It settles only where alpha = 0.03: a
  proportional term alone keeps an error of 0.03 / kp; the integral term removes it."""
  target = 0.5

  def run(ki, steps=200_000, i_max=1.0):
    def body(carry, _):
      p, i, alpha, u = carry
      d = jax.nn.sigmoid(u)
      p, i, alpha = mrt5.pi_step(p, i, d, target=target, kp=0.5, ki=ki, i_max=i_max)
      return (p, i, alpha, u + 0.5 * (alpha - 0.03)), d
    zero = jnp.zeros(())
    (_, i, _, _), ds = jax.lax.scan(body, (zero, zero, zero, jnp.asarray(-5.0)), None,
                                    length=steps)
    return np.asarray(ds), float(i)

  ds, _ = run(ki=1e-5)
  assert ds[0] < 0.01 and abs(ds[-1000:].mean() - target) < 0.005
  assert ds[-1000:].std() < 1e-3  # settled, not oscillating
  p_only, _ = run(ki=0.0)
  assert abs(p_only[-1000:].mean() - target) > 0.05  # the integral term removes the error
  _, i_end = run(ki=1e-2, steps=5_000, i_max=0.01)
  assert 0.0 <= i_end <= 0.01  # anti-windup: clipped


def test_controller_waits_for_the_regularizer_delay():
  c = mrt5.DeletionController()
  cfg = tiny_config(regularizer_delay=3)
  alphas = []
  for _ in range(5):
    c.update(0.0, cfg)
    alphas.append(float(c.alpha[...]))
  assert alphas[:3] == [0.0, 0.0, 0.0] and alphas[3] > 0 and alphas[4] > alphas[3]


# ---- training, loading, generating ----------------------------------------------------------


def tiny_run_config():
  """configs/mrt5.py:tiny."""
  spec = importlib.util.spec_from_file_location("mrt5_config", ROOT / "configs" / "mrt5.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """configs/mrt5.py:tiny for 8 steps, every step logged."""
  config = tiny_run_config()
  config.train.log_every = 1
  workdir = tmp_path_factory.mktemp("mrt5")
  return workdir, train_and_evaluate(config, workdir)


def test_controller_updates_once_per_training_step(trained):
  """The logged alphas follow the PI recurrence over the logged training deleted fractions:
  one update per optimizer step, none on the evaluation batches (evaluated at step 4)."""
  workdir, summary = trained
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  train = [r for r in rows if "alpha" in r]
  assert [r["step"] for r in train] == list(range(1, 9))
  cfg = bytelm.load(workdir).module.config
  p = i = alpha = 0.0
  for r in train:
    np.testing.assert_allclose(r["alpha"], alpha, atol=1e-7)  # the alpha this step used
    p, i, alpha = (float(v) for v in mrt5.pi_step(
        p, i, r["deleted_frac"], target=cfg.target_deletion, kp=cfg.controller_kp,
        ki=cfg.controller_ki, i_max=cfg.controller_i_max, alpha_min=cfg.controller_alpha_min))
  assert alpha > 0
  loaded = bytelm.load(workdir).module  # the controller state is in the checkpoint
  np.testing.assert_allclose(float(loaded.controller.alpha[...]), alpha, rtol=1e-5)
  assert int(loaded.controller.steps[...]) == 8


def test_a_changed_target_deletion_does_not_resume_the_run(trained):
  """The README's --config.model.target_deletion=0.3 into the run's workdir: a runtime field
  (the checkpoint would load), so only the comparison of configs can catch it. Refused, naming
  the field and both values, before anything is written: the run's config.json stays."""
  workdir, _ = trained
  before = (workdir / "config.json").read_bytes()
  config = tiny_run_config()
  config.train.log_every = 1
  config.model.target_deletion = 0.3
  with pytest.raises(workdir_lib.ConfigMismatch,
                     match=r"model.target_deletion: the workdir's run has 0.5, this config 0.3"):
    train_and_evaluate(config, workdir)
  assert (workdir / "config.json").read_bytes() == before


def test_summary_reports_deletion_and_speedup(trained):
  _, summary = trained
  for key in ("val_deleted_frac", "hard_val_loss", "hard_deletion", "encoder_speedup"):
    assert np.isfinite(summary.extras[key]), key
  assert "encoder_speedup" in str(summary)


def test_load_and_generate_with_hard_deletion(trained):
  workdir, _ = trained
  model = bytelm.load(workdir).module
  assert isinstance(model, mrt5.MrT5)
  m = saturated(model, seed=2)  # make hard deletion really delete
  inputs = text_batch(TEXTS)
  ids = np.asarray(generation.encoder_decoder_ids(m, inputs, max_new_bytes=6))
  # Greedy: each generated id is the argmax of the hard-deletion teacher-forced logits.
  # One compiled call (dropout off, as generation runs), not an eager op-by-op run.
  logits = jit_call(m, "__call__", inputs, t5.shift_right(jnp.asarray(ids)), deletion="hard")
  best = np.asarray(jnp.argmax(logits, -1))
  alive = np.cumsum(ids == 1, axis=1) - (ids == 1) == 0  # up to and including eos
  np.testing.assert_array_equal(ids[alive], best[alive])
  texts = generation.encoder_decoder_texts(model, bytelm.ByteTokenizer(), ["hello"],
                                           max_new_bytes=4)
  assert len(texts) == 1 and isinstance(texts[0], str)


def test_load_errors_are_clear(trained, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a bytelm workdir"):
    bytelm.load(tmp_path)
  # A run made by another version, with a model field this one does not have.
  saved = json.loads((trained[0] / "config.json").read_text())
  saved["model"]["gate_from_the_future"] = 1
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ValueError, match="gate_from_the_future.*another version"):
    bytelm.load(tmp_path)
  with pytest.raises(ValueError, match="gate_layer cannot be overridden"):
    bytelm.load(trained[0], gate_layer=0)


def test_load_overrides_runtime_fields(trained):
  model = bytelm.load(trained[0], bucket_multiple=16).module
  assert model.config.bucket_multiple == 16
  assert bytelm.load(trained[0]).module.config.bucket_multiple == \
      tiny_run_config().model.bucket_multiple


def test_init_from_byt5_fills_all_but_the_gate(tmp_path):
  """A Hugging Face ByT5 directory initialises an MrT5: T5 weights copied, gate fresh."""
  config = tiny_run_config()
  config.init_from = str(ROOT / "tests" / "fixtures" / "t5_untied")
  family = models.family("mrt5")
  model, cfg = model_init.init_model(config, family, model_init.model_config(config, family),
                                     nnx.Rngs(1))
  source, _ = bytelm.convert.load_hf(config.init_from)
  assert isinstance(model, mrt5.MrT5) and cfg.d_model == source.config.d_model
  assert cfg.gate_layer == 1 and cfg.attention_softmax == "softmax1"  # from this run
  np.testing.assert_array_equal(np.asarray(model.shared.embedding[...]),
                                np.asarray(source.shared.embedding[...]))
  np.testing.assert_array_equal(
      np.asarray(model.encoder.blocks[2].attn.q.kernel[...]),
      np.asarray(source.encoder.blocks[2].attn.q.kernel[...]))
  assert float(model.gate.bias[...][0]) == config.model.gate_init_bias  # fresh
