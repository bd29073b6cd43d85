"""Hugging Face Hub ids (`google/mt5-small`) told apart from paths. Hub ids are not fetched yet: the
model-path opener refuses one with the commands that download its folder (issue: Hub ids as model
paths, through `huggingface_hub`'s cache, will plug in here)."""
from __future__ import annotations

import os
import re

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def looks_like_hub_id(path: str) -> bool:
  """'google/mt5-small': an HF Hub model id (owner/name) rather than a path: no scheme, one '/', not
  starting with '.', '/' or '~', and nothing of that name on the local disk."""
  text = str(path)
  return bool(HUB_ID.fullmatch(text)) and not text.startswith(".") and not os.path.exists(text)  # local-only: an id has no scheme


def hub_id_message(hub_id: str) -> str:
  """Why a Hub id is refused and how to get its folder (one paragraph)."""
  local = f"models/{hub_id.rpartition('/')[2]}"
  return (f"{hub_id} looks like a Hugging Face Hub id, and xmtf_jax does not download from the Hub "
          f"(yet): give a local folder (or gs:// URL) instead. Download it first with "
          f"`huggingface-cli download {hub_id} --local-dir {local}` or, in Python, "
          f"`huggingface_hub.snapshot_download('{hub_id}', local_dir='{local}')`, then pass {local}.")
