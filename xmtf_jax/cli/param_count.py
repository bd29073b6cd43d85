"""Parameter counts and bytes per device of a model config (mT5 or BLOOM) on a mesh, from abstract shapes (no allocation).

  python -m xmtf_jax.param_count --gin_file=gin/models/mt5_xxl.gin --mesh=data:4,model:8
  python -m xmtf_jax.param_count --gin_file=gin/models/mt5_xl.gin \
      --gin_file=gin/partitioning/model_parallel_4.gin --gin_file=gin/partitioning/fsdp.gin \
      --num_devices=64 --optimizer=adafactor

Without --mesh the mesh comes from `PartitioningConfig` (gin/partitioning/*.gin) over --num_devices
(default: this host's device count). Bytes are float32 parameters (and, with --optimizer=adafactor or
adamw, that optimizer's state as `OptimizerConfig` in gin sets its other fields) on the most loaded
device. The model is `model_config` in gin: T5Config, or BloomConfig with gin/models/bloom_*.gin.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Optional

import jax
import numpy as np

from xmtf_jax.cli import configurables
from xmtf_jax.cli import gin_flags, usage
from xmtf_jax.errors import UserError
from xmtf_jax.model import family
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import optim, step_assembly


def parameter_group(path: tuple[str, ...]) -> str:
  """token_embedder (mT5's shared embedding, BLOOM's tied one), lm_head, or <stack>/<sublayer kind>
  (attention, mlp, layer_norms, relpos_bias; BLOOM's embedding LayerNorm is `embedding_layer_norm`)."""
  if path[0] in ("token_embedder", "word_embeddings"):
    return "token_embedder"
  if path[0] == "word_embeddings_layernorm":
    return "embedding_layer_norm"
  if path[-2] == "logits_dense":
    return "lm_head"
  part = path[2] if path[1].startswith("layers") else path[1]  # layers_{i}, or stacked `layers`
  if part.endswith("_norm") or part.endswith("layernorm") or part == "ln_f":
    part = "layer_norms"
  return f"{path[0]}/{part}"


def _keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _shard_bytes(leaf: jax.ShapeDtypeStruct) -> int:
  """Bytes of the largest shard of an abstract array with a sharding."""
  return int(np.prod(leaf.sharding.shard_shape(tuple(leaf.shape)), dtype=np.int64)) * leaf.dtype.itemsize


def count(config: family.ModelConfig, mesh: Any,
          partitioning_config: Optional[partitioning.PartitioningConfig] = None,
          optimizer: Optional[str] = None,
          optimizer_config: Optional[optim.OptimizerConfig] = None) -> dict[str, Any]:
  """{'groups': {group: (parameters, bytes_per_device)}, 'total': ..., 'optimizer_bytes_per_device': ...}.

  The train state as training builds it (`step_assembly.assemble_step` on `mesh`, an AbstractMesh
  will do): parameters sharded by `partitioning_config`'s rules and, with optimizer='adafactor', the
  optimizer's state (attention kernels factored as [embed, heads*kv]) sharded as the trainer shards it.
  """
  if optimizer not in (None, "adafactor", "adamw"):
    raise UserError(f"--optimizer={optimizer!r}: 'adafactor' or 'adamw'")
  if optimizer is not None:
    optimizer_config = dataclasses.replace(optimizer_config or optim.OptimizerConfig(), name=optimizer)
    if optimizer == "adamw":  # Adafactor's decay field must not leak into AdamW's check
      optimizer_config = dataclasses.replace(optimizer_config, weight_decay_rate=None)
  state = step_assembly.assemble_step(config, partitioning_config, optimizer_config,
                                      mesh=mesh).abstract_state
  groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    group = groups[parameter_group(_keys(path))]
    group[0] += int(np.prod(leaf.shape, dtype=np.int64))
    group[1] += _shard_bytes(leaf)
  result = {"groups": {k: tuple(v) for k, v in groups.items()},
            "total": (sum(v[0] for v in groups.values()), sum(v[1] for v in groups.values()))}
  if optimizer is not None:
    result["optimizer_bytes_per_device"] = sum(_shard_bytes(leaf)
                                               for leaf in jax.tree.leaves(state.opt_state))
  return result


def _parse_mesh(text: str) -> tuple[int, int]:
  sizes = {}
  for part in text.split(","):
    name, _, value = part.partition(":")
    if name not in partitioning.MESH_AXES or not value.isdigit():
      raise UserError(f"--mesh={text}: write data:N,model:M")
    sizes[name] = int(value)
  return sizes.get("data", 1), sizes.get("model", 1)


def _gib(n: int) -> str:
  return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def main(argv: Optional[list[str]] = None) -> None:
  rest = gin_flags.parse_gin(argv)
  parser = usage.param_count_parser()
  args = parser.parse_args(rest)

  config = configurables.model_config()
  part = configurables.PartitioningConfig()
  if args.mesh:
    data, model = _parse_mesh(args.mesh)
  else:
    devices = args.num_devices or jax.device_count()
    model = part.num_partitions
    data = part.num_data_partitions if part.num_data_partitions != -1 else devices // model
  mesh = partitioning.abstract_mesh(data, model)
  result = count(config, mesh, part, args.optimizer, configurables.OptimizerConfig())

  print(f"{type(config).__name__}: d_model={config.d_model} d_kv={config.d_kv} d_ff={config.d_ff} "
        f"heads={config.num_heads} layers={config.num_encoder_layers}/{config.num_decoder_layers} "
        f"vocab={config.vocab_size}")
  print(f"mesh: data={data} x model={model} ({data * model} devices); 2-D parameter sharding: "
        f"{part.parameter_sharding_2d}")
  print(f"{'group':<38}{'parameters':>16}{'float32 bytes/device':>24}")
  for name in sorted(result["groups"], key=lambda g: (g != "token_embedder", g == "lm_head", g)):
    params, nbytes = result["groups"][name]
    print(f"{name:<38}{params:>16,}{_gib(nbytes):>24}")
  params, nbytes = result["total"]
  print(f"{'total':<38}{params:>16,}{_gib(nbytes):>24}")
  if "optimizer_bytes_per_device" in result:
    opt = result["optimizer_bytes_per_device"]
    print(f"{ {'adafactor': 'Adafactor', 'adamw': 'AdamW'}[args.optimizer] + ' state':<38}{'':>16}{_gib(opt):>24}")
    print(f"{'params + optimizer state':<38}{'':>16}{_gib(nbytes + opt):>24}")

