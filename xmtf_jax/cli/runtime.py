"""What every entry point does around its one library call: logging, task registration, the mesh and
the model it runs on, all from the gin-built config objects."""
from __future__ import annotations

import logging
from typing import Any, Optional

import jax

import mixtures
from xmtf_jax.cli import configurables
from xmtf_jax.data.config import DataConfig
from xmtf_jax.parallel.partitioning import PartitioningConfig
from xmtf_jax.train import pretrained


def configure_logging() -> None:
  """INFO lines with a time stamp from process 0 (others: warnings, prefixed with their index); the
  libraries' loggers at WARNING (orbax logs several INFO lines per restored tensor through absl).
  `force`: importing orbax already gave the root logger a WARNING handler (absl's first message)."""
  level = logging.INFO if jax.process_index() == 0 else logging.WARNING
  prefix = f"[{jax.process_index()}] " if jax.process_count() > 1 else ""
  logging.basicConfig(level=level, format=f"%(asctime)s {prefix}%(message)s", datefmt="%H:%M:%S",
                      force=True)
  for noisy in ("absl", "orbax", "jax", "tensorflow", "etils", "seqio"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def data_config() -> DataConfig:
  """The gin-bound `mixtures.DataConfig`."""
  return configurables.DataConfig()


def register_tasks(*names: Optional[str], config: Optional[DataConfig] = None) -> None:
  """Makes the named mixtures/tasks findable by seqio (the demo is registered on `import mixtures`;
  an xP3-family name registers its variant from the data root in `config`, default gin's)."""
  config = config or data_config()
  for name in names:
    if name:
      mixtures.register_for(name, config)


def partitioning_config() -> PartitioningConfig:
  return configurables.PartitioningConfig()


def load_model(path, mesh=None, partitioning: Optional[PartitioningConfig] = None
               ) -> tuple[Any, Any]:
  """(the task-level model of the path's family, params) from any model path (a path or an opened
  `ModelPath`: an HF folder or a training checkpoint), placed on `mesh`, with dropout off (evaluation
  and inference)."""
  rules = (partitioning or partitioning_config()).rules()
  return pretrained.load_pretrained(path, mesh, logical_axis_rules=rules, dropout_rate=0.0)
