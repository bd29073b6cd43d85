"""Mesh TensorFlow checkpoints (the original mT5 release) as model paths: a checkpoint written with
TensorFlow's Saver under Mesh TF's names and layouts (bfloat16 variables, Adafactor slots, global_step,
operative_config.gin) from a random HF MT5 loads with transformers' logits, starts a training run and
exports to a folder transformers loads."""
import os
import re
import shutil

import numpy as np
import pytest
import torch

from xmtf_jax.checkpoint import open_model_path
from xmtf_jax.checkpoint.model_path import MESH_TF
from xmtf_jax.cli import export_hf
from xmtf_jax.errors import UserError
from xmtf_jax.train import pretrained

from tests.conftest import build_random_hf_mt5

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_VOCAB = os.path.join(REPO_ROOT, "data", "demo", "sentencepiece.model")
STEP = 1000

GIN = """import mesh_tensorflow.transformer.transformer_layers

# Macros:
# ==============================================================================
d_ff = 48
d_kv = 12
d_model = 32
dropout_rate = 0.0
num_heads = 4
num_layers = 3

# Parameters for DenseReluDense:
# ==============================================================================
DenseReluDense.activation = ['gelu', 'linear']
DenseReluDense.hidden_size = %d_ff

# Parameters for encoder/make_layer_stack:
# ==============================================================================
encoder/make_layer_stack.layers = \\
    [@mesh_tensorflow.transformer.transformer_layers.SelfAttention,
     @mesh_tensorflow.transformer.transformer_layers.DenseReluDense]
encoder/make_layer_stack.num_layers = 2

# Parameters for decoder/make_layer_stack:
# ==============================================================================
decoder/make_layer_stack.num_layers = %num_layers

# Parameters for SelfAttention:
# ==============================================================================
SelfAttention.key_value_size = %d_kv
SelfAttention.num_heads = %num_heads
SelfAttention.relative_attention_num_buckets = 8

# Parameters for SentencePieceVocabulary:
# ==============================================================================
SentencePieceVocabulary.sentencepiece_model_file = \
    'gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model'

# Parameters for sublayer_rms_norm:
# ==============================================================================
sublayer_rms_norm.epsilon = 1e-06
"""
MC4_VOCAB = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


def mesh_tf_name(hf_name: str) -> str:
  """HF MT5 state-dict name -> Mesh TF variable name (facts: t5x_checkpoints.md §5)."""
  if hf_name == "shared.weight":
    return "shared/embedding"
  if hf_name == "lm_head.weight":
    return "decoder/logits/kernel"
  name = re.sub(r"block\.(\d+)", lambda m: f"block_{int(m.group(1)):03d}", hf_name)
  name = re.sub(r"layer\.(\d+)", lambda m: f"layer_{int(m.group(1)):03d}", name)
  name = name.replace("final_layer_norm.weight", "rms_norm.scale").replace("layer_norm.weight",
                                                                           "rms_norm.scale")
  name = re.sub(r"DenseReluDense\.(\w+)\.weight", r"DenseReluDense.\1.kernel", name)
  name = re.sub(r"(SelfAttention|EncDecAttention)\.(\w+)\.weight", r"\1.\2", name)
  return name.replace(".", "/")


def mesh_tf_variables(model) -> dict:
  """{Mesh TF name: float32 array}: every kernel [in, out] (HF's Linear transposed), the relative
  attention bias [heads, buckets], the embedding as it is."""
  out = {}
  for name, tensor in model.state_dict().items():
    if "embed_tokens" in name:
      continue
    array = tensor.numpy()
    out[mesh_tf_name(name)] = array if name == "shared.weight" else np.ascontiguousarray(array.T)
  return out


def write_mesh_tf(folder, variables: dict, step=STEP, gin=GIN):
  """A TensorFlow (tf.compat.v1 Saver) checkpoint of bfloat16 variables, with Adafactor slots and the
  global step as the mT5 release has them, and its operative_config.gin."""
  import tensorflow as tf
  os.makedirs(folder, exist_ok=True)
  graph = tf.Graph()
  with graph.as_default():
    for name, value in variables.items():
      tf.compat.v1.Variable(tf.cast(tf.constant(value, tf.float32), tf.bfloat16), name=name)
      if value.ndim == 2:
        tf.compat.v1.Variable(tf.zeros(value.shape[:1]), name=name + "_slot_vr")
        tf.compat.v1.Variable(tf.zeros(value.shape[1:]), name=name + "_slot_vc")
      else:
        tf.compat.v1.Variable(tf.zeros(value.shape), name=name + "_slot_v")
    tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      saver.save(session, os.path.join(folder, "model.ckpt"), global_step=step)
  if gin:
    with open(os.path.join(folder, "operative_config.gin"), "w") as f:
      f.write(gin)


@pytest.fixture(scope="module")
def mesh_tf(tmp_path_factory):
  """(folder, the HF model with its weights rounded to bfloat16 as the checkpoint stores them)."""
  model = build_random_hf_mt5(seed=7, vocab_size=2048, relative_attention_max_distance=128)  # Mesh TF's
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(p.to(torch.bfloat16).to(torch.float32))
  folder = str(tmp_path_factory.mktemp("mt5_mesh_tf"))
  write_mesh_tf(folder, mesh_tf_variables(model))
  shutil.copy(DEMO_VOCAB, os.path.join(folder, "sentencepiece.model"))
  return folder, model


ENCODER = np.array([[5, 9, 17, 3, 0], [4, 100, 2000, 0, 0]], np.int32)
DECODER = np.array([[0, 7, 8], [0, 1200, 1]], np.int32)


def hf_logits(model):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ENCODER).long(), attention_mask=torch.tensor(ENCODER > 0).long(),
                 decoder_input_ids=torch.tensor(DECODER).long()).logits.numpy()


def test_the_folder_and_the_prefix_open_as_a_mesh_tf_checkpoint(mesh_tf):
  folder, _ = mesh_tf
  opened = open_model_path(folder)
  assert (opened.kind, opened.step, opened.step_dir) == (MESH_TF, STEP, os.path.join(folder, "model.ckpt-1000"))
  by_prefix = open_model_path(os.path.join(folder, "model.ckpt-1000"))
  assert (by_prefix.kind, by_prefix.path, by_prefix.step_dir) == (MESH_TF, folder, opened.step_dir)
  assert opened.vocabulary_candidates() == [os.path.join(folder, "sentencepiece.model"), MC4_VOCAB]
  with pytest.raises(FileNotFoundError, match=r"--step=5: .* has no model.ckpt-5; its checkpoints: "
                                              r"model.ckpt-1000"):
    open_model_path(folder, step=5)


def test_config_comes_from_the_operative_config_or_from_the_shapes(mesh_tf, tmp_path):
  folder, model = mesh_tf
  config = pretrained.read_config(folder)
  hf = model.config
  assert (config.vocab_size, config.d_model, config.d_kv, config.d_ff, config.num_heads) == (
      hf.vocab_size, hf.d_model, hf.d_kv, hf.d_ff, hf.num_heads)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  assert config.relative_attention_num_buckets == 8 and config.dropout_rate == 0.0  # from the gin
  epsilon = tmp_path / "epsilon"
  shutil.copytree(folder, epsilon)
  (epsilon / "operative_config.gin").write_text(GIN.replace("epsilon = 1e-06", "epsilon = 1e-05"))
  assert pretrained.read_config(str(epsilon)).layer_norm_epsilon == 1e-05
  no_gin = tmp_path / "no_gin"
  shutil.copytree(folder, no_gin, ignore=shutil.ignore_patterns("operative_config.gin"))
  from_shapes = pretrained.read_config(str(no_gin))
  assert from_shapes == config.__class__(**{**config.__dict__, "dropout_rate": from_shapes.dropout_rate})


def test_logits_equal_those_of_transformers(mesh_tf):
  folder, model = mesh_tf
  ours, params = pretrained.load_pretrained(folder)
  np.testing.assert_allclose(np.asarray(ours.logits(params, ENCODER, DECODER)), hf_logits(model),
                             atol=1e-4, rtol=1e-4)
  scanned, stacked = pretrained.load_pretrained(folder, scan_layers=True)
  np.testing.assert_allclose(np.asarray(scanned.logits(stacked, ENCODER, DECODER)), hf_logits(model),
                             atol=1e-4, rtol=1e-4)


def test_export_hf_of_it_loads_in_transformers_with_equal_logits(mesh_tf, tmp_path, capsys):
  folder, model = mesh_tf
  out = str(tmp_path / "exported")
  assert export_hf.main([f"--checkpoint_dir={folder}", f"--output_dir={out}"]) == 0
  assert "exported" in capsys.readouterr().out
  from transformers import MT5ForConditionalGeneration
  reloaded = MT5ForConditionalGeneration.from_pretrained(out).eval()
  assert reloaded.config.relative_attention_max_distance == 128
  np.testing.assert_allclose(hf_logits(reloaded), hf_logits(model), atol=1e-5, rtol=1e-5)
  assert os.path.exists(os.path.join(out, "spiece.model"))


def test_a_gin_that_disagrees_with_the_variables_is_named(mesh_tf, tmp_path):
  folder, _ = mesh_tf
  copy = tmp_path / "wrong_gin"
  shutil.copytree(folder, copy)
  (copy / "operative_config.gin").write_text(GIN.replace("num_heads = 4", "num_heads = 8"))
  with pytest.raises(UserError, match=r"operative_config.gin does not match the checkpoint beside it: "
                                      r"num_heads = 8 \(the variables give 4\)"):
    pretrained.read_config(str(copy))


def test_a_variable_without_a_place_is_named(mesh_tf, tmp_path):
  _, model = mesh_tf
  variables = mesh_tf_variables(model)
  per_layer = "encoder/block_001/layer_000/SelfAttention/relative_attention_bias"
  variables[per_layer] = variables["encoder/block_000/layer_000/SelfAttention/relative_attention_bias"]
  write_mesh_tf(str(tmp_path / "per_layer"), variables, gin=None)
  with pytest.raises(UserError, match=f"variables xmtf_jax has no place for: {per_layer}"):
    pretrained.load_pretrained(str(tmp_path / "per_layer"))


def test_training_starts_from_it_with_its_parameters_placed_on_the_mesh(mesh_tf):
  import jax
  from xmtf_jax.model import family
  from xmtf_jax.parallel import partitioning
  from xmtf_jax.train import loop as training
  folder, _ = mesh_tf
  model = family.model_for(pretrained.read_config(folder), partitioning.make_mesh(2))
  expected = jax.device_get(pretrained.load_params(folder)[1])
  settings = training.TrainConfig(model_dir="unused", mixture_or_task_name="demo_en",
                                  task_feature_lengths={"inputs": 32, "targets": 16}, train_steps=1,
                                  initial_checkpoint_path=os.path.join(folder, f"model.ckpt-{STEP}"))
  params = training.initial_params(settings, model)
  assert params["decoder"]["logits_dense"]["kernel"].sharding == \
      model.param_shardings()["decoder"]["logits_dense"]["kernel"]
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
