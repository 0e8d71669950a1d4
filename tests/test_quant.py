"""Quantized number formats (bytelm/quant): int8 vector-wise with outliers, ternary, packing."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bytelm.nn import quant as qn


def _rand(shape, seed=0, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def test_int8_round_trip_error_is_within_half_a_step():
  w_KN = _rand((64, 48), scale=0.3)
  q_KN, scale_N = qn.quantize_weight(w_KN)
  assert q_KN.dtype == jnp.int8 and scale_N.shape == (48,)
  assert int(jnp.max(jnp.abs(q_KN))) == 127  # each column's largest value uses the full range
  err_KN = jnp.abs(qn.dequantize_weight(q_KN, scale_N) - w_KN)
  assert bool(jnp.all(err_KN <= scale_N / 2 + 1e-7))
  q_MK, s_M1 = qn.absmax_int8(jnp.zeros((3, 5)), axis=1)  # all zeros: no NaN
  assert bool(jnp.all(q_MK == 0)) and bool(jnp.all(jnp.isfinite(s_M1)))


def test_the_integer_product_is_exact():
  rng = np.random.default_rng(1)
  a = rng.integers(-127, 128, (33, 70)).astype(np.int8)
  b = rng.integers(-127, 128, (70, 21)).astype(np.int8)
  got = qn.int8_dot(jnp.asarray(a), jnp.asarray(b))
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), a.astype(np.int64) @ b.astype(np.int64))


def test_int8_matmul_is_the_float_product_within_the_scales_error():
  x_MK, w_KN = _rand((16, 96), 2), _rand((96, 40), 3, 0.1)
  q_KN, scale_N = qn.quantize_weight(w_KN)
  got = qn.int8_matmul(x_MK, q_KN, scale_N, outlier_columns=0)
  want = x_MK @ w_KN
  # |x w - x~ w~| <= sum_k |x| |w - w~| + |x - x~| |w~|: half a step of each operand.
  _, sx_M1 = qn.absmax_int8(x_MK, axis=1)
  w_deq = qn.dequantize_weight(q_KN, scale_N)
  bound = (jnp.abs(x_MK) @ jnp.broadcast_to(scale_N / 2, w_KN.shape)
           + (sx_M1 / 2) * jnp.sum(jnp.abs(w_deq), axis=0))
  assert bool(jnp.all(jnp.abs(got - want) <= bound + 1e-5))
  assert float(jnp.max(jnp.abs(got - want))) > 0  # it did quantize


def test_outlier_columns_are_exactly_those_over_the_threshold():
  x_MK = _rand((32, 64), 4)
  # An outlier feature (column 7, large at every position, as LLM.int8 finds them), a single
  # large value (column 30) and one just under the threshold (column 50).
  x_MK = x_MK.at[:, 7].set(20.0).at[9, 30].set(-8.0).at[0, 50].set(5.9)
  mask = qn.outlier_mask(x_MK, 6.0)
  assert np.flatnonzero(np.asarray(mask)).tolist() == [7, 30]
  w_KN = _rand((64, 24), 5, 0.1)
  q_KN, scale_N = qn.quantize_weight(w_KN)
  exact = x_MK @ qn.dequantize_weight(q_KN, scale_N)
  decomposed = qn.int8_matmul(x_MK, q_KN, scale_N, threshold=6.0, outlier_columns=4)
  plain = qn.int8_matmul(x_MK, q_KN, scale_N, outlier_columns=0)
  # The big columns no longer inflate the row scales: far closer to the float product.
  assert float(jnp.mean(jnp.abs(decomposed - exact))) < 0.25 * float(
      jnp.mean(jnp.abs(plain - exact)))
  # Decomposition by hand: float for columns 7 and 30, int8 for the rest.
  keep = np.ones(64, bool)
  keep[[7, 30]] = False
  by_hand = (qn.int8_matmul(jnp.where(keep, x_MK, 0.0), q_KN, scale_N, outlier_columns=0)
             + jnp.where(~keep, x_MK, 0.0) @ qn.dequantize_weight(q_KN, scale_N))
  np.testing.assert_allclose(np.asarray(decomposed), np.asarray(by_hand), atol=1e-5)


def test_the_compiled_int8_matmul_holds_an_integer_dot():
  x_MK, w_KN = _rand((8, 128), 6), _rand((128, 64), 7)
  q_KN, scale_N = qn.quantize_weight(w_KN)
  hlo = jax.jit(qn.int8_matmul).lower(x_MK, q_KN, scale_N).compile().as_text()
  # The product is an integer dot (an s32 result only comes from integer operands)...
  assert re.search(r"= s32\[8,64\]\{[^}]*\} dot\(", hlo), "no int8 x int8 -> int32 dot"
  assert not re.search(r"= f32\[8,64\]\{[^}]*\} dot\([^)]*s8", hlo)
  # ...which XLA:CPU runs as a YNNPACK GEMM (the path that makes int8 faster than float32 here;
  # without it XLA's integer dot is ~3x slower than float32; jax >= 0.10, see pyproject.toml).
  if jax.default_backend() == "cpu":
    assert re.search(r"s32\[8,64\]\{[^}]*\} fusion\([^\n]*__ynn_fusion", hlo)


def test_ternary_codes_scale_and_straight_through_gradient():
  w = _rand((40, 30), 8, 0.05)
  s = qn.ternary_scale(w)
  np.testing.assert_allclose(float(s), float(jnp.mean(jnp.abs(w))), rtol=1e-6)
  codes = qn.ternary_codes(w, s)
  assert set(np.unique(np.asarray(codes)).tolist()) == {-1, 0, 1}
  np.testing.assert_array_equal(np.asarray(codes == 0), np.asarray(jnp.abs(w) < s / 2))
  assert float(qn.ternary_scale(w, "median")) == pytest.approx(float(jnp.median(jnp.abs(w))))
  # The forward sees codes * scale; the gradient is the float one (identity through Q).
  x = _rand((5, 40), 9)
  loss = lambda w: jnp.sum(jnp.tanh(x @ qn.fake_quant_ternary(w)))  # noqa: E731
  g = jax.grad(loss)(w)
  wq = codes.astype(jnp.float32) * s
  g_float = jax.grad(lambda v: jnp.sum(jnp.tanh(x @ v)))(wq)
  assert float(jnp.max(jnp.abs(g))) > 0
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_float), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(qn.fake_quant_ternary(w)), np.asarray(wq), atol=1e-7)
  gx = jax.grad(lambda x: jnp.sum(qn.fake_quant_int8_rows(x) ** 2))(x)
  np.testing.assert_allclose(np.asarray(gx), np.asarray(2 * qn.fake_quant_int8_rows(x)),
                             rtol=1e-5)


def test_ternary_inference_matmul_equals_the_fake_quantized_forward():
  w, x = _rand((48, 20), 10, 0.05), _rand((6, 48), 11)
  s = qn.ternary_scale(w)
  got = qn.ternary_matmul(x, qn.ternary_codes(w, s), s)
  want = qn.fake_quant_int8_rows(x) @ qn.fake_quant_ternary(w)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 13), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_packed_ternary_unpacks_to_the_same_codes(k, n, seed):
  codes = jnp.asarray(np.random.default_rng(seed).integers(-1, 2, (k, n)), jnp.int8)
  # Jitted: one compilation per shape, not one per operation (each example is a new shape).
  packed = jax.jit(qn.pack_ternary)(codes)
  assert packed.dtype == jnp.uint8 and packed.shape == (-(-k // 4), n)
  unpacked = jax.jit(qn.unpack_ternary, static_argnums=1)(packed, k)
  np.testing.assert_array_equal(np.asarray(unpacked), np.asarray(codes))


# ---- quantized models ---------------------------------------------------------------------------

import dataclasses  # noqa: E402

from flax import nnx  # noqa: E402

from bytelm.models import decoder, t5  # noqa: E402
from bytelm.nn.layers import Dense  # noqa: E402
from bytelm.quant.convert import quantization_of, quantize  # noqa: E402
from bytelm.nn.quant_dense import QuantDense  # noqa: E402
from bytelm.runs import export  # noqa: E402
from bytelm.runs.load import load as load_run  # noqa: E402

IDS = jnp.asarray(np.random.default_rng(0).integers(3, 259, (2, 24)), jnp.int32)


def _decoder(**kw):
  shape = {**t5.PRESETS["tiny"], "num_encoder_layers": 0, **kw}
  return decoder.DecoderLM(decoder.DecoderConfig(**shape), rngs=nnx.Rngs(0))


def _count(model, cls):
  return sum(isinstance(node, cls) for _, node in nnx.iter_graph(model))


@pytest.mark.parametrize("mode,tolerance", [("int8_weight", 0.02), ("int8", 0.03)])
def test_post_training_int8_replaces_the_block_matmuls_and_keeps_the_logits(mode, tolerance):
  model = _decoder()
  want = model(IDS)
  dense = _count(model, Dense)
  quantize(model, mode)
  assert _count(model, QuantDense) == 2 * 7 and _count(model, Dense) == dense - 14
  assert isinstance(model.lm_head, Dense)  # the head stays float unless asked
  got = model(IDS)
  assert float(jnp.max(jnp.abs(got - want))) < tolerance * float(jnp.max(jnp.abs(want)))
  assert quantization_of(model)["mode"] == mode
  with pytest.raises(ValueError, match="mode must be"):
    quantize(_decoder(), "int4")


def test_quantizing_a_quantized_model_names_the_mode_it_has():
  model = quantize(_decoder(), "int8_weight")
  with pytest.raises(ValueError, match=r"DecoderLM is already quantized \(int8_weight\); to "
                                       r"quantize it as ternary, start from the float model"):
    quantize(model, "ternary")
  assert quantization_of(model)["mode"] == "int8_weight"  # left as it was


def test_a_ternary_model_trains_through_the_straight_through_estimator_and_packs_exactly():
  model = _decoder(quant="ternary")
  assert model.blocks[0].mlp.sub_norm is not None and model.blocks[0].attn.sub_norm is not None
  loss = lambda m: jnp.mean(m(IDS) ** 2)  # noqa: E731
  grads = nnx.grad(loss)(model)
  g = grads.blocks[0].mlp.wo.kernel[...]
  assert float(jnp.max(jnp.abs(g))) > 0  # gradients reach the latent float weights
  want = model(IDS)
  quantize(model, "ternary")
  assert model.blocks[0].mlp.wo.packed[...].dtype == jnp.uint8
  np.testing.assert_allclose(np.asarray(model(IDS)), np.asarray(want), atol=1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="quant must be"):
    t5.T5Config(quant="int4")


@pytest.mark.parametrize("mode", ["int8", "ternary"])
def test_quantized_exports_store_integers_and_load_to_identical_outputs(tmp_path, mode):
  model = _decoder(quant="ternary" if mode == "ternary" else None)
  quantize(model, mode)
  want = model(IDS)
  config = {"model_family": "decoder", "model": dataclasses.asdict(model.config)}
  out = export.export(model, config, tmp_path / "q", dtype="float32")  # the float rest exact
  from safetensors.numpy import load_file
  arrays = load_file(str(out / export.WEIGHTS))
  key = "blocks/0/mlp/wo/" + ("packed" if mode == "ternary" else "qvalue")
  assert arrays[key].dtype == (np.uint8 if mode == "ternary" else np.int8)
  loaded = load_run(out)
  np.testing.assert_array_equal(np.asarray(loaded(IDS)), np.asarray(want))


# ---- recipes --------------------------------------------------------------------------------------

import pathlib  # noqa: E402

import ml_collections  # noqa: E402

from bytelm.training import config_file, optimizer, train_and_evaluate  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_the_ternary_schedule_drops_half_way_and_stops_weight_decay_late():
  c = config_file.load(CONFIGS / "byt5.py", "ternary")
  plain = config_file.load(CONFIGS / "byt5.py")
  assert c.model.quant == "ternary" and plain.model.quant is None
  assert c.opt.lr == pytest.approx(3 * plain.opt.lr) and c.train.steps == plain.train.steps
  opt = ml_collections.ConfigDict(dict(c.opt.to_dict(), warmup_steps=0, final_lr_fraction=0.1))
  schedule = optimizer.make_schedule(opt, 100)
  before, after = float(schedule(49)), float(schedule(50))
  assert after == pytest.approx(0.6 * before, rel=0.03)  # the drop, on a slow linear decay
  assert float(schedule(0)) == pytest.approx(opt.lr)
  decay = optimizer._weight_decay(opt, 90)
  assert float(decay(59)) == pytest.approx(opt.weight_decay) and float(decay(60)) == 0.0
  for name in ("mrt5", "hat", "bytes_decoder"):
    assert config_file.load(CONFIGS / f"{name}.py", "tiny_ternary").model.quant == "ternary"


def test_a_ternary_mrt5_recipe_trains_and_loads(tmp_path):
  config = config_file.load(CONFIGS / "mrt5.py", "tiny_ternary")
  # What is checked (a finite loss; the run loads as ternary) needs no more than two steps and
  # one held-out batch: docs/recipes/quantized.md's own run (tests/test_docs.py's overrides),
  # whose compiled steps the suite's compilation cache then holds once for both.
  config.train.update(steps=2, eval_every=2, eval_batches=1)
  config.ckpt.every = 2
  summary = train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(summary.val_loss)
  model = load_run(tmp_path / "run")
  assert model.config.quant == "ternary"
  assert model.encoder.blocks[0].mlp.sub_norm is not None


@pytest.mark.parametrize("mode", ["int8_weight", "int8"])
def test_int8_aware_training_sees_the_post_training_numbers(mode):
  # The forward of a quantization-aware Dense is what QuantDense computes after training
  # (up to float rounding), and its gradient is the float one.
  dense = Dense(48, 20, std=0.1, quant=mode, rngs=nnx.Rngs(0))
  x = _rand((2, 5, 48), 12)
  after = QuantDense.from_dense(dense, mode, outlier_columns=0)
  np.testing.assert_allclose(np.asarray(dense(x)), np.asarray(after(x)), rtol=1e-5, atol=1e-5)
  g = nnx.grad(lambda d: jnp.sum(d(x) ** 2))(dense)
  assert float(jnp.max(jnp.abs(g.kernel[...]))) > 0


def test_calibrated_outlier_columns_are_the_ones_that_reached_the_threshold(tmp_path):
  x_MK = _rand((32, 64), 13).at[:, 9].set(15.0).at[3, 40].set(-7.0)
  w_KN = _rand((64, 24), 14, 0.1)
  q_KN, scale_N = qn.quantize_weight(w_KN)
  idx_k, use_k = jnp.asarray([9, 40, 0, 1], jnp.int32), jnp.asarray([1, 1, 0, 0], jnp.int8)
  # Fixed columns 9 and 40: the same as the per-call search, which finds those two.
  np.testing.assert_allclose(np.asarray(qn.int8_matmul_fixed(x_MK, q_KN, scale_N, idx_k, use_k)),
                             np.asarray(qn.int8_matmul(x_MK, q_KN, scale_N, outlier_columns=4)),
                             atol=1e-5)
  # A model calibrated on text: its layers keep the columns that reached 6.0 there.
  model = _decoder()
  want = model(IDS)
  quantize(model, "int8", calibrate=lambda m: m(IDS))
  wo = model.blocks[0].mlp.wo
  assert wo.outliers == "calibrated" and wo.recording is None
  got = model(IDS)
  assert float(jnp.max(jnp.abs(got - want))) < 0.03 * float(jnp.max(jnp.abs(want)))
  # Inputs seen now (a layer's input can move a little once the layers before it decompose,
  # hence the margin around 6.0).
  for layer in (wo, model.blocks[0].attn.q):
    seen = np.asarray(jnp.max(jnp.abs(_inputs_of(model, layer)), axis=0))
    used = set(np.asarray(layer.outlier_idx[...])[np.asarray(layer.outlier_use[...]) > 0].tolist())
    if (seen >= 6.0).sum() <= layer.outlier_columns:
      assert set(np.flatnonzero(seen >= 6.1).tolist()) <= used
    assert not used & set(np.flatnonzero(seen < 5.9).tolist())
  assert np.asarray(wo.outlier_use[...]).sum() > 0, "the test model's wo sees values over 6"
  config = {"model_family": "decoder", "model": dataclasses.asdict(model.config)}
  out = export.export(model, config, tmp_path / "c", dtype="float32")
  np.testing.assert_array_equal(np.asarray(load_run(out)(IDS)), np.asarray(got))


def _inputs_of(model, layer):
  """The inputs a layer receives on IDS, [M, K] (recorded through its calibration hook)."""
  seen = []
  layer.recording = None
  original = type(layer).__call__

  def spy(self, x_BTI):
    if self is layer:
      seen.append(x_BTI.reshape(-1, self.in_features))
    return original(self, x_BTI)

  type(layer).__call__ = spy
  try:
    model(IDS)
  finally:
    type(layer).__call__ = original
  return jnp.concatenate(seen)
