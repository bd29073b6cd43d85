"""Checkpoints: a kill in the middle of an asynchronous save leaves the previous checkpoint as the
latest; load_pretrained rebuilds a model from a checkpoint without gin; per-process positions; a
damaged step is skipped on resume (never a step that does not fit the model) and named when read."""
import os
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import xmtf_jax
from xmtf_jax.checkpoint import open_model_path
from xmtf_jax.train import checkpoints
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp
    from xmtf_jax.train import checkpoints
    checkpointer = checkpoints.Checkpointer(sys.argv[1], save_period=1)
    small = {"w": jnp.arange(4.0)}
    checkpointer.save(1, small, {"count": jnp.zeros(())}, {"t5_config": {}}, [{"position": 1}])
    checkpointer.wait_until_finished()
    big = {"w": jnp.ones((16, 1024, 1024))}  # 64 MiB: the background write takes a while
    checkpointer.save(2, big, {"count": jnp.ones(())}, {"t5_config": {}}, [{"position": 2}])
    os.kill(os.getpid(), signal.SIGKILL)  # while orbax is still writing step 2
""")


def test_kill_during_async_save_keeps_the_previous_checkpoint(tmp_path):
  model_dir = str(tmp_path / "run")
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO_ROOT}
  proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, model_dir], env=env, cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-3000:]
  leftovers = [name for name in os.listdir(model_dir) if "tmp" in name]
  assert leftovers, f"the kill did not land during the save: {os.listdir(model_dir)}"
  assert checkpoints.list_steps(model_dir) == [1]

  checkpointer = checkpoints.Checkpointer(model_dir, save_period=1)  # cleans the temporary dir
  assert checkpointer.latest_step() == 1
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"w": jax.ShapeDtypeStruct((4,), np.float32, sharding=device)}
  restored = checkpointer.restore(1, target, {"count": jax.ShapeDtypeStruct((), np.float32,
                                                                           sharding=device)})
  np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.arange(4.0))
  assert restored.input_position == [[{"position": 1}]]  # one list entry per saving process
  checkpointer.close()
  # orbax removes the unfinished directory in the background once the manager has started.
  deadline = time.time() + 30
  while [name for name in os.listdir(model_dir) if "tmp" in name] and time.time() < deadline:
    time.sleep(0.1)
  assert not [name for name in os.listdir(model_dir) if "tmp" in name]


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
  config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=1,
                    num_decoder_layers=1, dropout_rate=0.1)
  model = EncoderDecoderModel(config)
  params = model.init_params(jax.random.key(3, impl="rbg"))
  model_dir = str(tmp_path_factory.mktemp("ckpt"))
  checkpointer = checkpoints.Checkpointer(model_dir, save_period=5)
  metadata = {"t5_config": config.to_dict(), "vocabulary_path": "/some/spiece.model"}
  checkpointer.save(5, params, {"count": jax.numpy.zeros(())}, metadata, [{"position": 5}])
  checkpointer.close()
  return model_dir, model, params


def test_load_pretrained_rebuilds_the_model_from_a_checkpoint(saved_tiny_model):
  model_dir, model, params = saved_tiny_model
  tokens = np.array([[5, 6, 7, 1, 0]], np.int32)
  decoder = np.array([[0, 9, 10]], np.int32)
  expected = np.asarray(model.logits(params, tokens, decoder))
  for path in (model_dir, checkpoints.step_directory(model_dir, 5)):
    loaded_model, loaded_params = xmtf_jax.load_pretrained(path, dropout_rate=0.0)
    assert loaded_model.config == model.config.replace(dropout_rate=0.0)
    np.testing.assert_array_equal(np.asarray(loaded_model.logits(loaded_params, tokens, decoder)),
                                  expected)
  assert checkpoints.read_metadata(model_dir)["vocabulary_path"] == "/some/spiece.model"


def test_load_pretrained_onto_a_mesh(saved_tiny_model):
  from xmtf_jax.parallel import partitioning
  model_dir, _, params = saved_tiny_model
  mesh = partitioning.make_mesh(2)
  loaded_model, loaded_params = xmtf_jax.load_pretrained(model_dir, mesh)
  kernel = loaded_params["decoder"]["logits_dense"]["kernel"]
  assert tuple(kernel.sharding.spec) == (None, "model")
  np.testing.assert_array_equal(np.asarray(kernel), np.asarray(params["decoder"]["logits_dense"]["kernel"]))


def test_missing_checkpoint_and_missing_process_position_errors(saved_tiny_model, tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a checkpoint directory"):
    open_model_path(str(tmp_path))
  model_dir, model, _ = saved_tiny_model
  position = os.path.join(checkpoints.step_directory(model_dir, 5), "input_position")
  os.rename(os.path.join(position, "process_00000_of_00001.json"),
            os.path.join(position, "process_00000_of_00002.json"))
  try:
    checkpointer = checkpoints.Checkpointer(model_dir)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            model.abstract_params())
    with pytest.raises(FileNotFoundError, match="input position is incomplete"):
      checkpointer.restore(5, abstract)
    assert checkpointer.restore(5, abstract, input_position=False).input_position is None
    checkpointer.close()
  finally:
    os.rename(os.path.join(position, "process_00000_of_00002.json"),
              os.path.join(position, "process_00000_of_00001.json"))


def _two_step_run(model_dir, model, params, later_config=None):
  """Steps 5 and 10 of `model` (step 10's parameters doubled; its metadata may name another config)."""
  checkpointer = checkpoints.Checkpointer(model_dir, save_period=5, async_save=False)
  for step, tree, config in [(5, params, model.config),
                             (10, jax.tree.map(lambda x: 2 * x, params), later_config or model.config)]:
    checkpointer.save(step, tree, {"count": jax.numpy.full((), step, np.float32)},
                      {"t5_config": config.to_dict()}, [{"position": step}])
  checkpointer.close()


def _resume(model_dir, model):
  import types
  from xmtf_jax.train import loop
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          model.abstract_params())
  assembly = types.SimpleNamespace(model=model, abstract_state=types.SimpleNamespace(
      params=abstract, opt_state={"count": jax.ShapeDtypeStruct((), np.float32, sharding=device)}))
  config = types.SimpleNamespace(model_dir=model_dir, restore_input_position=True)
  checkpointer = checkpoints.Checkpointer(model_dir, save_period=5)
  try:
    return loop.restore_newest_intact(config, assembly, checkpointer)
  finally:
    checkpointer.close()


def test_resume_skips_a_damaged_step_and_load_pretrained_names_it(saved_tiny_model, tmp_path, caplog):
  _, model, params = saved_tiny_model
  model_dir = str(tmp_path / "run")
  _two_step_run(model_dir, model, params)
  with open(os.path.join(checkpoints.step_directory(model_dir, 10), "metadata", "metadata"), "w") as f:
    f.write('{"step": 10, "t5_co')  # cut short
  # Reading the run for inference/export: one paragraph naming the step and the file.
  with pytest.raises(xmtf_jax.UserError, match=r"checkpoint_10 could not be read \(metadata/metadata: "
                                                r"not valid JSON.*--step=N"):
    xmtf_jax.load_pretrained(model_dir)
  with caplog.at_level("WARNING"):
    restored = _resume(model_dir, model)
  # Everything from step 5: parameters, optimizer state and data position.
  assert restored.step == 5 and restored.input_position == [[{"position": 5}]]
  assert float(restored.opt_state["count"]) == 5
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  (line,) = [r.getMessage() for r in caplog.records if "could not be restored" in r.getMessage()]
  assert line.startswith("checkpoint_10 could not be restored (metadata/metadata: not valid JSON")
  assert "; resuming from checkpoint_5 (the damaged step kept as checkpoint_10.damaged-" in line
  assert checkpoints.list_steps(model_dir) == [5]
  assert [n for n in os.listdir(model_dir) if n.startswith("checkpoint_10.damaged-")]


def test_resume_with_no_step_that_restores_lists_each(saved_tiny_model, tmp_path):
  _, model, params = saved_tiny_model
  model_dir = str(tmp_path / "run")
  _two_step_run(model_dir, model, params)
  os.remove(os.path.join(checkpoints.step_directory(model_dir, 10), "input_position",
                         "process_00000_of_00001.json"))
  data = os.path.join(checkpoints.step_directory(model_dir, 5), "params", "d")
  for name in os.listdir(data):
    os.remove(os.path.join(data, name))
  with pytest.raises(xmtf_jax.UserError, match=r"no checkpoint could be restored: checkpoint_10: "
                                                r"input_position.*incomplete.*; checkpoint_5: params: "
                                                r"NOT_FOUND.*params/d/") as error:
    _resume(model_dir, model)
  assert "\n" not in str(error.value)
  assert checkpoints.list_steps(model_dir) == [5, 10]  # nothing renamed
  # Export reads the tree's metadata first (orbax logs that failure and returns nothing).
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=r"checkpoint_5 could not be read \(params: NOT_FOUND.*params/d/"):
    open_model_path(model_dir, step=5).reader().params_tree_metadata()


def test_resume_onto_another_model_size_is_an_error_not_a_fallback(saved_tiny_model, tmp_path):
  _, model, params = saved_tiny_model
  model_dir = str(tmp_path / "run")
  _two_step_run(model_dir, model, params, later_config=model.config.replace(d_ff=64))
  with pytest.raises(xmtf_jax.UserError, match=r"checkpoint_10 does not match the gin model.*d_ff: "
                                                r"64 there vs 48 in gin"):
    _resume(model_dir, model)
  assert checkpoints.list_steps(model_dir) == [5, 10]
