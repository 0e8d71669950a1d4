"""Text and byte sources: one spec string -> the documents it names.

Specs:
  embedded:<group or name>   the corpus shipped in bytelm/data/corpus/ (no network). A group
                             (`en`, `es`, `l10n`, `multilingual`, ...) comes from
                             corpus/manifest.json; a name is a file stem,
                             `<name>.<split>.jsonl.xz`. Splits: train, validation.
  file:<path or glob>        local files; a plain path or glob (no scheme) means the same.
                             *.txt, *.md, *.rst: one document per file. *.jsonl, *.json:
                             a {"text": ...} object per line (a .json file holding one JSON list
                             of such objects, or of strings, also works). Any of these may be
                             .xz or .gz compressed. A directory means every such file under it.
                             A glob containing `{split}` has splits of its own:
                             `file:data/{split}/*.txt`; without, bytelm.data.prepare holds the
                             validation split out of the files' text (`load_text` reads the same
                             files for every split). A glob naming files of no text type reads
                             them as raw bytes, as `bytes:`.
  bytes:<path or glob>       local files (a directory: all of them) read as raw bytes, one
                             document per file, nothing decoded (enwik8, text8, binary files);
                             `{split}` as for file:.
  hf:<name>[:<config>]       `datasets.load_dataset(name, config)`: read with `datasets`
                             streaming where the Hub answers, from the Hugging Face cache alone
                             where it cannot be reached; the "text" column. A local dataset
                             directory works as a name.
  prepared:<folder>          a folder `bytelm-prepare` wrote (bytelm.data.prepare).

A data spec may also be a mixture of sources with weights, "embedded:en@0.3,file:web/*.txt@0.7"
(`parse_mixture`).

Two ways to read a source. `load_text` holds its documents in memory as a `datasets.Dataset`
(the embedded corpus is ~15 MB of text and loads in about a second). `iter_documents` yields
them one at a time as bytes, for bytelm.data.prepare, which writes a corpus of any size to disk
holding one document at a time. Text that is not valid UTF-8 is an error naming the file and
offset, or, by `invalid_utf8`, replaced (U+FFFD) or kept as raw bytes.

Every failure names the problem and the fix.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import json
import lzma
import os
import re
import socket
import urllib.parse
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING

from bytelm.text import encoding
from bytelm.text.segment import split_long

if TYPE_CHECKING:  # imported where used: `import bytelm` stays light (datasets takes ~1 s)
  import datasets

# The embedded corpus lives beside this file. Tests point it elsewhere by monkeypatching this
# module attribute; every function below reads it at call time through `corpus_dir()`.
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
EMBEDDED_SPLITS = ("train", "validation")
TEXT_SUFFIXES = (".txt", ".md", ".rst")  # one document per file
JSON_SUFFIXES = (".jsonl", ".json")  # one {"text": ...} per line
SCHEMES = ("embedded", "file", "bytes", "hf", "prepared")
INVALID_UTF8 = ("error", "replace", "raw")  # what becomes of text that is not valid UTF-8
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_+.-]+):")  # 2+ chars, so C:\ stays a path


def corpus_dir() -> Path:
  """Directory of the embedded corpus (`CORPUS_DIR`, read at call time)."""
  return Path(CORPUS_DIR)


def load_text(spec: str, split: str = "train") -> datasets.Dataset:
  """Documents named by `spec` (see the module docstring) as a Dataset with one column, "text"."""
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty string such as 'train', got {split!r}")
  scheme, rest = parse(spec)
  if scheme == "embedded":
    texts, where = _load_embedded(rest, split), f"embedded corpus {rest!r}"
  elif scheme == "file":
    texts, where = _load_files(rest, split), f"files {rest!r}"
  elif scheme == "hf":
    return _load_hf(rest, split)
  else:
    raise ValueError(f"{spec} is read as a byte stream, not as text documents: train.py's "
                     "data.train takes it (bytelm.data.prepare)")
  return _to_dataset(texts, f"{where} (split {split!r})")


def held_out_pieces(spec: str, piece_bytes: int, total_bytes: int) -> list[str]:
  """The validation documents in order, cut into pieces of at most piece_bytes (at character
  boundaries), until total_bytes."""
  pieces, size = [], 0
  for doc in load_text(spec, "validation")["text"]:
    data = doc.encode("utf-8")
    if not data:
      continue
    starts = split_long(data, [0], piece_bytes)  # cuts between characters
    for start, end in zip(starts, starts[1:] + [len(data)]):
      pieces.append(data[start:end].decode("utf-8"))
      size += end - start
      if size >= total_bytes:
        return pieces
  return pieces


def embedded_names() -> dict[str, list[str]]:
  """Embedded groups and single sources, each mapped to the source names it stands for."""
  root = corpus_dir()
  manifest = _read_manifest(root)
  names: dict[str, list[str]] = {}
  files = root.glob("*.*.jsonl.xz") if root.is_dir() else []
  stems = {p.name[: -len(".jsonl.xz")].rsplit(".", 1)[0] for p in files}
  for name in sorted(stems | set(manifest.get("sources", {}) or {})):
    names[name] = [name]
  for group, members in (manifest.get("groups", {}) or {}).items():
    names[group] = list(members)  # a group wins over a source of the same name
  return names


def language_of(spec: str) -> str | None:
  """The language code the embedded corpus's manifest records for a single embedded source
  (`embedded:l10n_cs` -> "cs"); None for anything else (a group, a file, a hub dataset)."""
  scheme, rest = parse(spec)
  if scheme != "embedded":
    return None
  entry = (_read_manifest(corpus_dir()).get("sources", {}) or {}).get(rest) or {}
  return entry.get("language")


# ---- embedded ----------------------------------------------------------------------------------

def _read_manifest(root: Path) -> dict:
  path = root / "manifest.json"
  if not path.is_file():
    return {}  # tolerated: `embedded:<name>` still works by file name
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it from the repository "
                     "(git checkout -- bytelm/data/corpus/manifest.json)") from e
  return manifest if isinstance(manifest, dict) else {}


def _load_embedded(name: str, split: str) -> list[str]:
  root = corpus_dir()
  if split not in EMBEDDED_SPLITS:
    raise ValueError(f"unknown split {split!r} for the embedded corpus; use one of "
                     f"{', '.join(EMBEDDED_SPLITS)}")
  names = embedded_names()
  if not names:
    raise FileNotFoundError(
        f"the embedded corpus is missing: no *.jsonl.xz files in {root}; it ships with the "
        "repository (reinstall or `git checkout -- bytelm/data/corpus`), or use a "
        "'file:' or 'hf:' spec")
  if name not in names:
    raise ValueError(f"unknown embedded corpus name {name!r}; available: "
                     f"{', '.join(sorted(names))}")
  entries = _read_manifest(root).get("sources", {}) or {}
  texts: list[str] = []
  for source in names[name]:
    # The manifest may name the file (sources.<name>.splits.<split>.file); else by convention.
    split_info = ((entries.get(source) or {}).get("splits") or {}).get(split) or {}
    path = root / split_info.get("file", f"{source}.{split}.jsonl.xz")
    if not path.is_file():
      raise FileNotFoundError(
          f"{path} is missing (part of embedded:{name}, split {split!r}); restore the "
          "corpus from the repository (`git checkout -- bytelm/data/corpus`)")
    texts.extend(_read_json_texts(path))
  return texts


# ---- local files -------------------------------------------------------------------------------

def _base_suffix(path: str) -> tuple[str, str]:
  """(format suffix, compression suffix) of a file name, e.g. ('.jsonl', '.xz')."""
  lower = path.lower()
  compression = next((c for c in (".xz", ".gz") if lower.endswith(c)), "")
  return os.path.splitext(lower[: len(lower) - len(compression)])[1], compression


def _supported(path: str) -> bool:
  return _base_suffix(path)[0] in TEXT_SUFFIXES + JSON_SUFFIXES


def file_paths(spec: str, split: str = "train") -> list[str] | None:
  """The files a `file:` or `bytes:` spec (or plain path or glob) reads for split, sorted and
  absolute; None for the other schemes."""
  match = _SCHEME_RE.match(spec)
  if match and match.group(1) not in ("file", "bytes"):
    return None
  return sorted(os.path.abspath(p) for p in _paths(spec[match.end():] if match else spec, split))


def _paths(pattern: str, split: str, raw: bool = False) -> list[str]:
  """The files of a file: spec's pattern for split (a directory: its files of a text type, or
  all of them for raw bytes)."""
  pattern = os.path.expanduser(pattern.replace("{split}", split))
  if os.path.isdir(pattern):
    paths = [p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
             if os.path.isfile(p) and (raw or _supported(p))]
  else:
    paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
  if not paths:
    raise FileNotFoundError(
        f"no files match {pattern!r} (cwd {os.getcwd()}); check the path, quote the glob "
        "so the shell does not expand it, or use '{split}' in it for per-split folders")
  return paths


def _load_files(pattern: str, split: str) -> list[str]:
  paths = _paths(pattern, split)
  unsupported = [p for p in paths if not _supported(p)]
  if unsupported:
    raise ValueError(
        f"unsupported file type: {unsupported[0]} ({len(unsupported)} such files); use "
        f"{', '.join(TEXT_SUFFIXES + JSON_SUFFIXES)} (optionally .xz/.gz), narrow the glob, "
        "or train on them as raw bytes (a 'bytes:' source, which train.py reads)")
  texts: list[str] = []
  for path in sorted(paths):
    if _base_suffix(path)[0] in TEXT_SUFFIXES:
      texts.append(_read_utf8(Path(path)))
    else:
      texts.extend(_read_json_texts(Path(path)))
  return texts


def _read_utf8(path: Path) -> str:
  """Whole (possibly compressed) file as text; invalid UTF-8 -> error with file and offset."""
  return _checked(_read_bytes(path), str(path), "error").decode("utf-8")


def _read_json_texts(path: Path) -> list[str]:
  """The "text" field of each JSON line (or of each item of a single JSON list)."""
  data = _read_utf8(path)
  if data.lstrip().startswith("["):  # a .json file holding one list
    try:
      records = json.loads(data)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e}); fix the file or write one "
                       '{"text": ...} object per line') from e
    return [_text_field(r, path, i + 1, "item") for i, r in enumerate(records)]
  texts = []
  # Split on "\n" only: str.splitlines would also cut at U+2028, U+0085, ..., which JSON
  # written with ensure_ascii=False leaves unescaped inside strings.
  for lineno, line in enumerate(data.split("\n"), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}); each line must be one "
                       'object like {"text": "..."}') from e
    texts.append(_text_field(record, path, lineno, "line"))
  return texts


def _text_field(record, path: Path, n: int, what: str) -> str:
  if isinstance(record, str):
    return record
  if not isinstance(record, dict) or not isinstance(record.get("text"), str):
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"{path} {what} {n}: expected an object with a string \"text\" field, "
                     f"got {keys}; rename the field to \"text\"")
  return record["text"]


# ---- Hugging Face datasets ---------------------------------------------------------------------

# `datasets` retries an unreachable Hub for about 25 s before it fails or falls back to its
# cache. Where the Hub's host cannot even be connected to, bytelm asks it for the cache alone
# at once, as HF_DATASETS_OFFLINE=1 would: a cached dataset loads, any other is one clear error.


def _hub_address() -> tuple[str, int]:
  """(host, port) of the Hub (HF_ENDPOINT's, huggingface.co by default)."""
  from huggingface_hub import constants
  url = urllib.parse.urlsplit(constants.ENDPOINT)
  return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _hub_reachable(timeout: float = 3.0) -> bool:
  """Whether a connection to the Hub opens. Behind a proxy (HTTPS_PROXY, ALL_PROXY) a direct
  connection says nothing, so the Hub counts as reachable and `datasets` finds out."""
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return True
  try:
    socket.create_connection(_hub_address(), timeout=timeout).close()
  except OSError:
    return False
  return True


@contextlib.contextmanager
def _offline(offline: bool):
  """`datasets` and `huggingface_hub` in offline mode (their own flags, read from the
  environment when they are imported) for the body, if `offline`."""
  if not offline:
    yield
    return
  import datasets
  from huggingface_hub import constants
  before = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
  datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
  try:
    yield
  finally:
    datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = before


def _load_hf(rest: str, split: str) -> datasets.Dataset:
  import datasets
  ds = _hf_load(rest, split=split)
  if isinstance(ds, datasets.IterableDataset):
    raise ValueError(f"hf:{rest} loaded as a streaming dataset; bytelm needs a map-style "
                     "Dataset (do not pass streaming=True)")
  if "text" not in ds.column_names:
    raise ValueError(
        f"hf:{rest} (split {split!r}) has no \"text\" column, only {ds.column_names}; load "
        "it yourself and rename the text column: ds.rename_column('<col>', 'text'), then "
        "pass the Dataset to BatchSource")
  if len(ds) == 0:
    raise ValueError(f"hf:{rest} split {split!r} has no documents; pick another split")
  return ds.select_columns(["text"])


def _hf_load(rest: str, **kwargs):
  """datasets.load_dataset of an `hf:` spec's name and config with kwargs; where the Hub
  cannot be reached (or offline mode is asked for), from the local cache alone, at once."""
  name, _, config = rest.partition(":")
  if not name:
    raise ValueError("hf: spec needs a dataset name, e.g. 'hf:wikitext:wikitext-2-raw-v1'")
  import datasets
  name = os.path.expanduser(name)
  asked_offline = datasets.config.HF_HUB_OFFLINE  # HF_DATASETS_OFFLINE or HF_HUB_OFFLINE
  offline = asked_offline or (not os.path.isdir(name) and not _hub_reachable())
  if offline:
    kwargs.pop("streaming", None)  # streaming reads the Hub; offline, the cache's Arrow files
  try:
    with _offline(offline):
      ds = datasets.load_dataset(name, config or None, **kwargs)
  except ConnectionError as e:  # OfflineModeIsEnabled too: what is not cached needs the Hub
    if not offline:
      raise ValueError(f"hf:{rest}: the Hugging Face Hub did not answer ({e}); try again, or "
                       "use a local 'file:' source") from e
    why = ("offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if asked_offline else
           f"{_hub_address()[0]} cannot be reached from here")
    raise ValueError(
        f"hf:{rest} is not in the local Hugging Face cache ({datasets.config.HF_DATASETS_CACHE}) "
        f"and {why}: load it once where there is network (the cache keeps it), or save its "
        "text to files and use a 'file:' source") from None
  return ds


def _to_dataset(texts: list[str], where: str) -> datasets.Dataset:
  if not texts:
    raise ValueError(f"{where} holds no documents; point the spec at files with text")
  if not any(texts):
    raise ValueError(f"{where}: all {len(texts)} documents are empty; point the spec at "
                     "files with text")
  import datasets
  return datasets.Dataset.from_dict({"text": texts})


# ---- one document at a time ---------------------------------------------------------------------


def parse(spec: str) -> tuple[str, str]:
  """(scheme, rest) of a spec; a plain path or glob is ("file", spec)."""
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"text spec must be a non-empty string, got {spec!r}; e.g. "
                     "'embedded:en', 'file:data/*.txt' or 'hf:wikitext:wikitext-2-raw-v1'")
  match = _SCHEME_RE.match(spec)
  scheme, rest = (match.group(1), spec[match.end():]) if match else ("file", spec)
  if scheme not in SCHEMES:
    raise ValueError(f"unknown text spec scheme {scheme!r} in {spec!r}; use one of "
                     + ", ".join(f"'{s}:'" for s in SCHEMES) + " or a plain path/glob")
  return scheme, rest


def is_raw(spec: str, invalid_utf8: str = "error") -> bool:
  """Whether spec's documents are kept as raw bytes: a `bytes:` source, a `file:` glob naming
  files of no text type, any text source read with invalid_utf8="raw", or a prepared folder of
  raw bytes."""
  check_invalid_utf8(invalid_utf8)
  scheme, rest = parse(spec)
  if scheme == "bytes" or invalid_utf8 == "raw":
    return True
  if scheme == "prepared":
    return _prepared(rest).kind == "bytes"
  if scheme != "file":
    return False
  return not all(_supported(p) for split in EMBEDDED_SPLITS for p in _paths(rest, split))


def check_invalid_utf8(invalid_utf8: str) -> None:
  if invalid_utf8 not in INVALID_UTF8:
    raise ValueError(f"data.invalid_utf8 must be one of {INVALID_UTF8}, got {invalid_utf8!r}")


def parse_mixture(spec) -> list[tuple[str, float]]:
  """[(spec, weight)] of a data spec: one source (weight 1), or a mixture of sources with
  weights, "embedded:en@0.3,file:web/*.txt@0.7" (a list of such strings also works). Commas
  separate sources only in a spec with weights, so a file name with a comma stays one source."""
  if isinstance(spec, (list, tuple)):
    return [p for s in spec for p in parse_mixture(s)]
  parts = spec.split(",")
  weighted = [p.rpartition("@") for p in parts]
  bad = [p for p, (_, at, w) in zip(parts, weighted) if not at or not _is_weight(w)]
  if len(bad) == len(parts):  # no weights: one source (whose name may hold a comma)
    return [(spec, 1.0)]
  if bad:
    raise ValueError(f"mixture part {bad[0]!r} has no weight: write each source as "
                     "spec@weight, e.g. 'embedded:en@0.3,file:web/*.txt@0.7'")
  out = [(s, float(w)) for s, _, w in weighted]
  for s, w in out:
    if not w > 0:
      raise ValueError(f"mixture weight of {s!r} is {w}; weights must be positive")
  return out


def _is_weight(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def local_files(spec: str) -> list[str] | None:
  """Every local file a spec reads (both splits), sorted and absolute: what a cache of its
  prepared stream is keyed by; None where the documents are not local files (a Hub name)."""
  scheme, rest = parse(spec)
  if scheme in ("file", "bytes"):
    return sorted({os.path.abspath(p) for split in EMBEDDED_SPLITS
                   for p in _paths(rest, split, raw=scheme == "bytes")})
  if scheme == "embedded":
    return sorted(str(p) for p in corpus_dir().glob("*"))
  name = rest.partition(":")[0]
  if os.path.isdir(os.path.expanduser(name)):  # a local dataset directory or prepared folder
    root = os.path.abspath(os.path.expanduser(name))
    return sorted(p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                  if os.path.isfile(p))
  return None


def splits_of(spec: str) -> tuple[str, ...]:
  """The splits a source has of its own: train and validation for the embedded corpus, a
  prepared folder and `{split}` globs, the dataset's for `hf:`, none for other files
  (bytelm.data.prepare then holds some of the text out)."""
  scheme, rest = parse(spec)
  if scheme in ("embedded", "prepared"):
    return EMBEDDED_SPLITS
  if scheme in ("file", "bytes"):
    return EMBEDDED_SPLITS if "{split}" in rest else ()
  return tuple(_hf_streams(rest))


def iter_documents(spec: str, split: str | None, invalid_utf8: str = "error"
                   ) -> Iterator[bytes]:
  """Each document of split (None: a source without splits, all of it) as bytes, one at a
  time; text as UTF-8 by invalid_utf8 (module docstring), raw sources untouched."""
  check_invalid_utf8(invalid_utf8)
  scheme, rest = parse(spec)
  if scheme == "embedded":
    for text in _load_embedded(rest, split):
      yield text.encode("utf-8")
  elif scheme == "prepared":
    yield from _prepared(rest, split or "train").documents()
  elif scheme == "hf":
    streams = _hf_streams(rest)
    if split not in streams:
      raise ValueError(f"hf:{rest} has no split {split!r}, only {sorted(streams)}; save its "
                       "text under a 'train' split (or use a 'file:' source)")
    for i, row in enumerate(streams[split]):
      text = row.get("text")
      if not isinstance(text, str):
        raise ValueError(f"hf:{rest} (split {split!r}) row {i} has no string \"text\" field, "
                         f"only {sorted(row)}; save it with the text column named \"text\"")
      yield _utf8(text, f"hf:{rest} row {i}", invalid_utf8)
  else:
    for path in sorted(_paths(rest, split or "train", raw=scheme == "bytes")):
      suffix = _base_suffix(path)[0]
      if scheme == "bytes" or not _supported(path):
        yield _read_bytes(Path(path))
      elif suffix in TEXT_SUFFIXES:
        yield _checked(_read_bytes(Path(path)), path, invalid_utf8)
      else:
        yield from _json_lines(Path(path), invalid_utf8)


def _prepared(folder: str, split: str = "train"):
  from bytelm.data.stream import ByteStream  # the stream reads what sources names
  return ByteStream.open(os.path.expanduser(folder), split)


def _open(path: Path):
  """path opened for reading bytes, decompressed by its suffix (.xz, .gz)."""
  compression = _base_suffix(str(path))[1]
  return {".xz": lzma.open, ".gz": gzip.open}.get(compression, open)(path, "rb")


@contextlib.contextmanager
def _decompressing(path: Path):
  """Decompression errors of the body as one ValueError naming the file and the fix."""
  try:
    yield
  except (lzma.LZMAError, gzip.BadGzipFile, EOFError) as e:
    raise ValueError(f"{path}: cannot decompress ({e}); the file is truncated or not "
                     f"{_base_suffix(str(path))[1]} data: re-create it") from e


def _read_bytes(path: Path) -> bytes:
  with _decompressing(path), _open(path) as f:
    return f.read()


_CHECK_BLOCK = 1 << 24  # characters decoded at a time to check a document's UTF-8


def _checked(data: bytes, name: str, invalid_utf8: str) -> bytes:
  """data if valid UTF-8; else the error naming the file (name) and offset, or U+FFFD for
  each bad sequence (replace), or data itself (raw). Checked a block at a time, so a large
  file costs no more than itself and a block."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  try:
    for lo in range(0, len(data), _CHECK_BLOCK):
      decoder.decode(data[lo: lo + _CHECK_BLOCK], final=lo + _CHECK_BLOCK >= len(data))
    return data
  except UnicodeDecodeError:
    if invalid_utf8 == "raw":
      return data
    if invalid_utf8 == "replace":
      decoder = codecs.getincrementaldecoder("utf-8")("replace")
      return b"".join(decoder.decode(data[lo: lo + _CHECK_BLOCK],
                                     final=lo + _CHECK_BLOCK >= len(data)).encode("utf-8")
                      for lo in range(0, len(data), _CHECK_BLOCK))
    try:  # the whole text's error, for its offset
      data.decode("utf-8")
    except UnicodeDecodeError as e:
      error = e
    path = name.rpartition(":")[0] if re.search(r":\d+$", name) else name  # file:line
    compression = _base_suffix(path)[1]
    where = "uncompressed byte offset" if compression else "byte offset"
    iconv = f"iconv -f {encoding.likely_encoding(data)} -t utf-8"
    base = os.path.basename(path)
    command = (f"{iconv} {base} > fixed.txt" if not compression else
               f"{'xzcat' if compression == '.xz' else 'zcat'} {base} | {iconv} > fixed.txt")
    raise ValueError(encoding.not_utf8(data, error, name, where, command) + "; train.py can "
                     "also keep it: --config.data.invalid_utf8=replace (U+FFFD for each bad "
                     "sequence) or =raw (the bytes untouched)") from None


def _utf8(text: str, where: str, invalid_utf8: str) -> bytes:
  try:
    return text.encode("utf-8")
  except UnicodeEncodeError as e:  # a lone surrogate (or a raw byte kept by surrogateescape)
    if invalid_utf8 == "raw":
      return text.encode("utf-8", "surrogateescape")
    if invalid_utf8 == "error":
      raise ValueError(f"{where} is not encodable as UTF-8 at character {e.start} ({e.reason}); "
                       "clean it, or set data.invalid_utf8=replace") from None
    return text.encode("utf-8", "replace")


def _json_lines(path: Path, invalid_utf8: str) -> Iterator[bytes]:
  """The "text" of each line of a JSON-lines file (or item of a JSON list), streamed line by
  line (a JSON list is read whole). With invalid_utf8="raw", a line's bytes that are not UTF-8
  are kept as they are."""
  with _decompressing(path), _open(path) as f:
    head = f.read(64).lstrip()
  if head.startswith(b"["):
    for text in _read_json_texts(path):
      yield _utf8(text, str(path), invalid_utf8)
    return
  with _decompressing(path), _open(path) as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      line = (line.decode("utf-8", "surrogateescape") if invalid_utf8 == "raw" else
              _checked(line, f"{path}:{lineno}", invalid_utf8).decode("utf-8"))
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}); each line must be one "
                         'object like {"text": "..."}') from e
      yield _utf8(_text_field(record, path, lineno, "line"), f"{path}:{lineno}", invalid_utf8)


def _hf_streams(rest: str) -> dict:
  """{split: iterable of rows} of an `hf:` spec: `datasets` streaming where the Hub answers (or
  the dataset is a local folder), else the Hugging Face cache's copy, read row by row."""
  return dict(_hf_load(rest, streaming=True))
