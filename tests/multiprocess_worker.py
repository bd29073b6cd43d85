"""One of two processes for tests/test_multiprocess.py: argv = process_id, port, HF folder."""
import os
import sys

process_id, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402

import xmtf_jax  # noqa: E402
from xmtf_jax.parallel import partitioning  # noqa: E402

assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
mesh = partitioning.make_mesh(num_partitions=2)  # data=4 spans both processes

# Each process holds its own rows; the global batch is their concatenation.
rows = np.arange(4 * 3, dtype=np.int32).reshape(4, 3) + 100 * process_id
global_rows = partitioning.host_local_to_global({"x": rows}, mesh)["x"]
assert global_rows.shape == (8, 3)
everyone = partitioning.fetch_global(global_rows)  # all-gather: process 0's rows, then process 1's
np.testing.assert_array_equal(everyone[4 * process_id:4 * (process_id + 1)], rows)

# Parameters placed tensor by tensor on a mesh spanning processes; sharded forward = one-device forward.
model, params = xmtf_jax.load_pretrained(folder, mesh)
rng = np.random.default_rng(process_id)
enc = rng.integers(2, 128, (4, 10)).astype(np.int32)
dec = rng.integers(2, 128, (4, 6)).astype(np.int32)
batch = model.shard_batch({"encoder_input_tokens": enc, "decoder_input_tokens": dec})
logits = model.logits(params, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
rows_only = jax.jit(lambda x: x, out_shardings=partitioning.data_sharding(mesh))(logits)
local = partitioning.fetch_global(rows_only)[4 * process_id:4 * (process_id + 1)]
single_model, single_params = xmtf_jax.load_pretrained(folder)
want = np.asarray(single_model.logits(single_params, enc, dec))
print(f"process {process_id}: max abs difference {np.abs(local - want).max():.2e}")
np.testing.assert_allclose(local, want, atol=2e-5, rtol=0)
print(f"process {process_id}: OK")
