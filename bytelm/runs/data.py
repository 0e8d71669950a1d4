"""A run's data: the one mapping from its config to its training and validation batches.

The trainer, the training budget (bytelm.training.budget) and the eval scripts all read a run's
batches through `sources`, so that they see the same batches: the objective and its settings
(span corruption's noise, correction's task, typo rate and keyboard), the segments of a
hierarchical model, and the BPE tokenizer of a subword model. What a run fits to its training
text is made once, in its workdir, and reused by a resumed run, evaluation and generation:
an entropy segmenter's n-gram model (entropy_model.npz) and a BPE tokenizer (tokenizer.json);
`fitted_files` lists them, and an export carries them.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping

from bytelm.data import bpe, pipeline
from bytelm.data import sources as sources_lib

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
ENTROPY_MODEL = "entropy_model.npz"  # in the run's workdir, unless the config names one


def sources(config, workdir=None, splits=SPLITS, *, process_index: int = 0,
            process_count: int = 1, write: bool = True) -> dict[str, pipeline.BatchSource]:
  """{split: BatchSource} of a run's config (an ml_collections.ConfigDict) for each of splits.

  workdir: where the fitted parts are kept (made there on first use), needed only by configs
  that fit something (entropy segments, a BPE tokenizer). process_index, process_count: this
  process's slice of each global batch. write: whether this process writes the tokenizer (in
  a multi-process run process 0 does; the others train the same one, deterministically).
  The validation batches come from the validation split of data.train, or from
  data.validation: its validation split where it has splits of its own, else all of it.
  """
  settings = _settings(config, workdir, write)
  dc = config.data
  spec = {"train": dc.train, "validation": dc.validation or dc.train}
  unknown = sorted(set(splits) - set(spec))
  if unknown:
    raise ValueError(f"unknown splits {unknown}; a run has {SPLITS}")
  if "validation" in splits:
    _warn_if_trained_on(spec["train"], spec["validation"])
  apart = bool(dc.validation) and dc.validation != dc.train  # validation data of its own
  return {split: pipeline.make_source(spec[split], split, seed=config.seed,
                                      process_index=process_index, process_count=process_count,
                                      invalid_utf8=invalid_utf8(config),
                                      whole=split == "validation" and apart, **settings)
          for split in splits}


def invalid_utf8(config) -> str:
  """What a run does with text that is not valid UTF-8 (data.invalid_utf8; "error" where a
  config predates the field)."""
  return config.data.get("invalid_utf8", "error")


def stream_hashes(data: Mapping[str, pipeline.BatchSource]) -> dict[str, list[str]]:
  """{split: [SHA-256 of each prepared stream read]} (an in-memory stream, the embedded
  corpus, has none: ""): what a checkpoint records, so that a run resumed on changed data is
  refused."""
  return {split: source.content_hashes for split, source in data.items()}


def _warn_if_trained_on(train: str, validation: str) -> None:
  """A warning where data.validation names another source that reads files the training
  split reads: its bits per byte would then measure how well the model remembers its training
  text. (One source serves both splits without overlap: its own splits, or a held-out tail.)"""
  if validation == train:  # its validation split: held out of its documents (data.prepare)
    return

  def files(spec, split):
    return {f for s, _ in sources_lib.parse_mixture(spec)
            for f in sources_lib.file_paths(s, split) or ()}

  shared = sorted(files(validation, "validation") & files(train, "train"))
  if shared:
    log.warning("the validation split reads %d of the training files (%s%s), so its bits per "
                "byte are not held out: give data.validation other files, or put '{split}' in "
                "the data.train glob for per-split folders", len(shared),
                ", ".join(shared[:3]), ", ..." if len(shared) > 3 else "")


def _settings(config, workdir, write: bool) -> dict:
  """BatchSource's keyword arguments (but seed and the process's slice) of a run's config."""
  dc = config.data
  kw = dict(objective=dc.objective, batch_size=config.train.batch_size,
            input_length=dc.input_length, target_length=dc.get("target_length"),
            noise_density=dc.noise_density, mean_noise_span_length=dc.mean_noise_span_length)
  if dc.objective == "correction":  # its noise settings, where the config has them
    kw.update({k: dc[k] for k in ("correction_task", "typo_rate", "keyboard") if k in dc})
  if "segments" in dc:  # hierarchical models: segment ids in every batch
    kw["segments"] = dc.segments.to_dict()
    fitted = entropy_model(config, workdir)
    if fitted is not None:
      kw["segments"]["entropy_model"] = str(fitted)
  if "tokenizer" in dc:  # a subword LM: BPE trained on the training text once, in the workdir
    kw["tokenizer"] = tokenizer(config, workdir, write=write)
  return kw


def entropy_model(config, workdir) -> pathlib.Path | None:
  """An entropy-segmented run's n-gram model (workdir/entropy_model.npz, fitted there on the
  training text on first use), or None where the run has none to fit (other segments, or the
  config names its own file)."""
  segments = config.data.get("segments")
  if segments is None or segments.kind != "entropy" or segments.get("entropy_model"):
    return None
  return pipeline.fit_entropy_model(config.data.train, _in(workdir, ENTROPY_MODEL),
                                    invalid_utf8=invalid_utf8(config), **segments.to_dict())


def tokenizer(config, workdir, write: bool = True):
  """A BPE run's tokenizer (workdir/tokenizer.json, trained there on first use), checked to fit
  the model's embedding; None for a byte run."""
  dc = config.data
  if "tokenizer" not in dc:
    return None
  tok = bpe.load_or_train(_in(workdir, bpe.FILENAME), dc.train, dc.tokenizer.vocab_size,
                          write=write, invalid_utf8=invalid_utf8(config))
  rows = config.model.get("vocab_size")
  if rows is not None and tok.get_vocab_size() > rows:
    raise ValueError(f"the tokenizer has {tok.get_vocab_size()} tokens but the model only "
                     f"{rows} embedding rows; set model.vocab_size >= {tok.get_vocab_size()} "
                     "(a multiple of 128)")
  return tok


def fitted_files(config: Mapping, workdir) -> dict[str, pathlib.Path]:
  """{name: path} of each file a run fitted to its data and its model reads text with (the
  entropy segmenter's n-gram model, the BPE tokenizer), under the name a workdir or export
  keeps it by; empty for a run that fitted nothing. config: a run's config.json (a dict) or
  ConfigDict. A config that names its own entropy model (data.segments.entropy_model) gives
  that path, as the trainer reads it; the others are in `workdir` (None: where they would be is
  unknown, a ValueError). Paths are not checked to exist."""
  data = config.get("data") or {}
  segments = data.get("segments") or {}
  found = {}
  if segments.get("kind") == "entropy":
    named = segments.get("entropy_model")
    found[ENTROPY_MODEL] = (pathlib.Path(named).expanduser() if named
                            else _at(workdir, ENTROPY_MODEL))
  if data.get("tokenizer"):
    found[bpe.FILENAME] = _at(workdir, bpe.FILENAME)
  return found


def _at(workdir, name: str) -> pathlib.Path:
  if workdir is None:
    raise ValueError(f"this config fits its {name} to the training text: give the run's "
                     "workdir, where it is kept")
  return pathlib.Path(workdir) / name


def _in(workdir, name: str) -> pathlib.Path:
  """workdir/name, the workdir made if it is not there yet (the file is about to be)."""
  path = _at(workdir, name)
  path.parent.mkdir(parents=True, exist_ok=True)
  return path
