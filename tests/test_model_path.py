"""One way to open a model path: `checkpoint.open_model_path` classifies every kind with one precedence
and one listing; everything that reads a model (load_pretrained, the vocabulary, the EOS setting,
export, training init) reads through what it opened; our checkpoints record where training started."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from xmtf_jax import paths
from xmtf_jax.checkpoint import HF_FOLDER, OUR_RUN, OUR_STEP, ModelPathError, open_model_path
from xmtf_jax.checkpoint import xmtf_format
from xmtf_jax.hf import sources as export_sources
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.train import checkpoints, loop, optim, pretrained
from xmtf_jax.train.run_checks import TaskFeatures
from xmtf_jax.train.vocabulary import load_vocabulary

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_VOCAB = os.path.join(REPO_ROOT, "data", "demo", "sentencepiece.model")


def touch(path, text="{}"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def fake_step(step_dir, step, **metadata):
  """A step folder as our format lays it out (classification reads the listing and the metadata)."""
  os.makedirs(os.path.join(step_dir, "params"), exist_ok=True)
  touch(os.path.join(step_dir, "metadata", "metadata"), json.dumps({"step": step, **metadata}))


# ---- classification -----------------------------------------------------------------------------

def test_each_kind_is_recognised(tmp_path):
  run = tmp_path / "run"
  fake_step(str(run / "checkpoint_3"), 3)
  fake_step(str(run / "checkpoint_7"), 7)
  os.makedirs(run / "checkpoint_9" / "params")  # no metadata: incomplete
  os.makedirs(run / "checkpoint_11.orbax-checkpoint-tmp-1700000000")  # orbax's unfinished save
  touch(str(run / "hf" / "config.json"))  # an export inside the run's folder

  opened = open_model_path(str(run))
  assert (opened.kind, opened.step, opened.steps) == (OUR_RUN, 7, (3, 7, 9))
  assert opened.step_dir == os.path.join(str(run), "checkpoint_7") and opened.metadata == {"step": 7}
  assert open_model_path(str(run), step=3).step_dir == os.path.join(str(run), "checkpoint_3")

  step = open_model_path(str(run / "checkpoint_3"))
  assert (step.kind, step.step, step.step_dir) == (OUR_STEP, 3, str(run / "checkpoint_3"))

  hf = open_model_path(str(run / "hf"))
  assert (hf.kind, hf.path, hf.step_dir) == (HF_FOLDER, str(run / "hf"), None)
  assert hf.metadata == {} and hf.inputs_end_with_eos is False


def test_one_precedence_hf_folder_then_step_then_run(tmp_path):
  """A folder matching every kind is an HF folder; without config.json a step; then a run."""
  both = tmp_path / "both"
  fake_step(str(both), 5)
  fake_step(str(both / "checkpoint_2"), 2)
  touch(str(both / "config.json"))
  assert open_model_path(str(both)).kind == HF_FOLDER
  os.remove(both / "config.json")
  assert open_model_path(str(both)).kind == OUR_STEP
  os.rename(both / "params", both / "old_params")
  assert (open_model_path(str(both)).kind, open_model_path(str(both)).step) == (OUR_RUN, 2)


def test_paths_that_are_no_model_say_what_was_looked_for(tmp_path):
  with pytest.raises(ModelPathError, match="nope: not a model path \\(no such directory\\)"):
    open_model_path(str(tmp_path / "nope"))
  touch(str(tmp_path / "file.txt"))
  with pytest.raises(FileNotFoundError, match="a file, not a folder"):
    open_model_path(str(tmp_path / "file.txt"))
  touch(str(tmp_path / "other" / "notes.txt"))
  with pytest.raises(ModelPathError) as error:
    open_model_path(str(tmp_path / "other"))
  message = str(error.value)
  for sought in ("no config.json (an HF mT5/mT0 or BLOOM folder)", "neither a checkpoint directory "
                 "(checkpoint_<step>/ with params/ and metadata/)", "nor a MODEL_DIR holding one",
                 "It holds notes.txt", str(tmp_path / "other")):
    assert sought in message, message
  empty_run = tmp_path / "empty_run"
  os.makedirs(empty_run / "checkpoint_4" / "params")  # only an incomplete step
  with pytest.raises(ModelPathError, match="checkpoint_4"):
    open_model_path(str(empty_run))


def test_a_step_the_path_cannot_give_is_an_error(tmp_path):
  run = tmp_path / "run"
  fake_step(str(run / "checkpoint_2"), 2)
  os.makedirs(run / "checkpoint_4" / "params")
  touch(str(tmp_path / "hf" / "config.json"))
  with pytest.raises(FileNotFoundError, match=r"--step=5: .* available steps: \[2, 4\]"):
    open_model_path(str(run), step=5)
  with pytest.raises(FileNotFoundError, match=r"--step=4: .*checkpoint_4 is incomplete"):
    open_model_path(str(run), step=4)
  with pytest.raises(ValueError, match="--step=3 given with the step directory"):
    open_model_path(str(run / "checkpoint_2"), step=3)
  with pytest.raises(ValueError, match="--step=1: .* HF folder, which holds one set of weights"):
    open_model_path(str(tmp_path / "hf"), step=1)


def test_on_a_bucket_a_step_counts_once_committed():
  """On a bucket orbax writes steps in place: only one with commit_success.txt is complete."""
  root = "memory://model-path-test/run"
  for step, committed in ((2, True), (4, False)):
    paths.write_text(f"{root}/checkpoint_{step}/params/x", "")
    paths.write_text(f"{root}/checkpoint_{step}/metadata/metadata", json.dumps({"step": step}))
    if committed:
      paths.write_text(f"{root}/checkpoint_{step}/{xmtf_format.COMMIT_FILE}", "")
  try:
    opened = open_model_path(root)
    assert (opened.kind, opened.step, opened.steps) == (OUR_RUN, 2, (2, 4))
    assert open_model_path(f"{root}/checkpoint_2").kind == OUR_STEP
    with pytest.raises(ModelPathError):
      open_model_path(f"{root}/checkpoint_4")
    assert xmtf_format.list_steps(root) == [2]
  finally:
    paths.rmtree(root)


# ---- one listing -------------------------------------------------------------------------------

@pytest.fixture
def listings(monkeypatch):
  """Every listing through the paths layer: {path: count}."""
  counts = {}
  for name in ("listdir", "subfolders", "glob"):
    real = getattr(paths, name)

    def spy(path, *args, _real=real, **kwargs):
      counts[str(path)] = counts.get(str(path), 0) + 1
      return _real(path, *args, **kwargs)

    monkeypatch.setattr(paths, name, spy)
  return counts


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A MODEL_DIR with one real checkpoint of a tiny model (vocabulary: the demo's)."""
  config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_encoder_layers=1,
                    num_decoder_layers=2, dropout_rate=0.0)
  model = EncoderDecoderModel(config)
  params = model.init_params(jax.random.key(5, impl="rbg"))
  run = str(tmp_path_factory.mktemp("run"))
  checkpointer = checkpoints.Checkpointer(run, save_period=4, async_save=False)
  metadata = {"t5_config": config.to_dict(), "vocabulary_path": DEMO_VOCAB, "add_eos_to_inputs": True,
              "initial_checkpoint_path": "google/mt5-small", "mixture_or_task_name": "demo",
              "gin_config": "INITIAL_CHECKPOINT_PATH = 'google/other'\n"}
  checkpointer.save(4, params, {"count": jax.numpy.zeros(())}, metadata, [{"position": 4}])
  checkpointer.close()
  return run, model, params


def test_a_run_is_listed_once_for_everything_evaluation_reads(saved_run, listings):
  run, model, params = saved_run
  opened = open_model_path(run)
  loaded_model, loaded = pretrained.load_pretrained(opened)
  assert pretrained.inputs_end_with_eos(opened) is True
  vocabulary = load_vocabulary(opened)
  assert listings[run] == 1
  assert listings[os.path.join(run, "checkpoint_4")] == 1
  assert max(listings.values()) == 1, listings
  assert loaded_model.config == model.config and vocabulary.vocab_size > 0
  tokens, decoder = np.array([[5, 6, 7, 1]], np.int32), np.array([[0, 9, 10]], np.int32)
  np.testing.assert_array_equal(np.asarray(loaded_model.logits(loaded, tokens, decoder)),
                                np.asarray(model.logits(params, tokens, decoder)))


def test_an_hf_folder_is_listed_once(hf_mt5_dir, listings):
  folder, _ = hf_mt5_dir
  opened = open_model_path(folder)
  pretrained.load_pretrained(opened)
  assert pretrained.inputs_end_with_eos(opened) is False
  export_sources.open_source(opened)
  assert listings == {folder: 1}


# ---- what training records, what export reads ---------------------------------------------------

def test_checkpoint_metadata_records_the_initial_checkpoint_path():
  config = loop.TrainConfig(model_dir="/tmp/r", mixture_or_task_name="demo",
                            task_feature_lengths={"inputs": 8, "targets": 4}, train_steps=1,
                            initial_checkpoint_path="gs://bucket/mt5-small")
  metadata = loop.checkpoint_metadata(config, T5Config(), TaskFeatures("/v/spiece.model", False),
                                      optim.OptimizerConfig())
  assert metadata["initial_checkpoint_path"] == "gs://bucket/mt5-small"
  scratch = loop.checkpoint_metadata(dataclasses.replace(config, initial_checkpoint_path=None),
                                     T5Config(), TaskFeatures(None, False), optim.OptimizerConfig())
  assert "initial_checkpoint_path" in scratch and scratch["initial_checkpoint_path"] is None


def test_the_card_base_model_is_what_the_metadata_recorded_else_the_old_gin_text(saved_run):
  run, _, _ = saved_run
  source = export_sources.open_source(run)
  assert isinstance(source, export_sources.CheckpointParams)
  assert source.card_facts() == {"base_model": "google/mt5-small", "mixture": "demo", "steps": 4}
  # Written before the key existed: the run's operative gin config.
  old = {"gin_config": "TrainConfig.initial_checkpoint_path = 'gs://b/mt5-xl'\n"
                       "MIXTURE_OR_TASK_NAME = 'xp3'\n"}
  assert xmtf_format.recorded(old, "initial_checkpoint_path", "TrainConfig.initial_checkpoint_path",
                              "INITIAL_CHECKPOINT_PATH") == "gs://b/mt5-xl"
  assert xmtf_format.recorded(old, "mixture_or_task_name", "MIXTURE_OR_TASK_NAME") == "xp3"
  # Recorded as None (trained from scratch): no guess from the gin text.
  assert xmtf_format.recorded({**old, "initial_checkpoint_path": None}, "initial_checkpoint_path",
                              "TrainConfig.initial_checkpoint_path") is None


def test_export_tensors_equal_the_restored_tree(saved_run):
  """Both ways of reading our format (whole tree onto devices, one tensor into host memory)."""
  run, _, params = saved_run
  source = export_sources.open_source(run)
  source.check()
  for path in (("decoder", "layers_1", "mlp", "wo", "kernel"), ("token_embedder", "embedding")):
    want = params
    for key in path:
      want = want[key]
    np.testing.assert_array_equal(source.read(path), np.asarray(want))


LOAD_WITHOUT_DATA_STACK = textwrap.dedent("""
    import sys
    import xmtf_jax
    for path in sys.argv[1:]:
      model, params = xmtf_jax.load_pretrained(path)
      assert params["decoder"]["logits_dense"]["kernel"].shape[0] == model.config.d_model
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("seqio", "tensorflow"))
    print("HEAVY", heavy)
""")


def test_load_pretrained_imports_neither_seqio_nor_tensorflow(hf_mt5_dir, saved_run):
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_DATA_STACK, hf_mt5_dir[0], saved_run[0]],
                        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "HEAVY []" in proc.stdout, proc.stdout
