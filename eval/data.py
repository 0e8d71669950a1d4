"""Training from a corpus on disk: peak memory of a run against the corpus's size, and input
throughput of the data pipeline per process.

  python eval/data.py [--sizes 200,2048] [--recipes byt5,hat,bpe_decoder] [--steps 20]
  python eval/data.py --sizes 5,20 --steps 4 --throughput-steps 20    # a quick smoke run

1. A corpus of --sizes MiB of .txt files (each about --file-mb MiB, one document per file as
   a file: source reads them) is written into a scratch folder (--scratch, default a new one
   under /tmp, removed at the end unless --keep): documents of the embedded corpus's train
   split (`embedded:multilingual`) drawn with a seeded rng and joined by blank lines, so the
   text is realistic and a BPE vocabulary stays bounded. Written one file at a time (bounded
   memory, buffered writes).
2. For each recipe and size: `python train.py --config configs/<recipe>.py:tiny
   --config.data.train=file:<corpus>/*.txt --config.train.steps=N` as a subprocess, with a
   fresh workdir and a fresh BYTELM_CACHE, so that the run prepares the stream itself (and a BPE
   run trains and encodes its tokenizer) inside the measurement. Peak RSS is the larger of the
   child's ru_maxrss (os.wait4) and the peak of the summed VmRSS of the child and everything it
   starts, sampled from /proc every 0.2 s (also RssAnon, the part that is not file pages: a
   memmapped shard's pages read count in RSS but are the page cache's to drop). Wall time is
   the whole command's; `prepared_s` is when the run logged its first training step.
   rss_ratio = RSS(largest size) / RSS(smallest size) per recipe. A run past --rss-limit-mb
   or --run-timeout is killed and said to be (its peak then a lower bound).
3. Input throughput per process: the training BatchSource of the largest corpus, built by the
   library from the config (bytelm.runs.data.sources, the run's cache reused) right after the
   run that prepared it (its pages where a run that just prepared its data finds them: in the
   page cache, memory allowing; a corpus read cold from disk is slower, BENCHMARKS.md),
   `batch(step)` timed over 3 blocks of --throughput-steps new steps, all counted: MB/s = bytes_per_batch * 3 * steps / seconds (MB = 1e6
   bytes), for each of --throughput-recipes in the tiny variant the runs use and in the
   recipe's default shape (its real rows); a cProfile of the same calls says where the time goes.

Writes eval/results/data.json. The last line: rss_ratio_2g_vs_200m (the worst recipe's),
peak_rss_mb (over all runs), input_mb_per_s_min (the lower recipe's, at its default shape),
then per-recipe figures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pathlib
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import common  # eval/common.py; before bytelm, so that a missing install is one clear line
from bytelm.data import sources
from bytelm.runs import data as run_data

MIB = 1 << 20
REPEATS = 3  # blocks of --throughput-steps new batches timed, all of them counted
SAMPLE_S = 0.2  # /proc sampling period of a run's memory


# ---- the corpus ---------------------------------------------------------------------------------


def write_corpus(out: pathlib.Path, total_mib: float, file_mib: float, seed: int,
                 documents: list[bytes]) -> dict:
  """total_mib MiB of .txt files of about file_mib MiB each in out, made of documents drawn
  with a seeded rng; one file in memory at a time."""
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  lengths = np.asarray([len(d) + 2 for d in documents])
  total, file_bytes = int(total_mib * MIB), max(int(file_mib * MIB), 1)
  draw = max(16, int(2 * file_bytes / lengths.mean()))  # indices drawn at a time
  written, files, start = 0, 0, time.perf_counter()
  while written < total:
    want = min(file_bytes, total - written)
    parts, size = [], 0
    while size < want:
      for i in rng.integers(0, len(documents), draw):
        parts.append(documents[i])
        size += int(lengths[i])
        if size >= want:
          break
    with open(out / f"part-{files:05d}.txt", "wb", buffering=1 << 20) as f:
      f.write(b"\n\n".join(parts))
    written += size - 2
    files += 1
  seconds = time.perf_counter() - start
  print(f"corpus: {written / MIB:.0f} MiB in {files} files in {out} ({seconds:.1f} s, "
        f"{written / MIB / max(seconds, 1e-9):.0f} MiB/s)", flush=True)
  return {"dir": str(out), "bytes": written, "files": files, "seconds": seconds}


# ---- a run's memory -----------------------------------------------------------------------------


def _tree(root: int) -> list[int]:
  """root and its descendants (from each process's children list in /proc)."""
  found, todo = [], [root]
  while todo:
    pid = todo.pop()
    found.append(pid)
    try:
      for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
          todo.extend(int(c) for c in f.read().split())
    except OSError:
      pass
  return found


def _rss_kib(pid: int) -> tuple[int, int]:
  """(VmRSS, RssAnon) of pid in KiB; (0, 0) once it is gone."""
  rss = anon = 0
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          rss = int(line.split()[1])
        elif line.startswith("RssAnon:"):
          anon = int(line.split()[1])
  except OSError:
    pass
  return rss, anon


def measured_run(cmd: list[str], env: dict, log_path: pathlib.Path, rss_limit_mib: float = 0,
                 timeout_s: float = 0) -> dict:
  """Runs cmd; its wall time, peak RSS (module docstring), when it logged its first training
  step, its exit status and, where it failed, the tail of its output. A run whose sampled RSS
  passes rss_limit_mib, or that runs past timeout_s (0: no limit), is killed (SIGKILL, each
  of its processes) and says so in "killed": its peak is then a lower bound."""
  peak = {"rss": 0, "anon": 0, "processes": 1}
  killed = {}
  first_step = {}
  start = time.perf_counter()
  with open(log_path, "wb") as log:
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             cwd=common.ROOT)
    done = threading.Event()

    def sample():
      while not done.is_set():
        pids = _tree(child.pid)
        sizes = [_rss_kib(p) for p in pids]
        peak["rss"] = max(peak["rss"], sum(s[0] for s in sizes))
        peak["anon"] = max(peak["anon"], sum(s[1] for s in sizes))
        peak["processes"] = max(peak["processes"], len(pids))
        over_rss = rss_limit_mib and peak["rss"] / 1024 > rss_limit_mib
        over_time = timeout_s and time.perf_counter() - start > timeout_s
        if (over_rss or over_time) and not killed:
          killed["why"] = (f"RSS past {rss_limit_mib:g} MiB" if over_rss else
                           f"still running after {timeout_s:g} s")
          killed["at_s"] = time.perf_counter() - start
          for pid in reversed(pids):  # the children first, then the run itself
            try:
              os.kill(pid, 9)
            except OSError:
              pass
        done.wait(SAMPLE_S)

    def read():  # the child's output into the log, the first step's time noted
      for line in child.stdout:
        log.write(line)
        if "step" not in first_step and re.search(rb"\bstep\s+\d+\b", line) and (
            b"loss" in line):
          first_step["step"] = time.perf_counter() - start
      log.flush()

    threads = [threading.Thread(target=sample, daemon=True),
               threading.Thread(target=read, daemon=True)]
    for t in threads:
      t.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    for t in threads:
      t.join()
    child.returncode = os.waitstatus_to_exitcode(status)
  maxrss_mib = usage.ru_maxrss / 1024  # KiB on Linux
  out = {"returncode": child.returncode, "wall_s": wall,
         "first_step_s": first_step.get("step"), "ru_maxrss_mib": maxrss_mib,
         "sampled_rss_mib": peak["rss"] / 1024, "sampled_anon_mib": peak["anon"] / 1024,
         "processes": peak["processes"],
         "peak_rss_mib": max(maxrss_mib, peak["rss"] / 1024), "log": str(log_path),
         "killed": killed or None}
  if child.returncode:
    out["tail"] = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
  return out


# ---- input throughput ---------------------------------------------------------------------------


def throughput(recipe: str, variant: str | None, spec: str, workdir: pathlib.Path,
               steps: int, profile_steps: int) -> dict:
  """The recipe's training BatchSource of spec (as the trainer builds it), batch(step) timed
  over `steps` steps; then a cProfile of `profile_steps` more."""
  c = common.config(recipe, variant)
  c.data.train = spec
  start = time.perf_counter()
  source = run_data.sources(c, workdir, splits=("train",))["train"]
  built = time.perf_counter() - start
  source.batch(0)  # the first window's pages and lazy imports out of the timing
  times = []  # of REPEATS blocks of `steps` new batches each: the throughput is over all of
  for block in range(REPEATS):  # them (each block is recorded: the first pages in the stream)
    start = time.perf_counter()
    for step in range(1 + block * steps, 1 + (block + 1) * steps):
      source.batch(step)
    times.append(time.perf_counter() - start)
  seconds = sum(times)
  mb_per_s = source.bytes_per_batch * steps * REPEATS / seconds / 1e6
  profiler = cProfile.Profile()
  profiler.enable()
  for step in range(1 + REPEATS * steps, 1 + REPEATS * steps + profile_steps):
    source.batch(step)
  profiler.disable()
  text = io.StringIO()
  stats = pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("tottime")
  stats.print_stats(12)
  total = stats.total_tt
  top = sorted(((v[2], f"{pathlib.Path(k[0]).name}:{k[1]}({k[2]})")
                for k, v in stats.stats.items()), reverse=True)[:12]
  name = f"{recipe}:{variant or 'default'}"
  print(f"input {name}: {source!r}\n  {source.bytes_per_batch} bytes per batch, "
        f"{REPEATS} x {steps} batches in {seconds:.2f} s ({', '.join(f'{t:.2f}' for t in times)}"
        f"): {mb_per_s:.3f} MB/s (built in {built:.1f} s)",
        flush=True)
  print(f"  profile of {profile_steps} batches ({total:.2f} s), by own time:")
  for own, where in top[:8]:
    print(f"    {own / total:6.1%}  {own:7.3f} s  {where}")
  return {"recipe": recipe, "variant": variant or "default", "bytes_per_batch":
          source.bytes_per_batch, "steps": steps, "seconds": seconds, "block_seconds": times,
          "mb_per_s": mb_per_s,
          "build_s": built, "profile_total_s": total,
          "profile_top": [{"own_s": own, "share": own / total, "where": where}
                          for own, where in top],
          "profile_text": text.getvalue()}


# ---- main ---------------------------------------------------------------------------------------


def _label(mib: float) -> str:
  """A size in a key: 2048 -> "2g", 200 -> "200m"."""
  return f"{mib / 1024:g}g" if mib >= 1024 and mib % 1024 == 0 else f"{mib:g}m"


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="200,2048", help="corpus sizes, MiB, comma-separated")
  p.add_argument("--recipes", default="byt5,hat,bpe_decoder")
  p.add_argument("--variant", default="tiny", help="of every recipe's config in the runs")
  p.add_argument("--steps", type=int, default=20, help="training steps of each run")
  p.add_argument("--file-mb", type=float, default=1.0, help="MiB per .txt file (one document)")
  p.add_argument("--throughput-recipes", default="byt5,hat")
  p.add_argument("--throughput-variants", default="tiny,default",
                 help="config variants whose input is timed ('default': the recipe's own)")
  p.add_argument("--throughput-steps", type=int, default=200)
  p.add_argument("--profile-steps", type=int, default=100)
  p.add_argument("--seed", type=int, default=0, help="of the corpus's document draws")
  p.add_argument("--rss-limit-mb", type=float, default=8000,
                 help="a run past this RSS (MiB) is killed: the machine's memory is shared")
  p.add_argument("--run-timeout", type=float, default=0, help="s per run; 0: none")
  p.add_argument("--scratch", default="", help="scratch folder (default: new, under /tmp)")
  p.add_argument("--keep", action="store_true", help="keep the scratch folder")
  p.add_argument("--out", default=str(common.RESULTS / "data.json"))
  p.add_argument("--throughput-of", default="", help=argparse.SUPPRESS)  # one job, as JSON
  args = p.parse_args()
  if args.throughput_of:  # a child of the main run: time one BatchSource, print it as JSON
    job = json.loads(args.throughput_of)
    result = throughput(job["recipe"], job["variant"], job["spec"], pathlib.Path(job["workdir"]),
                        job["steps"], job["profile_steps"])
    print(json.dumps(result))
    return
  sizes = sorted(float(s) for s in args.sizes.split(",") if s)
  recipes = [r for r in args.recipes.split(",") if r]
  machine = common.start()
  machine["cpu"] = cpu_name()
  print(f"cpu: {machine['cpu']}", flush=True)
  scratch = pathlib.Path(args.scratch or tempfile.mkdtemp(prefix="bytelm-eval-data-"))
  scratch.mkdir(parents=True, exist_ok=True)
  results = {"machine": machine, "args": vars(args), "corpora": {}, "runs": {},
             "throughput": {}}
  try:
    documents = [t.encode("utf-8") for t in
                 sources.load_text("embedded:multilingual", "train")["text"] if t]
    specs = {}
    for size in sizes:
      corpus = scratch / f"corpus_{size:g}mb"
      results["corpora"][f"{size:g}"] = write_corpus(corpus, size, args.file_mb, args.seed,
                                                     documents)
      specs[size] = f"file:{corpus}/*.txt"
    del documents
    for recipe in recipes:
      for size in sizes:
        name = f"{recipe}_{size:g}mb"
        cache, workdir = scratch / f"cache_{name}", scratch / f"workdir_{name}"
        cmd = [sys.executable, "train.py", "--config",
               f"configs/{recipe}.py" + (f":{args.variant}" if args.variant else ""),
               f"--config.data.train={specs[size]}", f"--config.train.steps={args.steps}",
               "--workdir", str(workdir)]
        env = {**os.environ, "BYTELM_CACHE": str(cache)}
        print(f"run {name}: {' '.join(cmd)}", flush=True)
        run = measured_run(cmd, env, scratch / f"{name}.log", args.rss_limit_mb,
                           args.run_timeout)
        run["cmd"] = cmd
        results["runs"][name] = run
        print(f"  exit {run['returncode']}, {run['wall_s']:.1f} s wall (first step at "
              f"{run['first_step_s'] or float('nan'):.1f} s), peak RSS {run['peak_rss_mib']:.0f}"
              f" MiB (ru_maxrss {run['ru_maxrss_mib']:.0f}, sampled {run['sampled_rss_mib']:.0f}"
              f", of it anonymous {run['sampled_anon_mib']:.0f}; {run['processes']} processes)",
              flush=True)
        if run["killed"]:
          print(f"  KILLED at {run['killed']['at_s']:.0f} s: {run['killed']['why']} (its peak "
                f"is a lower bound)", flush=True)
        elif run["returncode"]:
          print(f"  FAILED; the end of its output ({run['log']}):\n{run['tail']}", flush=True)
        if size == sizes[-1] and recipe in args.throughput_recipes.split(","):
          # Right after the run that prepared it, as the run itself reads it next; in a
          # process of its own, so that this one stays small (a child forked from a large
          # parent starts with the parent's RSS in its ru_maxrss).
          for variant in [v for v in args.throughput_variants.split(",") if v]:
            job = dict(recipe=recipe, variant=None if variant == "default" else variant,
                       spec=specs[size], workdir=str(scratch / f"workdir_input_{recipe}"),
                       steps=args.throughput_steps, profile_steps=args.profile_steps)
            done = subprocess.run([sys.executable, __file__, "--throughput-of",
                                   json.dumps(job)], env={**env}, capture_output=True,
                                  text=True, check=True, cwd=common.ROOT)
            lines = done.stdout.strip().splitlines()
            print("\n".join(lines[:-1]), flush=True)
            results["throughput"][f"{recipe}:{variant}"] = json.loads(lines[-1])
        shutil.rmtree(cache, ignore_errors=True)  # not read again: its disk back
        shutil.rmtree(workdir, ignore_errors=True)
        common.write_json(args.out, results)
  finally:
    if args.keep:
      print(f"kept {scratch}")
    else:
      shutil.rmtree(scratch, ignore_errors=True)

  runs = results["runs"]
  lo, hi = f"{sizes[0]:g}mb", f"{sizes[-1]:g}mb"
  figures, ratios = {}, {}
  for recipe in recipes:
    a, b = runs[f"{recipe}_{lo}"], runs[f"{recipe}_{hi}"]
    ok = all(not r["returncode"] or r["killed"] for r in (a, b))  # killed: a lower bound
    ratios[recipe] = b["peak_rss_mib"] / a["peak_rss_mib"] if ok else math.nan
  worst = max(ratios.values(), key=lambda r: (math.isnan(r), r))
  # The bar is on the recipes' own rows (default shapes): tiny's 32-64-byte rows measure the
  # per-row overhead more than the pipeline (their figures are reported too).
  real_rates = [t["mb_per_s"] for t in results["throughput"].values()
                if t["variant"] == "default"]
  figures[f"rss_ratio_{_label(sizes[-1])}_vs_{_label(sizes[0])}"] = worst
  figures["peak_rss_mb"] = round(max(r["peak_rss_mib"] for r in runs.values()))
  figures["input_mb_per_s_min"] = min(real_rates) if real_rates else math.nan
  for recipe in recipes:
    figures[f"rss_ratio_{recipe}"] = ratios[recipe]
    figures[f"rss_mb_{recipe}_{hi}"] = round(runs[f"{recipe}_{hi}"]["peak_rss_mib"])
  for key, t in results["throughput"].items():
    figures["input_mb_per_s_" + key.replace(":", "_")] = t["mb_per_s"]
  figures["failed_runs"] = sum(bool(r["returncode"]) and not r["killed"] for r in runs.values())
  figures["killed_runs"] = sum(bool(r["killed"]) for r in runs.values())
  results["figures"] = figures
  common.write_json(args.out, results)
  print(f"results: {args.out}")
  common.last_line(figures, digits=3)


if __name__ == "__main__":
  main()
