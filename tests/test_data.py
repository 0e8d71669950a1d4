"""Tests for bytelm.data: sources, span corruption, and (seed, step)-pure batches."""

import gzip
import json
import lzma

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bytelm.data import objectives, pipeline, sources
from bytelm.data import (BatchSource, causal_lm, load_text, make_source, random_spans_noise_mask,
                         span_corruption, span_corruption_from_mask, span_corruption_lengths)
from bytelm.text.tokenizer import EOS_ID, OFFSET, ByteTokenizer, sentinel_id

tok = ByteTokenizer()


def reconstruct(inputs, targets):
  """Original ids from span-corruption (inputs, targets): each sentinel -> its target span."""
  inputs, targets = list(inputs), list(targets)
  assert inputs[-1] == EOS_ID and targets[-1] == EOS_ID
  spans, k = {}, -1
  for t in targets[:-1]:
    if t == sentinel_id(k + 1):
      k += 1
      spans[t] = []
    else:
      spans[sentinel_id(k)].append(t)
  out = []
  for x in inputs[:-1]:
    out.extend(spans.pop(x) if x in spans else [x])
  assert not spans, "every sentinel in the targets appears in the inputs"
  return out


def text_docs(n=40, seed=0):
  rng = np.random.default_rng(seed)
  words = ["byte", "niño", "über", "naïve", "日本語", "emoji🙂", "the", "a", "model"]
  return [" ".join(rng.choice(words, size=int(rng.integers(5, 80)))) for _ in range(n)]


def write_xz_jsonl(path, texts):
  with lzma.open(path, "wt", encoding="utf-8") as f:
    for t in texts:
      f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


@pytest.fixture
def corpus(tmp_path, monkeypatch):
  """A tiny corpus in the embedded format, with `sources.CORPUS_DIR` pointed at it."""
  root = tmp_path / "corpus"
  root.mkdir()
  docs = {"bible_en": ["In the beginning", "was the word"], "python_docs": ["import this"],
          "bible_es": ["En el principio", "era el verbo"]}
  for name, texts in docs.items():
    write_xz_jsonl(root / f"{name}.train.jsonl.xz", texts)
    write_xz_jsonl(root / f"{name}.validation.jsonl.xz", [t.upper() for t in texts])
  manifest = {"groups": {"en": ["bible_en", "python_docs"], "es": ["bible_es"],
                         "multilingual": sorted(docs)},
              "sources": {name: {"license": "test"} for name in docs}}
  (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
  monkeypatch.setattr(sources, "CORPUS_DIR", root)
  return root


# ---- span corruption lengths -------------------------------------------------------------------

def test_byt5_lengths():
  assert span_corruption_lengths(1024) == (1193, 189), (
      "ByT5 pretraining (inputs 1024, targets 189, density 0.15, mean span 20) needs 1193 raw "
      "bytes, as T5's compute_input_and_target_lengths gives; a change breaks ByT5 parity")


@pytest.mark.parametrize("density,mean_span,input_length", [
    *[(0.15, 20.0, n) for n in [*range(3, 120), 512, 1024, 2048]],
    *[(0.15, 3.0, n) for n in [*range(3, 120), 512, 1024]],
    *[(0.5, 1.0, n) for n in range(3, 120)],  # longer ones need more than 256 sentinels
])
def test_lengths_are_exact_and_maximal(input_length, density, mean_span):
  raw, target_length = span_corruption_lengths(input_length, density, mean_span)
  rng = np.random.default_rng(input_length)
  ids = rng.integers(3, 248, size=raw)
  inputs, targets = span_corruption(ids, rng, density, mean_span)
  assert len(targets) == target_length and len(inputs) <= input_length
  if density == 0.15:  # exact for practical settings; 0.5/1.0 can be one short at tiny lengths
    assert len(inputs) == input_length
  longer, _ = span_corruption(rng.integers(3, 248, size=raw + 1), rng, density, mean_span)
  assert len(longer) > input_length, "raw_length is the largest length that fits"


def test_lengths_reject_bad_arguments():
  with pytest.raises(ValueError, match="input_length must be >= 3"):
    span_corruption_lengths(2)
  with pytest.raises(ValueError, match="noise_density"):
    span_corruption_lengths(1024, noise_density=1.5)


# ---- noise mask and span corruption ------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(length=st.integers(2, 3000), seed=st.integers(0, 2**32 - 1),
       density=st.sampled_from([0.05, 0.15, 0.3, 0.5]), mean_span=st.sampled_from([1.0, 3.0, 20.0]))
def test_noise_mask_counts(length, seed, density, mean_span):
  mask = random_spans_noise_mask(length, density, mean_span, np.random.default_rng(seed))
  num_noise, num_spans = objectives._noise_counts(length, density, mean_span)
  assert mask.shape == (length,) and mask.dtype == bool
  assert mask.sum() == num_noise == min(max(round(length * density), 1), length - 1)
  starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
  assert len(starts) == num_spans >= 1
  assert not mask[0] and mask[-1], "spans alternate starting with non-noise, as in T5"


@settings(max_examples=100, deadline=None)
@given(length=st.integers(2, 2500), seed=st.integers(0, 2**32 - 1))
def test_span_corruption_reconstructs(length, seed):
  rng = np.random.default_rng(seed)
  # Sentinels reach down to 258 - 19 here; real text keeps clear of them up to 11 spans.
  ids = rng.integers(3, 239, size=length)
  inputs, targets = span_corruption(ids, rng)
  assert inputs.dtype == targets.dtype == np.int32
  assert reconstruct(inputs, targets) == ids.tolist()


def test_sentinels_count_down_from_258():
  ids = np.arange(3, 23)
  mask = np.zeros(20, bool)
  mask[[2, 3, 7, 8, 9, 15]] = True
  inputs, targets = span_corruption_from_mask(ids, mask)
  assert inputs.tolist() == [3, 4, 258, 7, 8, 9, 257, 13, 14, 15, 16, 17, 256, 19, 20, 21, 22, 1]
  assert targets.tolist() == [258, 5, 6, 257, 10, 11, 12, 256, 18, 1]
  assert [sentinel_id(i) for i in range(3)] == [258, 257, 256]


def test_span_corruption_is_deterministic():
  ids = np.arange(1193) % 200 + 3
  a = span_corruption(ids, np.random.default_rng(7))
  b = span_corruption(ids, np.random.default_rng(7))
  c = span_corruption(ids, np.random.default_rng(8))
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[1], c[1])
  assert (len(a[0]), len(a[1])) == (1024, 189)


def test_causal_lm():
  inputs, targets = causal_lm(np.array([5, 6, 7, 1]))
  assert inputs.tolist() == [5, 6, 7] and targets.tolist() == [6, 7, 1]
  with pytest.raises(ValueError, match="at least 2"):
    causal_lm([5])


# ---- sources -----------------------------------------------------------------------------------

def test_embedded_groups_and_names(corpus):
  en = load_text("embedded:en", "train")
  assert isinstance(en, datasets.Dataset) and en.column_names == ["text"]
  assert en["text"] == ["In the beginning", "was the word", "import this"]
  assert load_text("embedded:bible_es", "validation")["text"] == ["EN EL PRINCIPIO",
                                                                  "ERA EL VERBO"]
  assert len(load_text("embedded:multilingual")) == 5


def test_embedded_without_groups_uses_file_names(corpus):
  (corpus / "manifest.json").write_text(json.dumps({"sources": {}}), encoding="utf-8")
  assert load_text("embedded:python_docs")["text"] == ["import this"]
  (corpus / "manifest.json").unlink()
  assert load_text("embedded:bible_es")["text"] == ["En el principio", "era el verbo"]
  with pytest.raises(ValueError, match="available: bible_en, bible_es, python_docs"):
    load_text("embedded:en")


def test_embedded_errors(corpus):
  with pytest.raises(ValueError, match=r"unknown embedded corpus name 'fr'.*available: .*en"):
    load_text("embedded:fr")
  with pytest.raises(ValueError, match="unknown split 'test'.*train, validation"):
    load_text("embedded:en", "test")
  (corpus / "python_docs.validation.jsonl.xz").unlink()
  with pytest.raises(FileNotFoundError, match="python_docs.validation.jsonl.xz is missing"):
    load_text("embedded:en", "validation")


def test_local_files(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "validation").mkdir()
  (tmp_path / "train" / "a.txt").write_text("first doc\nline two", encoding="utf-8")
  (tmp_path / "train" / "b.md").write_text("# second", encoding="utf-8")
  (tmp_path / "validation" / "c.jsonl").write_text(
      '{"text": "x\u2028y\x85z"}\r\n\n{"text": "ü", "id": 3}\n', encoding="utf-8")
  with gzip.open(tmp_path / "validation" / "d.jsonl.gz", "wt", encoding="utf-8") as f:
    f.write('{"text": "gz"}\n')
  assert load_text(f"file:{tmp_path}/train/*")["text"] == ["first doc\nline two", "# second"]
  assert load_text(f"{tmp_path}/train/*.txt", "validation")["text"] == ["first doc\nline two"]
  per_split = load_text(f"file:{tmp_path}/{{split}}/*", "validation")["text"]
  assert per_split == ["x\u2028y\x85z", "ü", "gz"]
  assert len(load_text(str(tmp_path))) == 5  # a directory: every supported file under it
  (tmp_path / "list.json").write_text(json.dumps([{"text": "p"}, "q"]), encoding="utf-8")
  assert load_text(str(tmp_path / "list.json"))["text"] == ["p", "q"]


def test_source_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="no files match"):
    load_text(f"file:{tmp_path}/nothing/*.txt")
  (tmp_path / "empty.txt").write_text("", encoding="utf-8")
  with pytest.raises(ValueError, match="all 1 documents are empty"):
    load_text(str(tmp_path / "empty.txt"))
  (tmp_path / "none.jsonl").write_text("\n", encoding="utf-8")
  with pytest.raises(ValueError, match="holds no documents"):
    load_text(str(tmp_path / "none.jsonl"))
  (tmp_path / "latin1.txt").write_bytes("año".encode("utf-8") + "año".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1.txt: not valid UTF-8 at byte offset 5 .*"
                                       r"convert it to UTF-8"):
    load_text(str(tmp_path / "latin1.txt"))
  # Windows-1252's curly quotes (0x93, 0x94) are C1 controls in Latin-1: the advice says cp1252.
  (tmp_path / "quotes.txt").write_bytes("“año”".encode("cp1252"))
  with pytest.raises(ValueError, match=r"`iconv -f cp1252 -t utf-8 quotes.txt > fixed.txt`"):
    load_text(str(tmp_path / "quotes.txt"))
  # 0x81 is no Windows-1252 character: Latin-1 then, which reads any byte.
  (tmp_path / "c1.txt.gz").write_bytes(gzip.compress(b"a\x81b"))
  with pytest.raises(ValueError, match=r"uncompressed byte offset 1 .*"
                                       r"`zcat c1.txt.gz \| iconv -f latin1 -t utf-8 > fixed.txt`"):
    load_text(str(tmp_path / "c1.txt.gz"))
  (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.jsonl line 1: .*\"text\" field"):
    load_text(str(tmp_path / "bad.jsonl"))
  (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
  with pytest.raises(ValueError, match="unsupported file type"):
    load_text(str(tmp_path / "x.csv"))
  with pytest.raises(ValueError, match="unknown text spec scheme 's3'"):
    load_text("s3://bucket/x.txt")

  def no_text_column(name, config, split):  # stands in for the network
    return datasets.Dataset.from_dict({"sentence": ["a"], "label": [0]})

  monkeypatch.setattr(datasets, "load_dataset", no_text_column)
  with pytest.raises(ValueError, match=r"no \"text\" column, only \['sentence', 'label'\]"):
    load_text("hf:some/dataset:cfg")


# ---- batches -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docs():
  return text_docs(60)


def test_batch_shapes_and_content(docs):
  src = BatchSource(docs, batch_size=4, input_length=64, seed=3)
  assert (src.raw_length, src.target_length) == span_corruption_lengths(64)
  b = src.batch(0)
  assert b["inputs"].shape == (4, 64) and b["targets"].shape == (4, src.target_length)
  assert b["inputs"].dtype == b["targets"].dtype == np.int32
  assert (b["inputs"][:, -1] == EOS_ID).all() and (b["targets"][:, -1] == EOS_ID).all()
  assert (b["inputs"] > 0).all(), "span corruption rows are exact: no padding"
  assert src.bytes_per_batch == 4 * src.raw_length
  assert src.state(17) == {"step": 17, "seed": 3}


def test_batch_is_a_pure_function_of_seed_and_step(docs):
  a = BatchSource(docs, batch_size=4, input_length=64, seed=1)
  b = BatchSource(docs, batch_size=4, input_length=64, seed=1)
  first = [a.batch(s) for s in (5, 2, 9)]
  again = [b.batch(s) for s in (9, 2, 5)][::-1]  # another order, as after a resume
  for x, y in zip(first, again):
    assert np.array_equal(x["inputs"], y["inputs"])
    assert np.array_equal(x["targets"], y["targets"])
  assert not np.array_equal(a.batch(5)["inputs"], a.batch(6)["inputs"])
  other = BatchSource(docs, batch_size=4, input_length=64, seed=2)
  assert not np.array_equal(a.batch(5)["inputs"], other.batch(5)["inputs"])


@pytest.mark.parametrize("objective", ["span_corruption", "causal_lm"])
def test_windows_start_anywhere_with_equal_chance(objective):
  src = BatchSource(["".join(chr(97 + i % 26) for i in range(90))], objective=objective,
                    batch_size=8, input_length=32, seed=6)
  (count,) = src._window_counts
  starts = np.concatenate([src._windows(s)[1] for s in range(400)])
  # Every start from 0 to the last whole window, each about as often (3,200 draws).
  assert set(starts.tolist()) == set(range(count))
  shares = np.bincount(starts, minlength=count) / len(starts)
  assert shares.max() < 2.5 / count and shares.min() > 0.3 / count
  # The rows of a batch are windows at those starts (letters a-z cycle: the first byte says
  # where it began, mod 26).
  if objective == "causal_lm":
    first = src.batch(3)["inputs"][:, 0]
    np.testing.assert_array_equal(first - OFFSET - 97, src._windows(3)[1] % 26)


@pytest.mark.parametrize("objective", ["span_corruption", "causal_lm"])
def test_process_slices_make_the_global_batch(docs, objective):
  kw = dict(objective=objective, batch_size=6, input_length=32, seed=4)
  whole = BatchSource(docs, **kw)
  parts = [BatchSource(docs, process_index=p, process_count=2, **kw) for p in range(2)]
  assert parts[0].local_batch_size == 3
  for key in ("inputs", "targets"):
    assert np.array_equal(np.concatenate([p.batch(11)[key] for p in parts]),
                          whole.batch(11)[key])
    for g, p0, p1 in zip(whole.eval_batches(3), parts[0].eval_batches(3),
                         parts[1].eval_batches(3)):
      assert np.array_equal(np.concatenate([p0[key], p1[key]]), g[key])


def test_eval_batches_cover_the_stream_once(docs):
  src = BatchSource(docs, batch_size=4, input_length=48, seed=0)
  first, second = list(src.eval_batches()), list(src.eval_batches())
  assert len(first) == src.eval_num_batches
  for x, y in zip(first, second):
    assert np.array_equal(x["inputs"], y["inputs"])
    assert np.array_equal(x["targets"], y["targets"])
  # The reconstructed windows, in order, are consecutive slices of the stream: no overlap.
  rows = [(i, t) for b in first for i, t in zip(b["inputs"], b["targets"]) if t.any()]
  assert len(rows) == src.eval_windows
  pad = [r for b in first for r, t in zip(b["inputs"], b["targets"]) if not t.any()]
  assert len(pad) == -src.eval_windows % 4 and all(not r.any() for r in pad)
  windows = np.concatenate([reconstruct(i, t) for i, t in rows])
  stream_ids = src._parts[0].ids(0, src.stream_length)
  assert np.array_equal(windows, stream_ids[: src.eval_windows * src.raw_length])
  assert src.eval_bytes == np.count_nonzero(windows != EOS_ID)
  # Independent of the training seed: every run evaluates the same bytes the same way.
  other = BatchSource(docs, batch_size=4, input_length=48, seed=99)
  assert np.array_equal(next(other.eval_batches())["targets"], first[0]["targets"])


def test_causal_lm_batches(docs):
  src = BatchSource(docs, objective="causal_lm", batch_size=2, input_length=40, seed=0)
  assert src.target_length == 40 and src.bytes_per_batch == 80
  b = src.batch(3)
  assert np.array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  rows = [r for e in src.eval_batches() for r in zip(e["inputs"], e["targets"]) if r[1].any()]
  ids = src._parts[0].ids(0, src.stream_length)
  n = len(rows) * 40
  assert np.array_equal(np.concatenate([r[0] for r in rows]), ids[:n])
  assert np.array_equal(np.concatenate([r[1] for r in rows]), ids[1: n + 1])
  with pytest.raises(ValueError, match="target_length 39 is inconsistent"):
    BatchSource(docs, objective="causal_lm", batch_size=2, input_length=40, target_length=39)


def test_stream_is_the_documents_joined_by_eos():
  texts = ["abc", "", "ñ", "日本"]
  stream, n = pipeline.build_stream(texts, shuffle_seed=None)
  assert n == 3
  ids = pipeline.stream_to_ids(stream)
  assert ids.tolist() == [*tok.encode("abc")[:-1], 1, *tok.encode("ñ")[:-1], 1,
                          *tok.encode("日本")[:-1]]
  shuffled, _ = pipeline.build_stream(texts, shuffle_seed=5)
  assert np.array_equal(shuffled, pipeline.build_stream(texts, shuffle_seed=5)[0])
  assert sorted(bytes(shuffled).split(b"\xff")) == sorted(bytes(stream).split(b"\xff"))


def test_batch_source_errors(docs):
  with pytest.raises(ValueError, match="dataset is too small: .* 11 bytes .* 1193 .* "
                                       "input_length 1024"):
    BatchSource(["hello world"], batch_size=1, input_length=1024)
  with pytest.raises(ValueError, match="batch_size 6 is not divisible by process_count 4"):
    BatchSource(docs, batch_size=6, input_length=32, process_count=4)
  with pytest.raises(ValueError, match="target_length 200 is inconsistent .* 1024: .* 189"):
    BatchSource(docs, batch_size=1, input_length=1024, target_length=200)
  with pytest.raises(ValueError, match="every document is empty"):
    BatchSource(["", ""], batch_size=1, input_length=8)
  with pytest.raises(ValueError, match="unknown objective"):
    BatchSource(docs, objective="mlm", batch_size=1, input_length=8)
  with pytest.raises(ValueError, match="step must be an int >= 0"):
    BatchSource(docs, batch_size=1, input_length=8).batch(-1)


def test_make_source_from_embedded(corpus):
  src = make_source("embedded:multilingual", "validation", objective="causal_lm",
                    batch_size=2, input_length=16, seed=0)
  batch = src.batch(0)
  assert batch["inputs"].shape == (2, 16)
  assert src.num_documents == 5


def test_real_embedded_corpus():
  """The corpus ships with the package: it must be there and readable."""
  manifest = json.loads((sources.CORPUS_DIR / "manifest.json").read_text(encoding="utf-8"))
  texts = load_text("embedded:en", "validation")["text"]
  assert len(texts) > 0 and all(isinstance(t, str) for t in texts)
  assert "\ufffd" not in "".join(texts), "replacement characters: a decoding error upstream"
  expected = [manifest["sources"][name]["splits"]["validation"]
              for name in manifest["groups"]["en"]]
  assert len(texts) == sum(e["documents"] for e in expected)
  assert sum(len(t.encode("utf-8")) for t in texts) == sum(e["text_bytes"] for e in expected)
