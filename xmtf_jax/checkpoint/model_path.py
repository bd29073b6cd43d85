"""One way to open a model path: what a path the user names (INITIAL_CHECKPOINT_PATH, MODEL_PATH,
`export_hf --checkpoint_dir`, `load_pretrained(path)`) holds, decided in one place.

    model_path = open_model_path("gs://bucket/runs/mt0")      # -> ModelPath(kind="our_run", step=7000, ...)

The path is listed once; the kinds are tried in one order (`KINDS`), the first that matches wins:

  hf_folder   config.json inside: an HF mT5/mT0 or BLOOM folder (hf/reader.py reads it; its family
              is config.json's `model_type`)
  our_step    params/ and metadata/ inside: one `checkpoint_<step>` of our training (xmtf_format.py)
  our_run     `checkpoint_<step>/` folders inside: a MODEL_DIR; its latest complete step (or `step`)
  mesh_tf     a Mesh TensorFlow checkpoint (model.ckpt-<step>.index + .data-*): its folder or prefix;
              `step_dir` is the prefix read (mesh_tf_format.py)
  t5x         a t5x checkpoint (t5x_format.py): a `checkpoint_<step>` holding the msgpack `checkpoint`
              file or an Orbax `state/`, that file itself, or a t5x model dir of such steps

A Hub id (`google/mt5-small`: no such local path) is resolved into the HF cache (hub_ids.py) and its
snapshot folder opened as above.

An HF folder exported into a run's directory (MODEL_DIR/hf) is an HF folder when named itself; the
run's directory stays a run. Another format is one more entry in `KINDS`: a function from the listing
to a ModelPath or None.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

from xmtf_jax import paths
from xmtf_jax.checkpoint import hub_ids, mesh_tf_format, t5x_format, xmtf_format
from xmtf_jax.errors import MissingPathError, UserError

HF_FOLDER = "hf_folder"
OUR_STEP = "our_step"
OUR_RUN = "our_run"
T5X = "t5x"
MESH_TF = "mesh_tf"
VOCABULARY_FILES = ("spiece.model", "sentencepiece.model")


class ModelPathError(MissingPathError):
  """A model path that is missing or holds no model we can read; the message names what was sought."""


@dataclasses.dataclass(frozen=True)
class Listing:
  """A path and the names in it (one listing); `names` is None when the path is not a folder."""
  path: str
  names: Optional[frozenset]

  def has(self, *names: str) -> bool:
    return self.names is not None and all(n in self.names for n in names)


@dataclasses.dataclass(frozen=True)
class ModelPath:
  """An opened model path. `path` is the path given (made absolute); for our checkpoints `step_dir`
  is the `checkpoint_<step>` read and `steps` the steps named in a run's folder."""
  kind: str
  path: str
  names: frozenset = frozenset()
  step: Optional[int] = None
  step_dir: Optional[str] = None
  steps: tuple[int, ...] = ()

  @property
  def is_ours(self) -> bool:
    return self.kind in (OUR_STEP, OUR_RUN)

  @functools.cached_property
  def metadata(self) -> dict:
    """Our checkpoint's metadata (read once); {} for other kinds."""
    return xmtf_format.read_metadata(self.step_dir) if self.is_ours else {}

  def vocabulary_candidates(self) -> list[str]:
    """SentencePiece models that go with the model, in order: a file in the folder, then the one
    our training recorded, a t5x run's config.gin or a Mesh TF run's operative_config.gin names (not
    checked for existence: it may lie on another machine's disk, or in gs://t5-data)."""
    found = [paths.join(self.path, name) for name in VOCABULARY_FILES if name in self.names]
    if self.is_ours and self.metadata.get("vocabulary_path"):
      found.append(self.metadata["vocabulary_path"])
    if self.kind == T5X and self.t5x().vocabulary_path():
      found.append(self.t5x().vocabulary_path())
    if self.kind == MESH_TF:  # the one its operative_config.gin names
      found += mesh_tf_format.gin_vocabularies(self.path, self.names)
    return found

  @property
  def inputs_end_with_eos(self) -> bool:
    """Whether the model was trained on inputs ending in EOS: what our training recorded (its task's
    `inputs` feature), else False (HF folders; mT0 and the paper's evaluation feed inputs without EOS)."""
    return bool(self.metadata.get("add_eos_to_inputs", False))

  def reader(self) -> xmtf_format.StepReader:
    """Our checkpoint's step, ready to restore (see xmtf_format.StepReader)."""
    if not self.is_ours:
      raise ValueError(f"{self.path} is an {self.kind}, not a checkpoint of our training")
    return xmtf_format.StepReader(self.step_dir, self.metadata)

  def t5x(self) -> t5x_format.T5xCheckpoint:
    """The t5x checkpoint of a T5X path (see t5x_format.T5xCheckpoint)."""
    if self.kind != T5X:
      raise ValueError(f"{self.path} is an {self.kind}, not a t5x checkpoint")
    return t5x_format.T5xCheckpoint(self.step_dir, self.step)

  def describe(self) -> str:
    if self.kind == HF_FOLDER:
      return f"HF folder {self.path}"
    if self.kind == T5X:
      return f"t5x checkpoint {self.step_dir} (step {self.step})"
    return f"checkpoint {self.step_dir} (step {self.step})"


# ---- the kinds, in precedence order ----------------------------------------------------------------

def _hf_folder(listing: Listing, step: Optional[int]) -> Optional[ModelPath]:
  if not listing.has("config.json"):
    return None
  if step is not None:
    raise UserError(f"--step={step}: {listing.path} is an HF folder, which holds one set of weights")
  return ModelPath(HF_FOLDER, listing.path, listing.names)


def _our_step(listing: Listing, step: Optional[int]) -> Optional[ModelPath]:
  if listing.names is None or not xmtf_format.is_step_listing(listing.names, paths.is_remote(listing.path)):
    return None
  own = xmtf_format.step_of_name(paths.basename(listing.path))
  if step is not None and own != step:
    raise UserError(f"--step={step} given with the step directory {listing.path}; pass its MODEL_DIR "
                     "instead")
  if own is None:  # a renamed step folder: its metadata knows the step
    own = xmtf_format.read_metadata(listing.path).get("step")
  return ModelPath(OUR_STEP, listing.path, listing.names, step=own, step_dir=listing.path)


def _t5x(listing: Listing, step: Optional[int]) -> Optional[ModelPath]:
  found = t5x_format.find_step_dir(listing.path, listing.names, step)
  if found is None:
    return None
  step_dir, own = found
  return ModelPath(T5X, listing.path, listing.names or frozenset(), step=own, step_dir=step_dir)


def _our_run(listing: Listing, step: Optional[int]) -> Optional[ModelPath]:
  named = sorted(s for s in map(xmtf_format.step_of_name, listing.names or ()) if s is not None)
  if not named:
    return None
  if step is not None and step not in named:
    raise MissingPathError(f"--step={step}: {listing.path} has no checkpoint for step {step}; "
                            f"available steps: {named}")
  remote = paths.is_remote(listing.path)
  for candidate in ([step] if step is not None else reversed(named)):  # the latest complete one
    step_dir = xmtf_format.step_directory(listing.path, candidate)
    try:
      names = paths.listdir(step_dir)
    except (FileNotFoundError, NotADirectoryError):
      names = []
    if t5x_format.is_step_listing(names):
      return None  # a t5x model dir (the t5x kind)
    complete = xmtf_format.is_step_listing(names, remote)
    if complete:
      return ModelPath(OUR_RUN, listing.path, listing.names, step=candidate, step_dir=step_dir,
                       steps=tuple(named))
  if step is not None:
    raise MissingPathError(f"--step={step}: {step_dir} is incomplete (no params/ and metadata/"
                            f"{' and ' + xmtf_format.COMMIT_FILE if remote else ''})")
  return None


def _mesh_tf(listing: Listing, step: Optional[int]) -> Optional[ModelPath]:
  found = mesh_tf_format.find(listing.path, listing.names, step)
  if found is None:
    return None
  folder, names, prefix, own = found
  return ModelPath(MESH_TF, folder, names, step=own, step_dir=prefix)


# (kind, what it looks for, detector): the one precedence (Mesh TF before t5x: a Mesh TF folder's
# TensorFlow `checkpoint` state file would look like a t5x step's msgpack). A detector returns None
# when the listing is not its kind, and raises only for a `step` its kind cannot give.
KINDS: tuple[tuple[str, str, Callable[[Listing, Optional[int]], Optional[ModelPath]]], ...] = (
    (HF_FOLDER, "no config.json (an HF mT5/mT0 or BLOOM folder)", _hf_folder),
    (OUR_STEP, "neither a checkpoint directory (checkpoint_<step>/ with params/ and metadata/)",
     _our_step),
    (OUR_RUN, f"nor a MODEL_DIR holding one ({xmtf_format.STEP_PREFIX}_<step>/ folders)", _our_run),
    (MESH_TF, "nor a Mesh TensorFlow checkpoint (model.ckpt-<step>.index and .data-*)", _mesh_tf),
    (T5X, "nor a t5x checkpoint (checkpoint_<step>/ with a `checkpoint` file or an Orbax state/, or a "
     "t5x model dir of them)", _t5x),
)


def list_path(path: str) -> Listing:
  """The one listing of `path` (names None when it is not a folder)."""
  try:
    return Listing(path, frozenset(paths.listdir(path)))
  except (FileNotFoundError, NotADirectoryError):
    return Listing(path, None)


def open_model_path(path: Any, step: Optional[int] = None) -> ModelPath:
  """Classifies `path` (local or gs://) with one listing and one precedence (`KINDS`).

  path: a path, or a ModelPath (returned as it is when `step` is None or its own).
  step: for a MODEL_DIR, the step to read (default: the latest complete one).
  Raises ModelPathError (a FileNotFoundError) naming the path and what was looked for.
  """
  if isinstance(path, ModelPath):
    if step is None or step == path.step:
      return path
    path = path.path
  listing = list_path(paths.abspath(str(path)))
  for _, _, detect in KINDS:
    found = detect(listing, step)
    if found is not None:
      return found
  if listing.names is None and hub_ids.looks_like_hub_id(str(path)):  # its snapshot in the HF cache
    try:
      return open_model_path(hub_ids.snapshot_folder(str(path)), step)
    except hub_ids.HubIdError as e:
      raise ModelPathError(str(e)) from None
  # (a bucket lists a file as an empty folder)
  if listing.names is None or (not listing.names and paths.isfile(listing.path)):
    what = "a file, not a folder" if paths.exists(listing.path) else "no such directory"
    raise ModelPathError(f"{path}: not a model path ({what}); expected a folder: an HF mT5/mT0 or BLOOM "
                         f"folder (config.json inside), a training run's MODEL_DIR or one of its "
                         f"{xmtf_format.STEP_PREFIX}_<step> directories, or a t5x checkpoint")
  looked_for = "; ".join(text for _, text, _ in KINDS)
  raise ModelPathError(f"{path}: not a model path: {looked_for}. It holds "
                       f"{_shown(sorted(listing.names))}")


def _shown(names: list[str]) -> str:
  if not names:
    return "nothing"
  return ", ".join(names[:8]) + (f", ... ({len(names)} entries)" if len(names) > 8 else "")
