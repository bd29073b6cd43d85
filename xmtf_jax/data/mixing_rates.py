"""Mixing rates of a seqio mixture: examples-proportional (capped), temperature-scaled, or explicit.

All schemes return rates normalised to sum to 1 over the given tasks, so reports read as shares.
Sizes are example counts measured from the data (`line_counts.py`), never typed in by hand.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

from xmtf_jax.errors import UserError

EXAMPLES_PROPORTIONAL = "examples_proportional"
TEMPERATURE = "temperature"
EXPLICIT = "explicit"
SCHEMES = (EXAMPLES_PROPORTIONAL, TEMPERATURE, EXPLICIT)

# BLOOMZ's per-language sampling weights (paper repo, xp3capmixnewcodelong_train.txt): each
# language's share of xP3 bytes, code upsampled x1.3. They sum to 1.0134 (the source says 1.0137,
# a rounding slip); rates built from them are renormalised over the languages present.
BLOOMZ_LANGUAGE_WEIGHTS = {
    "en": 0.3925, "es": 0.0798, "pt": 0.0646, "code": 0.0593, "fr": 0.0584, "ar": 0.0493,
    "id": 0.0485, "zh": 0.0483, "hi": 0.0463, "vi": 0.0327, "ur": 0.0202, "te": 0.0140,
    "ta": 0.0097, "bn": 0.0088, "mr": 0.0070, "sw": 0.0059, "gu": 0.0059, "pa": 0.0055,
    "ne": 0.0041, "yo": 0.0037, "ig": 0.0034, "ny": 0.0029, "zu": 0.0028, "xh": 0.0027,
    "sn": 0.0027, "ts": 0.0026, "rw": 0.0026, "lg": 0.0025, "tn": 0.0025, "nso": 0.0024,
    "rn": 0.0020, "ml": 0.0018, "kn": 0.0017, "or": 0.0017, "as": 0.0016, "ln": 0.0013,
    "wo": 0.0013, "tum": 0.0012, "ki": 0.0012, "st": 0.0012, "fon": 0.0012, "ca": 0.0012,
    "eu": 0.0011, "ak": 0.0011, "bm": 0.0011, "tw": 0.0011,
}

WEIGHT_PRESETS = {"bloomz": BLOOMZ_LANGUAGE_WEIGHTS}


def _normalise(rates: Mapping[str, float]) -> dict[str, float]:
  total = sum(rates.values())
  if total <= 0:
    raise UserError(f"mixing rates sum to {total}; every task is empty or weighted 0: {dict(rates)}")
  return {name: rate / total for name, rate in rates.items()}


def examples_proportional(sizes: Mapping[str, int], cap: Optional[int] = None) -> dict[str, float]:
  """rate ∝ min(size, cap): T5/T0's scheme (T0 capped at 500k examples per dataset)."""
  return _normalise({n: float(min(s, cap) if cap else s) for n, s in sizes.items()})


def temperature_scaled(sizes: Mapping[str, int], temperature: float,
                       cap: Optional[int] = None) -> dict[str, float]:
  """rate ∝ min(size, cap)^(1/T): T=1 is examples-proportional, large T tends to uniform."""
  if temperature <= 0:
    raise UserError(f"temperature must be > 0, got {temperature}")
  return _normalise({n: (min(s, cap) if cap else s) ** (1.0 / temperature) if s else 0.0
                     for n, s in sizes.items()})


def explicit_weights(task_languages: Mapping[str, str],
                     weights: Union[str, Mapping[str, float]]) -> dict[str, float]:
  """rate ∝ weights[language of the task]; `weights` is a dict or a preset name ("bloomz")."""
  if isinstance(weights, str):
    if weights not in WEIGHT_PRESETS:
      raise UserError(f"unknown weight preset {weights!r}; presets: {sorted(WEIGHT_PRESETS)}")
    weights = WEIGHT_PRESETS[weights]
  missing = sorted({lang for lang in task_languages.values() if lang not in weights})
  if missing:
    raise UserError(f"explicit mixing weights have no entry for languages {missing}; add them "
                     f"(e.g. --gin.MIXING_WEIGHTS=\"{{'{missing[0]}': 0.01, ...}}\") or drop those "
                     "tasks from the mixture")
  return _normalise({task: float(weights[lang]) for task, lang in task_languages.items()})


def mixing_rates(scheme: str, sizes: Mapping[str, int], task_languages: Mapping[str, str], *,
                 cap: Optional[int] = None, temperature: float = 1.0,
                 weights: Union[str, Mapping[str, float], None] = None) -> dict[str, float]:
  """Normalised rates for `scheme` (one of SCHEMES) over the tasks of `sizes`."""
  if scheme == EXAMPLES_PROPORTIONAL:
    return examples_proportional(sizes, cap)
  if scheme == TEMPERATURE:
    return temperature_scaled(sizes, temperature, cap)
  if scheme == EXPLICIT:
    if weights is None:
      raise UserError("the 'explicit' mixing scheme needs weights (MIXING_WEIGHTS = 'bloomz' or a dict)")
    return explicit_weights({t: task_languages[t] for t in sizes}, weights)
  raise UserError(f"unknown mixing scheme {scheme!r}; choose one of {SCHEMES}")
