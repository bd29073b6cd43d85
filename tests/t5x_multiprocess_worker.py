"""One of two processes for tests/test_t5x_checkpoints.py: argv = process_id, port, t5x step dir.
A mesh whose model axis spans both processes: each host reads only its half of the sharded arrays."""
import os
import sys

process_id, port, step_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402

from xmtf_jax.checkpoint import open_model_path, t5x_format, t5x_names  # noqa: E402
from xmtf_jax.model import layer_stacking  # noqa: E402
from xmtf_jax.parallel import partitioning  # noqa: E402

# Model axis pairs a device of each process: heads, mlp and vocabulary split between the hosts.
devices = [d for pair in zip(*[[d for d in jax.devices() if d.process_index == p] for p in (0, 1)])
           for d in pair]
mesh = partitioning.make_mesh(num_partitions=2, devices=devices)
read_elements = []
original = t5x_format.T5xCheckpoint.read


def counting_read(self, name, index=(), where="target", dtype=None):
  data = original(self, name, index, where, dtype)
  read_elements.append(data.size)
  return data


t5x_format.T5xCheckpoint.read = counting_read
ckpt = open_model_path(step_dir).t5x()
config, params = t5x_names.load_params(ckpt, mesh, scan_layers=True)
loaded = sum(read_elements)
layout = t5x_names.T5xLayout(ckpt)
plan = t5x_names.read_plan(layout, config.replace(scan_layers=False))
flat = {}
for path in plan:
  flat[path] = t5x_names.read_param(plan, path)
total = sum(a.size for a in flat.values())
checked = 0
for key_path, array in jax.tree_util.tree_flatten_with_path(params)[0]:
  leaf = layer_stacking.path_keys(key_path)
  per_layer = sorted((p for p in flat if layer_stacking.stacked_location(p)[0] == leaf),
                     key=lambda p: layer_stacking.stacked_location(p)[1] or 0)
  whole = flat[leaf] if leaf in flat else np.stack([flat[p] for p in per_layer])
  for shard in array.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), whole[shard.index])
    checked += 1
print(f"process {process_id}: read {loaded} of {total} elements; {checked} shards equal")
assert loaded < 0.75 * total, (loaded, total)
print(f"process {process_id}: OK")
