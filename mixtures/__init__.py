"""seqio tasks and mixtures of xmtf_jax: definitions to copy for your own. `import mixtures` registers
the bundled demo (`demo`, `demo_{lang}`, `demo_heldout_*`); the xP3 family (`xp3`, `xp3mt`, `xp3all`,
`xp3x`, `p3` and their `{variant}_{lang}` tasks) is registered from its data root by
`register_for(name, config)` (what the entry points call after reading gin) or `register_variant`.
After that, seqio's own `seqio.get_mixture_or_task(name)` finds them.

The building blocks live in the library: `xmtf_jax.data.tasks` (`add_jsonl_task`, `add_mixture`,
`vocabulary`, `run_vocabulary`), `xmtf_jax.data.config.DataConfig`, `xmtf_jax.data.xp3_family`.
"""
from typing import Optional

from mixtures import demo  # noqa: F401  (registers the demo tasks)
from mixtures.xp3 import VARIANTS, ensure_registered, register_variant, variant_of
from xmtf_jax.data import tasks, xp3_family
from xmtf_jax.data.xp3_family import language_rates, mixture_info
from xmtf_jax.data.config import MT5_VOCABULARY_PATH, DataConfig
from xmtf_jax.data.tasks import (add_jsonl_task, add_mixture, output_features, run_vocabulary,
                                  vocabulary)


def register_for(name: str, config: Optional[DataConfig] = None) -> None:
  """Makes `name` findable by seqio: registers the xP3-family variant it belongs to (from `config`'s
  data root), then hands `config` to the mixture or task `name` and its tasks: its mixing settings to
  a family mixture without its own (the demo), its strictness to tasks that set none (your
  `add_jsonl_task` tasks), its vocabulary to tasks that use `run_vocabulary()`. The settings stay
  with those tasks and mixtures: nothing else in the process changes."""
  config = config or DataConfig()
  ensure_registered(name, config)
  if name in tasks.registered_names():
    xp3_family.configure(name, config)


__all__ = ["DataConfig", "MT5_VOCABULARY_PATH", "VARIANTS", "add_jsonl_task", "add_mixture",
           "ensure_registered", "language_rates", "mixture_info", "output_features", "register_for", "register_variant", "run_vocabulary",
           "variant_of", "vocabulary"]
