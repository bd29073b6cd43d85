"""The xP3 family as seqio tasks and mixtures: xp3, xp3mt, xp3all, xp3x, p3.

Names (stable, documented in README):
  mixture  `{variant}`                      e.g. `xp3`, `xp3x`, `p3`
  task     `{variant}_{lang}`               one per language folder, e.g. `xp3_en`, `xp3x_eng_Latn`,
                                            `p3_en`; reads merged_{lang}.jsonl when the folder
                                            has no validation files (it contains them)
  task     `{variant}_{lang}.{prompt file}` one per per-prompt file, e.g.
           `xp3_code.codeparrot_codecomplex_codeparrot__codecomplex_train_whichcomplexity`

A variant is registered from its data root (DataConfig.root_for) by `register_variant`, or by
`mixtures.register_for(name, config)` for the variant a name belongs to: one listing per language
folder, no file read. Line counts (for mixing rates) are taken when a dataset is built, then cached.
"""
from __future__ import annotations

import threading
from typing import Optional

import seqio

from xmtf_jax.data import tasks, xp3_family, xp3_layouts
from xmtf_jax.data.config import DataConfig
from xmtf_jax.errors import UserError

# variant -> layout kind
VARIANTS = {"xp3": xp3_layouts.XP3, "xp3mt": xp3_layouts.XP3, "xp3all": xp3_layouts.XP3,
            "xp3x": xp3_layouts.XP3X, "p3": xp3_layouts.P3}


def variant_of(name: str) -> Optional[str]:
  """The xP3-family variant a task or mixture name belongs to ('xp3mt_en' -> 'xp3mt')."""
  for variant in sorted(VARIANTS, key=len, reverse=True):
    if name == variant or name.startswith(variant + "_"):
      return variant
  return None


def register_variant(variant: str, config: Optional[DataConfig] = None, *,
                     data_dir: Optional[str] = None, name: Optional[str] = None,
                     overwrite: bool = False) -> xp3_family.MixtureInfo:
  """Registers one xP3-family variant from `data_dir` (default: the config's root for it).

  `config` defaults to `DataConfig()` (the entry points pass the one gin built). `name` replaces the
  variant as the prefix of task and mixture names (tests register fixtures under other names).
  """
  if variant not in VARIANTS:
    raise UserError(f"unknown xP3 variant {variant!r}; known: {sorted(VARIANTS)}")
  config = config or DataConfig()
  root = data_dir or config.root_for(variant)
  return xp3_family.register_layout(name or variant, root, kind=VARIANTS[variant],
                                    vocab=tasks.vocabulary(config.vocabulary_path), config=config,
                                    rate_config=config, overwrite=overwrite)


_REGISTER_LOCK = threading.Lock()


def ensure_registered(name: str, config: Optional[DataConfig] = None) -> None:
  """Registers the variant `name` belongs to, if it is one and is not registered yet."""
  with _REGISTER_LOCK:
    if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
      return
    variant = variant_of(name)
    if variant is not None and variant not in seqio.MixtureRegistry.names():
      register_variant(variant, config)


