"""Generation speed: the compiled loop against the host loop it replaced, for each byte recipe.

  python eval/generation.py [--recipes bytes_decoder,hat,hnet] [--new-bytes 128] [--repeats 5]

Each recipe's default config, untrained (the weights do not change the work: generation is
forced to --new-bytes, eos never ends it), greedy, one 64-byte prompt. "host" is the loop the
library ran before: one compiled step per byte called from Python, the byte picked in numpy
and a word segmenter re-run on the host (`on_host=True`); "loop" is one compiled
`lax.while_loop` for the whole generation, the segmenter cut on the device. Both give the
same bytes (checked before timing); the calls alternate (`bytelm.timing.compare`) after one
call each that compiles. Prints new bytes/s of each and the ratio.
"""

from __future__ import annotations

import argparse

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
from flax import nnx

from bytelm import generation, models, timing
from bytelm.text import segment
from bytelm.text.tokenizer import EOS_ID, OFFSET

# Recipes whose model generates bytes with no fitted file (a BPE tokenizer, an entropy model).
RECIPES = ("bytes_decoder", "hat", "hnet")
PROMPT = b"Byte models read raw UTF-8, so a typo costs one byte, not a token."[:64]


def generators(recipe: str, new_bytes: int) -> dict:
  """{"host": call, "loop": call}: the two loops generating new_bytes after PROMPT."""
  c = common.config(recipe)
  family = models.family(c.model_family)
  model = family.model_cls(family.config_cls(**c.model.to_dict()), rngs=nnx.Rngs(0))
  if c.model_family == "hierarchical":
    segments = c.data.get("segments")
    segmenter = segment.Segmenter.from_settings(segments) if segments else None
    return {name: (lambda on_host=on_host: generation.hierarchical_bytes(
        model, PROMPT, new_bytes, segmenter=segmenter, stop_at_eos=False, on_host=on_host))
            for name, on_host in (("host", True), ("loop", False))}
  ids = [EOS_ID] + [b + OFFSET for b in PROMPT]
  return {name: (lambda on_host=on_host: generation.decoder_ids(
      model, ids, new_bytes, eos_id=-1, on_host=on_host))
          for name, on_host in (("host", True), ("loop", False))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--recipes", default=",".join(RECIPES))
  p.add_argument("--new-bytes", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5, help="alternating timed calls each")
  args = p.parse_args()
  names = args.recipes.split(",")
  for n in names:
    if n not in RECIPES:
      raise SystemExit(f"unknown recipe {n!r}; choose from {RECIPES}")
  common.start()
  calls = {}
  for n in names:
    pair = generators(n, args.new_bytes)
    if pair["host"]() != pair["loop"]():
      raise SystemExit(f"{n}: the compiled loop and the host loop generated different bytes")
    calls.update({f"{n} {side}": fn for side, fn in pair.items()})
  seconds = timing.compare(calls, repeats=args.repeats)
  print("\n| recipe | host loop, new bytes/s | compiled loop, new bytes/s | ratio |\n"
        "|---|---|---|---|")
  figures = {}
  for n in names:
    host, loop = (args.new_bytes / seconds[f"{n} {side}"] for side in ("host", "loop"))
    print(f"| {n} | {host:,.0f} | {loop:,.0f} | {loop / host:.2f}x |")
    figures.update({f"{n}_host": round(host), f"{n}_loop": round(loop),
                    f"{n}_ratio": loop / host})
  common.last_line(figures, digits=2)


if __name__ == "__main__":
  main()
