"""A mixture in an xP3-family layout registered as seqio tasks: one task per language folder (plus one
per prompt file) and a mixture over the languages with rates from the data's line counts.

`register_layout` is how `mixtures` registers xP3, xP3mt, xP3all, xP3x, P3 and the bundled demo; the
`MixtureInfo` it returns is held by the registered seqio Mixture (`mixture_info(name)`) and serves
the rates and the data report.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Mapping, Optional

import seqio

from xmtf_jax.data import line_counts, mixing_rates, tasks, xp3_layouts
from xmtf_jax.data.config import DataConfig
from xmtf_jax.data.jsonl_source import RecordSchema

@dataclasses.dataclass
class MixtureInfo:
  """What was registered for one mixture; used for rates and by the data report."""
  name: str
  root: str
  layout: xp3_layouts.Layout
  task_languages: dict[str, str]          # language task -> language
  prompt_tasks: dict[str, list[str]]      # language task -> its per-prompt tasks
  counts: line_counts.LineCounts
  rate_config: Optional[DataConfig] = None  # None: the run's (`configure`), default DataConfig()
  run_config: Optional[DataConfig] = None
  _rates: dict = dataclasses.field(default_factory=dict)
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

  def sizes(self, split: str = "train") -> dict[str, int]:
    """Examples (lines) per language task in `split` (0 where the task has no such split)."""
    out = {}
    for task_name in self.task_languages:
      source = seqio.get_mixture_or_task(task_name).source
      out[task_name] = self.counts.total(source.files(split)) if split in source.splits else 0
    return out

  def configure(self, config: DataConfig) -> None:
    """The run's data settings (registration: `mixtures.register_for`); a mixture registered
    without a rate config of its own (the bundled demo) mixes by them."""
    self.run_config = config

  def rates(self) -> dict[str, float]:
    """Normalised mixing rate per language task (from the train split's sizes)."""
    config = self.rate_config or self.run_config or DataConfig()
    key = (config.mixing_scheme, config.mixing_cap, config.mixing_temperature,
           repr(config.mixing_weights))
    with self._lock:
      if key not in self._rates:
        self._rates[key] = mixing_rates.mixing_rates(
            config.mixing_scheme, self.sizes("train"), self.task_languages,
            cap=config.mixing_cap, temperature=config.mixing_temperature,
            weights=config.mixing_weights)
        # debug: training logs the shares of the mixture it trains (source_factory), which may
        # hold this one as a part
        logging.debug("mixture %s: %s rates %s", self.name, config.mixing_scheme, self._rates[key])
      return self._rates[key]


def mixture_info(name: str) -> Optional[MixtureInfo]:
  """The MixtureInfo of a mixture registered by `register_layout`, else None."""
  if name not in seqio.MixtureRegistry.names():
    return None
  return getattr(seqio.get_mixture_or_task(name), "family_info", None)


def configure(name: str, config: DataConfig) -> None:
  """Hands the run's `config` to mixture or task `name`: its tasks (`tasks.configure_tasks`) and,
  for a family mixture, its rates."""
  tasks.configure_tasks(name, config)
  info = mixture_info(name)
  if info is not None:
    info.configure(config)


def register_layout(name: str, root: str, *, kind: Optional[str], vocab: seqio.Vocabulary,
                    config: DataConfig, rate_config: Optional[DataConfig] = None,
                    overwrite: bool = False) -> MixtureInfo:
  """Registers `{name}_{lang}` (+ per-prompt) tasks and the mixture `name` for the data at `root`."""
  layout = xp3_layouts.scan(root, kind, languages=config.languages, strict=config.strict,
                            source=name)
  counts = line_counts.line_counts_for(root, config.line_counts_cache_dir)
  common = dict(vocab=vocab, add_eos_to_inputs=config.add_eos_to_inputs, strict=config.strict,
                schema=RecordSchema(), count_fn=counts.total,
                shuffle_buffer_size=config.shuffle_buffer_size, overwrite=overwrite)
  task_languages, prompt_tasks = {}, {}
  for lang in layout.languages:
    task_name = f"{name}_{xp3_layouts.task_name_part(lang.language)}"
    tasks.add_jsonl_task(task_name, {"train": lang.train, "validation": lang.validation}, **common)
    task_languages[task_name] = lang.language
    prompt_tasks[task_name] = []
    for path in lang.prompt_files:
      prompt_name = f"{task_name}.{xp3_layouts.task_name_part(xp3_layouts.prompt_file_stem(path))}"
      while prompt_name in prompt_tasks[task_name]:  # two file names that sanitise alike
        prompt_name += "_"
      split = "validation" if xp3_layouts.VALIDATION_MARK in path else "train"
      tasks.add_jsonl_task(prompt_name, {split: [path]}, **common)
      prompt_tasks[task_name].append(prompt_name)
  info = MixtureInfo(name, root, layout, task_languages, prompt_tasks, counts, rate_config)
  mixture = tasks.add_mixture(name, [(t, lambda task, info=info: info.rates()[task.name])
                                     for t in task_languages], overwrite=overwrite)
  mixture.family_info = info  # held by the registered mixture: no registry of our own
  logging.info("registered mixture %s: %d language tasks, %d per-prompt tasks from %s", name,
               len(task_languages), sum(map(len, prompt_tasks.values())), root)
  return info


def language_rates(name: str) -> Mapping[str, float]:
  """{language: rate} of a registered family mixture (e.g. for plots)."""
  info = mixture_info(name)
  if info is None:
    raise ValueError(f"{name!r} is not a mixture registered from an xP3-family layout")
  return {info.task_languages[t]: r for t, r in info.rates().items()}
