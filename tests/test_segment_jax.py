"""Segments cut inside the compiled step (text/segment_jax.py) are the host reference's
(text/segment.py), row by row: on random bytes, multilingual text, invalid UTF-8, words longer
than max_segment_bytes and rows with more segments than max_segments."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bytelm.data import sources
from bytelm.text import segment, segment_jax
from bytelm.text.tokenizer import EOS_ID, OFFSET

ROWS, LENGTH = 6, 40  # one compiled shape for every example
ENTROPY = segment.EntropyModel(  # a table whose entropies cross the threshold often
    (np.arange(256**2, dtype=np.float32) * 0.37) % 7, order=2, threshold=3.5, relative=1.5)
SEGMENTERS = {"words": segment.Segmenter("words", 6),
              "fixed": segment.Segmenter("fixed", 6, fixed_size=5),
              "entropy": segment.Segmenter("entropy", 5, entropy_model=ENTROPY)}
MAX_SEGMENTS = 5  # rows of 40 bytes often hold more segments than this


@functools.cache
def compiled(kind: str):
  return jax.jit(segment_jax.DeviceSegmenter(SEGMENTERS[kind], MAX_SEGMENTS))


def targets_of(rows: list[bytes]) -> np.ndarray:
  """int32 [ROWS, LENGTH] target ids of rows of bytes (0xFF is the eos id), pad after each."""
  targets = np.zeros((ROWS, LENGTH), np.int32)
  for r, data in enumerate(rows):
    x = np.frombuffer(data[:LENGTH], np.uint8).astype(np.int32)
    targets[r, :len(x)] = np.where(x == 0xFF, EOS_ID, x + OFFSET)
  return targets


def check_rows(kind: str, rows: list[bytes]) -> None:
  """The device's ids of each row equal the host functions' on that row alone."""
  targets = targets_of(rows)
  got = {k: np.asarray(v) for k, v in compiled(kind)(jnp.asarray(targets)).items()}
  for r, data in enumerate(rows):
    data = data[:LENGTH]
    starts = SEGMENTERS[kind](data)
    ids, _ = segment.segment_ids(len(data), starts, MAX_SEGMENTS, LENGTH)
    ctx = segment.context_ids(data, starts, MAX_SEGMENTS, LENGTH)
    np.testing.assert_array_equal(got["segment_ids"][r], ids, err_msg=f"{kind} {data!r}")
    np.testing.assert_array_equal(got["context_ids"][r], ctx, err_msg=f"{kind} {data!r}")


MULTILINGUAL = st.text(alphabet=st.sampled_from(
    list("ab zé,.'-\n\t") + ["日", "本", "。", "ไ", "ท", "ก", "ं", "क", "ب", "ع", "\u0301",
                             "\u00a0", "\u3000", "😀", "ß", "Ж", "\u200b", "\u2028"]),
    max_size=30).map(lambda t: t.encode("utf-8"))
# Bytes near the UTF-8 edge cases: lead bytes of every width, continuations, overlong and
# surrogate leads (E0, ED, F0, F4), bytes that never occur (C0, F5, FF).
EDGY = st.binary(max_size=40).map(lambda b: bytes(
    (0x80, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF, 0x20, 0x61,
     0x9F, 0xA0)[x % 16] for x in b))
ROW = st.one_of(st.binary(max_size=LENGTH), MULTILINGUAL, EDGY,
                st.text(alphabet="ab", min_size=12, max_size=LENGTH).map(str.encode))


@settings(max_examples=60, deadline=None)
@given(st.lists(ROW, min_size=ROWS, max_size=ROWS))
@pytest.mark.parametrize("kind", list(SEGMENTERS))
def test_device_segments_are_the_hosts(kind, rows):
  check_rows(kind, rows)


# UTF-8's edge cases, each between word characters so that its decoding shows: overlong forms,
# surrogates, past U+10FFFF, the lowest and highest valid sequences, and full rows that end
# inside a character (the end is settled past the row).
EDGES = [b"a\xe0\x80\x80b", b"a\xe0\x9f\xbfb", b"a\xe0\xa0\x80b", b"a\xed\x9f\xbfb",
         b"a\xed\xa0\x80b", b"a\xf0\x8f\xbf\xbfb", b"a\xf0\x90\x80\x80b",
         b"a\xf4\x8f\xbf\xbfb", b"a\xf4\x90\x80\x80b", b"a\xc0\xafb", b"a\xc1\xbfb",
         b"a\xc2\x80b", b"a\xdf\xbfb", b"a\xf5\x80\x80\x80b", b"\xe6\x97 x",
         b"\xbf\xbf\xbf",
         b"word " * 7 + b"\xf0", b"word " * 7 + b"\xe6\x97", b"w" * 38 + b"\xf0\x9f",
         b"ab " * 12 + b"\xc3\xa9\xc3", b"\xf0\x9f\x98\x80" * 10]


@pytest.mark.parametrize("kind", list(SEGMENTERS))
def test_device_segments_of_utf8_edge_cases(kind):
  for first in range(0, len(EDGES), ROWS):
    check_rows(kind, (EDGES[first:first + ROWS] + [b""] * ROWS)[:ROWS])


split_long = jax.jit(segment_jax.split_long, static_argnums=3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(EDGY, MULTILINGUAL, st.binary(max_size=LENGTH)),
                          st.lists(st.integers(0, LENGTH - 1), max_size=6)),
                min_size=ROWS, max_size=ROWS), st.integers(4, 9))
def test_long_segments_are_cut_as_on_the_host(rows, max_segment_bytes):
  # Any starts, not only a segmenter's: segments of continuation bytes, of invalid bytes.
  bytes_BT = np.zeros((ROWS, LENGTH), np.uint8)
  start_BT = np.zeros((ROWS, LENGTH), bool)
  rows = [(data[:LENGTH], starts) for data, starts in rows]
  lengths_B = np.asarray([len(data) for data, _ in rows])
  want = np.zeros((ROWS, LENGTH), bool)
  for r, (data, starts) in enumerate(rows):
    bytes_BT[r, :len(data)] = np.frombuffer(data, np.uint8)
    starts = sorted({0} | {t for t in starts if t < len(data)}) if data else []
    start_BT[r, starts] = True
    want[r, segment.split_long(data, starts, max_segment_bytes)] = True
  got = split_long(jnp.asarray(bytes_BT), jnp.asarray(lengths_B), jnp.asarray(start_BT),
                   max_segment_bytes)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_a_segment_of_continuation_bytes_is_cut_after_its_first_byte():
  # No character starts within reach of the cut: the host backs off to the byte after the
  # segment's start (a cut backed off to the start itself would cut nothing, and never end);
  # the characters after the run are cut between characters again (21, 27).
  data = b"a" + b"\x80" * 20 + b"\xe6\x97\xa5" * 3
  bytes_BT = np.frombuffer(data, np.uint8)[None]
  start_BT = np.zeros(bytes_BT.shape, bool)
  start_BT[0, 0] = True
  got = split_long(jnp.asarray(bytes_BT), jnp.asarray([len(data)]), jnp.asarray(start_BT), 8)
  assert np.flatnonzero(np.asarray(got)[0]).tolist() == segment.split_long(data, [0], 8) \
      == list(range(14)) + [21, 27]


def test_device_segments_of_real_text_in_many_scripts():
  texts = [sources.held_out_pieces(spec, 200, 400)[0].encode("utf-8")
           for spec in ("embedded:en", "embedded:l10n_vi", "embedded:l10n_cs",
                        "embedded:python_docs")]
  texts += ["日本語のテキスト、そして English words".encode(), "naïve café ñandú".encode()]
  for start in (0, 17, 33):  # windows that may begin inside a character
    for kind in SEGMENTERS:
      check_rows(kind, [t[start:] for t in texts])


def test_the_kind_table_is_the_host_rule_at_every_code_point():
  cp = np.arange(0x110000)
  cp = cp[(cp < 0xD800) | (cp > 0xDFFF)]
  got = np.asarray(jax.jit(segment_jax.char_kinds)(jnp.asarray(cp, jnp.int32)))
  want = np.asarray([segment.char_kind.__wrapped__(int(c)) for c in cp[::97]])
  np.testing.assert_array_equal(got[::97], want)  # every 97th: the whole range is 0.3 s more
  assert (got[cp < 128] == [segment.char_kind(int(c)) for c in range(128)]).all()
  assert int(segment_jax.char_kinds(jnp.asarray(-1))) == segment.ALONE


def test_training_on_device_segments_gives_the_host_segments_losses():
  from flax import nnx
  from bytelm import models
  from bytelm.data import pipeline
  from bytelm.training import config_file, optimizer, trainer
  c = config_file.load(pathlib.Path(__file__).parents[1] / "configs" / "hat.py", "tiny")
  family = models.family(c.model_family)
  src = pipeline.BatchSource(sources.held_out_pieces("embedded:en", 400, 8000),
                             objective="causal_lm", batch_size=4, input_length=64,
                             segments=c.data.segments.to_dict())

  def losses(loss_fn, add_host_ids):
    model = family.model_cls(family.config_cls(**c.model.to_dict()), rngs=nnx.Rngs(0))
    tx, schedule = optimizer.make_optimizer(c.opt, 20)
    graphdef, state = nnx.split((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
    step = jax.jit(functools.partial(trainer.train_step, graphdef=graphdef, loss_fn=loss_fn,
                                     schedule=schedule, z_loss=0.0))
    out = []
    for i in range(20):
      batch = src.batch(i)
      if add_host_ids:
        batch.update(pipeline.segment_rows(batch["targets"], **src.segments))
      state, metrics = step(state, batch)
      out.append(float(metrics["loss"]))
    return np.asarray(out)

  host = losses(family.loss_fn, add_host_ids=True)
  device = losses(segment_jax.with_segments(family.loss_fn, src.device_segmenter), False)
  np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-5)
  assert host[-1] < host[0]  # it trained: the comparison is of a moving model
