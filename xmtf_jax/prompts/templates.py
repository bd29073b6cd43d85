"""Reads promptsource template files and renders prompts, without importing promptsource.

A promptsource checkout keeps one YAML file per dataset (and subset) at
`promptsource/templates/{dataset}/{subset}/templates.yaml`:

    dataset: xnli
    subset: en
    templates:
      <uuid>: !Template
        id: <uuid>
        name: GPT-3 style
        jinja: '{{premise}} Question: {{hypothesis}} True, False, or Neither? ||| {{ answer_choices[label] }}'
        answer_choices: True ||| Neither ||| False
        metadata: !TemplateMetadata {languages: [en], metrics: [Accuracy], original_task: true, ...}

Rendering follows promptsource's semantics, so prompts match the ones mT0 was evaluated with:
- `answer_choices` is itself a Jinja template rendered on the example; `|||` separates the choices,
  each stripped of surrounding whitespace. The rendered list is available to `jinja` as
  `answer_choices`.
- `jinja` renders to `input ||| target`; both parts are stripped.
- `|||` inside an example's own strings is protected, so it never splits a prompt.
- every `{{ ... }}` output is cut to 2048 characters (promptsource truncates each variable so).
- globals `zip` and `enumerate`; filters `choice` and `most_frequent` as in promptsource.

One deliberate difference: a field the template uses but the example lacks, or an index outside
the answer choices, is an error naming the template, its file and the example (promptsource renders
an empty string there, which would silently score the wrong target).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import random
import re
from typing import Any, Mapping, Sequence

import jinja2
import yaml

from xmtf_jax import paths
from xmtf_jax.errors import UserError

# promptsource cuts every rendered variable to this many characters (its TEXT_VAR_LENGTH).
TEXT_VAR_LENGTH = 2048
SEPARATOR = "|||"
# Stands in for "|||" inside example strings while a prompt is split; any string that cannot occur
# in real text works.
PIPE_PLACEHOLDER = "\u0000xmtf-pipe\u0000"
# Suffixes of translated prompt names: `_{lang}ht` (human translated) and `_{lang}mt` (machine).
_TRANSLATION_SUFFIX = re.compile(r"_([a-z]{2,3})(ht|mt)$")


class TemplateError(UserError):
  """A template file that cannot be read, or a template that cannot render an example."""


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
  """One example rendered by one template: the model input, the target and the answer choices."""
  inputs: str
  target: str | None
  answer_choices: tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """One promptsource template (a `!Template` entry) and where it came from."""
  id: str
  name: str
  jinja: str
  answer_choices: str | None
  metadata: Mapping[str, Any]
  reference: str
  dataset: str
  subset: str | None
  source: str  # the file it was read from, for error messages

  @property
  def translation(self) -> tuple[str, str] | None:
    """(language, "ht" | "mt") for translated prompts named `..._{lang}ht` / `..._{lang}mt`."""
    match = _TRANSLATION_SUFFIX.search(self.name)
    return (match.group(1), match.group(2)) if match else None

  @property
  def base_name(self) -> str:
    """The name without a translation suffix: `GPT-3 style_frmt` → `GPT-3 style`."""
    return _TRANSLATION_SUFFIX.sub("", self.name)

  def describe(self) -> str:
    return f"template '{self.name}' (id {self.id}) in {self.source}"

  def answer_choices_list(self, example: Mapping[str, Any], example_id: Any = None) -> list[str] | None:
    """The rendered answer choices of `example`, or None when the template declares none."""
    if self.answer_choices is None:
      return None
    rendered = self._render(self.answer_choices, protect_pipes(example), example, example_id,
                            what="answer_choices")
    return [restore_pipes(choice.strip()) for choice in rendered.split(SEPARATOR)]

  def render(self, example: Mapping[str, Any], example_id: Any = None) -> RenderedPrompt | None:
    """Renders `example` into (inputs, target, answer_choices).

    Returns None when the template renders nothing at all for this example: promptsource templates
    may apply to a subset of examples only (e.g. XCOPA prompts wrapped in `{% if question ==
    "effect" %}`). Raises TemplateError naming the template, file and example when rendering fails.
    """
    if "answer_choices" in example:
      raise TemplateError(f"{self.describe()}: example {_example_label(example_id, example)} has a "
                          "field named 'answer_choices', which templates reserve for the rendered "
                          "choices; rename the field.")
    choices = self.answer_choices_list(example, example_id)
    context = dict(protect_pipes(example), answer_choices=choices)
    rendered = self._render(self.jinja, context, example, example_id, what="jinja")
    if not rendered.strip():
      return None
    parts = [restore_pipes(part.strip()) for part in rendered.split(SEPARATOR)]
    if len(parts) > 2:
      raise TemplateError(f"{self.describe()}: renders {len(parts)} parts separated by '|||' on "
                          f"example {_example_label(example_id, example)}; expected 'input ||| target'.")
    target = parts[1] if len(parts) == 2 else None
    return RenderedPrompt(inputs=parts[0], target=target,
                          answer_choices=tuple(choices) if choices is not None else None)

  def _render(self, source: str, context: Mapping[str, Any], example: Mapping[str, Any],
              example_id: Any, what: str) -> str:
    seed = hashlib.sha256(f"{self.id}|{what}|{sorted(example.items())!r}".encode()).digest()
    try:
      return _ENV.from_string(source).render(**context, **{RNG_VARIABLE: random.Random(seed)})
    except jinja2.TemplateSyntaxError as e:
      raise TemplateError(f"{self.describe()}: Jinja syntax error in '{what}' (line {e.lineno}): "
                          f"{e.message}") from e
    except jinja2.UndefinedError as e:
      raise TemplateError(
          f"{self.describe()}: cannot render '{what}' for example {_example_label(example_id, example)}: "
          f"{e.message} (fields present: {sorted(example)}). Check the example has the fields of the "
          "dataset's published layout and that its label is one of the answer choices.") from e
    except Exception as e:  # Jinja surfaces Python errors from expressions (int(), indexing, ...)
      raise TemplateError(f"{self.describe()}: cannot render '{what}' for example "
                          f"{_example_label(example_id, example)}: {type(e).__name__}: {e}") from e


def _truncate_variable(value: Any) -> Any:
  """Cuts every `{{ ... }}` output as promptsource does (`| string | truncate(2048)`)."""
  if value is None or isinstance(value, jinja2.Undefined):
    return value
  text = str(value)
  leeway = _ENV.policies["truncate.leeway"]
  if len(text) <= TEXT_VAR_LENGTH + leeway:
    return text
  return text[:TEXT_VAR_LENGTH - 3].rsplit(" ", 1)[0] + "..."


def _most_frequent(items: Sequence[Any]) -> Any:
  """Most common item; ties go to the first seen (promptsource's `most_frequent` filter)."""
  return collections.Counter(items).most_common(1)[0][0]


# The render context variable holding the `random.Random` that `choice` draws from.
RNG_VARIABLE = "_xmtf_choice_rng"


@jinja2.pass_context
def choice_filter(context, items):
  """promptsource's random `choice`, drawn from the render's own generator (seeded by the template and
  the example in `Template._render`): the same example renders the same way in any run and order."""
  return context[RNG_VARIABLE].choice(list(items))


_ENV = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined,
                          finalize=_truncate_variable, keep_trailing_newline=False)
_ENV.globals.update(zip=zip, enumerate=enumerate)
_ENV.filters.update(choice=choice_filter, most_frequent=_most_frequent,
                    highlight=lambda text: text)


def protect_pipes(example: Mapping[str, Any], placeholder: str = PIPE_PLACEHOLDER) -> dict[str, Any]:
  """Hides "|||" in the example's top-level strings (nested ones stay as they are, as in promptsource)."""
  return {k: v.replace(SEPARATOR, placeholder) if isinstance(v, str) else v
          for k, v in example.items()}


def restore_pipes(text: str, placeholder: str = PIPE_PLACEHOLDER) -> str:
  return text.replace(placeholder, SEPARATOR)


def _example_label(example_id: Any, example: Mapping[str, Any]) -> str:
  shown = repr(dict(example))
  if len(shown) > 300:
    shown = shown[:300] + "...}"
  return f"{example_id} {shown}" if example_id is not None else shown


# ----------------------------------------------------------------------------------------------
# Reading template files.

class TemplateLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
  """SafeLoader that also understands promptsource's `!Template` and `!TemplateMetadata` tags.

  They become plain dicts: nothing from the file is ever executed or imported. libyaml's C parser
  when PyYAML has it: a whole templates tree (2,600 files) parses in about 1.5 s instead of 15 s.
  """


def _construct_tagged_mapping(loader: yaml.BaseLoader, node: yaml.Node) -> dict:
  if not isinstance(node, yaml.MappingNode):
    raise yaml.constructor.ConstructorError(None, None, f"{node.tag} must be a mapping", node.start_mark)
  return loader.construct_mapping(node, deep=True)


TemplateLoader.add_constructor("!Template", _construct_tagged_mapping)
TemplateLoader.add_constructor("!TemplateMetadata", _construct_tagged_mapping)


def read_document(path: str) -> dict:
  """One templates.yaml as data, checked to be a promptsource mapping with a 'dataset'."""
  try:
    with paths.open(path, encoding="utf-8") as f:
      document = yaml.load(f, Loader=TemplateLoader)  # noqa: S506 (a SafeLoader subclass)
  except FileNotFoundError as e:
    raise TemplateError(f"template file not found: {path}") from e
  except yaml.YAMLError as e:
    raise TemplateError(f"{path}: not a readable promptsource template file: {e}") from e
  if not isinstance(document, dict) or not isinstance(document.get("templates"), dict):
    raise TemplateError(f"{path}: expected a mapping with 'dataset' and 'templates' (promptsource "
                        "format), found " + type(document).__name__)
  if not document.get("dataset"):
    raise TemplateError(f"{path}: missing the top-level 'dataset' field")
  return document


def load_templates(path: str | os.PathLike) -> list[PromptTemplate]:
  """Reads one promptsource `templates.yaml`; returns its templates sorted by name."""
  path = os.fspath(path)
  document = read_document(path)
  templates = [template for _, template in document_templates(document, path)]
  names = collections.Counter(t.name for t in templates)
  duplicated = [n for n, count in names.items() if count > 1]
  if duplicated:
    raise TemplateError(f"{path}: template names must be unique; repeated: {duplicated}")
  return sorted(templates, key=lambda t: t.name)


def document_templates(document: Mapping[str, Any], path: str, dataset: str | None = None,
                       subset: str | None = None) -> list[tuple[str, PromptTemplate]]:
  """(YAML key, template) for every entry of a read document, in file order.

  `dataset`/`subset` default to the file's own keys; a tree passes where the file sits instead.
  """
  if dataset is None:
    dataset, subset = document["dataset"], document.get("subset")
  templates = []
  for key, entry in document["templates"].items():
    where = f"{path}, template {key}"
    if not isinstance(entry, dict):
      raise TemplateError(f"{where}: expected a !Template mapping, found {type(entry).__name__}")
    for field in ("name", "jinja"):
      if not isinstance(entry.get(field), str):
        raise TemplateError(f"{where}: missing or non-text '{field}'")
    choices = entry.get("answer_choices")
    if choices is not None and not isinstance(choices, str):
      raise TemplateError(f"{where}: 'answer_choices' must be a Jinja string with '|||' separators")
    templates.append((str(key), PromptTemplate(
        id=str(entry.get("id", key)), name=entry["name"], jinja=entry["jinja"],
        answer_choices=choices, metadata=dict(entry.get("metadata") or {}),
        reference=str(entry.get("reference") or ""), dataset=str(dataset),
        subset=str(subset) if subset is not None else None, source=path)))
  return templates


def templates_file(root: str | os.PathLike, dataset: str, subset: str | None = None) -> str:
  """Finds `{dataset}/{subset}/templates.yaml` under a promptsource checkout or templates folder.

  `root` may be the checkout (holding `promptsource/templates/`), that `templates` folder itself, or
  any folder laid out like it.
  """
  root = os.fspath(root)
  relative = paths.join(dataset, subset) if subset else dataset
  candidates = [paths.join(base, relative, "templates.yaml")
                for base in (root, paths.join(root, "templates"),
                             paths.join(root, "promptsource", "templates"))]
  for candidate in candidates:
    if paths.isfile(candidate):
      return candidate
  raise TemplateError(f"no promptsource templates for dataset '{dataset}'"
                      f"{f' subset {subset!r}' if subset else ''} under {root}; looked for "
                      f"{', '.join(candidates)}. Pass the path of your promptsource checkout.")
