"""bytelm.user_cache: what is built once and read back, and when it is built again."""

import os

from bytelm import user_cache


def test_cached_json_builds_once_then_reads_back(tmp_path, monkeypatch):
  monkeypatch.setenv("BYTELM_CACHE", str(tmp_path / "cache"))
  source = tmp_path / "words.txt"
  source.write_text("a b c")
  calls = []

  def build():
    calls.append(1)
    return {"words": source.read_text().split(), "n": len(calls)}

  first = user_cache.cached_json("tables", "embedded:x/y", [source], build)
  assert first == {"words": ["a", "b", "c"], "n": 1}
  assert user_cache.cached_json("tables", "embedded:x/y", [source], build) == first
  assert len(calls) == 1  # read back, not built
  (entry,) = (tmp_path / "cache" / "tables").iterdir()
  assert entry.name.startswith("embedded_x_y-") and not list(entry.parent.glob("*.tmp"))

  # Another version of the code, or a changed file: built again.
  assert user_cache.cached_json("tables", "embedded:x/y", [source], build, version=2)["n"] == 2
  source.write_text("a b c d")
  os.utime(source, ns=(1, 1))
  assert user_cache.cached_json("tables", "embedded:x/y", [source], build)["words"][-1] == "d"

  # A damaged entry is built again and replaced.
  for path in (tmp_path / "cache" / "tables").iterdir():
    path.write_bytes(b"not gzip")
  assert user_cache.cached_json("tables", "embedded:x/y", [source], build)["n"] == 4
  assert user_cache.cached_json("tables", "embedded:x/y", [source], build)["n"] == 4
  assert len(calls) == 4  # the rebuilt entry was written back


def test_a_cache_that_cannot_be_written_is_done_without(tmp_path, monkeypatch):
  blocked = tmp_path / "not-a-folder"
  blocked.write_text("a file where the cache would go")
  monkeypatch.setenv("BYTELM_CACHE", str(blocked))
  source = tmp_path / "words.txt"
  source.write_text("x")
  assert user_cache.cached_json("tables", "t", [source], lambda: [1, 2]) == [1, 2]
  assert blocked.read_text() == "a file where the cache would go"
