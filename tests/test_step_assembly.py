"""The train step is assembled in one function, `step_assembly.assemble_step`: training, the plan,
param_count and the train-step benchmark get their step, shardings and abstract state from it, and
nothing else in the repository builds them from the lower-level pieces of `trainer.py`."""
import ast
import dataclasses
import importlib.util
import os

import jax
import pytest

from xmtf_jax.cli import param_count
from xmtf_jax.model.config import T5Config
from xmtf_jax.parallel import partitioning
from xmtf_jax.train import losses, optim, step_assembly
from xmtf_jax.train import loop as training
from xmtf_jax.train import plan as train_plan

from conftest import REPO_ROOT

TINY = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=1,
                num_decoder_layers=1, dropout_rate=0.0)
LENGTHS = {"inputs": 16, "targets": 8}
# trainer.py's builders of the step and the state around it; only step_assembly.py may call them.
BUILDERS = {"make_train_step", "train_state_shardings", "abstract_train_state", "init_train_state"}
ASSEMBLY_MODULE = os.path.join("xmtf_jax", "train", "step_assembly.py")
DEFINING_MODULE = os.path.join("xmtf_jax", "train", "trainer.py")


class RecordedStep:
  """Stands in for the assembly's jitted step and records what was done with it."""

  def __init__(self, step):
    self.step, self.lowered, self.calls = step, [], 0

  def lower(self, *args):
    self.lowered.append(args)
    return self.step.lower(*args)

  def __call__(self, *args):
    self.calls += 1
    return self.step(*args)


@pytest.fixture
def assemblies(monkeypatch):
  """Every (args, kwargs, assembly) that `assemble_step` returns while the test runs (its train step
  wrapped in a RecordedStep)."""
  built = []
  real = step_assembly.assemble_step

  def spy(*args, **kwargs):
    assembly = real(*args, **kwargs)
    assembly = dataclasses.replace(assembly, train_step=RecordedStep(assembly.train_step))
    built.append((args, kwargs, assembly))
    return assembly
  monkeypatch.setattr(step_assembly, "assemble_step", spy)
  return built


def python_files():
  for top in ("xmtf_jax", "benchmarks", "tests", "scripts", "mixtures"):
    for folder, _, files in os.walk(os.path.join(REPO_ROOT, top)):
      for name in files:
        if name.endswith(".py"):
          yield os.path.relpath(os.path.join(folder, name), REPO_ROOT)


def test_nothing_but_the_assembly_builds_the_step():
  offenders = []
  for path in python_files():
    if path in (ASSEMBLY_MODULE, DEFINING_MODULE):
      continue
    tree = ast.parse(open(os.path.join(REPO_ROOT, path), encoding="utf-8").read(), path)
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Attribute):
        names = [node.attr]
        if node.attr == "make_optimizer" and isinstance(node.value, ast.Name) \
            and node.value.id == "trainer":
          names.append("trainer.make_optimizer")
      elif isinstance(node, ast.Name):
        names = [node.id]
      elif isinstance(node, ast.ImportFrom):
        names = [alias.name for alias in node.names]
      offenders += [f"{path}:{node.lineno} {name}" for name in names
                    if name in BUILDERS or name == "trainer.make_optimizer"]
  assert not offenders, offenders
  # The check sees what it looks for: the assembly module itself calls the builders.
  text = open(os.path.join(REPO_ROOT, ASSEMBLY_MODULE), encoding="utf-8").read()
  assert all(f"trainer.{name}(" in text for name in BUILDERS - {"init_train_state"})


def test_an_assembly_holds_consistent_pieces():
  settings = step_assembly.StepSettings(num_microbatches=2, dropout_seed=5, rng_impl="threefry2x32")
  assembly = step_assembly.assemble_step(TINY, partitioning.PartitioningConfig(num_partitions=2),
                                         settings=settings)
  assert dict(assembly.mesh.shape) == {"data": 4, "model": 2}
  assert assembly.model.mesh is assembly.mesh and assembly.settings == settings
  for abstract, sharding in zip(jax.tree.leaves(assembly.abstract_state),
                                jax.tree.leaves(assembly.state_shardings)):
    assert abstract.sharding == sharding
  embedding = assembly.abstract_state.params["token_embedder"]["embedding"]
  assert embedding.shape == (64, 32) and tuple(embedding.sharding.spec) == ("model", None)
  assert tuple(assembly.batch_sharding.spec) == ("data",)
  # An AbstractMesh sizes the state without devices; devices and a mesh together are refused.
  sized = step_assembly.assemble_step(TINY, mesh=partitioning.abstract_mesh(2, 4))
  assert sized.abstract_state.params["token_embedder"]["embedding"].sharding.shard_shape((64, 32)) == (
      64 // 4, 32)
  with pytest.raises(ValueError, match="devices or a mesh, not both"):
    step_assembly.assemble_step(TINY, devices=jax.devices(), mesh=partitioning.make_mesh(1))


def test_train_assembles_its_step_from_its_configs(monkeypatch, tmp_path):
  class Assembled(Exception):
    pass

  calls = []

  def stop_after_assembling(*args, **kwargs):
    calls.append((args, kwargs))
    raise Assembled
  monkeypatch.setattr(step_assembly, "assemble_step", stop_after_assembling)
  config = training.TrainConfig(model_dir=str(tmp_path), mixture_or_task_name="unused",
                                task_feature_lengths=LENGTHS, train_steps=1, num_microbatches=2,
                                batch_size=8, dropout_seed=3, rng_impl="threefry2x32")
  part, opt, loss = (partitioning.PartitioningConfig(num_partitions=2),
                     optim.OptimizerConfig(learning_rate=0.5), losses.LossConfig(z_loss=0.0))
  with pytest.raises(Assembled):
    training.train(config, TINY, part, opt, loss)
  (args, kwargs), = calls
  assert args == (TINY, part, opt, loss, step_assembly.StepSettings(2, 3, "threefry2x32")) and not kwargs


def test_the_plan_compiles_the_assembled_step(assemblies):
  settings = step_assembly.StepSettings(num_microbatches=2)
  shape = train_plan.StepShape(16, LENGTHS, settings=settings)
  part = partitioning.PartitioningConfig(num_partitions=2)
  plan = train_plan.plan_train_step(TINY, optim.OptimizerConfig(), losses.LossConfig(), part, shape,
                                    jax.devices(), hbm_bytes=2**34, target="cpu:8")
  (args, kwargs, assembly), = assemblies
  assert args[0] is TINY and args[1] is part and args[4] == settings
  assert kwargs == {"devices": jax.devices()}
  (state, batch), = assembly.train_step.lowered  # lowered once, from the assembly's abstract state
  assert state is assembly.abstract_state
  assert batch["encoder_input_tokens"].sharding == assembly.batch_sharding
  assert plan.mesh == dict(assembly.mesh.shape)
  assert plan.parameter_bytes == train_plan.bytes_per_device(assembly.abstract_state.params)
  assert plan.optimizer_state_bytes == train_plan.bytes_per_device(assembly.abstract_state.opt_state)


def test_param_count_sizes_the_assembled_state(assemblies):
  mesh = partitioning.abstract_mesh(2, 4)
  result = param_count.count(TINY, mesh, partitioning.PartitioningConfig(), "adafactor")
  (args, kwargs, assembly), = assemblies
  assert kwargs == {"mesh": mesh}
  state = assembly.abstract_state
  assert result["total"] == (sum(x.size for x in jax.tree.leaves(state.params)),
                             train_plan.bytes_per_device(state.params))
  assert result["optimizer_bytes_per_device"] == train_plan.bytes_per_device(state.opt_state)


def test_the_benchmark_times_the_assembled_step(assemblies):
  spec = importlib.util.spec_from_file_location(
      "train_step_benchmark", os.path.join(REPO_ROOT, "benchmarks", "train_step.py"))
  benchmark = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(benchmark)
  ours = benchmark.Ours(TINY, benchmark.make_batch(TINY, 2, 16, 8))
  (args, kwargs, assembly), = assemblies
  assert ours.step_fn is assembly.train_step and ours.model is assembly.model
  assert kwargs["devices"] == jax.devices()[:1]
  assert kwargs["loss_config"] == losses.LossConfig("per_target_token", z_loss=0.0)
  assert jax.tree.structure(ours.state) == jax.tree.structure(assembly.abstract_state)
