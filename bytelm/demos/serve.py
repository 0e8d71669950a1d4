"""A page to try the corrector in a browser: `bytelm-correct --serve [--port 8765]`.

One page (type or paste text, pick the task, see the corrected text with its changes marked)
and one endpoint it calls, `POST /correct` with JSON {"text": ..., "task": ..., "lang": ...},
answered with {"corrected": ..., "changes": [...]} (`changes.pieces`).
The server listens on 127.0.0.1 only: it is a demo for the person at this machine, not a
service. The corrector is loaded once, before the server starts, and corrects one request at
a time. A request body over `max_bytes` is refused (413) unread.
"""

from __future__ import annotations

import html
import http.server
import json
import threading
from collections.abc import Sequence

from bytelm.demos import changes, typos

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_BYTES = 100_000  # ~50 pages of text: more is refused, not cut


def correct_text(corrector, text: str, task: str | None, lang: str | None) -> str:
  """text corrected line by line; line breaks (\\n, \\r\\n) stay as they are."""
  lines = text.split("\n")
  bodies = [line.rstrip("\r") for line in lines]
  fixed = corrector(bodies, task, lang)
  return "\n".join(f + line[len(b):] for f, b, line in zip(fixed, bodies, lines))


class RequestError(ValueError):
  """A bad request: its HTTP status and a message for the person who sent it."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def answer(corrector, body: bytes, tasks: Sequence[str]) -> dict:
  """The reply to one POST /correct body (a RequestError where it is not a valid request)."""
  try:
    request = json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RequestError(400, f"the request is not UTF-8 JSON ({e})") from e
  if not isinstance(request, dict) or not isinstance(request.get("text"), str):
    raise RequestError(400, 'send a JSON object {"text": "...", "task": "...", "lang": "..."}')
  task = request.get("task") or tasks[0]  # the first: what the model was trained for
  if task not in tasks:
    raise RequestError(400, f"task {task!r}: this model does {', '.join(tasks)}")
  lang = request.get("lang") or None
  if lang is not None and lang not in typos.LANGUAGES:
    raise RequestError(400, f"lang {lang!r}: the typo corrector knows "
                            f"{', '.join(typos.LANGUAGES)} (or leave it out: detected per line)")
  text = request["text"]
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:  # JSON can carry lone surrogates ("\ud800"); UTF-8 cannot
    raise RequestError(400, f"the text is not valid Unicode ({e.reason} at character "
                            f"{e.start})") from e
  corrected = correct_text(corrector, text, task, lang)
  return {"corrected": corrected, "changes": changes.pieces(text, corrected)}


def make_server(corrector, port: int = DEFAULT_PORT,
                max_bytes: int = MAX_BYTES) -> http.server.ThreadingHTTPServer:
  """A server of the page on 127.0.0.1:port (0: any free port; `server.server_port` says
  which), not yet serving: call `serve_forever()`."""
  tasks = tuple(corrector.tasks)
  page = _PAGE.replace("{{TASKS}}", "".join(
      f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in tasks)).replace(
      "{{LANGS}}", "".join(f'<option value="{lang}">{lang}</option>'
                           for lang in typos.LANGUAGES)).replace(
      "{{MAX_BYTES}}", str(max_bytes)).encode("utf-8")
  lock = threading.Lock()  # the model corrects one request at a time

  class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "bytelm-correct"

    def do_GET(self):
      if self.path not in ("/", "/index.html"):
        return self._send(404, b"not found: the page is at /", "text/plain")
      self._send(200, page, "text/html; charset=utf-8")

    def do_POST(self):
      if self.path != "/correct":
        return self._send(404, b"not found: POST to /correct", "text/plain")
      try:
        size = int(self.headers.get("Content-Length", ""))
      except ValueError:
        return self._error(411, "a Content-Length header is needed")
      if size > max_bytes:
        self.close_connection = True  # the body is not read
        return self._error(413, f"the text is {size:,} bytes; this server takes at most "
                                f"{max_bytes:,} (bytelm-correct --serve --max-bytes N)")
      body = self.rfile.read(size)
      try:
        with lock:
          reply = answer(corrector, body, tasks)
      except RequestError as e:
        return self._error(e.status, str(e))
      except Exception as e:  # a bug: the page says so, the server goes on
        return self._error(500, f"the corrector failed: {type(e).__name__}: {e}")
      self._send(200, json.dumps(reply, ensure_ascii=False).encode("utf-8"),
                 "application/json; charset=utf-8")

    def _error(self, status: int, message: str):
      self._send(status, json.dumps({"error": message}).encode("utf-8"),
                 "application/json; charset=utf-8")

    def _send(self, status: int, data: bytes, kind: str):
      self.send_response(status)
      self.send_header("Content-Type", kind)
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def log_message(self, format, *args):  # quiet: the terminal shows the address only
      pass

  try:
    return http.server.ThreadingHTTPServer((HOST, port), Handler)
  except OSError as e:  # the port is taken, or not ours to take
    raise OSError(f"cannot listen on {HOST}:{port} ({e.strerror or e}); pick another port "
                  "with --port N (0: any free one)") from e


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>bytelm-correct</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 46em; margin: 2em auto; padding: 0 1em; }
  textarea { width: 100%; height: 9em; font: inherit; box-sizing: border-box; }
  #result { white-space: pre-wrap; border: 1px solid #ccc; padding: .6em; min-height: 3em; }
  ins { background: #c8f7c5; text-decoration: none; }
  del { background: #f7c5c5; color: #933; }
  #status { color: #666; font-size: 90%; }
</style>
</head>
<body>
<h1>bytelm-correct</h1>
<p>Type or paste text, pick what to correct, and press <b>Correct</b> (or Ctrl+Enter).
Removed characters are <del>struck out</del>, added ones <ins>marked</ins>.</p>
<textarea id="text" autofocus placeholder="I will recieve the pakage tommorow."></textarea>
<p>
  <label>Task <select id="task">{{TASKS}}</select></label>
  <label>Language of typos <select id="lang"><option value="">detect</option>{{LANGS}}</select></label>
  <button id="correct">Correct</button> <span id="status"></span>
</p>
<div id="result" aria-live="polite"></div>
<script>
const MAX_BYTES = {{MAX_BYTES}};
const $ = (id) => document.getElementById(id);
async function correct() {
  const text = $("text").value;
  const body = JSON.stringify({text, task: $("task").value, lang: $("lang").value});
  if (new TextEncoder().encode(body).length > MAX_BYTES) {
    $("status").textContent = `too long: at most ${MAX_BYTES} bytes at a time`;
    return;
  }
  $("status").textContent = "correcting…";
  const started = performance.now();
  try {
    const response = await fetch("/correct", {method: "POST", body,
      headers: {"Content-Type": "application/json"}});
    const reply = await response.json();
    if (!response.ok) { $("status").textContent = reply.error; return; }
    const result = $("result");
    result.replaceChildren();
    for (const piece of reply.changes) {
      if ("same" in piece) { result.append(piece.same); continue; }
      if (piece.old) { const d = document.createElement("del"); d.textContent = piece.old; result.append(d); }
      if (piece.new) { const i = document.createElement("ins"); i.textContent = piece.new; result.append(i); }
    }
    const n = reply.changes.filter((p) => !("same" in p)).length;
    $("status").textContent = `${n} change${n === 1 ? "" : "s"} in ${Math.round(performance.now() - started)} ms`;
  } catch (e) {
    $("status").textContent = `the server did not answer (${e})`;
  }
}
$("correct").addEventListener("click", correct);
$("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) correct(); });
</script>
</body>
</html>
"""
