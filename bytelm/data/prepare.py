"""Prepared byte streams: a text or byte source written once to disk, read by any run.

    python -m bytelm.data.prepare SRC OUT      (or the `bytelm-prepare` console script)

writes, for each split, the stream the pipeline reads (bytelm.data.stream: documents in a fixed
shuffled order, joined by eos) as shard files of at most `shard_bytes`, and a manifest.json
with the source, its license where known, documents, bytes, languages where known and a
SHA-256 of each split. A corpus of any size is prepared in bounded memory: documents are read
one at a time (bytelm.data.sources.iter_documents; `hf:` through `datasets` streaming) into a
spool file, then copied from it in the shuffled order; only a document's length is kept per
document (8 bytes). The largest single document is held in memory once.

Splits. A source with splits of its own (the embedded corpus, `{split}` globs, a Hub dataset's
train and validation) keeps them. Any other source (a folder of text files, one big file such
as enwik8) has its last bytes held out for validation, after the shuffle: 1% of the stream, at
least 64 KiB but at most a tenth, cut at a character boundary. Both rules are deterministic: the
same source gives the same splits, byte for byte, on every machine.

train.py never needs this command: `open_split` prepares a `file:`, `bytes:` or `hf:` source on
first use into the cache (`cache_dir()`: $BYTELM_CACHE, else ~/.cache/bytelm), keyed by the
source's files' paths, sizes and modification times, and reuses it after; a changed source is
prepared again and its old stream removed. The embedded corpus is read into memory instead.
"""

from __future__ import annotations

import argparse
import array
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

import numpy as np

from bytelm import user_cache
from bytelm.data import sources
from bytelm.data.stream import (EOS_BYTE, FORMAT, MANIFEST, ByteStream, build_stream,
                                 document_order)

log = logging.getLogger(__name__)

SHARD_BYTES = 1 << 30  # a shard file's largest size
HOLDOUT_FRACTION, HOLDOUT_MIN = 0.01, 1 << 16  # a source without splits: its validation tail
SPLITS = ("train", "validation")


# ---- the cache ---------------------------------------------------------------------------------


def cache_dir() -> pathlib.Path:
  """Where train.py keeps prepared streams: $BYTELM_CACHE, else $XDG_CACHE_HOME/bytelm, else
  ~/.cache/bytelm (each source in a folder of its own under streams/; delete one to prepare
  it again, or all of them to free the space)."""
  return user_cache.root() / "streams"


def source_key(spec: str, invalid_utf8: str = "error") -> str:
  """What a prepared stream of spec depends on, hashed: the spec, how it reads text, this
  format and the source's files' paths, sizes and modification times (a Hub name: the name)."""
  files = sources.local_files(spec)
  stats = None if files is None else [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns)
                                      for p in files]
  blob = json.dumps({"format": FORMAT, "spec": spec, "invalid_utf8": invalid_utf8,
                     "holdout": [HOLDOUT_FRACTION, HOLDOUT_MIN], "files": stats})
  return hashlib.sha256(blob.encode()).hexdigest()


def cached(spec: str, invalid_utf8: str = "error", *, progress: bool = True) -> pathlib.Path:
  """The cache folder of spec's prepared stream, prepared first where it is missing or its
  source changed. Safe to call from several processes at once (each prepares into a folder
  of its own; the first to finish renames it into place)."""
  key = source_key(spec, invalid_utf8)
  scheme, rest = sources.parse(spec)
  where = (f"{scheme}:{os.path.abspath(os.path.expanduser(rest))}"  # file:notes.txt of
           if scheme in ("file", "bytes") else spec)  # two folders: two entries
  slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)[-60:]
  ident = hashlib.sha256(f"{where}\n{invalid_utf8}".encode()).hexdigest()[:10]
  entry = cache_dir() / f"{slug}-{ident}"
  if _manifest(entry).get("key") == key:
    return entry
  entry.parent.mkdir(parents=True, exist_ok=True)
  _sweep(entry)
  if entry.exists():
    log.info("the source %s changed since it was prepared: preparing it again", spec)
  else:
    log.info("preparing %s into %s (once; later runs reuse it)", spec, entry)
  work = pathlib.Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
  try:
    prepare(spec, work, invalid_utf8=invalid_utf8, progress=progress, key=key, exist_ok=True)
    if _manifest(entry).get("key") == key:  # another process got there first
      return entry
    old = None
    if entry.exists():  # the stale stream of a changed source: ours (the cache), replaced
      old = entry.with_name(entry.name + f".old-{os.getpid()}")
      try:
        os.replace(entry, old)
      except FileNotFoundError:  # another process moved it first
        old = None
    try:
      os.replace(work, entry)
    except OSError:  # another process renamed its copy into place in the meantime
      if _manifest(entry).get("key") != key:
        raise
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return entry


STALE_SECONDS = 24 * 3600  # a cache folder being written that long was left by a killed run


def _sweep(entry: pathlib.Path) -> None:
  """Remove what killed runs left beside entry: folders being prepared (`.tmp-`) untouched
  for STALE_SECONDS, and replaced streams (`.old-`) of any age. The cache's own files only."""
  now = time.time()
  for path in entry.parent.glob(entry.name + ".*-*"):
    kind = path.name[len(entry.name):].split("-", 1)[0]
    try:
      stale = kind == ".old" or (kind == ".tmp" and now - path.stat().st_mtime > STALE_SECONDS)
    except FileNotFoundError:
      continue
    if stale:
      shutil.rmtree(path, ignore_errors=True)


def _manifest(directory: pathlib.Path) -> dict:
  try:
    return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return {}


def open_split(spec: str, split: str, invalid_utf8: str = "error") -> ByteStream:
  """The stream of a split of spec: the embedded corpus read into memory, any other source
  from its prepared stream in the cache (prepared first where needed)."""
  scheme, rest = sources.parse(spec)
  if scheme == "embedded" and invalid_utf8 != "raw":
    stream, documents = build_stream(sources.load_text(spec, split))
    return ByteStream.from_array(stream, documents, name=spec)
  if scheme == "prepared":  # a folder bytelm-prepare wrote: read where it is
    return ByteStream.open(os.path.expanduser(rest), split)
  return ByteStream.open(cached(spec, invalid_utf8), split)


def open_whole(spec: str, invalid_utf8: str = "error") -> list[ByteStream]:
  """The streams that hold all of spec's held-out text, for a source named as another run's
  validation data: its validation split where it has splits of its own, else both of the
  splits prepare made (a file given as validation data is validation data whole)."""
  if set(SPLITS) <= set(sources.splits_of(spec)):
    return [open_split(spec, "validation", invalid_utf8)]
  return [open_split(spec, split, invalid_utf8) for split in SPLITS]


# ---- preparing ---------------------------------------------------------------------------------


def prepare(spec: str, out, *, invalid_utf8: str = "error", shard_bytes: int = SHARD_BYTES,
            progress: bool = True, key: str = "", exist_ok: bool = False) -> dict:
  """Write spec's prepared stream to the folder out (module docstring); returns the manifest.
  out must not hold anything (unless exist_ok): nothing a user made is overwritten."""
  out = pathlib.Path(out)
  if out.exists() and any(out.iterdir()) and not exist_ok:
    raise FileExistsError(f"{out} already holds files; give an empty or new folder (or "
                          "--force to replace a prepared stream there)")
  if shard_bytes < 1:
    raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
  made = not out.exists()
  try:
    return _prepare(spec, out, invalid_utf8, shard_bytes, progress, key)
  except BaseException:
    if made:  # a failed preparation leaves nothing behind
      shutil.rmtree(out, ignore_errors=True)
    elif not exist_ok:  # an empty folder given: emptied again
      for path in out.iterdir():
        path.unlink()
    raise


def _prepare(spec: str, out: pathlib.Path, invalid_utf8: str, shard_bytes: int,
             progress: bool, key: str) -> dict:
  raw = sources.is_raw(spec, invalid_utf8)
  available = sources.splits_of(spec)
  own = set(SPLITS) <= set(available)  # else (e.g. a Hub dataset of train and test only) the
  # validation split is held out of train (or of the whole source, where it has no splits)
  out.mkdir(parents=True, exist_ok=True)
  splits = {}
  with _Progress(progress, spec) as bar:
    if own:
      for split in SPLITS:
        spool = _spool(sources.iter_documents(spec, split, invalid_utf8), out, bar)
        with _Writers(out, [split], shard_bytes, raw) as writers:
          _write(spool, writers[split], None)
          splits.update(writers.close())
    else:
      documents = sources.iter_documents(spec, "train" if "train" in available else None,
                                         invalid_utf8)
      spool = _spool(documents, out, bar)
      with _Writers(out, SPLITS, shard_bytes, raw) as writers:
        _write(spool, writers["train"], writers["validation"], text=not raw)
        splits.update(writers.close())
  for split, info in splits.items():
    if not info["documents"]:
      raise ValueError(f"{spec}: its {split} split holds no text (every document is empty, or "
                       "there are none, or the source is too small to hold a part out); point "
                       "the spec at files with text, or give data.validation another source")
  manifest = {
      "format": FORMAT, "source": spec, "kind": "bytes" if raw else "text",
      "invalid_utf8": invalid_utf8, "key": key,
      "split_rule": ("the source's own" if own else
                     f"the last {HOLDOUT_FRACTION:.0%} of the shuffled stream (at least "
                     f"{HOLDOUT_MIN} bytes, at most a tenth) is the validation split"),
      **_provenance(spec), "splits": splits,
      "sha256": hashlib.sha256("".join(splits[s]["sha256"] for s in SPLITS).encode()
                               ).hexdigest()}
  tmp = out / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
  os.replace(tmp, out / MANIFEST)  # last: a folder without a manifest is unfinished
  return manifest


class _Spool:
  """Documents written one after another to a scratch file, with their lengths."""

  def __init__(self, path: pathlib.Path):
    self.path, self.lengths = path, array.array("q")


def _spool(documents, out: pathlib.Path, bar) -> _Spool:
  spool = _Spool(out / f"spool-{len(list(out.glob('spool-*')))}.tmp")
  with open(spool.path, "wb") as f:
    for doc in documents:
      if doc:  # empty documents are skipped, as in memory (pipeline.build_stream)
        f.write(doc)
        spool.lengths.append(len(doc))
        bar.update(len(doc))
  return spool


def _write(spool: _Spool, train, validation, text: bool = True) -> None:
  """Copy the spool's documents in the shuffled order to train; with a validation writer, the
  stream's tail goes there instead (module docstring)."""
  lengths = np.frombuffer(spool.lengths, np.int64) if len(spool.lengths) else np.zeros(0, int)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  order = document_order(len(lengths))
  positions = int(lengths.sum()) + max(len(lengths) - 1, 0)
  held = max(int(positions * HOLDOUT_FRACTION), min(HOLDOUT_MIN, positions // 10), 1)
  cut = positions - held if validation is not None else positions + 1
  pos = 0
  with open(spool.path, "rb") as f:
    for j in order:
      f.seek(int(offsets[j]))
      doc = f.read(int(lengths[j]))
      if pos + len(doc) <= cut:
        train.add(doc)
      elif pos >= cut:
        validation.add(doc)
      else:  # the document the cut falls in: its head trains, its tail is held out
        c = cut - pos
        while text and c < len(doc) and 0x80 <= doc[c] < 0xC0:
          c += 1  # not inside a character
        for writer, piece in ((train, doc[:c]), (validation, doc[c:])):
          if piece:
            writer.add(piece)
      pos += len(doc) + 1
  spool.path.unlink()


class _Writer:
  """One split's shards, its eos boundaries (raw bytes) and its hash, written as documents
  come."""

  def __init__(self, out: pathlib.Path, split: str, shard_bytes: int, raw: bool):
    self.out, self.split, self.shard_bytes, self.raw = out, split, shard_bytes, raw
    self.shards, self.boundaries = [], array.array("q")
    self.documents = self.bytes = self.positions = 0
    self._file, self._hash = None, hashlib.sha256()

  def _put(self, data: bytes) -> None:
    while data:
      if self._file is None or self.shards[-1]["bytes"] >= self.shard_bytes:
        self._next_shard()
      room = self.shard_bytes - self.shards[-1]["bytes"]
      piece, data = data[:room], data[room:]
      self._file.write(piece)
      self._hash.update(piece)
      self.shards[-1]["bytes"] += len(piece)

  def _next_shard(self) -> None:
    if self._file is not None:
      self._file.close()
    name = f"{self.split}-{len(self.shards):05d}.bin"
    self._file = open(self.out / name, "wb")
    self.shards.append({"file": name, "bytes": 0})

  def add(self, doc: bytes) -> None:
    if self.documents:
      if self.raw:
        self.boundaries.append(self.positions)
      else:
        self._put(bytes([EOS_BYTE]))
      self.positions += 1
    self._put(doc)
    self.documents += 1
    self.bytes += len(doc)
    self.positions += len(doc)

  def close(self) -> dict:
    if self._file is not None:
      self._file.close()
    info = {"documents": self.documents, "bytes": self.bytes, "positions": self.positions,
            "shards": self.shards, "boundaries": None}
    if self.raw:
      info["boundaries"] = f"{self.split}-boundaries.npy"
      bounds = np.frombuffer(self.boundaries, np.int64) if self.boundaries else np.zeros(0, int)
      np.save(self.out / info["boundaries"], bounds.astype(np.int64), allow_pickle=False)
      self._hash.update(bounds.astype("<i8").tobytes())
    info["sha256"] = self._hash.hexdigest()
    return info


class _Writers(dict):
  """{split: _Writer}, closed together."""

  def __init__(self, out, splits, shard_bytes, raw):
    super().__init__({s: _Writer(out, s, shard_bytes, raw) for s in splits})

  def close(self) -> dict:
    return {s: w.close() for s, w in self.items()}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    for w in self.values():
      if w._file is not None and not w._file.closed:
        w._file.close()


class _Progress:
  """A byte count on stderr while a source is read (tqdm, as `datasets` uses)."""

  def __init__(self, enabled: bool, spec: str):
    self.enabled, self.spec, self.bar = enabled, spec, None

  def __enter__(self):
    if self.enabled:
      from tqdm.auto import tqdm
      self.bar = tqdm(desc=f"preparing {self.spec}", unit="B", unit_scale=True,
                      file=sys.stderr, mininterval=1.0, disable=None)  # None: a terminal only
    return self

  def update(self, n: int) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def __exit__(self, *exc):
    if self.bar is not None:
      self.bar.close()


def _provenance(spec: str) -> dict:
  """Source and license fields, and documents per language where the source says."""
  scheme, rest = sources.parse(spec)
  if scheme == "embedded":
    entries = sources._read_manifest(sources.corpus_dir()).get("sources", {}) or {}
    members = sources.embedded_names().get(rest, [])
    languages, licenses = {}, set()
    for name in members:
      entry = entries.get(name) or {}
      lang = entry.get("language", "unknown")
      docs = sum((entry.get("splits", {}).get(s) or {}).get("documents", 0) for s in SPLITS)
      languages[lang] = languages.get(lang, 0) + docs
      licenses.add(entry.get("license", "unknown"))
    return {"license": sorted(licenses), "languages": languages,
            "origin": "bytelm's embedded corpus (bytelm/data/corpus/manifest.json)"}
  if scheme == "hf":
    return {"license": "see the dataset's card on the Hugging Face Hub", "languages": {},
            "origin": f"Hugging Face dataset {rest}"}
  return {"license": "unknown (local files: the user's)", "languages": {},
          "origin": f"local files {rest}"}


# ---- the command -------------------------------------------------------------------------------


_OURS = re.compile(r"^(manifest\.json(\.tmp)?|spool-\d+\.tmp|(train|validation)-(\d{5}\.bin|"
                   r"boundaries\.npy|tokens-[0-9a-f]+\.(uint16|int32)(\.\d+\.tmp)?))$")


def _ours(path: pathlib.Path) -> bool:
  """Whether path is a file a preparation writes (what --force may replace)."""
  return path.is_file() and bool(_OURS.match(path.name))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="bytelm-prepare", description=(
          "Write a source's byte stream to disk for training: shards read through np.memmap, "
          "a manifest, train and validation splits (a source without splits has its last 1%% "
          "held out). train.py does this by itself into its cache; this command is for "
          "preparing ahead, e.g. on a machine with network."))
  parser.add_argument("source", help="embedded:<name>, file:<glob>, bytes:<glob> or hf:<name>")
  parser.add_argument("out", help="an empty or new folder")
  parser.add_argument("--invalid-utf8", choices=sources.INVALID_UTF8, default="error",
                      help="text that is not valid UTF-8: an error (default), replaced by "
                           "U+FFFD, or kept as raw bytes")
  parser.add_argument("--shard-bytes", type=int, default=SHARD_BYTES)
  parser.add_argument("--force", action="store_true",
                      help="replace a prepared stream already in OUT (only one: a folder "
                           "with other files is refused)")
  parser.add_argument("--debug", action="store_true", help="tracebacks instead of one line")
  args = parser.parse_args(argv)
  try:
    out = pathlib.Path(args.out)
    if args.force and out.is_dir() and all(_ours(p) for p in out.iterdir()):
      shutil.rmtree(out)
    manifest = prepare(args.source, out, invalid_utf8=args.invalid_utf8,
                       shard_bytes=args.shard_bytes)
    for split in SPLITS:
      info = manifest["splits"][split]
      print(f"{split}: {info['documents']} documents, {info['bytes']:,} bytes, "
            f"{len(info['shards'])} shard(s)")
    print(f"prepared {args.source} into {out} ({manifest['kind']}); sha256 {manifest['sha256']}")
  except (ValueError, OSError) as e:  # the user's input: one line that names the fix
    if args.debug or os.environ.get("BYTELM_DEBUG", "") not in ("", "0"):
      raise
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
