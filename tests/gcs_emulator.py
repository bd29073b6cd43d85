"""A local Google Cloud Storage for tests: gcp-storage-emulator in this process, in memory, on
127.0.0.1 at a free port, plus the environment that points every client at it.

Clients and what they need (docs/gcs.md):
  gcsfs / fsspec (xmtf_jax.paths, etils.epath)  STORAGE_EMULATOR_HOST (with http://), FSSPEC_GCS_TOKEN=anon,
                                                GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (set before import)
  etils.epath (orbax's metadata files)          EPATH_USE_TF=false (tf.io.gfile cannot reach an emulator)
  tensorstore (orbax's arrays)                  TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING
  google-cloud-storage (tensorboardX)           STORAGE_EMULATOR_HOST; NO_GCE_CHECK=true skips the
                                                metadata-server probe
"""
from __future__ import annotations

import functools
import http.server
import logging
import os
import socket
from http import HTTPStatus

BUCKET = "xmtf-test-bucket"


def _move_to(request, response, storage, *args, **kwargs):
  """objects.moveTo, which the emulator lacks (gcsfs mv() uses it; without it, 33 s of retries)."""
  from gcp_storage_emulator.handlers import objects
  params = request.params
  params["dest_bucket_name"] = params["bucket_name"]
  objects.copy(request, response, storage)
  if response.status == 200:
    objects._delete(storage, params["bucket_name"], params["object_id"])


def _generation(storage, bucket: str, name: str):
  from gcp_storage_emulator.exceptions import NotFound
  try:
    return storage.get_file_obj(bucket, name)
  except NotFound:
    return None


def _download(original):
  """Media downloads with the `x-goog-generation` header and the ifGeneration(Not)Match conditions,
  which the emulator lacks; tensorstore (orbax's OCDBT manifests) relies on both."""
  def download(request, response, storage, *args, **kwargs):
    obj = _generation(storage, request.params["bucket_name"], request.params["object_id"])
    if obj is not None:
      query = request.query
      if query.get("ifGenerationNotMatch", [None])[0] == obj["generation"]:
        response.status = HTTPStatus.NOT_MODIFIED
        return
      if query.get("ifGenerationMatch", [obj["generation"]])[0] != obj["generation"]:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return
    original(request, response, storage, *args, **kwargs)
    if obj is not None:
      response["x-goog-generation"] = obj["generation"]
      response["x-goog-metageneration"] = obj["metageneration"]
  return download


def _insert(original):
  """Uploads honouring ifGenerationMatch (0: only if absent), as tensorstore's writes expect."""
  def insert(request, response, storage, *args, **kwargs):
    want = request.query.get("ifGenerationMatch", [None])[0]
    name = request.query.get("name", [None])[0]
    if want is not None and name:
      obj = _generation(storage, request.params["bucket_name"], name)
      if want != (obj["generation"] if obj else "0"):
        response.status = HTTPStatus.PRECONDITION_FAILED
        return
    original(request, response, storage, *args, **kwargs)
  return insert


def _patch_emulator() -> None:
  """Adds objects.moveTo and the generation behaviour above to the emulator's routes (once)."""
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects
  if getattr(server, "_xmtf_patched", False):
    return
  objects.download = _download(objects.download)  # objects.get(alt=media) calls it by name
  replace = {id(server.objects.insert): _insert(objects.insert)}
  handlers = []
  for regex, methods in server.HANDLERS:
    methods = {m: (objects.download if f.__name__ == "download" else replace.get(id(f), f))
               for m, f in methods.items()}
    handlers.append((regex, methods))
  route = (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
           r"(?P<dest_object_id>.*[^/]+)$", {server.POST: _move_to})
  server.HANDLERS = (route, *handlers)
  server._xmtf_patched = True


class _HTTPServer(http.server.HTTPServer):
  # One request at a time (the emulator's storage is not thread-safe), but a long queue: tensorstore
  # opens dozens of connections at once, and the default backlog of 5 drops some of them.
  request_queue_size = 1024

  def handle_error(self, request, client_address):
    pass  # a client that hangs up early (gcsfs closing a ranged read) is not worth a traceback


def _serve(api) -> None:
  """The emulator's APIThread.run with _HTTPServer."""
  from gcp_storage_emulator.server import RequestHandler
  api._httpd = _HTTPServer((api._host, api._port), functools.partial(RequestHandler, api._storage))
  api.is_running.set()
  api._httpd.serve_forever()


def environment(url: str) -> dict:
  return {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
          "EPATH_USE_TF": "false", "FSSPEC_GCS_TOKEN": "anon", "NO_GCE_CHECK": "true",
          "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy"}


class Emulator:
  """`with Emulator() as url:` a running emulator with bucket BUCKET; os.environ points at it (for
  this process and the subprocesses it starts) until the block ends."""

  def __init__(self, bucket: str = BUCKET):
    self.bucket = bucket
    self._server = None
    self._saved = {}

  def __enter__(self) -> str:
    from gcp_storage_emulator.server import create_server
    _patch_emulator()
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # "not found" is an answer
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self._server = create_server("127.0.0.1", port, in_memory=True, default_bucket=self.bucket)
    self._server._api.daemon = True  # a forgotten stop() must not hang the interpreter's exit
    self._server._api.run = _serve.__get__(self._server._api)
    self._server.start()
    self.url = f"http://127.0.0.1:{port}"
    env = environment(self.url)
    self._saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reload_fsspec_config()
    # tensorboardX's GCS writer re-uploads its file from __del__ at exit, when the emulator is gone
    # (2 minutes of retries); close() has already uploaded everything.
    from tensorboardX import record_writer
    record_writer.GCSRecordWriter.__del__ = lambda self: None
    return self.url

  def __exit__(self, *exc) -> None:
    self._server.stop()
    for k, v in self._saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    _reload_fsspec_config()


def _reload_fsspec_config() -> None:
  """fsspec reads FSSPEC_* variables at import; this process may have imported it already."""
  import fsspec.config
  fsspec.config.conf.pop("gcs", None)
  fsspec.config.set_conf_env(fsspec.config.conf)
  import fsspec
  fsspec.AbstractFileSystem.clear_instance_cache() if hasattr(
      fsspec.AbstractFileSystem, "clear_instance_cache") else None
