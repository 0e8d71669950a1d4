"""Correct text: restore diacritics with a trained byte-level model, fix typos.

  echo "Laba diena, as esu is Lietuvos" | python -m bytelm.demos.correct
  echo "I will recieve the pakage tommorow." | python -m bytelm.demos.correct --task typos
  python -m bytelm.demos.correct [--model DIR] [--task diacritics|typos|both] [--lang LANG]
                                 [--diff] [TEXT ...]
  python -m bytelm.demos.correct --serve [--port 8765]     # a page to try it in a browser

`bytelm-correct` is the same command, installed with the package.

With TEXT, prints its correction; without, reads stdin and writes one corrected line per input
line (a filter: `cat notes.txt | python -m bytelm.demos.correct > fixed.txt`). The default model
is the diacritics restorer shipped in bytelm/demos/diacritics/ (configs/diacritics.py); --model
takes any bytelm workdir or export trained by that recipe, including its seq2seq variants (which
also fix typos). Typos are otherwise fixed by the noisy-channel corrector of
`bytelm.demos.typos` with the shipped word list (`bytelm.demos.wordlist`) of the line's
language (--lang, or `line_language`: the likeliest of the eight shipped lists that know
half its words; a line of another language than en, es, fr is left alone); --task both
restores diacritics first. The restorer leaves alone a line of a language it was not trained
on (English).

A tagger also reads, per language, the word forms of its training text pooled with the shipped
word list of that language (`source_lexicon`): each line goes with the language whose words
it shares most, and where a word is known there, the tagger picks among its forms by its own
probability and their frequency (`lexicon_labels`); --no-lexicon uses the model alone.

Any input is accepted: empty lines stay empty; a line longer than the model's input is cut into
pieces at sentence ends (else at spaces, else between characters), corrected piece by piece and
rejoined, never truncated; a line that is not valid UTF-8 is passed through unchanged with a
message on stderr naming the line and the byte (exit status 1); other scripts are left as they
are. In diacritics mode the output differs from the input only by diacritics: the tagger can do
nothing else, and a seq2seq model's output is checked word by word (`diacritics_only`).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
from collections.abc import Sequence

import numpy as np

from bytelm import console, generation, user_cache
from bytelm.data import noise, sources
from bytelm.text import encoding, tags
from bytelm.demos import changes, metrics, serve, typos, wordlist
from bytelm.models.tagger import Tagger
from bytelm.nn.compiled import Compiled
from bytelm.text.tokenizer import ByteTokenizer
from bytelm.runs.load import load as load_run

SHIPPED = pathlib.Path(__file__).parent / "diacritics"
# What the tagger's log-probability of a known form weighs against its frequency in the lexicon.
# Chosen on everyday sentences kept for tuning (eval/data/everyday_dev): the shipped tagger,
# trained on software messages and a Bible, is sure of its domain's forms on everyday text too
# (alpha words there: 0.905 at 0.1, 0.868 at 1; on its own domain's text 0.956 and 0.962).
MODEL_WEIGHT = 0.1
TASKS = ("diacritics", "typos", "both")
_WORD = re.compile(r"\w+")
# How a too-long line is cut, coarsest first: after sentence ends, after spaces, anywhere.
_RULES = (re.compile(r"(?<=[.!?…。])\s+"), re.compile(r"\s+"), None)


def split_text(text: str, max_bytes: int, _rule: int = 0) -> list[str]:
  """Pieces of text of at most max_bytes UTF-8 bytes each that join back into text exactly: cut
  after sentence ends, a too-long sentence after spaces, a too-long word between characters."""
  if max_bytes < 4:  # room for any one character
    raise ValueError(f"max_bytes must be at least 4 (one UTF-8 character), got {max_bytes}")
  if len(text.encode("utf-8")) <= max_bytes:
    return [text] if text else []
  rule = _RULES[_rule]
  units = _split_keep(text, rule) if rule is not None else list(text)
  pieces, current = [], ""
  for unit in units:
    if len(unit.encode("utf-8")) > max_bytes:  # never a single character
      if current:
        pieces.append(current)
        current = ""
      pieces.extend(split_text(unit, max_bytes, _rule + 1))
    elif len((current + unit).encode("utf-8")) <= max_bytes:
      current += unit
    else:
      pieces.append(current)
      current = unit
  if current:
    pieces.append(current)
  return pieces


def _split_keep(text: str, pattern: re.Pattern) -> list[str]:
  """text cut at the ends of pattern's matches (the match stays with the piece before it)."""
  pieces, start = [], 0
  for m in pattern.finditer(text):
    if m.end() > start:
      pieces.append(text[start:m.end()])
      start = m.end()
  if start < len(text):
    pieces.append(text[start:])
  return pieces


def diacritics_only(source: str, output: str) -> str:
  """output where it differs from source only by diacritics; else, word by word, each output
  word that strips to its source word, and the source word elsewhere."""
  if noise.strip_diacritics(output) == noise.strip_diacritics(source):
    return output
  source_words, output_words = source.split(" "), output.split(" ")
  if len(source_words) != len(output_words):
    return source
  return " ".join(o if noise.strip_diacritics(o) == noise.strip_diacritics(s) else s
                  for s, o in zip(source_words, output_words))


class Corrector:
  """A trained corrector and what it was trained for; `corrector(lines, task)` corrects."""

  def __init__(self, model, *, trained_task: str, input_length: int, batch_size: int = 64,
               lexicons: Sequence[metrics.Lexicon] = (), languages: Sequence[str | None] = (),
               model_weight: float = MODEL_WEIGHT):
    """lexicons: the word forms of the training text, one lexicon per source (language). A
    tagger then reads each line with the lexicon that knows most of its words (none if none
    knows any) and picks, for each word seen there, the seen form with the highest model
    log-probability + log frequency (`lexicon_labels`); other words get its own choice.
    languages: the languages it was trained on (those of the sources); where given, a line of
    another language (`line_language`) keeps its diacritics as they are. model_weight: what
    the tagger's log-probability weighs against the lexicon's frequencies (MODEL_WEIGHT)."""
    self.model = model
    self.lexicons = list(lexicons)
    self.languages = tuple(lang for lang in languages if lang)
    self.model_weight = float(model_weight)
    self.is_tagger = isinstance(model, Tagger)
    self.trained_task = trained_task
    self.input_length = int(input_length)
    self.batch_size = int(batch_size)
    # Without a model (loaded for typos only) the word lists are all it has.
    self.tasks = _tasks_of(trained_task) if model is not None else ("typos",)
    self._compiled = None
    self._typos: dict[str, typos.TypoCorrector] = {}  # per language, built on first use

  @classmethod
  def load(cls, path=None, *, lexicon: bool = False, task: str | None = None,
           **kwargs) -> "Corrector":
    """The corrector in a bytelm workdir or export; None is the shipped diacritics model.
    lexicon=True also reads, for a tagger, the training text the run's config names
    (data.train) into one `metrics.Lexicon` per source of it (see __init__). task: refuse
    (ValueError) a model that cannot do this task, from its config, before loading it; "typos"
    with a diacritics restorer loads no model at all (the word lists fix typos), and such a
    corrector does typos only."""
    path = pathlib.Path(path if path is not None else SHIPPED).expanduser()
    config_path = path / "config.json"
    if not config_path.is_file():
      where = ("the shipped model is missing from this installation (reinstall bytelm)"
               if path == SHIPPED else "it is not a bytelm workdir or export")
      raise FileNotFoundError(f"no corrector at {path}: {where}. Train one with `python "
                              "train.py --config configs/diacritics.py` and pass --model")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    data = config.get("data", {})
    objective = data.get("objective")
    if objective == "diacritics_tagging":
      trained_task = "diacritics"
    elif objective == "correction":
      trained_task = data.get("correction_task", "diacritics")
    else:
      raise ValueError(f"{path} holds a model trained for {objective!r}, not a corrector; "
                       "train one with configs/diacritics.py")
    _check_task(task, trained_task)
    if task == "typos" and trained_task == "diacritics":
      # The word lists fix the typos (fix_typos); the restorer is not needed, so not loaded:
      # the command answers in a few seconds instead of ten.
      return cls(None, trained_task=trained_task, input_length=data["input_length"], **kwargs)
    model = load_run(path)  # any family: a tagger is no LanguageModel
    if lexicon and isinstance(model, Tagger):
      specs = _per_source(data["train"])
      kwargs["lexicons"] = [source_lexicon(spec) for spec in specs]
      kwargs["languages"] = [sources.language_of(spec) for spec in specs]
    return cls(model, trained_task=trained_task, input_length=data["input_length"], **kwargs)

  def check_task(self, task: str | None) -> str:
    """task (None: the trained one), or a ValueError saying which model can do it."""
    return _check_task(task, self.trained_task)

  def __call__(self, lines: Sequence[str], task: str | None = None,
               lang: str | None = None) -> list[str]:
    """One corrected line per line (each a str without newlines). lang: the language of the
    typo corrector's word list (`typos.LANGUAGES`); None picks one per line."""
    task = self.check_task(task)
    if self.model is None and task != "typos":
      raise ValueError(f"this corrector was loaded for typos only and cannot do {task!r}: "
                       f"load it with Corrector.load(task={task!r})")
    if task != "diacritics" and not self._model_fixes_typos:
      # The model restores diacritics only: typos are the word-list corrector's (after it).
      restored = self(lines, "diacritics") if task == "both" else list(lines)
      return self.fix_typos(restored, lang)
    if task == "diacritics" and self.languages:
      # A line of a language the restorer was never trained on (English, say) is left alone.
      foreign = [line_language(line) not in (None, *self.languages) for line in lines]
      if any(foreign):
        restored = iter(self._restore_lines([x for x, f in zip(lines, foreign) if not f], task))
        return [x if f else next(restored) for x, f in zip(lines, foreign)]
    return self._restore_lines(lines, task)

  def _restore_lines(self, lines: Sequence[str], task: str) -> list[str]:
    # Pieces fit the model's input: bytes + eos for both kinds of model.
    pieces = [split_text(line, self.input_length - 1) for line in lines]
    flat = [p for ps in pieces for p in ps]
    if self.is_tagger:
      # Each line's lexicon is chosen once, from all its words, and serves all its pieces.
      lexicons = [self.lexicon_for(line) for line, ps in zip(lines, pieces) for _ in ps]
      fixed = iter(self._restore(flat, lexicons))
    else:
      fixed = iter(self._generate(flat, task))
    return ["".join(next(fixed) for _ in ps) for ps in pieces]

  @property
  def _model_fixes_typos(self) -> bool:
    return self.trained_task in ("typos", "both")

  def fix_typos(self, lines: Sequence[str], lang: str | None = None) -> list[str]:
    """lines with their typos fixed by the noisy-channel corrector (`bytelm.demos.typos`) of
    lang's word list, or, with lang None, of each line's `line_language` (a line of another
    language, or of none the lists know, is left as it is)."""
    out = []
    for line in lines:
      language = lang or line_language(line)
      if language not in typos.LANGUAGES:
        out.append(line)
        continue
      if language not in self._typos:
        self._typos[language] = typos.for_language(language)
      out.append(self._typos[language].correct(line))
    return out

  def lexicon_for(self, text: str) -> metrics.Lexicon | None:
    """The lexicon that has seen most of text's words (the first on a tie; None if none has)."""
    words = _WORD.findall(noise.strip_diacritics(text))
    known = [sum(bool(lex.candidates(w)) for w in words) for lex in self.lexicons]
    if not known or max(known) == 0:
      return None
    return self.lexicons[known.index(max(known))]

  # -- the tagger: one forward pass per batch of pieces ----------------------------------------

  def _restore(self, texts: list[str], lexicons: list[metrics.Lexicon | None]) -> list[str]:
    if self._compiled is None:
      self._compiled = Compiled(self.model)
    # The model reads text without diacritics, as in training; letters the user already
    # decorated are kept as typed.
    stripped = [noise.strip_diacritics(t) for t in texts]
    tokenizer, out = ByteTokenizer(), []
    for start in range(0, len(texts), self.batch_size):
      chunk = stripped[start:start + self.batch_size]
      # Always batch_size x input_length: one compilation for any input.
      rows = chunk + [""] * (self.batch_size - len(chunk))
      ids_BT, _ = tokenizer.encode_batch(rows, length=self.input_length, truncate=False)
      if not self.lexicons:
        labels_BT = np.asarray(self._compiled("predict", ids_BT))
      else:
        logp_BTC = np.asarray(self._compiled("log_probs", ids_BT))
        labels_BT = [lexicon_labels(plain, logp_TC, lexicon, self.model_weight) if lexicon
                     else logp_TC.argmax(-1)
                     for plain, logp_TC, lexicon in zip(chunk, logp_BTC,
                                                        lexicons[start:start + len(chunk)])]
      for text, plain, labels_T in zip(texts[start:], chunk, labels_BT):
        restored = tags.apply(plain, labels_T)
        out.append(_keep_typed(text, plain, restored))
    return out

  # -- a seq2seq corrector: generation ---------------------------------------------------------

  def _generate(self, texts: list[str], task: str) -> list[str]:
    if not texts:
      return []
    out = []
    for start in range(0, len(texts), self.batch_size):
      chunk = texts[start:start + self.batch_size]
      # A restored letter takes up to 3 bytes where its input took 1; typos change little.
      generated = generation.encoder_decoder_texts(
          self.model, ByteTokenizer(), chunk, max_new_bytes=2 * self.input_length,
          method="greedy", max_input_bytes=self.input_length)
      if task == "diacritics":
        generated = [diacritics_only(t, g) for t, g in zip(chunk, generated)]
      out.extend(generated)
    return out


def _per_source(spec: str) -> list[str]:
  """An embedded group's sources (one per language), else the spec itself."""
  if spec.startswith("embedded:"):
    members = sources.embedded_names().get(spec[len("embedded:"):])
    if members:
      return [f"embedded:{name}" for name in members]
  return [spec]


def source_lexicon(spec: str) -> metrics.Lexicon:
  """The word forms of one training source, pooled (`metrics.Lexicon.pooled`) with the shipped
  word list of its language where there is one: the training text knows its domain's words
  (software messages, a Bible), the word list those of everyday usage it never saw.

  Built once and kept in the user's cache (`bytelm.user_cache`), keyed by the files it is
  built from: building takes seconds, reading it back a fraction of one."""
  lang = sources.language_of(spec)
  word_list = [wordlist.HERE / f"{lang}.tsv.xz"] if lang in wordlist.languages() else []
  files = sources.local_files(spec)
  if files is None:  # a Hub dataset: nothing to key a cache by
    return _build_source_lexicon(spec, lang if word_list else None)
  return metrics.Lexicon.from_table(user_cache.cached_json(
      "lexicons", spec, [*files, *word_list],
      lambda: _build_source_lexicon(spec, lang if word_list else None).counts,
      version=_LEXICON_FORMAT))


_LEXICON_FORMAT = 2  # bump when what a lexicon holds changes


def _build_source_lexicon(spec: str, lang: str | None) -> metrics.Lexicon:
  seen = metrics.Lexicon(line for text in sources.load_text(spec, "train")["text"]
                         for line in text.split("\n"))
  if lang is None:
    return seen
  common = wordlist.load(lang, top=wordlist.COMMON_WORDS)
  return metrics.Lexicon.pooled([seen, metrics.Lexicon.from_counts(common)])


def lexicon_labels(plain: str, logp_TC: np.ndarray, lexicon: metrics.Lexicon,
                   model_weight: float = 1.0) -> np.ndarray:
  """labels_T of plain (stripped text) from a tagger's log-probabilities and a lexicon: each
  known word takes the known form maximising model_weight * log p(form's labels) + log(its
  share of the word's occurrences); other bytes take the most likely label."""
  labels_T = np.argmax(logp_TC, axis=-1)
  for match in _WORD.finditer(plain):
    word = match.group(0)
    forms = lexicon.candidates(word) if word.isascii() and word.isalpha() else None
    if not forms:
      continue
    first = len(plain[:match.start()].encode("utf-8"))  # the word is ASCII: a byte per letter
    total, best, best_score = sum(forms.values()), None, -np.inf
    for form, count in forms.items():
      labels = [tags.label(f, w) for f, w in zip(form, word)] if len(form) == len(word) else [None]
      if None in labels:  # a form of other length or letters (decomposed text): not a choice
        continue
      score = (model_weight * logp_TC[np.arange(first, first + len(word)), labels].sum()
               + np.log(count / total))
      if score > best_score:
        best, best_score = labels, score
    if best is not None:
      labels_T[first:first + len(word)] = best
  return labels_T


def _keep_typed(typed: str, plain: str, restored: str) -> str:
  """restored, except where the user typed a decorated letter already (kept as typed)."""
  if not (len(typed) == len(plain) == len(restored)):  # combining marks were dropped
    return restored
  return "".join(t if t != p else r for t, p, r in zip(typed, plain, restored))


def _tasks_of(trained_task: str) -> tuple[str, ...]:
  """The tasks a corrector trained for trained_task can do: a diacritics restorer does typos
  (and both) with the shipped word-list corrector."""
  return {"both": TASKS, "diacritics": TASKS}.get(trained_task, (trained_task,))


def line_language(line: str) -> str | None:
  """The language of the shipped word lists (`wordlist.languages()`) under which line's words,
  stripped of diacritics, are likeliest (each word's share of the list's counts, a floor for a
  word it lacks), among the lists that know at least half of them; None where none does."""
  words = [noise.strip_diacritics(w.lower()) for w in typos.WORD.findall(line)]
  score = {}
  for lang in wordlist.languages():
    counts = wordlist.plain_counts(lang)
    if words and sum(w in counts for w in words) >= len(words) / 2:
      total = wordlist.total(lang)
      score[lang] = sum(math.log(counts.get(w, 0.1) / total) for w in words)
  return max(score, key=score.get) if score else None


def _check_task(task: str | None, trained_task: str) -> str:
  """task (None: the trained one), or a ValueError saying which model can do it."""
  task = task or trained_task
  if task not in _tasks_of(trained_task):
    raise ValueError(f"this model was trained for {trained_task!r} and cannot do "
                     f"{task!r}; train a corrector with `python train.py --config "
                     "configs/diacritics.py:both` (a seq2seq model, best started from a "
                     "pretrained ByT5 with --config.init_from) and pass it with --model")
  return task


# -- command line -----------------------------------------------------------------------------

def _parse(argv, prog):
  parser = argparse.ArgumentParser(
      prog=prog,
      description="Restore diacritics (or fix typos) in text with a byte-level model.")
  parser.add_argument("text", nargs="*", help="text to correct; none: read lines from stdin")
  parser.add_argument("--model", default=None,
                      help="a bytelm workdir or export (default: the shipped diacritics model)")
  parser.add_argument("--task", choices=TASKS, default=None,
                      help="what to correct (default: what the model was trained for)")
  parser.add_argument("--lang", default=None,
                      help="the language of the typo corrector's word list ("
                           f"{', '.join(typos.LANGUAGES)}; default: chosen per line)")
  parser.add_argument("--diff", action="store_true", help="mark the changed characters")
  parser.add_argument("--no-lexicon", action="store_true",
                      help="a tagger alone, without the word forms of its training text")
  parser.add_argument("--batch-lines", type=int, default=None,
                      help="stdin lines corrected together (default: 1 on a terminal, else 64)")
  parser.add_argument("--serve", action="store_true",
                      help="start a page to try the corrector at http://127.0.0.1:PORT/")
  parser.add_argument("--port", type=int, default=serve.DEFAULT_PORT,
                      help=f"the page's port with --serve (default {serve.DEFAULT_PORT}; 0: any "
                           "free one)")
  parser.add_argument("--max-bytes", type=int, default=serve.MAX_BYTES,
                      help="the largest request the page takes, in bytes (default "
                           f"{serve.MAX_BYTES:,})")
  parser.add_argument("--debug", action="store_true", help=console.DEBUG_HELP)
  return parser.parse_args(argv)


def main(argv=None, prog: str = "python -m bytelm.demos.correct") -> int:
  """The command line (the module docstring); prog: its name in usage and help (bytelm-correct
  is this main)."""
  args = _parse(argv, prog)
  user_cache.enable_compilation_cache()  # a second call compiles nothing
  with console.reported(prog, args.debug or console.debugging()):
    if args.lang is not None and args.lang not in typos.LANGUAGES:
      raise ValueError(f"--lang {args.lang}: the typo corrector knows "
                       f"{', '.join(typos.LANGUAGES)}")
    if args.serve and args.text:
      raise ValueError("--serve takes its text from the page: leave out TEXT")
    # With --serve, --task typos starts a page of typos only (no model to load); otherwise
    # the page offers every task the model can do.
    corrector = Corrector.load(args.model, lexicon=not args.no_lexicon, task=args.task)
    if args.serve:
      server = serve.make_server(corrector, args.port, args.max_bytes)
  if args.serve:
    print(f"bytelm-correct: the page is at http://{serve.HOST}:{server.server_port}/ "
          "(Ctrl+C stops it)", flush=True)
    try:
      server.serve_forever()
    except KeyboardInterrupt:
      pass
    finally:
      server.server_close()
    return 0
  color = sys.stdout.isatty()

  def show(before: str, after: str) -> str:
    return changes.marked(before, after, color) if args.diff else after

  if args.text:
    line = " ".join(args.text)
    print(show(line, corrector([line], args.task, args.lang)[0]))
    return 0

  batch = args.batch_lines or (1 if sys.stdin.isatty() else 64)
  status, pending = 0, []  # pending: (raw line, decoded text or None, line ending)

  def flush():
    texts = [t for _, t, _ in pending if t is not None]
    fixed = iter(corrector(texts, args.task, args.lang) if texts else [])
    out = sys.stdout.buffer
    for raw, text, ending in pending:
      out.write(raw if text is None else show(text, next(fixed)).encode("utf-8") + ending)
    out.flush()
    pending.clear()

  for number, raw in enumerate(sys.stdin.buffer, 1):
    body = raw.rstrip(b"\r\n")
    ending = raw[len(body):]
    try:
      pending.append((raw, body.decode("utf-8"), ending))
    except UnicodeDecodeError as e:
      advice = encoding.not_utf8(body, e, f"line {number}", command=(
          f"iconv -f {encoding.likely_encoding(body)} -t utf-8"))
      print(f"{advice}; the line is passed through unchanged", file=sys.stderr)
      pending.append((raw, None, ending))
      status = 1
    if len(pending) >= batch:
      flush()
  flush()
  return status


if __name__ == "__main__":
  sys.exit(main())
