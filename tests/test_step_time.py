"""The plan's step-time estimate: on a tiny program compiled for a 4 x 2 mesh of 8 CPU devices it
equals a hand computation from the plan's FLOPs, bytes and collectives and the chip's numbers; each
collective is attributed to the mesh axes its device groups span, in every spelling XLA prints."""
import dataclasses
import json

import gin
import jax
import pytest

from xmtf_jax.cli import plan as plan_cli
from xmtf_jax.errors import UserError
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import hlo_collectives, partitioning
from xmtf_jax.train import hardware, losses, optim, step_time, trainer
from xmtf_jax.train import plan as train_plan


MESH = {"data": 4, "model": 2}
# Round numbers, so the hand computation below is easy to follow.
CHIP = hardware.Chip("test chip", peak_flops=1e12, hbm_bytes_per_second=1e11, link_bytes_per_second=1e9,
                     links_per_axis=2)


@pytest.fixture(scope="module")
def tiny_plan():
  config = T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=2, dropout_rate=0.0)
  shape = train_plan.StepShape(batch_size=16, task_feature_lengths={"inputs": 32, "targets": 16})
  return train_plan.plan_train_step(config, optim.OptimizerConfig(), losses.LossConfig(),
                                    partitioning.PartitioningConfig(num_partitions=2), shape, jax.devices(),
                                    hbm_bytes=32 * 2**30, target="cpu:8", chip=CHIP)


def test_estimate_equals_a_hand_computation(tiny_plan):
  plan = tiny_plan
  assert plan.mesh == MESH and plan.step["loops"] == []
  assert plan.flops_per_device > 0 and plan.bytes_accessed > 0
  by_axis = plan.collectives_by_axis
  # Gradients are summed over `data` (4 devices); activations over `model` (2 devices).
  assert set(by_axis) == {"data", "model"}
  assert by_axis["data"]["all-reduce"]["group_size"] == 4
  assert all(s["group_size"] == 2 for s in by_axis["model"].values())
  # Every collective lands on one axis: the per-axis bytes add up to the per-kind totals.
  for kind, stats in plan.collectives.items():
    assert sum(axis.get(kind, {}).get("bytes", 0) for axis in by_axis.values()) == stats["bytes"]

  compute = plan.flops_per_device / 1e12
  hbm = plan.bytes_accessed / 1e11
  axis_bandwidth = 2 * 1e9
  data = 2 * 3 / 4 * by_axis["data"]["all-reduce"]["bytes"] / axis_bandwidth  # ring all-reduce, n = 4
  model = (2 * 1 / 2 * by_axis["model"].get("all-reduce", {"bytes": 0})["bytes"]  # n = 2
           + 1 / 2 * by_axis["model"].get("all-gather", {"bytes": 0})["bytes"]) / axis_bandwidth
  estimate = plan.estimate
  assert estimate.loop_scale == 1.0
  assert estimate.compute_seconds == pytest.approx(compute)
  assert estimate.hbm_seconds == pytest.approx(hbm)
  assert estimate.communication_seconds == pytest.approx({"data": data, "model": model})
  assert estimate.seconds == pytest.approx(max(compute, hbm) + data + model)
  assert estimate.seconds_overlapped == pytest.approx(max(compute, hbm, data + model))
  useful = plan.flops_model / 8
  assert estimate.mfu == pytest.approx(useful / estimate.seconds / 1e12)
  assert estimate.mfu_overlapped == pytest.approx(useful / estimate.seconds_overlapped / 1e12)
  assert estimate.xla_optimal_seconds is None  # XLA:CPU reports no optimal_seconds

  text = plan.render()
  assert "step time (estimate, test chip peaks" in text and "MFU" in text and "on mesh axes data" in text
  saved = json.loads(json.dumps(plan.to_dict()))
  assert saved["estimate"]["label"] == "estimate"
  assert saved["estimate"]["seconds"] == pytest.approx(estimate.seconds)
  assert saved["collectives_by_axis"]["data"]["all-reduce"]["bytes"] == by_axis["data"]["all-reduce"]["bytes"]


def test_loops_scale_flops_and_bytes_to_the_model_count():
  # A scanned program: XLA counted the layer body once, a quarter of the model's FLOPs.
  plan = train_plan.Plan(
      target="v4-8", device_kind="TPU v4", num_devices=4, mesh={"data": 4, "model": 1}, model={},
      step={"loops": ["layers"]}, num_parameters=0, parameter_bytes=0, optimizer_state_bytes=0,
      batch_bytes=0, temp_bytes=0, argument_bytes=0, output_bytes=0, alias_bytes=0, generated_code_bytes=0,
      peak_bytes=0, xla_peak_bytes=0, hbm_bytes=32 * 2**30, flops_per_device=1e12, flops_six_n_tokens=0,
      flops_model=16e12, collectives={}, lower_seconds=0, compile_seconds=0, bytes_accessed=3e9,
      collectives_by_axis={"data": {"all-gather": {"count": 1, "bytes": 9e9, "group_size": 4}},
                           "data+model": {"collective-permute": {"count": 2, "bytes": 1e9, "group_size": 4}}},
      optimal_seconds=0.5, flops_model_counted=4e12)
  v4 = hardware.CHIPS["v4"]
  estimate = step_time.estimate(plan, v4)
  assert estimate.loop_scale == 4.0  # XLA's 1e12 per device -> 4e12 (the model's 16e12 / 4 devices)
  assert estimate.compute_seconds == pytest.approx(4e12 / 275e12)
  assert estimate.hbm_seconds == pytest.approx(12e9 / 1.2e12)
  # all-gather over 4: 3/4 of the gathered bytes over two links; the permute over one link.
  assert estimate.communication_seconds == pytest.approx({"data": 0.75 * 9e9 / 9e10, "data+model": 1e9 / 4.5e10})
  assert estimate.xla_optimal_seconds == 0.5
  assert estimate.mfu == pytest.approx(4e12 / estimate.seconds / 275e12)
  # XLA's count, scaled, below the model's own FLOPs: the model's count is the floor.
  low = step_time.estimate(dataclasses.replace(plan, flops_per_device=0.5e12), v4)
  assert low.flops == 4e12 and low.hbm_seconds == estimate.hbm_seconds


@pytest.mark.parametrize("groups, axes, size", [
    ("replica_groups={{0,1},{2,3},{4,5},{6,7}}", "model", 2),
    ("replica_groups={{0,2,4,6},{1,3,5,7}}", "data", 4),
    ("replica_groups={}", "data+model", 8),
    ("replica_groups={{0},{1},{2},{3},{4},{5},{6},{7}}", "none", 1),
    ("replica_groups=[4,2]<=[8]", "model", 2),  # rows of iota(8) as 4 x 2
    ("replica_groups=[2,4]<=[4,2]T(1,0)", "data", 4),  # columns of the 4 x 2 grid: stride 2
    ("replica_groups=[1,8]<=[8]", "data+model", 8),
    # XLA's mesh form, as XLA:CPU printed it for this 4 x 2 mesh
    ("replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2] {'axis_0'}", "data", 4),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2] {'axis_2'}", "model", 2),
    ("replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=4], device_ids=([4,2]T(1,0)) {'axis_1'}", "model", 2),
    ("replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=4], device_ids=([4,2]T(1,0)) {'axis_2'}", "data", 4),
    ("source_target_pairs={{0,2},{2,4},{4,6},{6,0}}", "data", 2),
    ("source_target_pairs={{0,3}}", "data+model", 2),
    ("replica_groups=mesh['a'=4,'b':(1)2] {'a'}", "?", 0),
])
def test_group_axes_on_hand_written_groups(groups, axes, size):
  line = f"  %x = f32[8]{{0}} all-reduce(%y), channel_id=1, {groups}, use_global_device_ids=true, to_apply=%add"
  assert hlo_collectives.group_axes(hlo_collectives.device_groups(line, 8), MESH) == (axes, size)


HLO = """HloModule step

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
  %ag = f32[64]{0} all-gather(f32[32]{0} %v), channel_id=2, replica_groups=[4,2]<=[8], dimensions={0}, use_global_device_ids=true
  %ar = f32[64]{0} all-reduce(f32[64]{0} %ag), channel_id=3, replica_groups=[2,4]<=[4,2]T(1,0), use_global_device_ids=true, to_apply=%add
}

%all-reduce-scatter.1 (q: f32[64]) -> f32[16] {
  %inner = f32[64]{0} all-reduce(f32[64]{0} %q), channel_id=6, replica_groups=[2,4]<=[4,2]T(1,0), use_global_device_ids=true, to_apply=%add
  ROOT %ds = f32[16]{0} dynamic-slice(f32[64]{0} %inner, s32[] %o), dynamic_slice_sizes={16}
}

%cond (p: (s32[], f32[64])) -> pred[] {
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main (x: f32[16]) -> f32[16] {
  %w = (s32[], f32[64]) while((s32[], f32[64]) %t), condition=%cond, body=%body
  %g = bf16[16]{0} all-reduce(bf16[16]{0} %x), channel_id=4, replica_groups={}, use_global_device_ids=true, to_apply=%add
  %rs = f32[16]{0} fusion(f32[64]{0} %y), kind=kCustom, calls=%all-reduce-scatter.1
  %cp = f32[16]{0} collective-permute(f32[16]{0} %x), channel_id=5, source_target_pairs={{0,1},{1,0},{2,3},{3,2}}
}
"""


def test_collectives_by_axis_multiplies_loop_bodies():
  assert hlo_collectives.collectives_by_axis(HLO, MESH) == {
      "model": {"all-gather": {"count": 3, "bytes": 3 * 64 * 4, "group_size": 2},
                "collective-permute": {"count": 1, "bytes": 16 * 4, "group_size": 2}},
      "data": {"all-reduce": {"count": 3, "bytes": 3 * 64 * 4, "group_size": 4},
               # XLA:TPU's reduce-scatter fusion: the groups are the inner all-reduce's
               "reduce-scatter": {"count": 1, "bytes": 16 * 4, "group_size": 4}},
      "data+model": {"all-reduce": {"count": 1, "bytes": 16 * 2, "group_size": 8}},
  }


@pytest.mark.parametrize("name, key", [("TPU v4", "v4"), ("v4-256", "v4"), ("TPU v5 lite", "v5e"),
                                       ("v5litepod-16", "v5e"), ("v5e-256", "v5e"), ("TPU v5p", "v5p"),
                                       ("v5p-128", "v5p"), ("TPU v6 lite", "v6e"), ("v6e-64", "v6e"),
                                       ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200")])
def test_chip_for(name, key):
  assert hardware.chip_for(name) is hardware.CHIPS[key]


def test_chip_for_cpu_and_unknown():
  assert hardware.chip_for("cpu") is None and hardware.chip_for("cpu:8") is None
  with pytest.raises(UserError, match="no peak numbers"):
    hardware.chip_for("TPU v2")


def test_scanned_layers_scale_to_the_unrolled_count():
  """XLA counts a scanned layer once; scaled by the model's FLOPs it matches the unrolled program."""
  def plan(scan):
    config = T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_encoder_layers=4,
                      num_decoder_layers=4, dropout_rate=0.0, scan_layers=scan)
    shape = train_plan.StepShape(batch_size=16, task_feature_lengths={"inputs": 32, "targets": 16})
    return train_plan.plan_train_step(config, optim.OptimizerConfig(), losses.LossConfig(),
                                      partitioning.PartitioningConfig(num_partitions=2), shape,
                                      jax.devices(), hbm_bytes=32 * 2**30, target="cpu:8", chip=CHIP)

  scanned, unrolled = plan(True), plan(False)
  assert scanned.step["loops"] == ["layers"] and unrolled.step["loops"] == []
  one_layer = T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_heads=4, num_encoder_layers=1,
                       num_decoder_layers=1)
  assert scanned.flops_model_counted == trainer.training_flops_per_step(one_layer, 16, 32, 16)
  assert scanned.flops_per_device < 0.6 * unrolled.flops_per_device  # 1 of 4 layers counted
  assert scanned.estimate.loop_scale == pytest.approx(scanned.flops_model / scanned.flops_model_counted)
  assert scanned.estimate.flops == pytest.approx(unrolled.estimate.flops, rel=0.15)


def test_cli_prints_the_estimate_with_chip_flag(tmp_path, capsys):
  gin.clear_config()
  out = tmp_path / "plan.json"
  args = ["--gin_file=gin/models/mt5_tiny.gin", "--gin_file=gin/runs/finetune.gin",
          "--gin_file=gin/partitioning/model_parallel_2.gin", "--gin.VOCAB_SIZE=256",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--gin.BATCH_SIZE=16", "--topology=cpu:8"]
  try:
    with pytest.raises(UserError, match="--chip=tpu9"):
      plan_cli.run(args + ["--chip=tpu9"])
    gin.clear_config()
    assert plan_cli.main(args + ["--chip=v4", f"--output_json={out}"]) == plan_cli.EXIT_FITS
  finally:
    gin.clear_config()
  text = capsys.readouterr().out
  assert "step time (estimate, TPU v4 peaks; roofline, not a measurement)" in text
  assert "without overlap" in text and "with full overlap" in text and "communication" in text
  saved = json.loads(out.read_text())["estimate"]
  assert saved["label"] == "estimate" and saved["chip"] == "TPU v4"
  assert saved["compute_seconds"] == pytest.approx(saved["flops"] / 275e12)


def test_xla_optimal_seconds_only_when_meaningful():
  assert train_plan._optimal_seconds({"optimal_seconds": 0.25, "flops": 1.0}) == 0.25
  assert train_plan._optimal_seconds({"optimal_seconds": -73.7}) is None  # libtpu, mt5-xxl on v4-256
  assert train_plan._optimal_seconds({"flops": 1.0}) is None and train_plan._optimal_seconds(None) is None
