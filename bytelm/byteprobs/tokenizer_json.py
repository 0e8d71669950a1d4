"""Reading a Hugging Face tokenizer.json as a `tokenization.BPE`, or refusing it with the part
named.

Read exactly:
- byte-level BPE (GPT-2, RoBERTa-style, bytelm's own): a ByteLevel pre-tokenizer with or
  without GPT-2's regex, or a Split with a pattern of `splits.PATTERNS` (Llama-3, GPT-4's
  cl100k, GPT-4o's o200k, Qwen2) before a ByteLevel without its regex; `ignore_merges`;
- SentencePiece-style BPE with byte fallback (Llama-2, Mistral, and the like): spaces as "▁"
  through a Replace normalizer (with "▁" prepended or not) or a Metaspace pre-tokenizer;
- added tokens: special ones spell nothing (as `split_special_tokens=True`: a text that holds
  "<|endoftext|>" is read as its characters), the others are matched in the text first;
- the ids a TemplateProcessing post-processor puts before a text (a BOS): `BPE.bos`.

Refused, and why:
- WordPiece, WordLevel and Unigram models: a Unigram model (T5, ALBERT, XLNet) tokenizes by
  the likeliest segmentation, which does not decide token by token from the left the way BPE's
  merges do, so the probes and stable cuts here do not carry over; WordPiece and WordLevel
  have unknown tokens, so not every text has tokens;
- normalizers that change the text (NFC, NFKC, lowercasing, stripping accents): the byte
  probabilities would then be over normalised texts only, and which prefixes can still
  become one is not worked out here;
- SentencePiece BPE without byte fallback (characters outside the vocabulary become <unk>);
- other pre-tokenizers and Split patterns (whitespace, punctuation, digits and Split patterns
  outside `splits.PATTERNS`): the stable cut and probes are argued per pre-tokenizer;
- BPE dropout, continuing-subword prefixes and end-of-word suffixes; added tokens that strip
  spaces around them or match single words only.

Axis legend: none (host code on the parsed JSON).
"""

from __future__ import annotations

import json

from bytelm.byteprobs import splits
from bytelm.data.bpe import byte_chars

SPACE = "\u2581"  # SentencePiece's "▁"


def refusal(why: str) -> ValueError:
  return ValueError(f"tokenizer.json not supported: {why}. bytelm.byteprobs reads byte-level BPE "
                    "(ByteLevel with GPT-2's regex, none, or after a Split with Llama-3's, "
                    "Qwen2's or o200k's pattern) and SentencePiece-style BPE with byte fallback; "
                    "docs/api.md lists what is covered and why the rest is refused")


def from_spec(cls, spec: dict):
  """cls (`tokenization.BPE`) from a parsed tokenizer.json."""
  model = spec.get("model") or {}
  kind = model.get("type")
  if kind != "BPE":
    raise refusal(f"its model is {kind!r}, not BPE" + (
        " (a Unigram model picks the likeliest segmentation of the whole text, which the exact "
        "byte probabilities here do not follow)" if kind == "Unigram" else ""))
  for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
    if model.get(key):
      raise refusal(f"its BPE model sets {key}={model[key]!r}")
  added, specials = _added_tokens(spec)
  if model.get("byte_fallback"):
    if added:
      raise refusal(f"it has byte fallback and added tokens that are not special "
                    f"({next(iter(added))!r}): where '▁' goes around them is not read")
    options = _sentencepiece(spec)
    as_bytes = _sentencepiece_bytes
    if SPACE not in model["vocab"]:
      raise refusal("it has byte fallback but no '▁' token: a space is then spelled by the "
                    "byte tokens of '▁' (<0xE2><0x96><0x81>), which are not read as a space")
  elif SPACE in json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")],
                          ensure_ascii=False):
    raise refusal("it is SentencePiece-style ('▁' for spaces) without byte fallback: a "
                  "character outside its vocabulary becomes an unknown token, so not every "
                  "text has tokens")
  else:
    options = _byte_level(spec)
    byte_of = {c: b for b, c in enumerate(byte_chars())}

    def as_bytes(token: str) -> bytes:
      try:
        return bytes(byte_of[c] for c in token)
      except KeyError as e:
        raise refusal(f"its token {token!r} is not in ByteLevel's alphabet and it has no byte "
                      "fallback") from e

  vocab, chars = {}, set()
  # A byte-fallback token spells a byte that a character token may spell too ("<0x61>" and
  # "a"): the character's is the one BPE makes, the other is never canonical. So is a
  # SentencePiece token with a space in it (spaces are "▁" before BPE sees them). An added
  # token that is also in the vocabulary keeps its place there (merges may make it).
  for token, i in sorted(model["vocab"].items(), key=lambda item: _is_byte_token(item[0])):
    if token in specials or model.get("byte_fallback") and " " in token:
      continue
    data = as_bytes(token)
    if data in vocab:
      continue
    vocab[data] = i
    if not _is_byte_token(token) and len(token) == 1:
      chars.add(data)
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  added_bytes = {t.encode("utf-8"): i for t, i in added.items()}
  return cls(vocab, [(as_bytes(a), as_bytes(b)) for a, b in merges],
             special_ids=list(specials.values()), added=added_bytes,
             ignore_merges=bool(model.get("ignore_merges")),
             chars=frozenset(chars) if model.get("byte_fallback") else None,
             bos=_bos(spec, {**specials, **added}, model["vocab"]), **options)


def _added_tokens(spec) -> tuple[dict[str, int], dict[str, int]]:
  """(the added tokens matched in text, the special ones): content -> id."""
  added, specials = {}, {}
  for t in spec.get("added_tokens") or []:
    if t.get("special"):
      specials[t["content"]] = t["id"]
      continue
    for key in ("lstrip", "rstrip", "single_word"):
      if t.get(key):
        raise refusal(f"its added token {t['content']!r} sets {key}")
    added[t["content"]] = t["id"]
  return added, specials


def _byte_level(spec) -> dict:
  """BPE's options for a byte-level tokenizer.json, or a refusal naming the part."""
  norm = spec.get("normalizer")
  if norm:
    raise refusal(f"it has a {norm.get('type')!r} normalizer, which changes the text")
  pre = spec.get("pre_tokenizer") or {}
  steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
  *before, last = steps or [{}]
  if last.get("type") != "ByteLevel":
    raise refusal(f"its pre-tokenizer is {_describe(pre)}, not ByteLevel (alone or after a "
                  "Split)")
  if last.get("add_prefix_space"):
    raise refusal("its ByteLevel pre-tokenizer adds a prefix space")
  use_regex = last.get("use_regex", True)
  if not before:
    return {"use_regex": use_regex}
  if len(before) > 1 or before[0].get("type") != "Split" or use_regex:
    raise refusal(f"its pre-tokenizer is {_describe(pre)}; a Split before a ByteLevel without "
                  "its regex is read, not other sequences")
  split = before[0]
  pattern = (split.get("pattern") or {}).get("Regex")
  if split.get("behavior") != "Isolated" or split.get("invert") or pattern is None:
    raise refusal(f"its Split pre-tokenizer is {split.get('behavior')!r} with "
                  f"invert={split.get('invert')!r} on {split.get('pattern')!r}; an Isolated "
                  "regex split is read")
  if pattern == splits.GPT2_AS_SPLIT:
    return {"use_regex": True}
  try:
    return {"split": splits.RegexSplit(pattern)}
  except ValueError as e:
    raise refusal(str(e)) from None


def _sentencepiece(spec) -> dict:
  """BPE's options for a SentencePiece-style tokenizer.json (byte fallback), or a refusal."""
  norm = spec.get("normalizer") or {}
  steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] if norm \
      else []
  prefix, replaced = b"", False
  for step in steps:
    if step.get("type") == "Prepend" and step.get("prepend") == SPACE and not replaced:
      prefix = b" "
    elif (step.get("type") == "Replace" and (step.get("pattern") or {}).get("String") == " "
          and step.get("content") == SPACE):
      replaced = True
    else:
      raise refusal(f"it has a {step.get('type')!r} normalizer ({step}), which changes the text")
  pre = spec.get("pre_tokenizer")
  split = splits.Whole()
  if pre:
    if pre.get("type") != "Metaspace" or pre.get("replacement", SPACE) != SPACE or replaced:
      raise refusal(f"its pre-tokenizer is {_describe(pre)}; with byte fallback a Metaspace "
                    "(or a normalizer putting '▁' for spaces) is read")
    # "always" and "first" put no "▁" before a text that starts with one, so two texts get
    # the same tokens (" a" and "a"); the decoder strips one "▁", and that is the text
    # read here: its tokens spell "▁" + text whatever text starts with (`BPE.prefix`).
    if pre.get("prepend_scheme", "always") != "never" and pre.get("add_prefix_space", True):
      prefix = b" "
    if pre.get("split", True):
      split = splits.SpaceSplit()
  elif not replaced:
    raise refusal("it has byte fallback but neither a Metaspace pre-tokenizer nor a normalizer "
                  "putting '▁' for spaces")
  return {"split": split, "prefix": prefix, "metaspace": True}


def _is_byte_token(token: str) -> bool:
  return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def _sentencepiece_bytes(token: str) -> bytes:
  """The bytes a SentencePiece-style token spells: "<0xE2>" one byte, "▁" a space."""
  if _is_byte_token(token):
    return bytes([int(token[3:5], 16)])
  return token.replace(SPACE, " ").encode("utf-8")


def _bos(spec, added: dict[str, int], vocab: dict[str, int]) -> tuple[int, ...]:
  """The ids a TemplateProcessing post-processor (alone or in a Sequence) puts before a
  single text."""
  post = spec.get("post_processor") or {}
  steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
  for step in steps:
    if step.get("type") != "TemplateProcessing":
      continue
    ids = []
    for part in step.get("single", []):
      if "Sequence" in part:
        return tuple(ids)
      name = part["SpecialToken"]["id"]
      ids.append(added.get(name, vocab.get(name)))
    return tuple(ids)
  return ()


def _describe(pre: dict) -> str:
  if pre.get("type") == "Sequence":
    return "a Sequence of " + ", ".join(repr(p.get("type")) for p in pre.get("pretokenizers", []))
  return repr(pre.get("type"))
