"""Hugging Face Hub ids (`google/mt5-small`, `bigscience/bloomz-560m`) as model paths: told apart from
paths, then resolved through `huggingface_hub` into its cache, where the snapshot is an HF folder.

    folder = hub_ids.snapshot_folder("google/mt5-small")   # .../models--google--mt5-small/snapshots/<sha>

Only what a model path needs is fetched: config.json, the weights (safetensors when the repository has
them, else pytorch_model*.bin) and the tokenizer files. With HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE)
the cache is read and nothing is downloaded. The cache is huggingface_hub's (HF_HUB_CACHE, else
HF_HOME/hub, read when the id is resolved). `huggingface_hub` is imported only when an id is resolved.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from xmtf_jax.errors import MissingPathError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("spiece.model", "sentencepiece.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")
SAFETENSORS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
TORCH_BIN = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")


class HubIdError(MissingPathError):
  """A Hub id that could not be resolved (not on the Hub, not in the cache offline, no network)."""


def looks_like_hub_id(path: str) -> bool:
  """'google/mt5-small': an HF Hub model id (owner/name) rather than a path: no scheme, one '/', not
  starting with '.', '/' or '~', and nothing of that name on the local disk."""
  text = str(path)
  # os.path, not paths: an id has no scheme, so only the local disk can hold a path of its name
  return (bool(HUB_ID.fullmatch(text)) and not text.startswith(".")
          and not os.path.exists(text))  # local-only: an id has no scheme


def offline() -> bool:
  """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it, but read now, not at import."""
  return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
             for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cache_dir() -> Optional[str]:
  """The cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub), read now; None: its default."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.path.expanduser(os.environ["HF_HUB_CACHE"])
  if os.environ.get("HF_HOME"):
    return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
  return None


def _weight_patterns(hub_id: str, hub) -> tuple[str, ...]:
  """Safetensors when the repository has them, else the torch .bin files; both when the listing
  fails (no network: the cache decides), so snapshot_download falls back to the cache."""
  try:
    names = hub.list_repo_files(hub_id)
  except (hub.errors.RepositoryNotFoundError, hub.errors.GatedRepoError):
    raise
  except Exception:  # pylint: disable=broad-except  (connection errors: the cache decides)
    return SAFETENSORS + TORCH_BIN
  return SAFETENSORS if any(n.endswith(".safetensors") for n in names) else TORCH_BIN


def snapshot_folder(hub_id: str) -> str:
  """The local folder of `hub_id`'s main revision in the HF cache, downloaded first unless offline.
  Raises HubIdError (one paragraph naming the id and what to do) when it cannot be had."""
  import huggingface_hub as hub  # only when an id is resolved: not needed to read local folders

  cache, is_offline = cache_dir(), offline()
  where = cache or hub.constants.HF_HUB_CACHE
  instead = "or give a local folder (or gs:// URL) holding the model instead"
  try:
    weights = SAFETENSORS + TORCH_BIN if is_offline else _weight_patterns(hub_id, hub)
    folder = hub.snapshot_download(hub_id, allow_patterns=list(CONFIG_FILES + TOKENIZER_FILES + weights),
                                   cache_dir=cache, local_files_only=is_offline)
  except (hub.errors.RepositoryNotFoundError, hub.errors.GatedRepoError) as error:
    gated = isinstance(error, hub.errors.GatedRepoError)
    raise HubIdError(
        f"{hub_id}: {'a gated model on the Hugging Face Hub' if gated else 'no such model on the Hugging Face Hub'}"
        f" (a private or gated one needs `hf auth login` and its terms accepted on its page). Check "
        f"the id (owner/name, e.g. google/mt5-small or bigscience/bloomz-560m), {instead}.") from None
  except (hub.errors.LocalEntryNotFoundError, hub.errors.HfHubHTTPError, OSError, ValueError) as error:
    if is_offline:
      why = (f"HF_HUB_OFFLINE is set and the id is not in the Hugging Face cache {where} (or only in "
             f"part)")
      fix = f"download it once with network access (`hf download {hub_id}`), check the id"
    else:
      why = (f"it could not be downloaded ({type(error).__name__}: {_first_line(error)}) and it is "
             f"not in the Hugging Face cache {where}")
      fix = "check the network (or HF_ENDPOINT) and the id"
    raise HubIdError(f"{hub_id}: a Hugging Face Hub id, but {why}. To use it, {fix}, {instead}.") from None
  names = set(os.listdir(folder))  # local-only: the HF cache's snapshot folder
  has_weights = any(n.endswith((".safetensors", ".bin")) for n in names)
  if "config.json" not in names or not has_weights:
    missing = " and ".join(what for what, ok in (("config.json", "config.json" in names),
                                                 ("weights (*.safetensors or pytorch_model*.bin)",
                                                  has_weights)) if not ok)
    raise HubIdError(f"{hub_id}: its snapshot in the Hugging Face cache ({folder}) has no {missing}: not "
                     f"an HF mT5/mT0 or BLOOM model, or a partial download. Download it again "
                     f"(`hf download {hub_id}`), {instead}.")
  return folder


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else "no message"
