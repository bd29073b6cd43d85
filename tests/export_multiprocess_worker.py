"""One of two processes for test_hf_export's multi-process export: argv = process_id, port, HF folder
(with spiece.model), output root."""
import os
import sys

process_id, port, folder, out_root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id)

import xmtf_jax  # noqa: E402
from xmtf_jax.hf import sources as export_sources
from xmtf_jax.hf import export as hf_export
from xmtf_jax.parallel import partitioning  # noqa: E402

assert jax.process_count() == 2
# 2-D parameter sharding on a (data=4, model=2) mesh over both processes: tensors span the hosts.
mesh = partitioning.make_mesh(num_partitions=2)
model, params = xmtf_jax.load_pretrained(folder, mesh,
                                         logical_axis_rules=partitioning.logical_axis_rules(True))
assert any(not x.is_fully_addressable for x in jax.tree.leaves(params))
vocab = os.path.join(folder, "spiece.model")
result = hf_export.export(model.config, params, vocab, os.path.join(out_root, "from_params"),
                          max_shard_size="40KB", model=model)
assert "several processes" in result.verify_skipped_reason, result.verify_skipped_reason
assert (result.files != []) == (process_id == 0)  # only process 0 writes
source = export_sources.HFFolderParams(folder)
assert not source.collective_reads
hf_export.export_source(source, vocab, os.path.join(out_root, "from_folder"), dtype="bfloat16")
print(f"process {process_id}: OK")
