"""Continuing a t5x run: its step and Adafactor slots as our optimizer state.

t5x's Adafactor (t5x/adafactor.py) and ours (`optim.layer_blocks_adafactor`, optax's chain) keep the
same statistics: per parameter either factored second moments `v_row` (the parameter's shape without
its largest dimension) and `v_col` (without the second largest), or a full `v`, plus the momentum `m`
when beta1 (our `OptimizerConfig.momentum`) is set; unused slots are (1,) placeholders in both. Both
pick the factored dimensions with the same rule on the same shapes: t5x's minimal-model kernels are the
2-D [embed, heads*kv] matrices our optimizer factors (`factor_joined_heads`), so slots map by parameter
name. Only the relative position table is stored transposed (t5x [heads, buckets], ours [buckets,
heads]): v and m are transposed, v_row and v_col follow the dimension they average over.

The second-moment decay is 1 - (n + 1) ** -decay_rate where n is the age of the moments. t5x counts
n = step - step_offset (its `Adafactor.step_offset`, read from the run's config.gin, else 0); the
restored state carries that n as Adafactor's count, so the first update continues t5x's decay exactly
(hence `OptimizerConfig.decay_offset` must stay 0: it would count those steps twice). Our step (the
learning-rate schedule, checkpoint numbers, TRAIN_STEPS) is a separate choice: 0 (default) or t5x's
step (`restore_step`, t5x's own behaviour: TRAIN_STEPS = pretrained step + finetuning steps).

The relative position table's transposition is exact for t5x's statistics, whose v_row and v_col
have the same mean (both average one matrix of squared gradients); a square table swaps the two.

Scanned t5x checkpoints (`encoder/encoder/...`) keep one relative position table per layer, each with
its own statistics, where our T5Config shares one per stack (and factor their 3-D slots by t5x's
logical rules: the layer axis moves inside v_row / v_col): their optimizer state is refused here
(their weights load).
"""
from __future__ import annotations

import ast
import logging
import re
from typing import Any, Optional

import jax
import numpy as np
import optax
from optax._src.factorized import FactoredState

from xmtf_jax.checkpoint import t5x_names
from xmtf_jax.checkpoint.model_path import T5X, open_model_path
from xmtf_jax.checkpoint.t5x_format import T5xCheckpoint
from xmtf_jax.errors import UserError
from xmtf_jax.model import layer_stacking
from xmtf_jax.train import optim, trainer

log = logging.getLogger(__name__)

SLOTS = ("v_row", "v_col", "v", "m")
PLACEHOLDER = (1,)  # the shape both t5x and optax give an unused slot
_ADAFACTOR = re.compile(r"^(?:[\w./]*\.)?Adafactor\.(\w+)\s*=\s*(.+?)\s*$", re.MULTILINE)
_MACRO = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.+?)\s*$", re.MULTILINE)
# t5x's Adafactor arguments -> ours: the restored state continues t5x's update only where they agree.
_SAME_MEANING = {"decay_rate": "decay_rate", "beta1": "momentum", "clipping_threshold": "clipping_threshold",
                 "multiply_by_parameter_scale": "multiply_by_parameter_scale", "factored": "factored",
                 "min_dim_size_to_factor": "min_dim_size_to_factor", "epsilon1": "epsilon",
                 "weight_decay_rate": "weight_decay_rate"}


# ---- the checkpoint's step ---------------------------------------------------------------------------

def t5x_step(ckpt: T5xCheckpoint) -> int:
  """The updates t5x had applied: `state/step`, else the step directory's number."""
  if "state/step" in ckpt.state_names():
    return int(np.asarray(ckpt.read("step", where="state")))
  if ckpt.step is None or ckpt.step < 0:
    raise UserError(f"{ckpt.describe()}: no state/step and no checkpoint_<step> name: its step is unknown")
  return int(ckpt.step)


def adafactor_bindings(ckpt: T5xCheckpoint) -> dict[str, Any]:
  """The run's `Adafactor.<argument>` values (its config.gin; macros resolved, non-literals left out)."""
  text = ckpt.gin_text() or ""
  macros = dict(_MACRO.findall(text))
  values = {}
  for name, value in _ADAFACTOR.findall(text):
    value = macros.get(value[1:], value) if value.startswith("%") else value
    try:
      values[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      continue
  return values


def t5x_step_offset(ckpt: T5xCheckpoint) -> int:
  """t5x's `Adafactor.step_offset` of the run, 0 when not bound."""
  return int(adafactor_bindings(ckpt).get("step_offset", 0) or 0)


def _warn_about_other_settings(ckpt: T5xCheckpoint, optimizer_config: optim.OptimizerConfig) -> None:
  """Settings where the t5x run's Adafactor differs from ours: the update changes from there on."""
  bound = adafactor_bindings(ckpt)
  differ = [f"{theirs}={bound[theirs]!r} there, OptimizerConfig.{ours}={getattr(optimizer_config, ours)!r} here"
            for theirs, ours in _SAME_MEANING.items()
            if theirs in bound and bound[theirs] != getattr(optimizer_config, ours)]
  if differ:
    log.warning("%s: its run's Adafactor differs from ours (%s); the restored state continues with "
                "ours", ckpt.describe(), "; ".join(differ))


# ---- one parameter's slots ---------------------------------------------------------------------------

def _t5x_param(path: tuple) -> tuple[str, bool]:
  """(t5x parameter name, stored transposed?) of one of our per-layer parameter paths."""
  if path[-2:] == ("relpos_bias", "embedding"):
    return "/".join(path[:-1]) + "/rel_embedding", True
  return "/".join(path), False


def _factored_axes(shape: tuple) -> tuple[int, int]:
  """(second largest, largest) dimension: the rule t5x and optax share (np.argsort, ties by index)."""
  order = np.argsort(shape)
  return int(order[-2]), int(order[-1])


def _is_placeholder(shape: tuple) -> bool:
  return tuple(shape) == PLACEHOLDER


class SlotReader:
  """Reads t5x's slots for our per-layer parameters, collecting every mismatch as one line."""

  def __init__(self, ckpt: T5xCheckpoint):
    self.ckpt = ckpt
    self.names = set(ckpt.state_names())
    self.problems: list[str] = []
    self._param_shapes = ckpt.names()
    self._reported: set[str] = set()  # parameters with a problem already (one line each)

  def _problem(self, name: str, text: str) -> None:
    if name not in self._reported:
      self._reported.add(name)
      self.problems.append(text)

  def depth(self, stack: str) -> int:
    return len({n.split("/")[1] for n in self._param_shapes if re.match(rf"{stack}/layers_\d+/", n)})

  def _state_name(self, name: str, slot: str) -> str:
    return f"state/param_states/{name}/{slot}"

  def _stored(self, name: str, slot: str) -> Optional[tuple]:
    full = self._state_name(name, slot)
    return tuple(self.ckpt.shape(full[len("state/"):], where="state")) if full in self.names else None

  def slot(self, path: tuple, slot: str, expected: tuple) -> Optional[np.ndarray]:
    """Our slot `slot` of per-layer parameter `path` (shape `expected`, (1,) when unused) from t5x's;
    None (and a problem recorded) when it does not fit."""
    name, transposed = _t5x_param(path)
    if name not in self._param_shapes:
      why = (" (its logits use the embedding: no separate logits_dense, whose state ours needs)"
             if path[-2:] == ("logits_dense", "kernel") else "")
      self._problem(name, f"{'/'.join(path)}: the checkpoint has no parameter {name}{why}")
      return None
    source = slot
    if transposed and slot in ("v_row", "v_col") and not _is_placeholder(expected):
      # Ours averages over one of our axes; t5x's slot that averages over the same (transposed) axis.
      ours = _factored_axes(tuple(reversed(self._param_shapes[name])))
      theirs = _factored_axes(self._param_shapes[name])
      reduced = ours[1] if slot == "v_row" else ours[0]
      source = "v_row" if 1 - reduced == theirs[1] else "v_col"
    stored = self._stored(name, source)
    label = self._state_name(name, source)
    if stored is None:
      if _is_placeholder(expected):
        return None  # an unused slot t5x did not write: nothing to restore
      self._problem(name, f"{label}: missing; our {slot} for {'/'.join(path)} needs shape {list(expected)}")
      return None
    want = tuple(reversed(expected)) if transposed and len(expected) == 2 else tuple(expected)
    if _is_placeholder(stored) != _is_placeholder(expected) or (not _is_placeholder(expected)
                                                                 and stored != want):
      self._problem(name, f"{label}: shape {list(stored)}, expected {list(want)} "
                          f"({_hint(slot, stored, expected)})")
      return None
    if _is_placeholder(expected):
      return None
    array = np.asarray(self.ckpt.read(label[len("state/"):], where="state"), np.float32)
    return np.ascontiguousarray(array.T) if transposed and array.ndim == 2 else array


def _hint(slot: str, stored: tuple, expected: tuple) -> str:
  if slot == "m":
    return ("the t5x run had no momentum (beta1); set OptimizerConfig.momentum=None" if _is_placeholder(stored)
            else "the t5x run used momentum (beta1): set OptimizerConfig.momentum to its beta1")
  if _is_placeholder(stored) or _is_placeholder(expected):
    used = "a placeholder" if _is_placeholder(stored) else "used"
    return (f"t5x's slot is {used}, ours {'a placeholder' if _is_placeholder(expected) else 'used'}: "
            "the runs factor differently; set OptimizerConfig.factored / min_dim_size_to_factor as "
            "the t5x run's Adafactor had them")
  return "the parameter's shape differs from our model's"


# ---- our optimizer state ----------------------------------------------------------------------------

def _per_layer_paths(reader: SlotReader, keys: tuple, leaf: Any) -> tuple[list[tuple], Optional[int]]:
  """The per-layer parameter paths making up one state leaf, and the layer count when it is stacked
  (a stacked placeholder stands for every layer's)."""
  if not layer_stacking.is_stacked_path(keys):
    return [keys], None
  j = keys.index(layer_stacking.STACKED)
  count = reader.depth(keys[j - 1]) if _is_placeholder(leaf.shape) else leaf.shape[0]
  paths = [keys[:j] + (f"layers_{i}",) + keys[j + 1:] for i in range(count)]
  return paths, None if _is_placeholder(leaf.shape) else count


def _place(array: np.ndarray, like: jax.Array) -> jax.Array:
  array = array.astype(like.dtype)
  sharding = getattr(like, "sharding", None)
  if sharding is None:
    return jax.device_put(array)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _fill(reader: SlotReader, tree: Any, slot: str) -> Any:
  """A tree of our slot `slot` (either layer layout), filled from t5x's slots."""
  def fill(key_path, leaf):
    keys = layer_stacking.path_keys(key_path)
    per_layer, stacked = _per_layer_paths(reader, keys, leaf)
    expected = tuple(leaf.shape[1:]) if stacked else tuple(leaf.shape)
    arrays = [reader.slot(p, slot, expected) for p in per_layer]
    if any(a is None for a in arrays):
      return leaf  # a placeholder, or a problem already recorded
    return _place(np.stack(arrays) if stacked else arrays[0], leaf)
  return jax.tree_util.tree_map_with_path(fill, tree)


def _is_state_node(node: Any) -> bool:
  return isinstance(node, (FactoredState, optax.EmaState, optax.ScaleByScheduleState))


def restore_adafactor_state(ckpt: T5xCheckpoint, opt_state: Any, optimizer_config: optim.OptimizerConfig,
                            schedule_step: int = 0) -> Any:
  """Our Adafactor state (`opt_state`: the optimizer's own, of either layer layout, as a template)
  filled from a t5x checkpoint's: every slot checked by shape first, one UserError naming each that
  does not fit (t5x state name, its shape, the expected one). Adafactor's count becomes t5x's
  step - step_offset (the moments' age: the decay continues t5x's), the learning-rate schedule's count
  `schedule_step` (our step)."""
  origin = ckpt.describe()
  if optimizer_config.name != "adafactor":
    raise UserError(f"restoring the optimizer state of {origin} needs OptimizerConfig.name='adafactor' "
                    f"(t5x's state is Adafactor's), not {optimizer_config.name!r}")
  if optimizer_config.decay_offset:
    raise UserError(f"OptimizerConfig.decay_offset={optimizer_config.decay_offset} with the optimizer "
                    f"state of {origin}: the restored state already carries t5x's step for the decay; "
                    "set decay_offset=0")
  if t5x_names.T5xLayout(ckpt).scanned:
    raise UserError(f"{origin} is scanned (encoder/encoder/...): its Adafactor state cannot continue "
                    "here: each layer's relative position table has its own statistics where our "
                    "T5Config shares one table per stack (and its slots are factored by t5x's logical "
                    "rules); train from its weights only (TrainConfig.restore_optimizer_state=False)")
  age = t5x_step(ckpt) - t5x_step_offset(ckpt)
  if age < 0:
    raise UserError(f"{origin}: step {t5x_step(ckpt)} is below its run's Adafactor.step_offset "
                    f"{t5x_step_offset(ckpt)}")
  _warn_about_other_settings(ckpt, optimizer_config)
  reader = SlotReader(ckpt)

  def replace(node):
    if isinstance(node, FactoredState):
      return node._replace(count=_place(np.asarray(age, np.int32), node.count),
                           v_row=_fill(reader, node.v_row, "v_row"),
                           v_col=_fill(reader, node.v_col, "v_col"), v=_fill(reader, node.v, "v"))
    if isinstance(node, optax.EmaState):
      return node._replace(count=_place(np.asarray(age, np.int32), node.count),
                           ema=_fill(reader, node.ema, "m"))
    if isinstance(node, optax.ScaleByScheduleState):
      return node._replace(count=_place(np.asarray(schedule_step, np.int32), node.count))
    return node

  restored = jax.tree.map(replace, opt_state, is_leaf=_is_state_node)
  if optimizer_config.momentum is None:
    _check_unused_momentum(reader, ckpt)
  if reader.problems:
    shown = reader.problems[:20] + ([f"... ({len(reader.problems) - 20} more)"] if len(reader.problems) > 20 else [])
    raise UserError(f"{origin}: its Adafactor state does not fit our optimizer:\n  " + "\n  ".join(shown))
  log.info("Adafactor state of %s restored: second-moment age %d (step %d)", origin, age, t5x_step(ckpt))
  return restored


def _check_unused_momentum(reader: SlotReader, ckpt: T5xCheckpoint) -> None:
  """Without our momentum, t5x's `m` slots must be placeholders (else its run used beta1)."""
  used = [n for n in reader.names if n.endswith("/m") and n.startswith("state/param_states/")
          and not _is_placeholder(ckpt.shape(n[len("state/"):], where="state"))]
  if used:
    reader.problems.append(f"{used[0]}: shape {list(ckpt.shape(used[0][len('state/'):], where='state'))}, "
                           f"expected {list(PLACEHOLDER)} ({_hint('m', (2,), PLACEHOLDER)}; "
                           f"{len(used)} such slots)")


# ---- where training starts ---------------------------------------------------------------------------

def continue_t5x_run(ckpt: T5xCheckpoint, state: trainer.TrainState,
                     optimizer_config: optim.OptimizerConfig, *, restore_optimizer_state: bool,
                     restore_step: bool) -> trainer.TrainState:
  """A fresh train state (around the t5x checkpoint's weights) continuing its step and/or Adafactor
  state, as t5x's own restore does by default."""
  step = t5x_step(ckpt) if restore_step else 0
  opt_state = state.opt_state
  if restore_optimizer_state:
    opt_state = restore_adafactor_state(ckpt, opt_state, optimizer_config, schedule_step=step)
  elif restore_step:  # fresh moments (age 0), the schedule at t5x's step
    opt_state = jax.tree.map(
        lambda n: n._replace(count=_place(np.asarray(step, np.int32), n.count))
        if isinstance(n, optax.ScaleByScheduleState) else n, opt_state, is_leaf=_is_state_node)
  return trainer.TrainState(step=_place(np.asarray(step, np.int32), state.step), params=state.params,
                            opt_state=opt_state)


def continue_initial_checkpoint(train_config: Any, state: trainer.TrainState,
                                optimizer_config: optim.OptimizerConfig) -> trainer.TrainState:
  """`state` (fresh, around INITIAL_CHECKPOINT_PATH's weights) as TrainConfig.restore_optimizer_state
  / restore_step ask; unchanged when neither is set."""
  wanted = [f"TrainConfig.{name}=True" for name in ("restore_optimizer_state", "restore_step")
            if getattr(train_config, name)]
  if not wanted:
    return state
  path = train_config.initial_checkpoint_path
  opened = open_model_path(path) if path else None
  if opened is None or opened.kind != T5X:
    what = f"{opened.describe()}" if opened is not None else "no INITIAL_CHECKPOINT_PATH"
    raise UserError(f"{' and '.join(wanted)} continues a t5x checkpoint's run, but there is {what}; "
                    "set INITIAL_CHECKPOINT_PATH to a t5x checkpoint or drop the setting (to continue "
                    "one of our runs, use its folder as MODEL_DIR)")
  ckpt = opened.t5x()
  if train_config.restore_step and t5x_step(ckpt) >= train_config.train_steps:
    raise UserError(f"TrainConfig.restore_step=True starts at the t5x step {t5x_step(ckpt)}, and "
                    f"TRAIN_STEPS={train_config.train_steps} is not above it: as in t5x, TRAIN_STEPS "
                    f"counts on from there (e.g. {t5x_step(ckpt)} + the finetuning steps)")
  state = continue_t5x_run(ckpt, state, optimizer_config,
                           restore_optimizer_state=train_config.restore_optimizer_state,
                           restore_step=train_config.restore_step)
  log.info("continuing %s: %s, our step %d", opened.describe(),
           "its Adafactor state" if train_config.restore_optimizer_state else "fresh optimizer state",
           int(jax.device_get(state.step)))
  return state
