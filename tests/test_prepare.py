"""Prepared byte streams (bytelm.data.prepare, bytelm.data.stream): the same batches as the
stream in memory, raw bytes with their document boundaries, the cache and its checks, mixtures,
and `hf:` read with `datasets` streaming from a local dataset directory."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from bytelm.data import pipeline, prepare, sources
from bytelm.data.stream import ByteStream, document_order
from bytelm.text.tokenizer import EOS_ID, OFFSET

WORDS = ["byte", "model", "řeč", "việt", "gate", "naïve", "encoder", "the", "of", "日本語"]


def _write_docs(folder: pathlib.Path, n: int, seed: int = 0, words: int = 40) -> list[str]:
  rng = np.random.default_rng(seed)
  docs = [" ".join(rng.choice(WORDS, size=words)) + "." for _ in range(n)]
  folder.mkdir(parents=True, exist_ok=True)
  for i, doc in enumerate(docs):
    (folder / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
  return docs


def _batches(src: pipeline.BatchSource, steps=range(3)) -> list[dict]:
  return [src.batch(s) for s in steps] + list(src.eval_batches())


def _same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("settings", [
    dict(objective="span_corruption", input_length=64),
    dict(objective="causal_lm", input_length=48, segments={"kind": "words", "max_segments": 16}),
    dict(objective="correction", input_length=40, correction_task="typos"),
])
def test_prepared_stream_gives_the_in_memory_batches(tmp_path, settings):
  """Per-split folders ({split}), prepared in shards far smaller than a window (every read
  crosses shards), give the batches of the same documents held in memory."""
  texts = {split: _write_docs(tmp_path / "src" / split, 30, seed=i)
           for i, split in enumerate(prepare.SPLITS)}
  spec = f"file:{tmp_path}/src/{{split}}/*.txt"
  manifest = prepare.prepare(spec, tmp_path / "out", shard_bytes=97, progress=False)
  assert manifest["kind"] == "text" and manifest["split_rule"] == "the source's own"
  for split in prepare.SPLITS:
    info = manifest["splits"][split]
    assert info["documents"] == 30 and len(info["shards"]) > 10
    assert info["bytes"] == sum(len(t.encode()) for t in texts[split])
    kw = dict(batch_size=4, seed=3, **settings)
    on_disk = pipeline.BatchSource(ByteStream.open(tmp_path / "out", split), **kw)
    in_memory = pipeline.BatchSource(texts[split], **kw)
    assert on_disk.eval_bytes == in_memory.eval_bytes
    _same(_batches(on_disk), _batches(in_memory))


def test_bpe_token_stream_is_prepared_once_beside_the_bytes(tmp_path):
  from bytelm.data import bpe
  texts = _write_docs(tmp_path / "src" / "train", 40)
  _write_docs(tmp_path / "src" / "validation", 5, seed=1)
  prepare.prepare(f"file:{tmp_path}/src/{{split}}/*.txt", tmp_path / "out", progress=False)
  tok = bpe.train(texts, 300)
  kw = dict(objective="causal_lm", batch_size=2, input_length=16, tokenizer=tok)
  first = pipeline.BatchSource(ByteStream.open(tmp_path / "out", "train"), **kw)
  assert len(list((tmp_path / "out").glob("train-tokens-*"))) == 1  # written once ...
  again = pipeline.BatchSource(ByteStream.open(tmp_path / "out", "train"), **kw)
  in_memory = pipeline.BatchSource(texts, **kw)
  _same(_batches(first), _batches(in_memory))
  _same(_batches(again), _batches(in_memory))  # ... and read back


def test_a_source_without_splits_holds_its_tail_out(tmp_path):
  """One big file (as enwik8 is): the validation split is the last 1% of the shuffled stream
  (at least 64 KiB, at most a tenth), cut between characters; train + validation = the source."""
  text = " ".join(np.random.default_rng(0).choice(WORDS, size=120_000))  # ~740 KB, 1 document
  (tmp_path / "big.txt").write_text(text, encoding="utf-8")
  manifest = prepare.prepare(f"file:{tmp_path}/big.txt", tmp_path / "out", progress=False)
  train, val = (ByteStream.open(tmp_path / "out", s) for s in prepare.SPLITS)
  assert (1 << 16) - 4 < len(val) <= 1 << 16  # the cut moved on to a character's start
  joined = b"".join(train.documents()) + b"".join(val.documents())
  assert joined == text.encode()
  b"".join(val.documents()).decode("utf-8")  # whole characters
  assert manifest["splits"]["validation"]["documents"] == 1


def test_raw_bytes_keep_every_value_and_their_document_boundaries(tmp_path):
  """A bytes: source holding every byte value (0xFF too): ids are byte + 3 everywhere, the eos
  id stands exactly at the documents' boundaries (kept out of band), reads across shards."""
  rng = np.random.default_rng(1)
  docs = [bytes(range(256)) + rng.integers(0, 256, 300 + 50 * i, dtype=np.uint8).tobytes()
          for i in range(8)]
  for split in prepare.SPLITS:
    (tmp_path / split).mkdir()
    for i, doc in enumerate(docs):
      (tmp_path / split / f"{i}.bin").write_bytes(doc)
  manifest = prepare.prepare(f"bytes:{tmp_path}/{{split}}/*.bin", tmp_path / "out",
                             shard_bytes=1000, progress=False)
  assert manifest["kind"] == "bytes"
  stream = ByteStream.open(tmp_path / "out", "train")
  order = document_order(len(docs))
  assert list(stream.documents()) == [docs[j] for j in order]
  expect = np.concatenate([np.concatenate([[EOS_ID] if k else [], np.frombuffer(
      docs[j], np.uint8).astype(np.int32) + OFFSET]) for k, j in enumerate(order)])
  assert len(stream) == len(expect)
  for start in (0, 255, 999, 1000, len(expect) - 700):
    np.testing.assert_array_equal(stream.ids(start, 700), expect[start: start + 700])
  assert stream.count_eos(0, len(stream)) == len(docs) - 1
  src = pipeline.BatchSource(stream, objective="causal_lm", batch_size=4, input_length=64)
  seen = np.concatenate([b["targets"].ravel() for b in _batches(src, range(20))])
  assert seen.max() == 0xFF + OFFSET and (seen == 0x00 + OFFSET).any()
  with pytest.raises(ValueError, match="raw bytes"):
    pipeline.BatchSource(stream, objective="correction", batch_size=2, input_length=32).batch(0)
  with pytest.raises(ValueError, match="raw bytes, not text: a BPE tokenizer"):
    from bytelm.data import bpe
    pipeline.BatchSource(stream, objective="causal_lm", batch_size=2, input_length=32,
                         tokenizer=bpe.train(["some text"] * 50, 260))


def test_files_of_no_text_type_are_raw_bytes(tmp_path):
  (tmp_path / "enwik").write_bytes(b"<page>\xff\x00 text</page>" * 5000)
  assert sources.is_raw(f"file:{tmp_path}/enwik")
  manifest = prepare.prepare(f"{tmp_path}/enwik", tmp_path / "out", progress=False)
  assert manifest["kind"] == "bytes"
  assert manifest["splits"]["train"]["bytes"] + manifest["splits"]["validation"]["bytes"] \
      == 5000 * 20


def test_invalid_utf8_error_replace_or_raw(tmp_path):
  (tmp_path / "cp1252.txt").write_bytes("“Smart” quotes, naïve café. ".encode("cp1252") * 3000)
  spec = f"file:{tmp_path}/cp1252.txt"
  with pytest.raises(ValueError, match=r"cp1252.txt: not valid UTF-8 at byte offset 0.*"
                                       r"data.invalid_utf8=replace"):
    prepare.prepare(spec, tmp_path / "error", progress=False)
  replaced = prepare.prepare(spec, tmp_path / "replace", invalid_utf8="replace", progress=False)
  assert replaced["kind"] == "text"
  text = b"".join(ByteStream.open(tmp_path / "replace", "train").documents()).decode("utf-8")
  assert "\ufffdSmart\ufffd quotes" in text
  raw = prepare.prepare(spec, tmp_path / "raw", invalid_utf8="raw", progress=False)
  assert raw["kind"] == "bytes"
  assert b"".join(ByteStream.open(tmp_path / "raw", "train").documents()).startswith(
      "“Smart”".encode("cp1252"))


def test_the_cache_is_reused_refreshed_and_checked(tmp_path, monkeypatch):
  monkeypatch.setenv("BYTELM_CACHE", str(tmp_path / "cache"))
  _write_docs(tmp_path / "src", 20)
  spec = f"file:{tmp_path}/src/*.txt"
  entry = prepare.cached(spec, progress=False)
  assert entry.parent == tmp_path / "cache" / "streams"
  before = json.loads((entry / "manifest.json").read_text())
  written = (entry / "manifest.json").stat().st_mtime_ns
  assert prepare.cached(spec, progress=False) == entry  # reused: same key, nothing rewritten
  assert (entry / "manifest.json").stat().st_mtime_ns == written
  # A changed source (one more document) is prepared again, in place of the old stream.
  (tmp_path / "src" / "new.txt").write_text("one more document", encoding="utf-8")
  assert prepare.cached(spec, progress=False) == entry
  after = json.loads((entry / "manifest.json").read_text())
  assert after["sha256"] != before["sha256"] and after["key"] != before["key"]
  assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no leftovers
  # A truncated shard or a corrupt manifest: a clear error naming the fix.
  shard = entry / after["splits"]["train"]["shards"][0]["file"]
  shard.write_bytes(shard.read_bytes()[:-5])
  with pytest.raises(ValueError, match=r"truncated or damaged; prepare it again"):
    ByteStream.open(entry, "train")
  (entry / "manifest.json").write_text("{not json", encoding="utf-8")
  with pytest.raises(ValueError, match=r"manifest.json is corrupt"):
    ByteStream.open(entry, "train")
  assert prepare.cached(spec, progress=False) == entry  # a corrupt entry is prepared again
  ByteStream.open(entry, "train")


def test_prepare_refuses_a_folder_that_holds_files(tmp_path, capsys):
  _write_docs(tmp_path / "src", 3)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "mine.txt").write_text("keep me")
  with pytest.raises(SystemExit) as e:
    prepare.main([f"file:{tmp_path}/src/*.txt", str(tmp_path / "out"), "--force"])
  assert e.value.code == 2
  assert "already holds files" in capsys.readouterr().err
  assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"
  assert prepare.main([f"file:{tmp_path}/src/*.txt", str(tmp_path / "new")]) == 0
  assert prepare.main([f"file:{tmp_path}/src/*.txt", str(tmp_path / "new"), "--force"]) == 0
  assert "train: " in capsys.readouterr().out


def test_a_mixture_draws_sources_by_weight(tmp_path):
  a = ByteStream.from_array(*pipeline.build_stream(["a" * 5000]), name="a")
  b = ByteStream.from_array(*pipeline.build_stream(["b" * 5000]), name="b")
  src = pipeline.BatchSource([(a, 0.3), (b, 0.7)], objective="causal_lm", batch_size=16,
                             input_length=32, seed=5)
  assert src.sources == ["a", "b"]
  rows = np.concatenate([src.row_sources(s) for s in range(1000)])
  shares = np.bincount(rows, minlength=2) / len(rows)
  np.testing.assert_allclose(shares, [0.3, 0.7], atol=0.02)
  # Each row holds the bytes of the source it was drawn from.
  batch = src.batch(7)
  letters = np.where(src.row_sources(7) == 0, ord("a"), ord("b")) + OFFSET
  assert np.all(batch["inputs"] == letters[:, None])
  assert sources.parse_mixture("embedded:en@0.3,file:web/*.txt@0.7") == [
      ("embedded:en", 0.3), ("file:web/*.txt", 0.7)]
  assert sources.parse_mixture("file:notes, draft.txt") == [("file:notes, draft.txt", 1.0)]
  with pytest.raises(ValueError, match="has no weight"):
    sources.parse_mixture("embedded:en@0.3,file:web/*.txt")


def test_hf_source_streams_from_a_local_dataset_directory(tmp_path):
  """`hf:` with a local dataset directory (no network): read with datasets streaming, its own
  splits kept."""
  folder = tmp_path / "ds"
  folder.mkdir()
  texts = {}
  for i, split in enumerate(prepare.SPLITS):
    texts[split] = [f"{split} document {j} " + " ".join(WORDS) for j in range(12)]
    with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
      for t in texts[split]:
        f.write(json.dumps({"text": t, "id": 1}, ensure_ascii=False) + "\n")
  manifest = prepare.prepare(f"hf:{folder}", tmp_path / "out", progress=False)
  assert manifest["split_rule"] == "the source's own"
  for split in prepare.SPLITS:
    got = sorted(d.decode() for d in ByteStream.open(tmp_path / "out", split).documents())
    assert got == sorted(texts[split])


def test_a_byte_model_trains_on_raw_bytes_mixed_with_text_and_refuses_changed_data(tmp_path,
                                                                                monkeypatch):
  """train.py's path: a mixture of a bytes: source (every byte value) and a text file,
  prepared into the cache on first use; each source's bytes are logged; a resumed run whose
  data changed is refused, naming the data streams."""
  from bytelm.runs import workdir as workdir_lib
  from bytelm.training import config_file, trainer
  monkeypatch.setenv("BYTELM_CACHE", str(tmp_path / "cache"))
  (tmp_path / "raw").mkdir()
  rng = np.random.default_rng(0)
  for i in range(4):
    (tmp_path / "raw" / f"{i}.bin").write_bytes(
        bytes(range(256)) + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
  _write_docs(tmp_path / "text", 1, words=4000)
  config = config_file.load(pathlib.Path(__file__).parents[1] / "configs" / "bytes_decoder.py",
                            "tiny")
  config.data.train = f"bytes:{tmp_path}/raw/*.bin@1,file:{tmp_path}/text/000.txt@3"
  config.train.update(steps=2, log_every=1, eval_every=2, batch_size=4)
  config.ckpt.every = 2
  summary = trainer.train_and_evaluate(config, tmp_path / "run")
  assert summary.steps == 2 and np.isfinite(summary.val_bpb)
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  logged = [{k: v for k, v in r.items() if k.startswith("source_bytes/")} for r in rows
            if "loss" in r]
  assert logged[0].keys() == {f"source_bytes/bytes:{tmp_path}/raw/*.bin",
                              f"source_bytes/file:{tmp_path}/text/000.txt"}
  assert sum(sum(r.values()) for r in logged) == 2 * 4 * config.data.input_length  # each row once
  # The same run on changed data: refused before a step is taken.
  (tmp_path / "raw" / "0.bin").write_bytes(b"changed")
  # A finished run rerun restores its last checkpoint, checking its data first.
  with pytest.raises(workdir_lib.ConfigMismatch, match="trained on other data.*Restore them"):
    trainer.train_and_evaluate(config, tmp_path / "run")


def test_hf_dataset_without_a_validation_split_holds_one_out(tmp_path):
  folder = tmp_path / "ds"
  folder.mkdir()
  for split in ("train", "test"):
    with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
      for j in range(30):
        f.write(json.dumps({"text": f"{split} {j} " + " ".join(WORDS) * 40}) + "\n")
  manifest = prepare.prepare(f"hf:{folder}", tmp_path / "out", progress=False)
  assert manifest["split_rule"] != "the source's own"
  docs = [d.decode() for s in prepare.SPLITS
          for d in ByteStream.open(tmp_path / "out", s).documents()]
  assert not any("test" in d for d in docs)  # the test split is not read
  assert sum(len(d) for d in docs) == 30 * len("train 10 " + " ".join(WORDS) * 40) - 10
  held, kept = (manifest["splits"][s]["bytes"] for s in ("validation", "train"))
  assert 0 < held <= (held + kept) // 10 + 4  # a small source: at most a tenth held out


def test_raw_folders_prepared_folders_and_a_failed_prepare(tmp_path, capsys):
  """bytes: of a folder reads every file in it; `prepared:FOLDER` reads what bytelm-prepare
  wrote; a preparation that fails leaves nothing, and --force replaces only its own files."""
  (tmp_path / "bin").mkdir()
  for name in ("a.png", "b", "c.dat"):
    (tmp_path / "bin" / name).write_bytes(bytes(range(256)) * 40)
  assert prepare.main([f"bytes:{tmp_path}/bin", str(tmp_path / "out")]) == 0
  stream = prepare.open_split(f"prepared:{tmp_path}/out", "train")
  held = prepare.open_split(f"prepared:{tmp_path}/out", "validation")
  assert stream.kind == "bytes" and stream.num_documents + held.num_documents >= 3
  assert len(stream) + len(held) >= 3 * 256 * 40
  (tmp_path / "bad.txt").write_bytes(b"\x93quoted\x94 " * 100)
  with pytest.raises(SystemExit):
    prepare.main([f"file:{tmp_path}/bad.txt", str(tmp_path / "failed")])
  assert not (tmp_path / "failed").exists()  # nothing left behind
  assert "not valid UTF-8" in capsys.readouterr().err
  assert prepare.main([f"bytes:{tmp_path}/bin", str(tmp_path / "out"), "--force"]) == 0


def test_separate_validation_data_is_read_whole_and_mixtures_fit_an_entropy_model(tmp_path):
  """data.validation naming another source without splits evaluates on all of it (not its
  held-out tail); an entropy model fits on a mixture's sources."""
  _write_docs(tmp_path / "train", 30)
  _write_docs(tmp_path / "val", 30, seed=1)
  whole = pipeline.make_source(f"file:{tmp_path}/val/*.txt", "validation", whole=True,
                               objective="causal_lm", batch_size=2, input_length=32)
  held = pipeline.make_source(f"file:{tmp_path}/val/*.txt", "validation",
                              objective="causal_lm", batch_size=2, input_length=32)
  size = sum(len(p.read_bytes()) for p in (tmp_path / "val").iterdir())
  assert whole.eval_bytes > 0.9 * size > 5 * held.eval_bytes  # a tenth held out of 7 KB
  path = pipeline.fit_entropy_model(
      f"file:{tmp_path}/train/*.txt@0.5,file:{tmp_path}/val/*.txt@0.5", tmp_path / "ent.npz")
  from bytelm.text import segment
  assert segment.EntropyModel.load(path).threshold > 0
