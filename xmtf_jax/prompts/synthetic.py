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
_LIST_METHODS = {"index", "count", "append", "pop", "copy"}
_ARITHMETIC = (nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod)
_MAX_VARIANTS = 16


@dataclasses.dataclass
class _Shape:
  """What the template does with one value."""
  attrs: dict[str, "_Shape"] = dataclasses.field(default_factory=dict)
  item: "_Shape | None" = None  # a list (indexed by a number, iterated, ...) with elements so shaped
  index: bool = False           # used as an index into something
  number: bool = False          # piped through int/float or compared with a number
  long: bool = False            # sliced: long text, so `text[1000:5000]` is not empty
  separators: list[str] = dataclasses.field(default_factory=list)  # `x.split("___")`: text holding them
  constants: list[Any] = dataclasses.field(default_factory=list)

  def element(self) -> "_Shape":
    if self.item is None:
      self.item = _Shape()
    return self.item


def _dict_keys(node: nodes.Node) -> list[Any] | None:
  """The constant keys of a dict literal (jinja's code generator may have folded it into a Const)."""
  if isinstance(node, nodes.Dict):
    return [pair.key.value for pair in node.items if isinstance(pair.key, nodes.Const)]
  if isinstance(node, nodes.Const) and isinstance(node.value, dict):
    return list(node.value)
  return None


class _Reader:
  """Walks one parsed template and records the shape of every undeclared variable."""

  def __init__(self, variables: set[str]):
    self.variables = variables
    self.shapes: dict[str, _Shape] = {name: _Shape() for name in variables}
    self.methods: set[int] = set()  # Getattr nodes called as methods (`x.split()`): not fields
    self.locals: dict[str, _Shape] = {}  # loop variables: the elements of what they iterate
    self.literal_lists: dict[str, list[Any]] = {}  # `{% set xs = ["A", "B"] %}`

  def shape(self, node: nodes.Node) -> _Shape | None:
    """The shape a Name/Getattr/Getitem chain rooted at an undeclared variable refers to."""
    if isinstance(node, nodes.Name):
      return self.shapes.get(node.name) or self.locals.get(node.name)
    if isinstance(node, nodes.Getattr):
      if id(node) in self.methods:
        return None
      parent = self.shape(node.node)
      return None if parent is None else parent.attrs.setdefault(node.attr, _Shape())
    if isinstance(node, nodes.Getitem):
      parent = self.shape(node.node)
      if parent is None:
        return None
      if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return parent.attrs.setdefault(node.arg.value, _Shape())
      if isinstance(node.arg, nodes.Slice):
        parent.long = True
        return parent
      return parent.element()
    if isinstance(node, nodes.Filter) and node.name in ("list", "first", "last", "random", "choice"):
      inner = self.shape(node.node) if node.node is not None else None
      return inner.element() if inner is not None and node.name != "list" else inner
    return None

  def read(self, tree: nodes.Template) -> None:
    for call in tree.find_all(nodes.Call):
      if isinstance(call.node, nodes.Getattr):
        self.methods.add(id(call.node))
    for assign in tree.find_all(nodes.Assign):
      if isinstance(assign.target, nodes.Name) and isinstance(assign.node, (nodes.List, nodes.Tuple)):
        self.literal_lists[assign.target.name] = [
            item.value for item in assign.node.items if isinstance(item, nodes.Const)]
    for loop in tree.find_all(nodes.For):  # outer loops first: an inner loop may iterate an outer item
      self._bind_loop(loop)
    for node in tree.find_all(nodes.Node):
      self._visit(node)

  def _bind_loop(self, loop: nodes.For) -> None:
    targets = loop.target.items if isinstance(loop.target, nodes.Tuple) else [loop.target]
    iterated = loop.iter
    if isinstance(iterated, nodes.Call) and isinstance(iterated.node, nodes.Name) \
        and iterated.node.name == "zip":
      sources = list(iterated.args)
    else:
      sources = [iterated] if len(targets) == 1 else []
    for target, source in zip(targets, sources):
      shape = self.shape(source)
      if isinstance(target, nodes.Name) and shape is not None and not shape.attrs:
        self.locals[target.name] = shape.element()

  def _as_list(self, node: nodes.Node | None) -> None:
    shape = self.shape(node) if node is not None else None
    if shape is not None and not shape.attrs:
      shape.element()

  def _visit(self, node: nodes.Node) -> None:
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
      self.shape(node)  # registers the structure (`a.b["c"][0]`)
    if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Slice):
      index = self.shape(node.arg)
      keys = _dict_keys(node.node)
      if index is not None and keys is not None:  # {"A": "x", ...}[label]
        index.constants += keys[:1]
      elif index is not None:
        index.index = True
    elif isinstance(node, _ARITHMETIC):
      for operand in (node.left, node.right):
        shape = self.shape(operand)
        if shape is not None:
          shape.number = True
    elif isinstance(node, nodes.For):
      self._as_list(node.iter)
    elif isinstance(node, nodes.Filter):
      if node.name in _LIST_FILTERS:
        self._as_list(node.node)
      attribute = [kw.value.value for kw in node.kwargs
                   if kw.key == "attribute" and isinstance(kw.value, nodes.Const)]
      if node.name in ("selectattr", "rejectattr") and node.args and isinstance(node.args[0], nodes.Const):
        attribute.append(node.args[0].value)
      shape = self.shape(node.node) if node.node is not None else None
      if shape is not None and attribute and isinstance(attribute[0], str):
        shape.element().attrs.setdefault(attribute[0], _Shape())
      elif node.name in _NUMBER_FILTERS and self.shape(node.node) is not None:
        self.shape(node.node).number = True
    elif isinstance(node, nodes.Call):
      if isinstance(node.node, nodes.Name) and node.node.name == "zip":
        for arg in node.args:
          self._as_list(arg)
      elif isinstance(node.node, nodes.Getattr):
        receiver = self.shape(node.node.node)
        if receiver is not None and node.node.attr in _DICT_METHODS:
          receiver.attrs.setdefault("key", _Shape())
        elif receiver is not None and node.node.attr in _LIST_METHODS and not receiver.attrs:
          receiver.element()
        elif receiver is not None and node.node.attr == "split" and node.args \
            and isinstance(node.args[0], nodes.Const) and isinstance(node.args[0].value, str):
          receiver.separators.append(node.args[0].value)
        elif node.node.attr == "index" and isinstance(node.node.node, nodes.Name) and node.args:
          argument = self.shape(node.args[0])  # `poss_ans_list.index(discourse_type)`
          if argument is not None:
            argument.constants += self.literal_lists.get(node.node.node.name, [])[:1]
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


@dataclasses.dataclass(frozen=True)
class _Variant:
  index: int = 0          # value of ints (indices, numbers)
  length: int = 3         # list lengths
  uniform: bool = False   # every string the same ("a"): equality and `.index(x)` lookups succeed
  overrides: tuple[tuple[int, Any], ...] = ()  # (id(shape), constant) from comparisons


def _value(name: str, shape: _Shape, variant: _Variant, overrides: dict[int, Any]) -> Any:
  if id(shape) in overrides:
    return overrides[id(shape)]
  if shape.attrs:
    return {key: _value(key, sub, variant, overrides) for key, sub in shape.attrs.items()}
  if shape.item is not None:
    return [_value(name, shape.item, variant, overrides) for _ in range(variant.length)]
  if shape.index or shape.number:
    return variant.index
  if variant.uniform:
    return "a"
  if shape.long:
    return " ".join(f"{name}{i}" for i in range(1500))
  if shape.separators:
    return shape.separators[0].join(f"Some {name} {i}." for i in range(4))
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
  variants = [_Variant(), _Variant(index=1), _Variant(length=1), _Variant(uniform=True),
              _Variant(uniform=True, length=1)]
  variants += [_Variant(overrides=((id(shape), value),)) for shape, value in constant_uses]
  if len(constant_uses) > 1:  # every comparison satisfied at once (e.g. `a == "x" and b == "y"`)
    variants.append(_Variant(overrides=tuple((id(shape), value) for shape, value in constant_uses)))
  for variant in variants[:_MAX_VARIANTS]:
    overrides = dict(variant.overrides)
    yield {name: _value(name, shape, variant, overrides) for name, shape in reader.shapes.items()}
