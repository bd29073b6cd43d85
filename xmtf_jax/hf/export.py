"""Export to a HuggingFace folder, one tensor at a time: `MT5ForConditionalGeneration` for mT5 models
(`UMT5ForConditionalGeneration` with `T5Config.relative_attention_per_layer`), `BloomForCausalLM` for
BLOOM ones (what differs per family is its `hf/families.py` entry).

    result = xmtf_jax.hf.export.export(config, params, "/path/spiece.model", "/out/mt0-small")
    result = xmtf_jax.hf.export.export_source(CheckpointParams("/runs/mt0", step=7000), vocab, "/out")

(sources of parameters: `xmtf_jax.hf.sources`; `sources.open_source(path, step)` opens any model
path: an HF folder or a training checkpoint, `CheckpointParams`).

What is written (locally: into a temporary sibling directory, renamed to `output_dir` only when
complete, so a failure leaves nothing at `output_dir`; on a bucket, where a folder cannot be renamed
at once, straight into `output_dir` with each shard streamed up as it is written and config.json
written last, so a folder without config.json is an unfinished export; a failure deletes it). For mT5:

  config.json                    MT5Config (umT5: UMT5Config, model_type umt5): shapes, untied head,
                                 gelu_new, token ids, dtype
  generation_config.json         decoder_start 0, eos 1, pad 0
  model.safetensors              or model-0000k-of-0000n.safetensors + model.safetensors.index.json
                                 when the weights exceed `max_shard_size`
  spiece.model, tokenizer_config.json, special_tokens_map.json (+ tokenizer.json; see hf_tokenizer):
                                 `tokenizer(text)` appends EOS iff the model was trained with it
                                 (`source.inputs_end_with_eos`: a checkpoint's add_eos_to_inputs; an
                                 HF folder keeps what its tokenizer did)
  README.md                      model card (see model_card)

For BLOOM (hf/bloom_export.py): config.json from `bloom_mapping.bloom_config_to_hf` (tied head: no
lm_head.weight, `transformer.`-prefixed names), generation_config.json (bos 1, eos 2, pad 3), the
run's tokenizer.json copied with tokenizer_config.json and special_tokens_map.json (unk/bos/eos/pad
0/1/2/3, left padding), and a BLOOMZ model card.

Names and layouts come from the family's `parameter_mapping` (the same mapping that imports HF
folders), so HF -> ours -> HF is bit-exact in float32.

Memory: the shard plan is computed from abstract shapes (`jax.eval_shape`) before any data is read;
then each tensor is fetched (gathered from its devices, or read from its file), converted, written
straight into its place in the safetensors file and dropped. Host memory peaks at about one tensor
(the embedding or the LM head: vocab x d_model), never one model or one shard.

Several processes: every process runs `export`; only process 0 touches the file system. When the
parameters are arrays spanning hosts, every process takes part in each tensor's all-gather; when
they come from files (a checkpoint, an HF folder), process 0 reads alone and the others wait.
"""
from __future__ import annotations

import dataclasses
import json
import importlib.util
import logging
import os
import tempfile
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from xmtf_jax import paths
from xmtf_jax.errors import PathExistsError, UserError
from xmtf_jax.hf import families
from xmtf_jax.hf import safetensors_writer
from xmtf_jax.hf.safetensors_writer import (DEFAULT_MAX_SHARD_SIZE, DTYPES, INDEX_FILE, ShardPlan,
                                           TensorEntry, plan_shards, tensor_entries)
from xmtf_jax.hf import model_card
from xmtf_jax.hf import tokenizer as hf_tokenizer
from xmtf_jax.hf import verify as hf_verify
from xmtf_jax.hf.sources import InMemoryParams, ParamSource

log = logging.getLogger(__name__)

def _convert(source: ParamSource, entry: TensorEntry, dtype: str) -> np.ndarray:
  # One expression, so our-layout array is freed as soon as the HF-layout copy exists.
  to_hf = families.for_config(source.config).to_hf
  array = to_hf(entry.layout, np.asarray(source.read(entry.path), np.float32))
  array = array.astype(DTYPES[dtype][0], copy=False)
  if array.shape != entry.shape:
    raise ValueError(f"{entry.name}: got shape {list(array.shape)} from {source.describe()}, the config "
                     f"says {list(entry.shape)}")
  if not np.all(np.isfinite(array)):
    raise UserError(f"{entry.name} ({'/'.join(entry.path)}) holds NaN or Inf values; refusing to export "
                     "a broken checkpoint")
  return array


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
  if paths.exists(output_dir):
    if not paths.isdir(output_dir):
      raise PathExistsError(f"output_dir={output_dir} exists and is not a directory")
    entries = paths.listdir(output_dir)
    if entries and not overwrite:
      shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
      raise PathExistsError(f"output_dir={output_dir} is not empty ({len(entries)} entries: {shown}); "
                            "choose a new directory or pass overwrite=True (--overwrite) to replace it")


def _publish(tmp_dir: str, output_dir: str) -> None:
  """Moves the finished local folder into place (rename: atomic on one file system)."""
  old = None
  if paths.exists(output_dir):
    if paths.listdir(output_dir):
      old = output_dir.rstrip("/") + f".old-{os.getpid()}"
      paths.rename(output_dir, old)
    else:
      paths.rmtree(output_dir)
  paths.rename(tmp_dir, output_dir)
  if old:
    paths.rmtree(old)


def _remove_quietly(folder: str) -> None:
  try:
    paths.rmtree(folder, missing_ok=True)
  except OSError as e:
    log.warning("could not remove the unfinished export %s: %s", folder, e)


# ----------------------------------------------------------------------------------------------------
# The export.


@dataclasses.dataclass
class ExportResult:
  output_dir: str
  files: list[str]
  num_tensors: int
  num_parameters: int
  total_bytes: int
  shards: int
  dtype: str
  seconds: float
  verification: Any = None      # hf_verify.VerifyReport when verified
  verify_skipped_reason: str = ""


class VerificationFailed(RuntimeError):
  """The exported folder does not reproduce our model in transformers (see the report)."""

  def __init__(self, message: str, report: Any, folder: str):
    super().__init__(message)
    self.report, self.folder = report, folder


def _available_memory_bytes() -> int:
  try:
    with open("/proc/meminfo") as f:  # local-only: this machine's memory
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decide_verify(verify: bool | str | None, num_parameters: int, remote: bool = False
                  ) -> tuple[bool, str]:
  """(verify?, why not). "auto"/None: on one process, with torch + transformers installed, when ~3
  float32 copies of the model (ours, the transformers one, transients) fit in available host memory,
  and not for a bucket (transformers loads local folders only)."""
  if remote:
    if verify not in (None, "auto", False):
      raise UserError("verification loads the folder with transformers from local disk: export to a "
                       "bucket with --noverify, or export to a local folder with --verify and copy it")
    return False, ("verification skipped: the output is a bucket (verify a local copy: python -m "
                   "xmtf_jax.export_hf --checkpoint_dir=COPY --output_dir=OTHER --verify)")
  if verify not in (None, "auto"):
    if verify and jax.process_count() > 1:
      raise UserError("verification runs on one host: export with --noverify, then run the export of "
                       "the folder on one machine (--checkpoint_dir=FOLDER --output_dir=... --verify)")
    return bool(verify), "" if verify else "verification disabled (--noverify)"
  if jax.process_count() > 1:
    return False, ("verification skipped: several processes (verify the folder on one host: "
                   "python -m xmtf_jax.export_hf --checkpoint_dir=FOLDER --output_dir=COPY --verify)")
  missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
  if missing:
    return False, (f"verification skipped: {' and '.join(missing)} not installed (test extras: "
                   "`pip install -r requirements-test.txt`, then re-export with --verify)")
  needed, available = 3 * 4 * num_parameters, _available_memory_bytes()
  if needed > available:
    return False, (f"verification skipped: it needs ~{needed / 1e9:.1f} GB of host memory (3 float32 "
                   f"copies of {num_parameters / 1e9:.2f}B parameters), {available / 1e9:.1f} GB are "
                   "available; pass --verify to force it")
  return True, ""


def export(config: Any, params: Mapping, vocabulary_path: str, output_dir: str, **kwargs
           ) -> ExportResult:
  """Exports in-memory parameters (numpy or jax arrays, sharded or not) with their config (T5Config or
  BloomConfig).

  vocabulary_path: the vocabulary trained with (local or gs://): mT5's SentencePiece model, copied to
  `spiece.model`; BLOOM's tokenizer.json (or an HF folder holding one), copied to `tokenizer.json`.
  Keyword arguments as `export_source`; `model=` the task-level model to verify with (its mesh);
  `inputs_end_with_eos=` whether the model was trained on inputs ending in EOS (default False, as
  xmtf_jax's tasks and the paper's evaluation): the folder's tokenizer appends EOS only then.
  """
  model = kwargs.pop("model", None)
  eos = kwargs.pop("inputs_end_with_eos", False)
  return export_source(InMemoryParams(config, params, model, inputs_end_with_eos=eos), vocabulary_path,
                       output_dir, **kwargs)


def export_source(source: ParamSource, vocabulary_path: str, output_dir: str, *,
                  dtype: str = "float32", max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                  card: Optional[model_card.ModelCard] = None, overwrite: bool = False,
                  verify: bool | str | None = "auto", verify_kwargs: Optional[dict] = None
                  ) -> ExportResult:
  """Writes the HF folder for `source` (see the module docstring).

  dtype: "float32" (bit-exact) or "bfloat16" (round to nearest even, as torch's `.to(bfloat16)`).
  max_shard_size: above it, sharded safetensors with an index ("5GB", "500MB", bytes).
  verify: True, False or "auto" (on when it fits in memory on one process); compares logits and
    greedy generations with transformers (`hf_verify.verify`) before the folder is moved into place.
  Raises before writing anything if output_dir is not empty (unless overwrite), the source or the
  vocabulary is unusable, or verification is asked for without torch/transformers installed.
  Raises `VerificationFailed` on a mismatch; the verified folder is then left at `error.folder`.
  """
  started = time.time()
  output_dir = paths.abspath(output_dir)
  remote = paths.is_remote(output_dir)
  is_writer = jax.process_index() == 0
  config = source.config
  if is_writer:
    _check_output_dir(output_dir, overwrite)
  entries = tensor_entries(config, dtype)
  shards = plan_shards(entries, max_shard_size)
  num_parameters = sum(int(np.prod(e.shape)) for e in entries)
  do_verify, skipped_reason = decide_verify(verify, num_parameters, remote)
  if do_verify:
    hf_verify.require_dependencies()
  elif skipped_reason:
    log.info("%s", skipped_reason)
  hf_family = families.for_config(config)
  vocabulary = hf_family.tokenizer_files(vocabulary_path, config, source.inputs_end_with_eos)
  source.check()

  tmp_dir = None
  if is_writer and remote:
    paths.rmtree(output_dir, missing_ok=True)  # only when overwrite (checked above)
    tmp_dir = output_dir  # written in place, config.json last (module docstring)
  elif is_writer:
    parent = os.path.dirname(output_dir)
    paths.makedirs(parent)
    # local-only: a temporary sibling on the same disk, so that the final rename is atomic
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    os.chmod(tmp_dir, 0o755)
  try:
    for i, shard in enumerate(shards):
      if not is_writer and not source.collective_reads:
        break  # nothing to gather: process 0 reads and writes alone
      t0 = time.time()
      safetensors_writer.write_shard(paths.join(tmp_dir, shard.filename) if is_writer else None, shard, dtype,
                   lambda entry: _convert(source, entry, dtype))
      log.info("wrote %s (%d/%d): %d tensors, %.1f MB in %.1fs", shard.filename, i + 1, len(shards),
               len(shard.entries), shard.nbytes / 1e6, time.time() - t0)
    if is_writer:
      _write_metadata(tmp_dir, config, dtype, shards, num_parameters, vocabulary, card,
                      source.inputs_end_with_eos)
  except BaseException:
    if tmp_dir:
      _remove_quietly(tmp_dir)
    raise

  report = None
  if do_verify:
    try:
      model, params = source.load_for_verify()
      report = hf_family.verify(tmp_dir, model, params, dtype=dtype,
                                inputs_end_with_eos=source.inputs_end_with_eos, **(verify_kwargs or {}))
    except BaseException:
      _remove_quietly(tmp_dir)
      raise
    print(report.summary(), flush=True)
    if not report.ok:
      raise VerificationFailed(f"the exported folder does not reproduce the model in transformers; it "
                               f"was left at {tmp_dir} (not moved to {output_dir}):\n{report.summary()}",
                               report, tmp_dir)
  files: list[str] = []
  if is_writer:
    files = paths.listdir(tmp_dir)
    if not remote:
      _publish(tmp_dir, output_dir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("xmtf_jax.hf_export done")
  total = sum(e.nbytes for e in entries)
  log.info("exported %s: %d tensors, %.1f MB (%s) in %d file(s)", output_dir, len(entries), total / 1e6,
           dtype, len(shards))
  return ExportResult(output_dir=output_dir, files=files, num_tensors=len(entries),
                      num_parameters=num_parameters, total_bytes=total, shards=len(shards), dtype=dtype,
                      seconds=time.time() - started, verification=report,
                      verify_skipped_reason=skipped_reason)


def hf_config_dict(config: Any, dtype: str) -> dict:
  """config.json content: the family's config for transformers with the weights' dtype."""
  return families.for_config(config).export_config(config, dtype)


def _write_metadata(folder: str, config: Any, dtype: str, shards: Sequence[ShardPlan],
                    num_parameters: int, vocabulary: hf_tokenizer.TokenizerFiles, card,
                    add_eos: bool) -> None:
  def write_json(name: str, obj: Any) -> None:
    paths.write_text(paths.join(folder, name), json.dumps(obj, indent=2, sort_keys=True) + "\n")

  hf_family = families.for_config(config)
  write_json("generation_config.json", dict(hf_family.generation_config))
  if len(shards) > 1:
    write_json(INDEX_FILE, {
        "metadata": {"total_size": sum(s.nbytes for s in shards), "total_parameters": num_parameters},
        "weight_map": {e.name: s.filename for s in shards for e in s.entries}})
  for name, content in vocabulary.files.items():
    if isinstance(content, bytes):
      paths.write_bytes(paths.join(folder, name), content)
    else:
      paths.write_text(paths.join(folder, name), content)
  paths.write_text(paths.join(folder, "README.md"), hf_family.render_card(
      card or model_card.ModelCard(), config=config, dtype=dtype, num_parameters=num_parameters,
      tokenizer_class=vocabulary.tokenizer_class, inputs_end_with_eos=add_eos))
  # Last: on a bucket the folder counts as an HF folder (and as finished) only once it exists.
  write_json("config.json", hf_config_dict(config, dtype))
