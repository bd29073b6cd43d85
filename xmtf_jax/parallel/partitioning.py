"""Device meshes, logical-axis rules and shardings.

Every parameter and key activation of the network names its axes logically (`batch`, `length`, `embed`,
`mlp`, `heads`, `kv`, `joined_kv`, `vocab`, `relpos_buckets`, `layers`; BLOOM's fused
projection adds `qkv`, the q/k/v axis of size 3). A rules table maps them to the
two mesh axes `data` and `model`:

  batch -> data; vocab, mlp, heads, joined_kv -> model; everything else replicated.

`parameter_sharding_2d=True` adds `embed -> data` (FSDP-style: parameters and optimizer state are also
split over the data axis; XLA all-gathers them per layer). Activations keep `batch -> data` because rules
are applied in order and a mesh axis is used once per array: `[batch, length, embed]` shards batch only.

`sequence_parallel=True` maps `length -> model` after the rules that put heads, mlp, joined_kv and vocab
on `model` (Megatron-style sequence parallelism): inside attention and the MLP those take `model`
first, so only the residual stream between blocks, `[batch, length, embed]`, is split along its
sequence. The all-reduce that ends each block becomes a reduce-scatter, and the next block's input an
all-gather: the same bytes over the wire, but layer norms, dropout and residual adds work on 1/model of
the tokens and the saved residual stream takes 1/model of the memory.

A dimension that the mesh axis does not divide (e.g. 6 heads over model=4) is left replicated, with a
log line, instead of failing: `param_shardings` checks shapes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils, multihost_utils
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from xmtf_jax.errors import UserError

MESH_AXES = ("data", "model")
LogicalRules = tuple[tuple[str, Optional[str]], ...]

# Order matters: earlier rules win, and a mesh axis is used at most once per array.
DEFAULT_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("embed", None),
    ("kv", None),
    ("qkv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
)


def logical_axis_rules(parameter_sharding_2d: bool = False,
                       extra_rules: Sequence[tuple[str, Optional[str]]] = (),
                       sequence_parallel: bool = False) -> LogicalRules:
  """The rules table. `extra_rules` come first and so override the defaults for the names they cover."""
  rules = [("length", "model") if sequence_parallel and name == "length" else (name, axis)
           for name, axis in DEFAULT_RULES]
  if parameter_sharding_2d:
    # Right after `batch -> data`, so activations still shard batch (not embed) over data.
    rules.insert(1, ("embed", "data"))
  return tuple((str(name), axis) for name, axis in extra_rules) + tuple(rules)


def make_mesh(num_partitions: int = 1, num_data_partitions: int = -1,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """Mesh of shape (data, model) over all (or the given) devices; -1 for data means "the rest".

  Works with several processes: `jax.devices()` is the global device list. Axis types are Auto (GSPMD
  propagation guided by sharding constraints).
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if num_partitions < 1 or n % num_partitions:
    raise UserError(f"PartitioningConfig.num_partitions={num_partitions} (the 'model' axis) must divide "
                    f"the {n} devices")
  if num_data_partitions == -1:
    num_data_partitions = n // num_partitions
  if num_data_partitions * num_partitions != n:
    raise UserError(f"mesh data={num_data_partitions} x model={num_partitions} needs "
                    f"{num_data_partitions * num_partitions} devices, there are {n}")
  shape = (num_data_partitions, num_partitions)
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)
  except NotImplementedError:
    # A model axis that is no product of whole torus axes (model 8 on a v4-128's 4x4x4): split one.
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def abstract_mesh(data: int, model: int) -> AbstractMesh:
  """A device-less mesh of the given shape, for shardings and sizes without hardware (param_count)."""
  return AbstractMesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * 2)


@dataclasses.dataclass(frozen=True)
class PartitioningConfig:
  """Mesh shape and rules, bound by `gin/partitioning/*.gin`.

  num_partitions: size of the `model` axis (tensor parallelism); num_data_partitions: size of `data`
  (-1: all remaining devices); parameter_sharding_2d: also shard parameters' `embed` over `data`;
  extra_rules: (logical name, mesh axis or None) pairs that take precedence over the defaults;
  sequence_parallel: split the residual stream's `length` over `model` (see the module doc).
  """
  num_partitions: int = 1
  num_data_partitions: int = -1
  parameter_sharding_2d: bool = False
  extra_rules: tuple = ()
  sequence_parallel: bool = False

  def make_mesh(self, devices: Optional[Sequence[Any]] = None) -> Mesh:
    return make_mesh(self.num_partitions, self.num_data_partitions, devices)

  def rules(self) -> LogicalRules:
    return logical_axis_rules(self.parameter_sharding_2d, self.extra_rules, self.sequence_parallel)


@contextlib.contextmanager
def axis_rules_context(mesh: Optional[Mesh | AbstractMesh], rules: LogicalRules) -> Iterator[None]:
  """Makes `nn.with_logical_constraint` active: sets the (abstract) mesh and the rules.

  Usable inside `jax.jit` (unlike `jax.set_mesh`), so pure model functions enter it themselves.
  """
  with contextlib.ExitStack() as stack:
    if mesh is not None:
      abstract = mesh if isinstance(mesh, AbstractMesh) else mesh.abstract_mesh
      stack.enter_context(jax.sharding.use_abstract_mesh(abstract))
    stack.enter_context(nn.logical_axis_rules(rules))
    yield


def _mesh_axis_size(mesh: Mesh | AbstractMesh, axis: Any) -> int:
  axes = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def mesh_spec(logical_spec: PartitionSpec, rules: LogicalRules, mesh: Mesh | AbstractMesh,
              shape: Optional[Sequence[int]] = None, name: str = "") -> PartitionSpec:
  """Logical PartitionSpec -> mesh PartitionSpec; dimensions the mesh axis does not divide stay whole."""
  spec = list(nn.logical_to_mesh_axes(tuple(logical_spec), rules))
  if shape is not None:
    for dim, axis in enumerate(spec):
      if axis is not None and shape[dim] % _mesh_axis_size(mesh, axis):
        logging.warning("%s: dimension %d (%s, size %d) is not divisible by mesh axis %s (size %d); "
                        "replicating it", name or "array", dim, logical_spec[dim], shape[dim], axis,
                        _mesh_axis_size(mesh, axis))
        spec[dim] = None
  return PartitionSpec(*spec)


def param_shardings(logical_axes: Any, mesh: Mesh | AbstractMesh, rules: LogicalRules,
                    shapes: Any = None) -> Any:
  """NamedSharding of every parameter from its logical axes (a tree of PartitionSpecs).

  `shapes`: an optional matching tree of arrays / ShapeDtypeStructs (from `jax.eval_shape`) used to keep
  indivisible dimensions replicated. Works with an AbstractMesh (sizes only, nothing allocated).
  """
  is_spec = lambda x: isinstance(x, PartitionSpec)
  if shapes is None:
    return jax.tree.map(lambda s: NamedSharding(mesh, mesh_spec(s, rules, mesh)), logical_axes,
                        is_leaf=is_spec)
  flat_specs, treedef = jax.tree_util.tree_flatten_with_path(logical_axes, is_leaf=is_spec)
  flat_shapes = treedef.flatten_up_to(shapes)
  shardings = [
      NamedSharding(mesh, mesh_spec(spec, rules, mesh, x.shape, jax.tree_util.keystr(path)))
      for (path, spec), x in zip(flat_specs, flat_shapes)
  ]
  return jax.tree_util.tree_unflatten(treedef, shardings)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: leading (batch) dimension over `data`, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec("data"))


def host_local_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host numpy batch (this process's rows) -> global jax.Arrays sharded over `data`.

  Each process passes its own `global_batch / process_count` rows; the global batch is their
  concatenation in process order. With one process this is a sharded device_put.
  """
  sharding = data_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in batch.items()}


def fetch_global(array: Any) -> np.ndarray:
  """A (possibly sharded, possibly multi-host) array as one host numpy array. Collective when the
  array spans processes: every process must call it, in the same order."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(array)
