"""`python -m xmtf_jax.plan`: the real train step compiled ahead of time on 8 simulated CPU devices
(bytes per device equal a hand count), the verdict and suggestion, the missing-libtpu error; TPU
topologies where libtpu is installed (requirements-tpu-plan.txt)."""
import dataclasses
import json
import os
import subprocess
import sys

import gin
import jax
import pytest

from xmtf_jax.cli import errors
from xmtf_jax.cli import plan as plan_cli
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning, topologies
from xmtf_jax.train import losses, optim, trainer
from xmtf_jax.train import plan as train_plan

from conftest import REPO_ROOT

# gin/models/mt5_tiny.gin with its default VOCAB_SIZE
D, KV, HEADS, FF, VOCAB, BUCKETS, LAYERS = 64, 16, 4, 128, 256, 32, 2
LENGTHS = {"inputs": 32, "targets": 16}


def tiny_gin_args(partitioning_file, *extra):
  return ["--gin_file=gin/models/mt5_tiny.gin", "--gin_file=gin/runs/finetune.gin",
          f"--gin_file=gin/partitioning/{partitioning_file}.gin", f"--gin.VOCAB_SIZE={VOCAB}",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}", "--gin.BATCH_SIZE=16", *extra]


def hand_count(model_parallel):
  """(parameter floats, optimizer-state bytes) per device: vocab, heads and mlp split over `model`."""
  attention = 4 * D * HEADS * KV // model_parallel
  mlp = 3 * D * FF // model_parallel

  def layer(norms, attentions):
    return norms * D + attentions * attention + mlp

  floats = (VOCAB * D // model_parallel  # token embedding [vocab, embed]
            + 2 * BUCKETS * HEADS // model_parallel  # relative position biases [buckets, heads]
            + LAYERS * layer(2, 1) + LAYERS * layer(3, 2)  # encoder and decoder layers
            + 2 * D  # final norms
            + D * VOCAB // model_parallel)  # LM head [embed, vocab]
  leaves = 1 + 2 + LAYERS * (2 + 4 + 3) + LAYERS * (3 + 8 + 3) + 2 + 1
  # Adafactor here: nothing reaches 128 in two dimensions, so every parameter keeps a full second
  # moment `v` sharded like it, except attention kernels, whose [embed, heads*kv] view's `v` is
  # replicated; plus two (1,) placeholders per parameter and two int32 step counts.
  attention_kernels = 4 * (LAYERS + 2 * LAYERS)
  replicated_views = attention_kernels * D * HEADS * KV * (1 - 1 / model_parallel)
  optimizer_bytes = 4 * (floats + replicated_views) + 4 * 2 * leaves + 2 * 4
  return floats, int(optimizer_bytes)


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("partitioning_file, model_parallel", [("data_parallel", 1), ("model_parallel_2", 2)])
def test_cpu8_plan_counts_bytes_per_device_by_hand(partitioning_file, model_parallel, clean_gin, tmp_path):
  out = tmp_path / "plan.json"
  plan = plan_cli.run(tiny_gin_args(partitioning_file, "--topology=cpu:8", f"--output_json={out}"))
  floats, optimizer_bytes = hand_count(model_parallel)
  assert plan.mesh == {"data": 8 // model_parallel, "model": model_parallel}
  assert plan.parameter_bytes == 4 * floats
  assert plan.optimizer_state_bytes == optimizer_bytes
  assert plan.batch_bytes == 4 * (16 // (8 // model_parallel)) * (LENGTHS["inputs"] + 3 * LENGTHS["targets"])
  assert plan.num_parameters == hand_count(1)[0]
  assert plan.temp_bytes > 0 and plan.fits
  config = T5Config(vocab_size=VOCAB, d_model=D, d_kv=KV, d_ff=FF, num_heads=HEADS,
                    num_encoder_layers=LAYERS, num_decoder_layers=LAYERS)
  assert plan.flops_model == trainer.training_flops_per_step(config, 16, 32, 16)
  # XLA counts the same matmuls plus the elementwise work: within a factor of 2 of the cost model.
  assert 1.0 <= plan.flops_per_device * plan.num_devices / plan.flops_model <= 2.0
  assert plan.collectives["all-reduce"]["dtypes"]["f32"] > 0
  saved = json.loads(out.read_text())
  assert saved["parameter_bytes"] == plan.parameter_bytes and saved["fits"] is True
  text = plan.render()
  assert "verdict: fits" in text and "compile" in text and "all-reduce" in text


def test_verdict_and_suggestion_when_it_does_not_fit():
  config = T5Config(vocab_size=VOCAB, d_model=D, d_kv=KV, d_ff=FF, num_heads=HEADS, num_encoder_layers=1,
                    num_decoder_layers=1, dropout_rate=0.0)
  shape = train_plan.StepShape(batch_size=64, task_feature_lengths=LENGTHS)
  hbm = 2**20  # 1 MiB: the parameters fit, the activations of 8 rows per device do not
  plan = train_plan.plan_train_step(config, optim.OptimizerConfig(), losses.LossConfig(),
                                    partitioning.PartitioningConfig(), shape, jax.devices(),
                                    hbm_bytes=hbm, target="cpu:8")
  assert not plan.fits
  short = (plan.peak_bytes - 0.95 * hbm) / 2**30
  assert f"does not fit by {short:.2f} GiB" in plan.render()
  assert "NUM_MICROBATCHES=" in plan.suggestion or "fsdp" in plan.suggestion


def test_missing_libtpu_is_one_clear_line():
  if topologies.libtpu_available():
    pytest.skip("libtpu is installed here")
  result = subprocess.run([sys.executable, "-m", "xmtf_jax.plan", "--topology=v4-8"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT})
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "pip install -r requirements-tpu-plan.txt" in lines[0], result.stderr


def test_topology_names():
  assert topologies.parse_target("v4-256").num_devices == 128
  assert topologies.parse_target("v5e-256").hbm_bytes_per_device == 16 * 2**30
  assert topologies.parse_target("v5p-128").num_devices == 64
  assert topologies.topology_arguments(topologies.parse_target("v4-128"))["topology_name"] == "v4:4x4x4"
  with pytest.raises(ValueError, match="v4 slices come in sizes"):
    topologies.parse_target("v4-100")


def test_tpu_v4_plan_of_the_tiny_model():
  pytest.importorskip("libtpu")
  config = T5Config(vocab_size=VOCAB, d_model=D, d_kv=KV, d_ff=FF, num_heads=HEADS,
                    num_encoder_layers=LAYERS, num_decoder_layers=LAYERS, dropout_rate=0.0,
                    dtype="bfloat16", scan_layers=True, remat_policy="minimal")
  target = topologies.parse_target("v4-8")
  plan = train_plan.plan_train_step(config, optim.OptimizerConfig(), losses.LossConfig(),
                                    partitioning.PartitioningConfig(num_partitions=2),
                                    train_plan.StepShape(16, LENGTHS), topologies.devices(target),
                                    hbm_bytes=target.hbm_bytes_per_device, target=target.name)
  assert plan.num_devices == 4 and plan.device_kind.startswith("TPU v4")
  assert plan.parameter_bytes == 4 * hand_count(2)[0] and plan.fits
  # Scanned layers: the layer loop runs 2 times per stack and direction, and its collectives with it.
  assert plan.step["loops"] == ["layers"] and plan.collectives["all-reduce"]["count"] > 2 * LAYERS


def test_xla_out_of_memory_refusal_is_read_as_a_verdict():
  # The error XLA:TPU raised compiling mt5_xl with REMAT_POLICY='dots' for v4-128 (mt0 recipe).
  message = ("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory "
             "required for HLO temporaries (42.09G) exceeds available HBM (30.75G). HLO module: "
             "jit_train_step.")
  assert train_plan._hbm_oom_temporaries(message) == int(42.09 * 2**30)
  assert train_plan._hbm_oom_temporaries("INTERNAL: something else") is None


def model_gin_alone(*extra):
  """A model gin file and the step's shape: no run file, no MODEL_DIR (issue 19, item 9)."""
  return ["--gin_file=gin/models/mt5_tiny.gin", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS!r}",
          "--gin.BATCH_SIZE=16", *extra]


def test_help_needs_no_gin_and_a_model_gin_alone_plans(clean_gin, capsys):
  assert plan_cli.main(["--help", "--gin_file=no/such/file.gin"]) == plan_cli.EXIT_FITS
  assert "--topology" in capsys.readouterr().out
  assert errors.run(plan_cli.main, plan_cli.__doc__, model_gin_alone("--topology=cpu:8"),
                    main_has_help=True) == 0
  out, err = capsys.readouterr()
  assert out.startswith("memory per device: 32 GiB assumed (a v4 chip's HBM; cpu:N devices have none "
                        "of their own): pass --hbm_gib=N"), out
  assert "verdict: fits" in out and "MODEL_DIR" not in out + err
  # XLA:CPU's peak estimate leaves out the temporaries: the peak is the sum, and says so.
  assert "XLA's own peak estimate" not in out
  assert "; arguments + outputs - donated + temporaries + code)" in out


def test_exit_status_tells_does_not_fit_from_a_mistake(clean_gin, capsys):
  code = errors.run(plan_cli.main, plan_cli.__doc__, model_gin_alone("--topology=cpu:8", "--hbm_gib=0.001"),
                    main_has_help=True)
  out, _ = capsys.readouterr()
  assert code == plan_cli.EXIT_DOES_NOT_FIT == 3
  assert out.startswith("memory per device: 0.001 GiB (--hbm_gib)") and "verdict: does not fit" in out
  gin.clear_config()
  code = errors.run(plan_cli.main, plan_cli.__doc__, model_gin_alone("--topology=cpu:eight"),
                    main_has_help=True)
  assert code == plan_cli.EXIT_USER_ERROR == 2
  assert "write cpu:N with N >= 1" in capsys.readouterr().err


def test_the_whole_plan_goes_to_stdout_and_nothing_else_to_stderr():
  result = subprocess.run([sys.executable, "-m", "xmtf_jax.plan", *model_gin_alone("--topology=cpu:2"),
                           "--hbm_gib=0.001"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT, "XLA_FLAGS": ""})
  assert result.returncode == 3, result.stderr
  assert result.stdout.startswith("memory per device: 0.001 GiB")
  assert "plan for cpu:2: 2 x cpu" in result.stdout and "verdict: does not fit" in result.stdout
  assert result.stderr == ""


@pytest.mark.parametrize("peak_gib, xla_gib, expected", [
    (23.70, 22.95, "(74%; arguments + outputs - donated + temporaries + code; XLA's own estimate 22.95 GiB)"),
    (3.93, 0.002, "(12%; arguments + outputs - donated + temporaries + code)"),  # XLA:CPU's: left out
    (5.0, 6.0, "(19%; XLA's peak-memory estimate)"),
])
def test_the_peak_line_says_which_figure_it_is(peak_gib, xla_gib, expected):
  gib = 2**30
  fields = {f.name: 0 for f in dataclasses.fields(train_plan.Plan)
            if f.default is dataclasses.MISSING}
  fields.update(target="v4-256", device_kind="TPU v4", mesh={}, model={}, step={}, collectives={},
                hbm_bytes=32 * gib, xla_peak_bytes=int(xla_gib * gib),
                peak_bytes=int(max(peak_gib, xla_gib) * gib))
  peak_line = [line for line in train_plan.Plan(**fields).render().splitlines()
               if line.strip().startswith("peak")]
  assert peak_line[0].endswith("of 32 GiB " + expected), peak_line


# gin/models/bloom_tiny.gin: hidden 64, 2 layers, MLP 256, vocabulary rows 512 (tied head)
BLOOM_D, BLOOM_LAYERS, BLOOM_VOCAB = 64, 2, 512
BLOOM_LENGTHS = {"inputs": 24, "targets": 8}


def bloom_tiny_parameters():
  """BLOOM's parameter count by hand: embedding + its LayerNorm, per layer two LayerNorms, fused QKV,
  attention output, the 4H MLP (all with biases), the final LayerNorm; the LM head is the embedding."""
  d = BLOOM_D
  layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
  return BLOOM_VOCAB * d + 2 * d + BLOOM_LAYERS * layer + 2 * d


def test_cpu8_plan_of_the_bloomz_recipe_needs_no_vocabulary(clean_gin):
  # bloomz_recipe.gin requires VOCABULARY_PATH for training; the plan never reads the tokenizer.
  plan = plan_cli.run(["--gin_file=gin/models/bloom_tiny.gin", "--gin_file=gin/runs/bloomz_recipe.gin",
                       "--gin_file=gin/partitioning/model_parallel_2.gin",
                       "--gin_file=gin/partitioning/fsdp.gin", "--gin.BATCH_SIZE=16",
                       f"--gin.TASK_FEATURE_LENGTHS={BLOOM_LENGTHS!r}", "--topology=cpu:8"])
  config = plan_cli.configurables.model_config()
  assert plan.mesh == {"data": 4, "model": 2} and plan.step["parameter_sharding_2d"]
  assert plan.model["num_encoder_layers"] == 0 and plan.model["num_decoder_layers"] == BLOOM_LAYERS
  assert plan.num_parameters == bloom_tiny_parameters() == 132_992
  # One decoder-only row of inputs + targets positions, five int32 features, 16 / 4 rows per device.
  assert plan.batch_bytes == 5 * 4 * (16 // 4) * 32
  # AdamW: mu and nu shaped and sharded like the parameters, plus two int32 step counts (Adam's and
  # the learning-rate schedule's).
  assert plan.optimizer_state_bytes == 2 * plan.parameter_bytes + 2 * 4
  rows_tokens = 16 * 32
  assert plan.flops_six_n_tokens == 6.0 * bloom_tiny_parameters() * rows_tokens
  assert plan.flops_model == trainer.training_flops_per_step(config, 16, 24, 8)
  assert 1.0 <= plan.flops_per_device * plan.num_devices / plan.flops_model <= 2.0
  assert plan.fits and plan.suggestion == ""
  # Against less memory, the linear model asks for micro-batches of the decoder-only rows.
  tight = dataclasses.replace(plan, hbm_bytes=int((plan.peak_bytes - plan.temp_bytes / 2) / 0.95))
  suggestion = train_plan.suggest(tight, config, plan_cli.configurables.PartitioningConfig(),
                                  train_plan.StepShape(16, BLOOM_LENGTHS), data_size=4)
  assert suggestion.startswith("NUM_MICROBATCHES=4 "), suggestion


# The shipped pod run files (docs/pod_planning.md): slice, family, mesh's model axis, remat, micro-batches
# and global batch as planned. Parsing checks they still say what the plan compiled.
POD_RUNS = {
    "mt0_xxl_v4_256": ("v4-256", "mt5", 8, "minimal", 1, 512),
    "bloomz_7b1_v4_256": ("v4-256", "bloom", 4, "full", 4, 2048),
    "bloomz_176b_v4_1024": ("v4-1024", "bloom", 8, "full", 8, 2048),
}


@pytest.mark.parametrize("name", sorted(POD_RUNS))
def test_shipped_pod_run_files_say_what_was_planned(name, clean_gin):
  slice_name, family, model_axis, remat, microbatches, batch_size = POD_RUNS[name]
  path = f"gin/runs/{name}.gin"
  with open(os.path.join(REPO_ROOT, path)) as f:
    assert f"python -m xmtf_jax.plan --gin_file={path} --topology={slice_name}\n" in f.read()
  plan_cli.gin_flags.parse_gin([f"--gin_file={path}", *plan_cli.PLACEHOLDERS])
  config = plan_cli.configurables.model_config()
  assert type(config).family == family
  assert (config.dtype, config.scan_layers, config.remat_policy) == ("bfloat16", True, remat)
  mesh = plan_cli.configurables.PartitioningConfig()
  assert mesh.num_partitions == model_axis and mesh.parameter_sharding_2d
  # The model axis splits heads, MLP and vocabulary evenly (bloom-176b: 112 heads).
  assert config.num_heads % model_axis == config.d_ff % model_axis == config.vocab_size % model_axis == 0
  train = plan_cli.configurables.TrainConfig()
  assert (train.num_microbatches, train.batch_size) == (microbatches, batch_size)
  data_axis = topologies.parse_target(slice_name).num_devices // model_axis
  assert batch_size % (data_axis * microbatches) == 0  # whole rows per data shard and micro-batch


def test_a_compiled_program_xla_cannot_print_still_gets_its_verdict():
  # libtpu 0.0.52 compiles bloom-176b for v5p-1024, then fails converting the program to text.
  class Unprintable:
    def as_text(self):
      raise jax.errors.JaxRuntimeError("INTERNAL: RET_CHECK failure (external/xla/xla/hlo/ir/"
                                       "hlo_instruction.cc:390) async-update instruction\nmore")
  found, why = train_plan.compiled_collectives(Unprintable())
  assert found == {} and why.startswith("INTERNAL: RET_CHECK failure") and "more" not in why
  fields = {f.name: 0 for f in dataclasses.fields(train_plan.Plan) if f.default is dataclasses.MISSING}
  fields.update(target="v5p-1024", device_kind="TPU v5p", mesh={}, model={}, step={}, collectives=found,
                hbm_bytes=95 * 2**30, peak_bytes=60 * 2**30, collectives_error=why)
  text = train_plan.Plan(**fields).render()
  assert ("collectives: not read (XLA could not print the compiled program: INTERNAL: RET_CHECK "
          "failure") in text
  assert "collectives per step" not in text and "verdict: fits" in text
