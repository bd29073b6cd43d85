"""Renders one example with one template exactly as the promptsource fork that built xP3 did.

xP3 was built with `Muennighoff/promptsource` branch `tr13` (xP3mt: branch `xp3mt`), whose
`Template.apply(example, truncate=True, strip_connection=...)` differs from the strict evaluation
renderer in `templates.py` on purpose, and byte-compatible files need its exact behaviour:
- undefined variables render as empty strings (jinja2's default `Undefined`), not errors;
- every `}}` of the template text is rewritten to ` | string | truncate(2048) }}` (a plain text
  replacement, as the fork does), so each output goes through `string` and jinja2's own `truncate`
  with its default leeway of 5: values up to 2,053 characters pass whole, longer ones are cut at a
  word boundary to at most 2,045 characters plus "...". `answer_choices` is not truncated;
- "|||" inside the example's top-level strings is masked with the fork's own token while rendering
  (nested strings are not), and `answer_choices` is rendered first and given as a list;
- the render is split on "|||". Non-code strips every part; code (`code=True`, the fork's
  `strip_connection=False`) drops one trailing space of the input when every target starts with a
  space, then left-strips the input and right-strips the targets;
- filters `choice` (drawn from the caller's `rng`: the fork's unseeded global `random` made builds
  irreproducible), `most_frequent` (the list of all most frequent items), `highlight` (a red span),
  and the global `zip`: the fork's environment has no others (no `enumerate`).

Drops follow the build script: a blank render, fewer than 2 parts, more than one target, then an
empty input or target. Any exception becomes `Dropped("render error: <type>")`; the build script
dropped only the row on a `ValueError` but skipped the whole template file on any other exception,
which `Dropped.skips_template` tells.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import random
from typing import Any, Mapping, Sequence

import jinja2

from xmtf_jax.prompts.templates import (RNG_VARIABLE, SEPARATOR, TEXT_VAR_LENGTH, PromptTemplate,
                                        protect_pipes, restore_pipes)

# The fork's `Template.pipe_protector`: the same token keeps truncation lengths identical when a field
# holds "|||" (the masked text is what gets truncated).
FORK_PIPE_PROTECTOR = "3ed2dface8203c4c9dfb1a5dc58e41e0"
TRUNCATION = f" | string | truncate({TEXT_VAR_LENGTH}) }}}}"

BLANK = "blank render"
NO_SEPARATOR = "no '|||' separator"
MANY_TARGETS = "more than one target"
EMPTY_INPUTS = "empty inputs"
EMPTY_TARGETS = "empty targets"
ANSWER_CHOICES_FIELD = "example has an answer_choices field"
RENDER_ERROR = "render error: "


@dataclasses.dataclass(frozen=True)
class Rendered:
  inputs: str
  targets: str


@dataclasses.dataclass(frozen=True)
class Dropped:
  """Why an example produced no line. `skips_template`: the fork's build skipped the whole template
  (file) on this error rather than the row (any exception but a ValueError)."""
  reason: str
  skips_template: bool = False


def _most_frequent(items: Sequence[Any]) -> list[Any] | None:
  """The fork's `most_frequent`: every item sharing the highest count, in first-seen order."""
  if not items:
    return None
  counts = collections.Counter(items).most_common()
  return [item for item, count in counts if count == counts[0][1]]


@jinja2.pass_context
def _choice(context, items):
  """The fork's `random.choice(items)` on the caller's generator: as the fork, no `list()` first, so a
  generator (`xs | select(...) | choice`) fails there as it did in the build."""
  return context[RNG_VARIABLE].choice(items)


def _highlight(text: str) -> str:
  return "<span style='color: #F08080'>" + text + "</span>"


_ENV = jinja2.Environment(loader=jinja2.BaseLoader())
_ENV.globals.update(zip=zip)
_ENV.filters.update(choice=_choice, most_frequent=_most_frequent, highlight=_highlight)


def environment() -> jinja2.Environment:
  """The fork's Jinja environment (for parsing templates the way they will be rendered)."""
  return _ENV


@functools.lru_cache(maxsize=8192)
def _compile(source: str) -> jinja2.Template:
  """Compiled once per template text (a fact of the text, the same for every run)."""
  return _ENV.from_string(source)


def render_xp3(template: PromptTemplate, example: Mapping[str, Any], *, code: bool,
               rng: random.Random) -> Rendered | Dropped:
  """`example` rendered by `template` as the fork's `apply(truncate=True)` and the build's filters."""
  try:
    return _render(template, example, code, rng)
  except ValueError as e:
    return Dropped(RENDER_ERROR + type(e).__name__)
  except Exception as e:  # jinja2 syntax/undefined errors, Python errors inside expressions
    return Dropped(RENDER_ERROR + type(e).__name__, skips_template=True)


def _render(template: PromptTemplate, example: Mapping[str, Any], code: bool,
            rng: random.Random) -> Rendered | Dropped:
  compiled = _compile(template.jinja.replace("}}", TRUNCATION))  # compiled first, as in the fork
  protected = protect_pipes(example, FORK_PIPE_PROTECTOR)
  if "answer_choices" in protected:
    return Dropped(ANSWER_CHOICES_FIELD)
  choices = None
  if template.answer_choices is not None:
    rendered_choices = _compile(template.answer_choices).render(**protected, **{RNG_VARIABLE: rng})
    choices = [restore_pipes(choice.strip(), FORK_PIPE_PROTECTOR)
               for choice in rendered_choices.split(SEPARATOR)]
  rendered = compiled.render(**protected, answer_choices=choices, **{RNG_VARIABLE: rng})
  parts = [restore_pipes(part, FORK_PIPE_PROTECTOR) for part in rendered.split(SEPARATOR)]
  if not code:
    parts = [part.strip() for part in parts]
  if parts == [""]:
    return Dropped(BLANK)
  if len(parts) < 2:
    return Dropped(NO_SEPARATOR)
  if code:
    # The fork indexes [-1] and [0] unguarded: an empty part raises IndexError there too.
    if parts[0][-1] == " " and all(part[0] == " " for part in parts[1:]):
      parts[0] = parts[0][:-1]
    parts = [parts[0].lstrip()] + [part.rstrip() for part in parts[1:]]
  if len(parts) > 2:
    return Dropped(MANY_TARGETS)
  if not parts[0]:
    return Dropped(EMPTY_INPUTS)
  if not parts[1]:
    return Dropped(EMPTY_TARGETS)
  return Rendered(inputs=parts[0], targets=parts[1])
