"""Every user path goes through xmtf_jax.paths: no direct file-system calls elsewhere in the library.

A call below that touches files outside the repository would not work on gs:// (docs/gcs.md). A line
that really only touches local files (the repository, /proc, a temporary sibling folder) says so with
`# local-only: <why>`.
"""
import ast
import os

import pytest

from xmtf_jax import paths
from xmtf_jax.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("xmtf_jax", "mixtures")
LAYER = os.path.join("xmtf_jax", "paths.py")

FORBIDDEN = {
    "os.path": {"exists", "isdir", "isfile", "abspath", "getsize", "realpath", "lexists"},
    "os": {"listdir", "makedirs", "mkdir", "remove", "rename", "replace", "unlink", "rmdir", "scandir",
           "walk"},
    "glob": {"glob", "iglob"},
}


def _dotted(node) -> str:
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name):
    parts.append(node.id)
  return ".".join(reversed(parts))


def violation(call: ast.Call) -> str | None:
  """What is wrong with this call, or None."""
  name = _dotted(call.func)
  if name == "open":
    return "builtin open()"
  if name.startswith("shutil."):
    return name
  if "gfile" in name.split("."):
    return name + " (tf.io.gfile cannot be pointed at an emulator)"
  module, _, function = name.rpartition(".")
  if function in FORBIDDEN.get(module, ()):
    return name
  if function == "savefig" and not any(k.arg == "format" for k in call.keywords):
    return "savefig to a path (use paths.save_figure)"
  return None


def violations(source: str, filename: str) -> list[str]:
  lines = source.splitlines()
  found = []
  for node in ast.walk(ast.parse(source, filename)):
    if isinstance(node, ast.Call):
      what = violation(node)
      span = lines[node.lineno - 1:getattr(node, "end_lineno", node.lineno)]
      if what and not any("# local-only" in line for line in span):
        found.append(f"{filename}:{node.lineno}: {what}")
  return found


def library_files():
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(REPO_ROOT, package)):
      for name in sorted(names):
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          if os.path.relpath(path, REPO_ROOT) != LAYER:
            yield path


def test_library_touches_files_only_through_the_paths_layer():
  found = []
  for path in library_files():
    with open(path, encoding="utf-8") as f:
      found += violations(f.read(), os.path.relpath(path, REPO_ROOT))
  assert not found, "file-system calls outside xmtf_jax/paths.py:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("line, expected", [
    ("open(p)", "builtin open()"),
    ("os.path.exists(p)", "os.path.exists"),
    ("os.makedirs(p, exist_ok=True)", "os.makedirs"),
    ("shutil.rmtree(p)", "shutil.rmtree"),
    ("glob.glob(p)", "glob.glob"),
    ("tf.io.gfile.GFile(p)", "tf.io.gfile.GFile (tf.io.gfile cannot be pointed at an emulator)"),
    ("fig.savefig(p, dpi=100)", "savefig to a path (use paths.save_figure)"),
])
def test_the_check_catches_each_kind_of_call(line, expected):
  assert violations(line, "x.py") == [f"x.py:1: {expected}"]
  assert violations(line + "  # local-only: a file of the repository", "x.py") == []
  assert violations("paths.open(p)\nos.path.join(a, b)\nfig.savefig(b, format='png')", "x.py") == []


def test_local_paths_round_trip_through_the_layer(tmp_path):
  folder = str(tmp_path / "a" / "b")
  target = paths.join(folder, "x.txt")
  paths.write_text(target, "one\n")
  paths.append_text(target, "two\n")
  assert paths.read_text(target) == "one\ntwo\n"
  assert paths.read_range(target, 4, 7) == b"two"
  assert paths.listdir(folder) == ["x.txt"]  # no temporary file is left behind
  assert paths.subfolders(str(tmp_path / "a")) == ["b"]
  assert paths.glob(str(tmp_path / "*" / "b" / "*.txt")) == [target]
  paths.rename(folder, str(tmp_path / "c"))
  assert not paths.exists(folder) and paths.isfile(str(tmp_path / "c" / "x.txt"))
  paths.rmtree(str(tmp_path / "c"))
  assert paths.listdir(str(tmp_path)) == ["a"]
  assert paths.abspath("gs://b/x/") == "gs://b/x/" and paths.basename("gs://b/x/") == "x"
  assert paths.dirname("gs://b/x/y.txt") == "gs://b/x" and paths.join("gs://b", "x") == "gs://b/x"


def test_an_unreachable_bucket_fails_at_once_in_one_paragraph(monkeypatch):
  """No network (or a stopped emulator): a UserError naming the path, the endpoint and what to do,
  raised before gcsfs is asked (which retried six times with backoff, ~1 min, then logged a page)."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://nonexistent.invalid:9")
  import fsspec
  asked = []
  monkeypatch.setattr(fsspec.core, "url_to_fs", lambda *a, **k: asked.append(a))
  path = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
  for call in (paths.exists, paths.read_bytes, paths.cached_local_copy):
    with pytest.raises(UserError) as raised:
      call(path)
    message = str(raised.value)
    assert f"cannot reach the storage endpoint http://nonexistent.invalid:9 for {path}" in message
    assert "network" in message and "VOCABULARY_PATH" in message and "\n" not in message
  assert asked == []
  paths.check_reachable("memory://x/y")  # other schemes have no storage endpoint to check
  paths.check_reachable("/local/x")


def test_a_reachable_endpoint_is_checked_once_and_failures_are_not_remembered(monkeypatch):
  import socket
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen(8)
  port = listener.getsockname()[1]
  connects = []
  real = socket.create_connection
  monkeypatch.setattr(paths.socket, "create_connection",
                      lambda address, timeout: connects.append(address) or real(address, timeout))
  try:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{port}")  # gcsfs adds http:// too
    assert paths.storage_endpoint() == f"http://127.0.0.1:{port}"
    paths.check_reachable("gs://bucket/a")
    paths.check_reachable("gcs://bucket/b")
    assert connects == [("127.0.0.1", port)]
  finally:
    listener.close()
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://nonexistent.invalid:9")
  for _ in range(2):
    with pytest.raises(UserError):
      paths.check_reachable("gs://bucket/a")
  assert connects[1:] == [("nonexistent.invalid", 9)] * 2
