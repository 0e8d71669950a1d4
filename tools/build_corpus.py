"""Rebuild the embedded default corpus from installed Debian packages.

    apt-get install -y sword-text-web sword-text-sparv python3.11-doc \
        libreoffice-l10n-{lt,cs,vi,ro,pl,fr}
    python tools/build_corpus.py

Writes, into the package's bytelm/data/corpus/, `<name>.<split>.jsonl.xz` (one `{"text": ...}` object per line, one
document per line), `manifest.json`, the license files the data must travel with, and the sizes
table in README.md. Reproducible: the same installed packages give byte-identical files (every
list is sorted or in the source's own order, xz output is a function of its input, and nothing
records a date). Everything is read and checked before the first file is written, and each file
is written to a temporary path and then renamed, so no file is ever left half-written.

Sources (README.md says more): two public-domain Bibles read straight from their SWORD zText
modules (one document per chapter, OSIS markup stripped, footnotes dropped); the Python 3.11
documentation sources (reStructuredText, one document per file, verbatim); and LibreOffice's
translated UI messages in six languages with diacritics (filtered to real phrases, about 20
strings per document).
"""

import collections
import glob
import gettext
import hashlib
import html
import json
import lzma
import math
import os
import re
import struct
import subprocess
import sys
import unicodedata
import zlib

# The output ships inside the package; this builder does not (it needs Debian packages).
CORPUS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "bytelm", "data", "corpus")
SPLITS = ("train", "validation")
VALIDATION_MODULUS = 20  # validation = sha256(name/id) % 20 == 0, i.e. 5% of the documents
L10N_LINES_PER_DOC = 20  # translated strings per l10n document
XZ_PRESET = 9 | lzma.PRESET_EXTREME
PUBLIC_DOMAIN = "LicenseRef-PublicDomain"  # SPDX has no id for public domain

BIBLES = {  # name -> (Debian package, language)
    "bible_en": ("sword-text-web", "en"),
    "bible_es": ("sword-text-sparv", "es"),
}
PYTHON_DOCS_PACKAGE = "python3.11-doc"
PYTHON_DOCS_ROOT = "/usr/share/doc/python3.11/html/_sources"
L10N_LANGUAGES = ("lt", "cs", "vi", "ro", "pl", "fr")
GROUPS = {
    "en": ["bible_en", "python_docs"],
    "es": ["bible_es"],
    "l10n": [f"l10n_{lang}" for lang in L10N_LANGUAGES],
    "multilingual": ["bible_en", "bible_es", "python_docs"]
    + [f"l10n_{lang}" for lang in L10N_LANGUAGES],
    # Running text with diacritics (configs/diacritics.py, eval/diacritics.py).
    "diacritics": [f"l10n_{lang}" for lang in L10N_LANGUAGES] + ["bible_es"],
}
# The English module's publisher asks that changed text not carry its trademarked name; our text
# is changed (markup and footnotes removed), so the build refuses to ship that name.
TRADEMARK = " ".join(("World", "English", "Bible"))


# ---------------------------------------------------------------------------------------------
# Debian packages


def package_version(package):
  """The installed version of a Debian package, or an error that says how to install it."""
  try:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}\t${Version}", package],
        capture_output=True, text=True, check=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError):
    out = ""
  status, _, version = out.partition("\t")
  if not status.endswith(" installed"):
    sys.exit(f"build_corpus.py: Debian package {package} is not installed; run "
             f"`apt-get install -y {package}` (the module docstring lists all of them)")
  return version


def package_files(package):
  """Paths installed by a Debian package (`dpkg -L`), sorted."""
  out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True)
  return sorted(p for p in out.stdout.splitlines() if os.path.isfile(p))


# ---------------------------------------------------------------------------------------------
# SWORD zText modules -> one document per chapter


def read_sword_conf(path):
  """key=value pairs of a SWORD module .conf (first value wins; continuation lines ignored)."""
  conf = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      key, sep, value = line.partition("=")
      if sep and not line.startswith("#"):
        conf.setdefault(key.strip(), value.strip())
  return conf


def ztext_entries(module_dir, testament, encoding):
  """Yield the raw text of every non-empty index entry of one testament ("ot" or "nt"), in order.

  .bzs: 12-byte block records (uint32 LE offset, compressed size, uncompressed size) into .bzz,
  whose blocks are zlib streams; .bzv: 10-byte entry records (uint32 block, uint32 offset in the
  uncompressed block, uint16 size). Entry 0/1 are module/testament headings, then per book a
  book heading and per chapter a chapter heading before the verses.
  """
  def read(ext):
    with open(os.path.join(module_dir, f"{testament}.{ext}"), "rb") as f:
      return f.read()

  bzs, bzv, bzz = read("bzs"), read("bzv"), read("bzz")
  blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs) - 11, 12)]
  cached_number, cached_block = None, b""
  for i in range(0, len(bzv) - 9, 10):
    number, offset, size = struct.unpack_from("<IIH", bzv, i)
    if size == 0:
      continue
    if number != cached_number:  # entries are in block order: one block decompressed at a time
      start, csize, usize = blocks[number]
      cached_block = zlib.decompress(bzz[start:start + csize])
      if len(cached_block) != usize:
        raise ValueError(f"{module_dir}/{testament}.bzz block {number}: "
                         f"{len(cached_block)} bytes, index says {usize}")
      cached_number = number
    yield cached_block[offset:offset + size].decode(encoding)


_NOTE = re.compile(r"<note\b[^>]*/>|<note\b[^>]*>.*?</note>", re.S)
# Tags that end a line of running text: paragraph starts, poetry lines and line groups, explicit
# line breaks, titles (psalm superscriptions, section headings), speaker labels, list items.
_LINE_BREAK = re.compile(
    r'<div\b[^>]*type="x-p"[^>]*/>|<(?:/?l|/?lg|lb|/?title|/?speaker|/?item|/?list)\b[^>]*>')
_TAG = re.compile(r"<[^>]*>")
_SPACE_BEFORE_PUNCT = re.compile(r"(?<=[\w’”]) +(?=[?!,;:.](?:\s|$|[’”]))")
# A dropped note leaves a space only where it sat between two words (the OSIS often glues the
# note to the next word: `God</w><note>..</note><w>created`).
_NOTE_GAP = re.compile(r"(?<=\S)\x00(?=[^\s,.;:!?”’)\]»\x00])")


def osis_to_text(osis):
  """Plain text of an OSIS fragment: footnotes and cross-references dropped, tags stripped."""
  text = _NOTE.sub("\x00", osis)
  text = _LINE_BREAK.sub("\n", text)
  text = _TAG.sub("", text)
  text = _NOTE_GAP.sub(" ", text).replace("\x00", "")
  text = html.unescape(text)
  # A dropped note can leave "coins ? Not": no space before closing punctuation.
  lines = (_SPACE_BEFORE_PUNCT.sub("", " ".join(line.split())) for line in text.split("\n"))
  return "\n".join(line for line in lines if line)


def book_titles(stream):
  """OSIS book id -> its short heading (the `x-usfm-h` milestone of the book's introduction)."""
  titles = {}
  for m in re.finditer(r'<div\b[^>]*\bosisID="([^"]+)"[^>]*\bsID="[^"]*"[^>]*type="book"[^>]*/>'
                       r'(.*?)<chapter\b', stream, re.S):
    heading = re.search(r'<milestone\b[^>]*\bn="([^"]+)"[^>]*type="x-usfm-h"', m.group(2))
    if heading:
      titles[m.group(1)] = html.unescape(heading.group(1))
  return titles


def bible_documents(package):
  """(id, text) per chapter of the SWORD module in `package`, in canonical order."""
  confs = [p for p in package_files(package) if p.startswith("/usr/share/sword/mods.d/")]
  if len(confs) != 1:
    raise ValueError(f"{package}: expected one SWORD .conf, found {confs}")
  conf = read_sword_conf(confs[0])
  if conf.get("ModDrv", "").lower() != "ztext" or conf.get("SourceType", "OSIS") != "OSIS":
    raise ValueError(f"{confs[0]}: this reader handles OSIS zText modules only, "
                     f"got ModDrv={conf.get('ModDrv')} SourceType={conf.get('SourceType')}")
  encoding = "utf-8" if conf.get("Encoding", "").upper() == "UTF-8" else "latin-1"
  module_dir = os.path.normpath(os.path.join("/usr/share/sword", conf["DataPath"]))

  docs = []
  for testament in ("ot", "nt"):
    if not os.path.exists(os.path.join(module_dir, f"{testament}.bzs")):
      continue
    # Verse entries joined by a space; the text between a chapter's sID and eID milestones
    # is the chapter. Prefaces, book introductions and glossaries lie outside and are dropped.
    # A chapter that lacks its eID (the English module truncates one) is dropped.
    stream = " ".join(ztext_entries(module_dir, testament, encoding))
    titles = book_titles(stream)
    for m in re.finditer(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*/>(.*?)'
                         r'<chapter\b[^>]*\beID="\1"[^>]*/>', stream, re.S):
      chapter_id = m.group(1)  # e.g. "Gen.1"
      body = osis_to_text(m.group(2))
      if not body:
        continue
      book, _, number = chapter_id.rpartition(".")
      # First line "Genesis 1"; a book whose introduction the module lacks gets no title
      # line rather than a wrong one.
      title = f"{titles[book]} {number}\n" if book in titles else ""
      docs.append((chapter_id, title + body))
  if not docs:
    raise ValueError(f"{module_dir}: no chapters found")
  return docs


# ---------------------------------------------------------------------------------------------
# Python documentation sources -> one document per file


def python_doc_documents():
  """(relative path, text) of every `_sources/**/*.rst.txt` file, sorted by path."""
  paths = sorted(glob.glob(os.path.join(PYTHON_DOCS_ROOT, "**", "*.rst.txt"), recursive=True))
  if not paths:
    raise ValueError(f"no *.rst.txt under {PYTHON_DOCS_ROOT}")
  docs = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      text = f.read().replace("\r\n", "\n").strip()
    if text:
      docs.append((os.path.relpath(path, PYTHON_DOCS_ROOT), text))
  return docs


# ---------------------------------------------------------------------------------------------
# LibreOffice message catalogs -> translated phrases


# Strings that still hold any of these after cleaning are placeholders, markup, formulas or
# tables rather than prose: `%1`, `%s`, `$(ARG1)`, `$name$`, `<BR>`, `{Tab}`, `\n`, `#`, `a=b`...
_L10N_REJECT = re.compile(r"%\w|[$<>{}\\|#@^=*_\t]|https?:|&\w+;")


def clean_message(msgid, msgstr):
  """A translated message as one line of plain text, or None if it is not a real phrase."""
  text = msgstr.replace("%PRODUCTNAME", "LibreOffice").replace("~", "")
  if "_" in msgid and text.count("_") == 1:
    text = text.replace("_", "")  # GTK mnemonic marker, as in the English "Wit_h password"
  if "\t" in text or _L10N_REJECT.search(text):
    return None
  text = unicodedata.normalize("NFC", " ".join(text.split()))
  english = " ".join(msgid.replace("%PRODUCTNAME", "LibreOffice").replace("~", "")
                     .replace("_", "").split())
  letters = sum(ch.isalpha() for ch in text)
  if text == english or letters == 0:
    return None  # untranslated, or no words at all
  if len(text.split()) < 3 and len(text) < 20:
    return None  # labels such as "Height" or "Export"
  if letters < 0.6 * sum(not ch.isspace() for ch in text):
    return None  # mostly digits and symbols
  return text


def l10n_strings(lang):
  """Cleaned, deduplicated translated strings of one language, in (catalog, msgid) order."""
  package = f"libreoffice-l10n-{lang}"
  mo_files = [p for p in package_files(package) if p.endswith(".mo")]
  if not mo_files:
    raise ValueError(f"{package}: no .mo catalogs installed")
  out, seen = [], set()
  for path in mo_files:
    with open(path, "rb") as f:
      catalog = gettext.GNUTranslations(f)._catalog
    items = []
    for key, msgstr in catalog.items():
      msgid = key[0] if isinstance(key, tuple) else key  # (msgid, n) for plural forms
      msgid = msgid.split("\x04", 1)[-1]  # drop the msgctxt
      if msgid:  # the empty msgid is the catalog header
        items.append((str(key), msgid, msgstr))
    for _, msgid, msgstr in sorted(items):
      text = clean_message(msgid, msgstr)
      if text is None:
        continue
      dedup_key = text.casefold().rstrip(".:!?… ")
      if dedup_key not in seen:
        seen.add(dedup_key)
        out.append(text)
  return out


# ---------------------------------------------------------------------------------------------
# Split, write, measure


def is_validation(name, doc_id):
  """The fixed split: a pure function of the source name and a stable document id."""
  digest = hashlib.sha256(f"{name}/{doc_id}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % VALIDATION_MODULUS == 0


def split_documents(name, docs):
  """{'train': [text], 'validation': [text]} from (id, text) pairs, order kept."""
  out = {split: [] for split in SPLITS}
  for doc_id, text in docs:
    out["validation" if is_validation(name, doc_id) else "train"].append(text)
  return out


def split_l10n(name, strings):
  """Split per string (so no string is in both), then group L10N_LINES_PER_DOC per document."""
  by_split = split_documents(name, [(s, s) for s in strings])
  return {split: ["\n".join(lines[i:i + L10N_LINES_PER_DOC])
                  for i in range(0, len(lines), L10N_LINES_PER_DOC)]
          for split, lines in by_split.items()}


def jsonl(texts):
  """UTF-8 JSON lines; U+0085/U+2028/U+2029 escaped so that no line splitter breaks a record."""
  lines = []
  for text in texts:
    line = json.dumps({"text": text}, ensure_ascii=False)
    line = line.replace("\x85", "\\u0085").replace("\u2028", "\\u2028")
    lines.append(line.replace("\u2029", "\\u2029"))
  return ("\n".join(lines) + "\n").encode("utf-8")


def write_atomic(path, data):
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def unigram_cross_entropy(train_texts, validation_texts):
  """Bits per byte of validation under a unigram byte model fit on train (add-one smoothed)."""
  counts = collections.Counter()
  for text in train_texts:
    counts.update(text.encode("utf-8"))
  total = sum(counts.values()) + 256
  val = collections.Counter()
  for text in validation_texts:
    val.update(text.encode("utf-8"))
  n = sum(val.values())
  bits = -sum(c * math.log2((counts[b] + 1) / total) for b, c in val.items())
  return round(bits / n, 4)


def check_documents(name, splits):
  for split, texts in splits.items():
    if not texts:
      raise ValueError(f"{name}: the {split} split is empty")
    for text in texts:
      if not text.strip():
        raise ValueError(f"{name}: empty document in {split}")
      if TRADEMARK.casefold() in text.casefold():
        raise ValueError(f"{name}: a document names the trademark {TRADEMARK!r}")


def readme_with_sizes(manifest):
  """README.md with the table between its `sizes` markers rewritten from the manifest."""
  path = os.path.join(CORPUS_DIR, "README.md")
  begin, end = "<!-- sizes:begin (written by tools/build_corpus.py) -->", "<!-- sizes:end -->"
  with open(path, encoding="utf-8") as f:
    readme = f.read()
  if begin not in readme or end not in readme:
    raise ValueError(f"{path}: the markers {begin!r} and {end!r} are missing; restore them")
  rows = ["| name | language | documents train / val | text MB train / val | xz MB | "
          "unigram bpb (val) |", "|---|---|---|---|---|---|"]
  total_xz = 0
  for name, src in manifest["sources"].items():
    tr, va = src["splits"]["train"], src["splits"]["validation"]
    xz = tr["file_bytes"] + va["file_bytes"]
    total_xz += xz
    rows.append(f"| {name} | {src['language']} | {tr['documents']} / {va['documents']} | "
                f"{tr['text_bytes'] / 1e6:.2f} / {va['text_bytes'] / 1e6:.3f} | "
                f"{xz / 1e6:.2f} | {src['unigram_bpb_validation']:.3f} |")
  groups = ", ".join(f"{g} {v:.3f}" for g, v in manifest["group_unigram_bpb_validation"].items())
  table = "\n".join(rows) + (f"\n\nAll data files together: {total_xz / 1e6:.2f} MB compressed. "
                             f"Unigram bpb of each group's validation text: {groups}.\n")
  head, rest = readme.split(begin, 1)
  tail = rest.split(end, 1)[1]
  return f"{head}{begin}\n{table}{end}{tail}".encode("utf-8")


def collect_sources():
  """name -> metadata and {'train': [text], 'validation': [text]}, in manifest order."""
  sources = {}
  for name, (package, language) in BIBLES.items():
    sources[name] = dict(
        package=package, version=package_version(package), license=PUBLIC_DOMAIN,
        license_file=None, language=language,
        description="Bible, one document per chapter; OSIS markup stripped, footnotes and "
                    "cross-references dropped, prefaces and introductions dropped",
        splits=split_documents(name, bible_documents(package)))
  sources["python_docs"] = dict(
      package=PYTHON_DOCS_PACKAGE, version=package_version(PYTHON_DOCS_PACKAGE),
      license="PSF-2.0", license_file="LICENSE-PSF.txt", language="en",
      description="Python 3.11 documentation sources (reStructuredText), one document per "
                  "file, verbatim",
      splits=split_documents("python_docs", python_doc_documents()))
  for lang in L10N_LANGUAGES:
    package, name = f"libreoffice-l10n-{lang}", f"l10n_{lang}"
    sources[name] = dict(
        package=package, version=package_version(package), license="MPL-2.0",
        license_file="LICENSE-MPL-2.0.txt", language=lang,
        description=f"LibreOffice UI messages translated to {lang}: phrases of 3+ words or "
                    f"20+ characters, markup and placeholders rejected, deduplicated, "
                    f"{L10N_LINES_PER_DOC} per document, one per line",
        splits=split_l10n(name, l10n_strings(lang)))
  return sources


def main():
  # sources (read everything and check it before writing anything)
  sources = collect_sources()
  for name, src in sources.items():
    check_documents(name, src["splits"])

  # files and manifest, in memory
  outputs = {}  # file name -> bytes
  manifest = {
      "format": 'one JSON object {"text": ...} per line (one document), UTF-8, xz-compressed; '
                "text_bytes counts the UTF-8 bytes of the texts",
      "split_rule": (f"validation = documents whose int(sha256('<name>/<id>')[:8 bytes]) % "
                     f"{VALIDATION_MODULUS} == 0; id = chapter (bibles), path (python_docs), "
                     f"the string itself (l10n: split per string, then grouped)"),
      "sources": {},
      "groups": GROUPS,
      "group_unigram_bpb_validation": {},
  }
  for name, src in sources.items():
    splits = src["splits"]
    entry = {k: v for k, v in src.items() if k != "splits"}
    entry["splits"] = {}
    for split in SPLITS:
      file_name = f"{name}.{split}.jsonl.xz"
      data = lzma.compress(jsonl(splits[split]), format=lzma.FORMAT_XZ, preset=XZ_PRESET)
      outputs[file_name] = data
      entry["splits"][split] = {
          "file": file_name,
          "documents": len(splits[split]),
          "text_bytes": sum(len(t.encode("utf-8")) for t in splits[split]),
          "file_bytes": len(data),
          "sha256": hashlib.sha256(data).hexdigest(),
      }
    entry["unigram_bpb_validation"] = unigram_cross_entropy(splits["train"],
                                                            splits["validation"])
    manifest["sources"][name] = entry
  for group, names in GROUPS.items():
    train = [t for n in names for t in sources[n]["splits"]["train"]]
    validation = [t for n in names for t in sources[n]["splits"]["validation"]]
    manifest["group_unigram_bpb_validation"][group] = unigram_cross_entropy(train, validation)
  licenses = {"LICENSE-PSF.txt": os.path.join(PYTHON_DOCS_ROOT, "license.rst.txt"),
              "LICENSE-MPL-2.0.txt": "/usr/share/common-licenses/MPL-2.0"}
  for file_name, src_path in licenses.items():
    with open(src_path, "rb") as f:
      outputs[file_name] = f.read()
  outputs["manifest.json"] = (json.dumps(manifest, indent=2, ensure_ascii=False)
                              + "\n").encode("utf-8")
  outputs["README.md"] = readme_with_sizes(manifest)

  # write: each file to a temporary path, then renamed over the old one
  for file_name, data in outputs.items():
    write_atomic(os.path.join(CORPUS_DIR, file_name), data)

  # summary
  total = 0
  for name, entry in manifest["sources"].items():
    tr, va = entry["splits"]["train"], entry["splits"]["validation"]
    total += tr["file_bytes"] + va["file_bytes"]
    print(f"{name:12s} {entry['package']:26s} {entry['version']:20s} "
          f"train {tr['documents']:5d} docs {tr['text_bytes'] / 1e6:6.2f} MB  "
          f"val {va['documents']:4d} docs {va['text_bytes'] / 1e3:7.1f} kB  "
          f"unigram {entry['unigram_bpb_validation']:.3f} bpb")
  print("unigram bpb of the groups (validation):", manifest["group_unigram_bpb_validation"])
  print(f"data files: {total / 1e6:.2f} MB compressed, written to {CORPUS_DIR}")


if __name__ == "__main__":
  main()
