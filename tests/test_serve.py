"""The page of `bytelm-correct --serve`: its endpoint, its limits, and the page in a real
headless browser (Debian's chromium and chromium-driver, driven by selenium)."""

import contextlib
import http.client
import json
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from bytelm.demos import changes, correct, serve

TYPED = "I will recieve the pakage tommorow, see you at 10:30!"
FIXED = "I will receive the package tomorrow, see you at 10:30!"


@pytest.fixture(scope="module")
def corrector():
  return correct.Corrector.load(task="typos")  # the word lists: no model to load


@contextlib.contextmanager
def serving(corrector, **kwargs):
  server = serve.make_server(corrector, port=0, **kwargs)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield server
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


def request(server, method: str, path: str, body: bytes | None = None, headers=None):
  connection = http.client.HTTPConnection(serve.HOST, server.server_port, timeout=30)
  try:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()
  finally:
    connection.close()


def post(server, payload) -> tuple[int, dict]:
  status, data = request(server, "POST", "/correct", json.dumps(payload).encode())
  return status, json.loads(data)


def test_the_endpoint_corrects_and_says_what_changed(corrector):
  with serving(corrector) as server:
    assert server.server_address[0] == "127.0.0.1"  # this machine only
    status, page = request(server, "GET", "/")
    assert status == 200 and b'<option value="typos">typos</option>' in page
    text = f"{TYPED}\r\nGracias por tu mensjae\n\nЗдравствуйте"
    status, reply = post(server, {"text": text, "task": "typos"})
    assert status == 200
    assert reply["corrected"] == f"{FIXED}\r\nGracias por tu mensaje\n\nЗдравствуйте"
    pieces = reply["changes"]
    assert "".join(p.get("same", "") + p.get("new", "") for p in pieces) == reply["corrected"]
    assert "".join(p.get("same", "") + p.get("old", "") for p in pieces) == text


def test_bad_requests_get_a_reason(corrector):
  with serving(corrector, max_bytes=300) as server:
    status, reply = post(server, {"text": "x" * 400})
    assert status == 413 and "at most 300" in reply["error"]
    status, data = request(server, "POST", "/correct", b"{not json")
    assert status == 400 and "not UTF-8 JSON" in json.loads(data)["error"]
    assert post(server, {"words": "teh"})[0] == 400
    status, reply = post(server, {"text": "teh", "task": "diacritics"})
    assert status == 400 and "does typos" in reply["error"]  # no model was loaded
    status, reply = post(server, {"text": "teh", "lang": "xx"})
    assert status == 400 and "en, es, fr" in reply["error"]
    assert request(server, "GET", "/secrets")[0] == 404
    status, data = request(server, "POST", "/correct", b'{"text": "teh \\ud800"}')
    assert status == 400 and "not valid Unicode" in json.loads(data)["error"]
    assert post(server, {"text": "teh"}) == (200, {"corrected": "the",
                                                   "changes": changes.pieces("teh", "the")})


def test_a_taken_port_is_one_clear_error(corrector):
  with serving(corrector) as server:
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{server.server_port}.*--port"):
      serve.make_server(corrector, port=server.server_port)


def _browser_missing() -> str | None:
  try:
    import selenium  # noqa: F401
  except ImportError:
    return "selenium is not installed (pip install -e '.[test]')"
  for program in ("chromium", "chromedriver"):
    if shutil.which(program) is None:
      return (f"no {program} on PATH: apt-get install chromium chromium-driver "
              "(.ci/run installs them)")
  return None


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_the_page_in_a_browser(corrector):
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which("chromium")
  for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"):
    options.add_argument(flag)
  with serving(corrector) as server:
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
      driver.get(f"http://{serve.HOST}:{server.server_port}/")
      driver.find_element(By.ID, "text").send_keys(TYPED)
      driver.find_element(By.ID, "correct").click()
      wait = WebDriverWait(driver, 30)
      wait.until(lambda d: "change" in d.find_element(By.ID, "status").text)
      result = driver.find_element(By.ID, "result")
      inserted = [e.text for e in result.find_elements(By.TAG_NAME, "ins")]
      deleted = [e.text for e in result.find_elements(By.TAG_NAME, "del")]
      assert "e" in inserted and "c" in inserted and "e" in deleted  # the changes are marked

      def shown(without: str) -> str:  # the result's text without its <ins> or <del> parts
        return driver.execute_script(
            "const r = document.getElementById('result').cloneNode(true);"
            f"r.querySelectorAll('{without}').forEach((e) => e.remove()); return r.textContent;")

      assert shown("del") == FIXED and shown("ins") == TYPED
      assert re.fullmatch(r"\d+ changes? in \d+ ms", driver.find_element(By.ID, "status").text)
    finally:
      driver.quit()


def test_the_command_serves_until_interrupted():
  """bytelm-correct --serve prints where the page is, answers there, and stops on Ctrl+C."""
  process = subprocess.Popen(
      [sys.executable, "-m", "bytelm.demos.correct", "--serve", "--port", "0", "--task", "typos"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, (line, process.stderr.read() if process.poll() is not None else "")
    server = type("Address", (), {"server_port": int(match.group(1))})
    assert post(server, {"text": "teh mesage"}) == (200, {
        "corrected": "the message", "changes": changes.pieces("teh mesage", "the message")})
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
  finally:
    if process.poll() is None:
      process.kill()
