"""How many kernels a train step launches: the HLO census of the flat and hierarchical recipes.

  python eval/hlo_census.py [--rows 16,256] [--steps-per-call 4] [--timing-steps 3]

On an accelerator the small recipes here are bound by kernel launches (BENCHMARKS.md, "On an
H200"); the optimized HLO of each recipe's compiled train step is the proxy this machine can
count (bytelm.training.hlo): launched instructions, loop-weighted launches, fusions, dots, while
loops, and which source lines they come from. For each --rows, every recipe's step is compiled
from a fresh model (budget.step_timer) and timed side by side (bytelm.timing), one step a call
and --steps-per-call steps a call (the trainer's train.steps_per_call); with
--attention-kernels bytelm,xla, also one step a call with each model.attention_kernel, side by
side. Writes eval/results/hlo_census.json; the last line: launches per step of each recipe at
the first rows.
"""

from __future__ import annotations

import argparse
import collections
import pathlib

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
from bytelm import timing
from bytelm.training import budget, hlo

RECIPES = ("bytes_decoder", "hat", "blt", "hnet")


def by_file(sources: collections.Counter) -> collections.Counter:
  """Launches per source file ("models/pooling.py"), the optimizer's update on its own line."""
  out = collections.Counter()
  for where, n in sources.items():
    path, function, _ = (where.split(":") + ["", ""])[:3]
    out[f"{path}:{function}" if path.endswith("trainer.py") else path] += n
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--recipes", default=",".join(RECIPES))
  p.add_argument("--rows", default="16,256", help="rows of 256 bytes per step, comma-separated")
  p.add_argument("--steps-per-call", type=int, default=4)
  p.add_argument("--timing-steps", type=int, default=3, help="alternating timed calls each")
  p.add_argument("--attention-kernels", default="bytelm",
                 help="model.attention_kernel values to time against each other, e.g. bytelm,xla")
  p.add_argument("--root", default="workdirs/eval_hlo_census")
  p.add_argument("--out", default=str(common.RESULTS / "hlo_census"))
  args = p.parse_args()
  names = args.recipes.split(",")
  k = args.steps_per_call
  root = pathlib.Path(args.root)
  machine = common.start()
  results = {"machine": machine, "steps_per_call": k, "rows": {}}
  for rows in map(int, args.rows.split(",")):
    configs = {n: budget.prepare(common.config(n), root / n) for n in names}
    for c in configs.values():
      c.train.batch_size = rows
    timers = {n: budget.step_timer(configs[n], root / n) for n in names}
    timers.update({f"{n} x{k}": budget.step_timer(configs[n], root / n, k) for n in names})
    counts = {n: hlo.census(t.compiled.as_text()) for n, t in timers.items()}
    seconds = timing.compare({n: t.call for n, t in timers.items()}, args.timing_steps)
    for t in timers.values():
      t.close()
    del timers
    table = {}
    print(f"\n{rows} rows of 256 bytes; ms per step: one step a call, and {k} a call\n")
    print(f"| recipe | instructions | launches | fusions | dots | while loops | ms/step | "
          f"ms/step, {k} a call | launches/step, {k} a call |\n" + "|---" * 9 + "|")
    for n in names:
      one, many = counts[n], counts[f"{n} x{k}"]
      table[n] = {**one.row(), "ms_per_step": 1e3 * seconds[n],
                  f"ms_per_step_{k}_a_call": 1e3 * seconds[f"{n} x{k}"] / k,
                  f"launches_per_step_{k}_a_call": many.launches / k,
                  "by_file": dict(by_file(one.by_source).most_common()),
                  "by_op": dict(one.by_op.most_common())}
      print(f"| {n} | {one.instructions} | {one.launches} | {one.fusions} | {one.dots} | "
            f"{one.while_loops} | {table[n]['ms_per_step']:.0f} | "
            f"{table[n][f'ms_per_step_{k}_a_call']:.0f} | {many.launches / k:.0f} |")
    for n in names:
      top = ", ".join(f"{f} {c}" for f, c in by_file(counts[n].by_source).most_common(8))
      print(f"\n{n}, launches by source: {top}")
    kernels = args.attention_kernels.split(",")
    if len(kernels) > 1:
      timers = {}
      for n in names:
        for kernel in kernels:
          configs[n].model.attention_kernel = kernel
          timers[n, kernel] = budget.step_timer(configs[n], root / n).call
      seconds = timing.compare({f"{n} {kern}": t for (n, kern), t in timers.items()},
                               args.timing_steps)
      del timers
      print(f"\nms per step by model.attention_kernel\n\n| recipe | " + " | ".join(kernels)
            + " |\n|---|" + "---|" * len(kernels))
      for n in names:
        table[n]["ms_per_step_by_attention_kernel"] = {
            kern: 1e3 * seconds[f"{n} {kern}"] for kern in kernels}
        print(f"| {n} | " + " | ".join(f"{1e3 * seconds[f'{n} {kern}']:.0f}" for kern in kernels)
              + " |")
    results["rows"][rows] = table
  out = common.write_json(pathlib.Path(args.out).with_suffix(".json"), results)
  print(f"\nresults: {out}")
  first = results["rows"][int(args.rows.split(",")[0])]
  common.last_line({f"launches_{n}": first[n]["launches"] for n in names})


if __name__ == "__main__":
  main()
