"""Synthetic example rows for a template, read off its Jinja syntax tree, to check it renders at all.

A template tree is checked without any dataset: each variable the template reads gets a value of
the shape its use implies. `answers.text[0]` makes `answers` a dict whose `text` is a list of
strings; a variable used as an index (`answer_choices[label]`) is an int; a variable iterated over,
joined, zipped or passed to `choice` is a list of strings; one compared with a constant
(`language == "english"`) gets that constant in a variant of its own, so branches that render nothing
for the default row can still be shown to render.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jinja2
from jinja2 import meta, nodes

# Filters and tests whose argument is a sequence; string methods that make the receiver a string.
_LIST_FILTERS = {"choice", "join", "first", "last", "random", "sort", "unique", "most_frequent",
                 "map", "select", "reject", "selectattr", "rejectattr", "batch", "slice", "sum",
                 "list", "min", "max"}
_NUMBER_FILTERS = {"int", "float", "round", "abs"}
_DICT_METHODS = {"items", "keys", "values", "get"}
_MAX_VARIANTS = 16


@dataclasses.dataclass
class _Shape:
  """What the template does with one value."""
  attrs: dict[str, "_Shape"] = dataclasses.field(default_factory=dict)
  item: "_Shape | None" = None  # a list (indexed by a number, iterated, ...) with elements so shaped
  index: bool = False           # used as an index into something
  number: bool = False          # piped through int/float or compared with a number
  constants: list[Any] = dataclasses.field(default_factory=list)

  def element(self) -> "_Shape":
    if self.item is None:
      self.item = _Shape()
    return self.item


class _Reader:
  """Walks one parsed template and records the shape of every undeclared variable."""

  def __init__(self, variables: set[str]):
    self.variables = variables
    self.shapes: dict[str, _Shape] = {name: _Shape() for name in variables}

  def shape(self, node: nodes.Node) -> _Shape | None:
    """The shape a Name/Getattr/Getitem chain rooted at an undeclared variable refers to."""
    if isinstance(node, nodes.Name):
      return self.shapes.get(node.name)
    if isinstance(node, nodes.Getattr):
      parent = self.shape(node.node)
      return None if parent is None else parent.attrs.setdefault(node.attr, _Shape())
    if isinstance(node, nodes.Getitem):
      parent = self.shape(node.node)
      if parent is None:
        return None
      if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return parent.attrs.setdefault(node.arg.value, _Shape())
      return parent.element()
    if isinstance(node, nodes.Filter) and node.name in ("list", "first", "last", "random", "choice"):
      inner = self.shape(node.node) if node.node is not None else None
      return inner.element() if inner is not None and node.name != "list" else inner
    return None

  def read(self, tree: nodes.Template) -> None:
    for node in tree.find_all(nodes.Node):
      self._visit(node)

  def _as_list(self, node: nodes.Node | None) -> None:
    shape = self.shape(node) if node is not None else None
    if shape is not None and not shape.attrs:
      shape.element()

  def _visit(self, node: nodes.Node) -> None:
    if isinstance(node, nodes.Getitem):
      index = self.shape(node.arg)
      if index is not None:
        index.index = True
    elif isinstance(node, nodes.For):
      self._as_list(node.iter)
    elif isinstance(node, nodes.Filter):
      if node.name in _LIST_FILTERS:
        self._as_list(node.node)
      elif node.name in _NUMBER_FILTERS and self.shape(node.node) is not None:
        self.shape(node.node).number = True
    elif isinstance(node, nodes.Call):
      if isinstance(node.node, nodes.Name) and node.node.name == "zip":
        for arg in node.args:
          self._as_list(arg)
      elif isinstance(node.node, nodes.Getattr) and node.node.attr in _DICT_METHODS:
        receiver = self.shape(node.node.node)
        if receiver is not None:
          receiver.attrs.pop(node.node.attr, None)
          receiver.attrs.setdefault("key", _Shape())
    elif isinstance(node, nodes.Compare):
      self._compare(node)

  def _compare(self, node: nodes.Compare) -> None:
    operands = [node.expr] + [op.expr for op in node.ops]
    constants = [o.value for o in operands if isinstance(o, nodes.Const)]
    for o in operands:
      if isinstance(o, (nodes.List, nodes.Tuple)):
        constants += [item.value for item in o.items if isinstance(item, nodes.Const)]
    for o in operands:
      shape = self.shape(o)
      if shape is None:
        continue
      for value in constants:
        if value not in shape.constants:
          shape.constants.append(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          shape.number = True


def _value(name: str, shape: _Shape, index: int, overrides: dict[int, Any]) -> Any:
  if id(shape) in overrides:
    return overrides[id(shape)]
  if shape.attrs:
    return {key: _value(key, sub, index, overrides) for key, sub in shape.attrs.items()}
  if shape.item is not None:
    return [_value(name, shape.item, index, overrides) for _ in range(3)]
  if shape.index or shape.number:
    return index
  return f"Some {name} text."


def _all_shapes(shape: _Shape) -> Iterator[_Shape]:
  yield shape
  for sub in shape.attrs.values():
    yield from _all_shapes(sub)
  if shape.item is not None:
    yield from _all_shapes(shape.item)


def synthetic_rows(sources: list[str], environment: jinja2.Environment) -> Iterator[dict[str, Any]]:
  """Rows to try, most plausible first: every variable the sources read, shaped by its use.

  Raises jinja2.TemplateSyntaxError for a source that does not parse.
  """
  trees = [environment.parse(source) for source in sources]
  variables = set().union(*(meta.find_undeclared_variables(t) for t in trees))
  variables -= {"answer_choices"} | set(environment.globals)
  reader = _Reader(variables)
  for tree in trees:
    reader.read(tree)
  constant_uses = [(shape, value) for top in reader.shapes.values() for shape in _all_shapes(top)
                   for value in shape.constants]
  variants: list[tuple[int, dict[int, Any]]] = [(0, {}), (1, {})]
  variants += [(0, {id(shape): value}) for shape, value in constant_uses]
  if len(constant_uses) > 1:  # every comparison satisfied at once (e.g. `a == "x" and b == "y"`)
    variants.append((0, {id(shape): value for shape, value in constant_uses}))
  for index, overrides in variants[:_MAX_VARIANTS]:
    yield {name: _value(name, shape, index, overrides) for name, shape in reader.shapes.items()}
