"""What share of a mixture's examples each task gets, and each task's language where one is known.

A mixture of your own may hold xP3-family mixtures (e.g. `[("demo", 0.5), ("my_qa", 0.5)]`): seqio
flattens them into their tasks, scaling each sub-mixture's rates by its rate. The shares here are of
the mixture named (what training samples from, what the data report shows), not of a sub-mixture;
a language comes from the family mixture that registered the task (one per language folder); a task
of your own has none.
"""
from __future__ import annotations

from typing import Optional

import seqio

from xmtf_jax.data import xp3_family


def task_shares(provider) -> dict[str, float]:
  """{task name: share of examples} of a seqio Mixture (shares sum to 1), or {task: 1.0}."""
  if not isinstance(provider, seqio.Mixture):
    return {provider.name: 1.0}
  info = xp3_family.mixture_info(provider.name)
  if info is not None:
    return dict(info.rates())
  rates = {t.name: float(provider.get_rate(t)) for t in provider.tasks}
  total = sum(rates.values())
  return {name: rate / total for name, rate in rates.items()} if total else rates


def task_languages(provider) -> dict[str, str]:
  """{task name: language} for the tasks of `provider` that an xP3-family mixture registered, found
  through its sub-mixtures at any depth."""
  languages: dict[str, str] = {}
  pending, seen = [provider], set()
  while pending:
    mixture = pending.pop()
    if not isinstance(mixture, seqio.Mixture) or mixture.name in seen:
      continue
    seen.add(mixture.name)
    info = xp3_family.mixture_info(mixture.name)
    if info is not None:
      languages.update(info.task_languages)
    for name in mixture.rate_per_task_name:
      if name in seqio.MixtureRegistry.names():
        pending.append(seqio.get_mixture_or_task(name))
  return languages


def describe(name: str, shares: dict[str, float], languages: Optional[dict[str, str]] = None,
             limit: int = 60) -> str:
  """One log line: the mixture's tasks by share, largest first, e.g.
  "mixing rates of my_mix (3 tasks): my_qa 50.00% · demo_en (en) 30.00% · demo_fr (fr) 20.00%"."""
  languages = languages or {}
  ordered = sorted(shares.items(), key=lambda item: (-item[1], item[0]))
  parts = [f"{task}{f' ({languages[task]})' if task in languages else ''} {share:.2%}"
           for task, share in ordered[:limit]]
  more = f" · ... {len(ordered) - limit} more" if len(ordered) > limit else ""
  return f"mixing rates of {name} ({len(ordered)} tasks): " + " · ".join(parts) + more
