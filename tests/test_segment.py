"""Host segmenters under static shapes (text/segment.py), and pooling between bytes and
segments in the model (models/pooling.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from bytelm.models import pooling
from bytelm.text import segment


def pieces(data: bytes, starts) -> list[bytes]:
  return [data[a:b] for a, b in zip(starts, list(starts[1:]) + [len(data)])]


def words(text: str) -> list[str]:
  data = text.encode("utf-8")
  return [p.decode("utf-8") for p in pieces(data, segment.word_starts(data))]


def test_words_take_the_space_before_them():
  assert words("Hello, world!") == ["Hello,", " world!"]
  assert words("  don't l’é  ") == ["  don't", " l’é", "  "]
  assert words("in 2026-11-26 (3.14)") == ["in", " 2026-11-26", " (3.14)"]
  assert words("a\nb\t c") == ["a", "\nb", "\t c"]
  assert words("naïve ño") == ["naïve", " ño"]  # marks, composed or not, stay in the word


def test_unspaced_scripts_and_invalid_bytes_stand_alone():
  assert words("日本語 and ไทย") == ["日", "本", "語", " and", " ไ", "ท", "ย"]
  assert words("本。次") == ["本", "。", "次"]  # 。 is punctuation: it joins no CJK character
  data = b"ab\xff\xfecd"
  assert pieces(data, segment.word_starts(data)) == [b"ab", b"\xff", b"\xfe", b"cd"]
  assert segment.word_starts(b"") == []


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=80),
                 st.text(alphabet=st.sampled_from("ab ąž,.'-\n日7\u0301"), max_size=60)
                 .map(lambda t: t.encode("utf-8"))),
       st.integers(4, 12), st.integers(1, 8))
def test_segments_rejoin_fit_and_cover_what_they_say(data, max_bytes, max_segments):
  entropy = segment.EntropyModel(np.arange(256, dtype=np.float32) % 7, order=1, threshold=3.5)
  for kind in segment.KINDS:
    starts = segment.Segmenter(kind, max_bytes, 5, entropy)(data)
    assert starts == sorted(set(starts)) and (not data or starts[0] == 0)
    parts = pieces(data, starts)
    assert b"".join(parts) == data  # nothing dropped, nothing added
    assert all(0 < len(p) <= max_bytes for p in parts)
    ids, covered = segment.segment_ids(len(data), starts, max_segments, length=len(data) + 3)
    kept = parts[:max_segments]
    assert covered == sum(len(p) for p in kept)
    assert list(ids[:covered]) == [n for n, p in enumerate(kept) for _ in p]
    assert np.all(ids[covered:] == -1)


def test_long_words_are_cut_between_characters():
  data = "Zażółć".encode("utf-8")  # 10 bytes
  parts = pieces(data, segment.split_long(data, segment.word_starts(data), 4))
  assert [p.decode("utf-8") for p in parts] == ["Zaż", "ół", "ć"]


def test_bad_bounds_are_clear_errors():
  with pytest.raises(ValueError, match="max_segment_bytes"):
    segment.split_long(b"abc", [0], 3)
  with pytest.raises(ValueError, match="size"):
    segment.fixed_starts(10, 0)
  with pytest.raises(ValueError, match="offset 0"):
    segment.segment_ids(4, [1], 2)
  with pytest.raises(ValueError, match="fit"):
    segment.segment_ids(5, [0], 2, length=4)


def test_pool_by_hand():
  x = jnp.arange(12.0).reshape(1, 6, 2)  # byte t has state (2t, 2t + 1)
  ids = jnp.asarray([[0, 0, 1, 1, 1, -1]])
  np.testing.assert_allclose(pooling.pool(x, ids, 3, "mean")[0],
                             [[1, 2], [6, 7], [0, 0]])
  np.testing.assert_allclose(pooling.pool(x, ids, 3, "last")[0], [[2, 3], [8, 9], [0, 0]])
  np.testing.assert_allclose(pooling.pool(x, ids, 3, "first")[0], [[0, 1], [4, 5], [0, 0]])
  with pytest.raises(ValueError, match="how"):
    pooling.pool(x, ids, 3, "max")


def test_context_ids_name_segments_settled_before_each_byte():
  data = "ab日x, y".encode("utf-8")  # segments "ab", "日" (bytes 2-4), "x,", " y"
  starts = segment.word_starts(data)
  assert pieces(data, starts) == [b"ab", "日".encode(), b"x,", b" y"]
  # "ab" | 日: settled once 日 is complete (byte 4), from byte 5 on; 日 | x: at byte 5, from 6;
  # "x," | " y": at the space (byte 7), from byte 8.
  assert list(segment.context_ids(data, starts, max_segments=4)) == [-1] * 5 + [0, 1, 1, 2]
  # Only kept segments are named.
  assert list(segment.context_ids(data, starts, max_segments=1, length=11)) == [-1] * 5 + [0] * 6
  # Two invalid bytes are two segments only once the byte after them shows it.
  broken = b"ab\xe6\x97X"
  assert segment.word_starts(broken) == [0, 2, 3, 4]
  assert segment.settled_at(broken, 3) == 4 and segment.settled_at(broken, 4) == 4


def test_unpool_gathers_the_named_states():
  h = jax.random.normal(jax.random.key(0), (1, 3, 4))
  ctx = jnp.asarray([[-1, 0, 0, 2, 1]])
  start = jnp.full((4,), 7.0)
  out = pooling.unpool(h, ctx, start)
  np.testing.assert_allclose(out[0], jnp.stack([start, h[0, 0], h[0, 0], h[0, 2], h[0, 1]]))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab .,'\n\t\x1c\x0b7"), max_size=40))
def test_the_ascii_fast_path_splits_as_the_general_rules_do(text):
  data = text.encode("ascii")
  # The general path runs on the same text with a non-ASCII word put after it.
  general = segment.word_starts(data + " é".encode("utf-8"))
  assert segment.word_starts(data) == [s for s in general if s < len(data)]


def test_query_pooling_weighs_only_the_segments_bytes():
  x = jax.random.normal(jax.random.key(0), (1, 5, 4))
  ids = jnp.array([[0, 0, 1, 1, -1]])
  pool = pooling.QueryPool(4, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(pool(x, ids, 3), pooling.pool(x, ids, 3, "mean"), atol=1e-6)
  pool.query[...] = jnp.array([5.0, -3.0, 2.0, 1.0])
  out = pool(x, ids, 3)
  assert not np.allclose(out, pooling.pool(x, ids, 3, "mean"), atol=1e-3)
  for n, members in ((0, [0, 1]), (1, [2, 3])):  # a convex mix of the segment's own bytes
    mix = np.linalg.lstsq(np.asarray(x[0, members]).T, np.asarray(out[0, n]), rcond=None)[0]
    assert np.all(mix > 0) and np.isclose(mix.sum(), 1.0, atol=1e-5)
  np.testing.assert_array_equal(out[0, 2], 0.0)  # an empty slot


def test_the_entropy_segmenter_hits_its_target_and_reads_no_byte_ahead(tmp_path):
  rng = np.random.default_rng(0)
  words = [b"the", b"cat", b"sat", b"on", b"a", b"mat", b"zyx" + bytes(rng.integers(97, 123, 3).astype(np.uint8))]
  stream = b" ".join(words[i] for i in rng.integers(0, len(words), 3000))
  stream = np.frombuffer(stream, np.uint8)
  model = segment.EntropyModel.fit(stream, order=2, target_segment_bytes=4.0)
  data = stream[:2000].tobytes()
  starts = model.starts(data)
  assert 3.5 < len(data) / len(starts) < 4.5  # the threshold is the entropy quantile
  for k in (1, 7, 100, 999):  # a boundary at t is decided by the bytes before t
    assert model.starts(data[:k]) == [s for s in starts if s < k]
  # Highest entropy right after a space (which word comes next?): segments start there.
  assert np.mean([data[s - 1:s] == b" " for s in starts[1:]]) > 0.5
  model.save(tmp_path / "e.npz")
  again = segment.EntropyModel.load(tmp_path / "e.npz")
  assert again.starts(data) == starts and again.threshold == model.threshold
  (tmp_path / "bad.npz").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="entropy model"):
    segment.EntropyModel.load(tmp_path / "bad.npz")
  with pytest.raises(ValueError, match="EntropyModel"):
    segment.Segmenter("entropy")
  with pytest.raises(ValueError, match="kind"):
    segment.Segmenter("sentences")
  cut = segment.Segmenter("entropy", max_segment_bytes=4, entropy_model=model)(data)
  assert max(np.diff(cut + [len(data)])) <= 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(2, 6),
       st.integers(1, 8))
def test_learned_boundaries_give_the_host_rules_ids(probs, max_bytes, max_segments):
  """On the device, boundaries from probabilities: segments fit max_segment_bytes, and the ids
  are what the host's segment_ids / context_ids give for the same starts (ASCII text, where a
  boundary at s is settled by byte s)."""
  starts_1T = pooling.force_max_length(jnp.asarray([probs]) >= 0.5, max_bytes)
  starts = np.flatnonzero(np.asarray(starts_1T[0])).tolist()
  run, expected = max_bytes, []  # the rule one byte at a time, as a generation step applies it
  for t, p in enumerate(probs):
    if p >= 0.5 or run >= max_bytes:
      expected.append(t)
      run = 0
    run += 1
  assert starts == expected
  assert starts[0] == 0 and max(np.diff(starts + [len(probs)])) <= max_bytes
  ids_1T, ctx_1T = pooling.ids_from_starts(starts_1T, max_segments)
  data = b"x" * len(probs)
  ids, _ = segment.segment_ids(len(data), starts, max_segments)
  np.testing.assert_array_equal(ids_1T[0], ids)
  np.testing.assert_array_equal(ctx_1T[0], segment.context_ids(data, starts, max_segments))


def _reference_word_starts(data: bytes) -> list[int]:
  """The words segmenter written as the rule reads, one character at a time (the vectorised
  segment.word_starts must agree with it on any bytes)."""
  chars, i = [], 0
  while i < len(data):  # (offset, character or None for a byte that is not valid UTF-8)
    for width in (1, 2, 3, 4):
      try:
        ch = data[i:i + width].decode("utf-8")
      except UnicodeDecodeError:
        continue
      if len(ch) == 1:
        chars.append((i, ch))
        i += width
        break
    else:
      chars.append((i, None))
      i += 1

  def kind(ch):
    if ch is None:
      return "alone"
    if ch.isspace():
      return "space"
    import unicodedata
    if unicodedata.category(ch)[0] in "LM" and unicodedata.name(ch, "").startswith(
        segment._NO_SPACE_SCRIPTS):
      return "alone"
    return "word"

  starts, space_start, previous = [], None, None
  for offset, ch in chars:
    k = kind(ch)
    if k == "space":
      space_start = offset if space_start is None else space_start
      previous = None
      continue
    if space_start is not None:
      starts.append(space_start)
      space_start = None
    elif not (k == "word" and previous == "word"):
      starts.append(offset)
    previous = k
  if space_start is not None:
    starts.append(space_start)
  return starts


_PIECES = [b" ", b"\t\n", b"\xc2\xa0", b"a", b"Z9", b"'", b",", b"\xc3\xa9", b"\xe6\x97\xa5",
           b"\xe3\x81\x82", b"\xe0\xb8\x81", b"\xf0\x9f\x98\x80", b"\xff", b"\xe6\x97", b"\x80",
           b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xcc\x81", b"\x00"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.binary(max_size=12))
def test_vectorised_word_starts_match_the_rule_character_by_character(parts, noise):
  data = b"".join(parts) + noise
  assert segment.word_starts(data) == _reference_word_starts(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_PIECES[:7] + [b"ab", b"word ", b"\xff", b"zzzzzzzzz"]),
                         min_size=1, max_size=30), min_size=1, max_size=6),
       st.sampled_from([3, 8, 64]), st.sampled_from([4, 6, 16]), st.integers(0, 5))
def test_segments_of_a_batch_are_those_of_each_row(rows, max_segments, max_segment_bytes, cut):
  """Segmenter.rows and row_ids (ASCII rows together, the others one by one) give each row
  what the row-at-a-time segment_ids and context_ids give, padding included."""
  T = 24
  data = [b"".join(r)[:T] for r in rows]
  data[0] = data[0][: max(len(data[0]) - cut, 1)]  # a padded row
  bytes_BT = np.zeros((len(data), T), np.uint8)
  for r, d in enumerate(data):
    bytes_BT[r, : len(d)] = np.frombuffer(d, np.uint8)
  lengths_B = np.asarray([len(d) for d in data])
  segmenter = segment.Segmenter("words", max_segment_bytes)
  ids, ctx = segment.row_ids(bytes_BT, lengths_B, segmenter.rows(bytes_BT, lengths_B),
                             max_segments)
  for r, d in enumerate(data):
    starts = segmenter(d)
    want_ids, _ = segment.segment_ids(len(d), starts, max_segments, T)
    np.testing.assert_array_equal(ids[r], want_ids)
    np.testing.assert_array_equal(ctx[r], segment.context_ids(d, starts, max_segments, T))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=0, max_size=20),
                          st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass"))),
                min_size=1, max_size=5))
def test_word_starts_of_rows_decode_utf8_as_python_does(rows):
  """The batch decoder (any bytes: truncated, overlong, surrogate, out-of-range sequences) gives
  each row the starts of the rule written character by character, with Python's decoder."""
  T = 24
  data = [r[:T] for r in rows]
  bytes_BT = np.zeros((len(data), T), np.uint8)
  for r, d in enumerate(data):
    bytes_BT[r, : len(d)] = np.frombuffer(d, np.uint8)
  starts_BT = segment._word_starts_rows(bytes_BT, np.asarray([len(d) for d in data]))
  for r, d in enumerate(data):
    assert np.flatnonzero(starts_BT[r]).tolist() == _reference_word_starts(d)
