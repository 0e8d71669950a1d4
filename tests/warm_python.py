"""A `python` that starts warm: the docs' commands without paying for JAX's imports each time.

The docs test runs some twenty `python ...` commands, and each used to spend seconds of a
2-core machine importing jax, flax, orbax and bytelm before doing a second's work. This file is
both halves of a fork server:

  python warm_python.py serve SOCKET   imports those modules once (no JAX computation, so no
                                       threads yet: forking is safe) and forks one child per
                                       request, which runs the command as `python` would;
  BIN/python ARGS...                   (written by `install`) sends its argv, working
                                       directory, environment and stdin/stdout/stderr to the
                                       server and exits with the command's exit status.

A child is a fresh process in everything a command can see except that these modules are
already imported: its own globals, its own JAX backend, os.environ, sys.argv and sys.path[0]
as `python` sets them. Forms other than `python -c CODE`, `python -m MODULE` and `python
SCRIPT` (options such as -u) run in a real interpreter that the child starts.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import sys

# What train.py, eval/ and the docs' blocks import: loaded once, before any fork.
PRELOAD = ("numpy", "jax", "jax.numpy", "flax.nnx", "optax", "orbax.checkpoint", "absl.app",
           "ml_collections.config_flags", "bytelm", "bytelm.training")

CLIENT = """#!{python} -IS
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({socket!r})
request = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(s, [json.dumps(request).encode() + b"\\n"], [0, 1, 2])
s.shutdown(socket.SHUT_WR)
answer = b""
while chunk := s.recv(64):
  answer += chunk
sys.exit(int(answer) if answer else 1)  # no answer: the child died without reporting
"""


def install(bin_dir: pathlib.Path, socket_path: pathlib.Path) -> pathlib.Path:
  """Write BIN/python, the client of the server at socket_path."""
  bin_dir.mkdir(parents=True, exist_ok=True)
  client = bin_dir / "python"
  client.write_text(CLIENT.format(python=sys.executable, socket=str(socket_path)))
  client.chmod(0o755)
  return client


def serve(socket_path: str) -> None:
  import importlib
  import signal
  import threading

  for name in PRELOAD:
    try:
      importlib.import_module(name)
    except ImportError:  # moved or renamed: only a slower start for the commands that use it
      pass
  from jax._src import xla_bridge
  if xla_bridge._backends or threading.active_count() > 1:
    raise RuntimeError("a preloaded module started JAX or a thread: forking would be unsafe")
  # Reaped as they end (so that their CPU time counts as the server's children's, as it
  # would count as the caller's for a real `python`).
  signal.signal(signal.SIGCHLD, _reap)
  server = socket.socket(socket.AF_UNIX)
  server.bind(socket_path)
  server.listen(64)
  print("ready", flush=True)
  while True:
    conn, _ = server.accept()
    if os.fork() == 0:
      server.close()
      signal.signal(signal.SIGCHLD, signal.SIG_DFL)
      try:
        _child(conn)  # ends the process
      finally:
        os._exit(1)  # never back into the accept loop
    conn.close()


def _reap(signum, frame) -> None:
  try:
    while os.waitpid(-1, os.WNOHANG)[0]:
      pass
  except ChildProcessError:
    pass


def _child(conn: socket.socket) -> None:
  data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
  while not data.endswith(b"\n"):
    data += conn.recv(1 << 20)
  request = json.loads(data)
  for target, fd in enumerate(fds):
    os.dup2(fd, target)
    os.close(fd)
  os.chdir(request["cwd"])
  os.environ.clear()
  os.environ.update(request["env"])
  code = _run(request["argv"])
  # What the interpreter does at exit: wait for non-daemon threads, atexit, flush.
  import atexit
  import threading
  threading._shutdown()
  atexit._run_exitfuncs()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  conn.sendall(str(code).encode())
  conn.close()
  os._exit(code)


def _run(argv: list[str]) -> int:
  """Run `python *argv` in this process; its exit status."""
  import runpy
  import traceback

  main_path = os.path.dirname(os.path.realpath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != main_path]
  try:
    if argv[:1] == ["-c"] and len(argv) >= 2:
      sys.argv = ["-c", *argv[2:]]
      sys.path.insert(0, "")
      exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__",
                                                 "__builtins__": __builtins__})
    elif argv[:1] == ["-m"] and len(argv) >= 2:
      sys.argv = [argv[1], *argv[2:]]  # runpy puts the module's path in argv[0]
      sys.path.insert(0, os.getcwd())
      runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv and not argv[0].startswith("-"):
      sys.argv = list(argv)
      sys.path.insert(0, os.path.dirname(os.path.realpath(argv[0])))
      runpy.run_path(argv[0], run_name="__main__")
    else:
      import subprocess
      return subprocess.call([sys.executable, *argv])
  except SystemExit as e:
    if e.code is None:
      return 0
    if isinstance(e.code, int):
      return e.code
    print(e.code, file=sys.stderr)
    return 1
  except BaseException:  # noqa: BLE001  (what the interpreter prints for an uncaught one)
    traceback.print_exc()
    return 1
  return 0


if __name__ == "__main__":
  if sys.argv[1:2] != ["serve"] or len(sys.argv) != 3:
    sys.exit("usage: python warm_python.py serve SOCKET")
  serve(sys.argv[2])
