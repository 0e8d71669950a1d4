"""A census of a compiled step's HLO: how many kernels it launches, and which code they come from.

A small model's train step on a GPU is bound by kernel launches, not arithmetic: each top-level
instruction of the optimized HLO (a fusion, a library matmul, a copy, a scatter) is at least one
launch, and the body of a while loop launches its instructions once per iteration. The
optimized HLO of the same program on a CPU is a proxy for that count: XLA:CPU fuses less than
XLA:GPU (it wraps lone elementwise ops in fusions of their own, and calls its matmul library
through custom fusions), so the absolute numbers differ, but the differences between two
models, or before and after a change, point the same way.

`census(compiled.as_text())` walks the program from its entry computation: fusion bodies count
as their fusion (a dot fused inside one still counts as a dot), loop bodies are walked and
weighted by their trip count where XLA knows it, and every launched instruction is attributed
to the innermost source line of the Python that made it (the HLO's stack frames), so that
`by_source` names the functions worth batching.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re

# Instructions that launch nothing: they name buffers or values the launches read.
FREE = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast",
                  "opt-barrier", "after-all", "partition-id", "replica-id"})

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9_\-]*)\(")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)"
                     r"=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_KIND = re.compile(r"kind=(k\w+)")


@dataclasses.dataclass
class Census:
  """Counts of one compiled program. Static counts are instructions in the program text;
  `launches` weights each by how often it runs (loop bodies: their trip count, where known)."""

  instructions: int = 0  # launched instructions (not FREE) in the entry and its loop bodies
  launches: int = 0  # the same, each times the trip counts of the loops around it
  fusions: int = 0  # of the instructions: fusions (XLA:CPU: lone ops wrapped, matmuls too)
  dots: int = 0  # dot (matmul) instructions, inside fusions or not
  while_loops: int = 0
  unknown_trips: int = 0  # loops whose trip count XLA does not know (counted once)
  custom_calls: int = 0
  by_op: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  by_source: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def row(self) -> dict:
    """The scalar counts, for a table."""
    return {k: v for k, v in dataclasses.asdict(self).items() if isinstance(v, int)}


def _computations(text: str) -> tuple[dict[str, list[str]], str]:
  """({name: its instruction lines}, the entry computation's name)."""
  comps, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      m = _COMPUTATION.match(line)
      if m and "(" in line:  # a computation's signature, not the module's header
        current = m.group(2)
        comps[current] = []
        if m.group(1):
          entry = current
    elif line.strip() == "}":
      current = None
    else:
      comps[current].append(line)
  if entry is None:
    raise ValueError("no ENTRY computation: give the text of a compiled program "
                     "(jax.jit(f).lower(...).compile().as_text())")
  return comps, entry


def _frames(text: str) -> dict[int, str]:
  """{stack_frame_id: "path/file.py:function:line"} of the innermost frame in bytelm's own code
  (else the innermost), from the module's FileNames / FunctionNames / FileLocations /
  StackFrames tables; paths from "bytelm/" on."""
  tables, section = collections.defaultdict(dict), None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
    elif not line.strip() or line.startswith(("%", "ENTRY", "HloModule")):
      section = None
    elif section:
      key, _, value = line.partition(" ")
      tables[section][int(key)] = value

  def fields(value):
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", value)}

  files = {k: json.loads(v) for k, v in tables["FileNames"].items()}
  functions = {k: json.loads(v) for k, v in tables["FunctionNames"].items()}
  locations = {}
  for k, v in tables["FileLocations"].items():
    f = fields(v)
    path = files.get(f["file_name_id"], "?")
    ours = "/bytelm/" in path
    path = path.rsplit("/bytelm/", 1)[-1] if ours else path.rsplit("/", 1)[-1]
    locations[k] = (f"{path}:{functions.get(f['function_name_id'], '?')}:{f['line']}", ours)
  chain = {k: fields(v) for k, v in tables["StackFrames"].items()}
  out = {}
  for k in chain:
    frame, seen, first = k, set(), None
    while frame in chain and frame not in seen:  # innermost first, toward the caller
      seen.add(frame)
      where, ours = locations.get(chain[frame]["file_location_id"], ("?", False))
      first = first or where
      if ours:
        out[k] = where
        break
      # The text prints a frame's parent as the parent's id + 1 (0: none; checked on jax
      # 0.10.2 against nested Python calls).
      frame = chain[frame].get("parent_frame_id", 0) - 1
    else:
      out[k] = first or "?"
  return out


def _parse(line: str) -> tuple[str, str] | None:
  """(opcode, the rest of the line) of an instruction line."""
  m = _INSTRUCTION.match(line)
  if not m:
    return None
  op = _OPCODE.search(" " + m.group(2))
  return (op.group(1), m.group(2)) if op else None


def census(text: str) -> Census:
  """The census of a compiled program's HLO text (`compiled.as_text()`)."""
  comps, entry = _computations(text)
  frames = _frames(text)
  out = Census()

  def dots_in(name: str) -> int:  # dots in a fused computation and the ones it calls
    total = 0
    for line in comps.get(name, ()):
      parsed = _parse(line)
      if parsed is None:
        continue
      op, rest = parsed
      total += op == "dot"
      total += sum(dots_in(c) for kind, c in _CALLED.findall(rest) if kind == "calls")
    return total

  def source(rest: str, called: dict) -> str:  # a fusion without a frame: its root's
    frame = _FRAME.search(rest)
    if frame is None and "calls" in called:
      root = next((l for l in comps.get(called["calls"], ()) if l.lstrip().startswith("ROOT")),
                  "")
      frame = _FRAME.search(root)
    return frames.get(int(frame.group(1)), "?") if frame else "?"

  def walk(name: str, times: int) -> None:
    for line in comps.get(name, ()):
      parsed = _parse(line)
      if parsed is None or parsed[0] in FREE:
        continue
      op, rest = parsed
      called = dict(_CALLED.findall(rest))
      if op == "while":
        out.while_loops += 1
        trip = _TRIP.search(rest)
        out.unknown_trips += trip is None
        n = int(trip.group(1)) if trip else 1
        walk(called["condition"], times * (n + 1))
        walk(called["body"], times * n)
        continue
      if op in ("conditional", "call"):
        branches = _BRANCHES.search(rest)
        names = ([b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches
                 else [called[k] for k in ("to_apply", "true_computation", "false_computation")
                       if k in called])
        for branch in names:
          walk(branch, times)
        continue
      out.instructions += 1
      out.launches += times
      key = op
      if op == "fusion":
        out.fusions += 1
        fused_dots = dots_in(called.get("calls", ""))
        out.dots += fused_dots
        kind = _KIND.search(rest)
        key = f"fusion:{kind.group(1) if kind else '?'}" + (":dot" if fused_dots else "")
      elif op == "dot":
        out.dots += 1
      elif op == "custom-call":
        out.custom_calls += 1
      out.by_op[key] += times
      out.by_source[source(rest, called)] += times

  walk(entry, 1)
  return out
