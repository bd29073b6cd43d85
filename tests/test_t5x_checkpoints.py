"""t5x checkpoints as model paths: each format written as t5x writes it (tests/t5x_fixtures.py) from a
random tiny HF mT5 whose weights are bfloat16-exact (so bfloat16 storage loses nothing), loaded with
`load_pretrained`, compared with transformers' logits; exported and reloaded in transformers."""
import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch

import xmtf_jax
from tests import t5x_fixtures
from tests.conftest import build_random_hf_mt5
from xmtf_jax import paths
from xmtf_jax.checkpoint import T5X, open_model_path
from xmtf_jax.errors import UserError
from xmtf_jax.hf import reader as hf_reader

TOL = 1e-4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """(HF model, t5x target tree, our config, token batch, HF logits, root folder)."""
  hf = build_random_hf_mt5(relative_attention_max_distance=128, vocab_size=256)
  with torch.no_grad():  # bfloat16-exact weights: every storage dtype then holds them exactly
    for p in hf.parameters():
      p.copy_(p.to(torch.bfloat16).to(torch.float32))
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  config = hf_reader.families.config_from_hf(hf.config.to_dict())
  params = hf_reader.params_from_hf(state, config)
  rng = np.random.default_rng(0)
  enc = rng.integers(2, config.vocab_size, (2, 9)).astype(np.int32)
  dec = np.concatenate([np.zeros((2, 1), np.int32), rng.integers(2, config.vocab_size, (2, 6))], 1)
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(enc, dtype=torch.long),
              decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  return dict(hf=hf, tree=t5x_fixtures.t5x_tree(params), config=config, enc=enc, dec=dec, want=want,
              root=tmp_path_factory.mktemp("t5x"))


def _check_logits(base, path, **overrides):
  model, params = xmtf_jax.load_pretrained(path, **overrides)
  got = np.asarray(model.logits(params, base["enc"], base["dec"]))
  np.testing.assert_allclose(got, base["want"], atol=TOL, rtol=0)
  return model, params


LEGACY = {
    "v3_inline_float32": dict(version=3, inline=True),
    "v3_inline_bfloat16": dict(version=3, inline=True, dtype="bfloat16"),
    "v0_inline": dict(version=0, inline=True),
    "v3_tensorstore_gzip": dict(version=3, inline=False, compressor="gzip"),
    "v3_tensorstore_zstd_bfloat16_path_gcs": dict(version=3, inline=False, compressor="zstd",
                                                 dtype="bfloat16", spec_style="path"),
    "v2_tensorstore_uint16": dict(version=2, inline=False, dtype="bfloat16"),
}


@pytest.mark.parametrize("variant", sorted(LEGACY))
def test_legacy_checkpoints_give_hf_logits(base, variant):
  model_dir = os.path.join(base["root"], variant)
  t5x_fixtures.write_legacy(os.path.join(model_dir, "checkpoint_1000"), base["tree"], **LEGACY[variant])
  os.makedirs(os.path.join(model_dir, "checkpoint_2000.tmp-1700000000"))  # an unfinished save: skipped
  opened = open_model_path(model_dir)
  assert (opened.kind, opened.step) == (T5X, 1000)
  _check_logits(base, model_dir)
  # The step directory and its msgpack file name the same checkpoint.
  for path in (opened.step_dir, os.path.join(opened.step_dir, "checkpoint")):
    assert open_model_path(path).step_dir == opened.step_dir
  assert xmtf_jax.train.pretrained.read_config(opened.step_dir) == base["config"].replace(dropout_rate=0.1)


@pytest.mark.parametrize("variant", ["v3_tensorstore_zstd_bfloat16_path_gcs", "v2_tensorstore_uint16",
                                     "v3_inline_bfloat16"])
def test_read_as_float32_chunk_by_chunk(base, variant, tmp_path):
  """read(dtype=float32) (tensorstore converting each chunk into an aligned output, what load_params
  uses to keep one copy of an array in memory) gives the stored values, whole or a slice."""
  step_dir = os.path.join(tmp_path, "checkpoint_1")
  t5x_fixtures.write_legacy(step_dir, base["tree"], **LEGACY[variant])
  ckpt = open_model_path(step_dir).t5x()
  name = "encoder/layers_0/mlp/wi_0/kernel"
  stored = ckpt.read(name)
  assert stored.dtype == ml_dtypes.bfloat16
  for index in ((), (slice(1, 5), slice(3, 40))):
    got = ckpt.read(name, index, dtype=np.float32)
    assert got.dtype == np.float32 and got.ctypes.data % 64 == 0
    np.testing.assert_array_equal(got, stored[index].astype(np.float32))


def test_chunked_inline_arrays(base, monkeypatch):
  import flax.serialization
  monkeypatch.setattr(flax.serialization, "MAX_CHUNK_SIZE", 1000)  # flax chunks arrays over this size
  step_dir = os.path.join(base["root"], "chunked", "checkpoint_5")
  t5x_fixtures.write_legacy(step_dir, base["tree"])
  assert b"__msgpack_chunked_array__" in open(os.path.join(step_dir, "checkpoint"), "rb").read()
  _check_logits(base, step_dir)


def test_orbax_ocdbt_checkpoint_gives_hf_logits(base):
  model_dir = os.path.join(base["root"], "orbax")
  t5x_fixtures.write_orbax(os.path.join(model_dir, "checkpoint_3"), base["tree"])
  assert open_model_path(model_dir).kind == T5X
  _check_logits(base, model_dir)


@pytest.mark.parametrize("four_d, axis", [(True, 1), (False, 1), (True, 0)],
                         ids=["scalable_t5_4d", "flaxformer_3d", "scalable_t5_4d_param_scan_axis_0"])
def test_scanned_checkpoints_give_hf_logits(base, four_d, axis):
  """The layer axis at config.gin's param_scan_axis (1 in t5x's gin files)."""
  config = base["config"]
  scanned = t5x_fixtures.scanned_tree(
      base["tree"], {"encoder": config.num_encoder_layers, "decoder": config.num_decoder_layers},
      four_d, config.num_heads, axis)
  model_dir = os.path.join(base["root"], f"scanned_{four_d}_{axis}")
  t5x_fixtures.write_legacy(os.path.join(model_dir, "checkpoint_1"), scanned, inline=False,
                            compressor="zstd")
  with open(os.path.join(model_dir, "config.gin"), "w") as f:
    f.write(t5x_fixtures.GIN.format(axis=axis, layers=config.num_encoder_layers, d_model=config.d_model))
  model, params = _check_logits(base, model_dir)
  assert model.config.dropout_rate == 0.0  # from config.gin
  assert not model.config.relative_attention_per_layer  # all layers' tables equal: mT5's shared one
  # Into our scanned layout too.
  scanned_model, scanned_params = _check_logits(base, model_dir, scan_layers=True)
  assert scanned_params["encoder"]["layers"]["mlp"]["wo"]["kernel"].shape[0] == config.num_encoder_layers


@pytest.fixture(scope="module")
def per_layer(base):
  """(HF UMT5 model with every block's own table, its t5x tree, HF logits): the base model's weights."""
  from transformers import UMT5Config, UMT5ForConditionalGeneration
  from xmtf_jax.hf import verify as hf_verify
  hf_config = {k: v for k, v in base["hf"].config.to_dict().items() if k != "model_type"}
  umt5 = UMT5ForConditionalGeneration(UMT5Config(**{**hf_config, "tie_word_embeddings": False})).eval()
  umt5.load_state_dict(base["hf"].state_dict(), strict=False)
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in umt5.named_parameters():
      if "relative_attention_bias" in name:
        p.copy_(torch.randn_like(p).to(torch.bfloat16).to(torch.float32))
    want = umt5(input_ids=torch.tensor(base["enc"], dtype=torch.long),
                decoder_input_ids=torch.tensor(base["dec"], dtype=torch.long)).logits.numpy()
  config = hf_reader.families.config_from_hf(umt5.config.to_dict())
  assert config.relative_attention_per_layer
  params = hf_reader.params_from_hf({k: v.numpy() for k, v in umt5.state_dict().items()}, config)
  return dict(hf=umt5, tree=t5x_fixtures.t5x_tree(params), want=want / hf_verify.hf_logit_scale(umt5))


@pytest.mark.parametrize("scanned", [True, False], ids=["scalable_t5_scanned", "scalable_t5_unscanned"])
def test_per_layer_tables_load_into_per_layer_configs(base, per_layer, scanned):
  config = base["config"]
  tree = per_layer["tree"]
  if scanned:
    tree = t5x_fixtures.scanned_tree(tree, {"encoder": config.num_encoder_layers,
                                            "decoder": config.num_decoder_layers}, True, config.num_heads)
  step_dir = os.path.join(base["root"], f"per_layer_{scanned}", "checkpoint_1")
  t5x_fixtures.write_legacy(step_dir, tree, inline=False)
  for scan_layers in (False, True):
    model, params = xmtf_jax.load_pretrained(step_dir, scan_layers=scan_layers)
    assert model.config.relative_attention_per_layer
    got = np.asarray(model.logits(params, base["enc"], base["dec"]))
    np.testing.assert_allclose(got, per_layer["want"], atol=TOL, rtol=0)
  want = per_layer["hf"].state_dict()["decoder.block.2.layer.0.SelfAttention.relative_attention_bias.weight"]
  np.testing.assert_array_equal(np.asarray(params["decoder"]["layers"]["relpos_bias"]["embedding"][2]),
                                want.numpy())
  with pytest.raises(UserError, match="decoder's layers have different relative position tables.*"
                                      "relative_attention_per_layer=True"):
    xmtf_jax.load_pretrained(step_dir, relative_attention_per_layer=False)


def test_export_hf_of_per_layer_tables_is_a_umt5_folder(base, per_layer, tmp_path):
  from transformers import UMT5ForConditionalGeneration
  from tests.test_hf_export import train_spm
  from xmtf_jax.hf import export, sources
  config = base["config"]
  tree = t5x_fixtures.scanned_tree(per_layer["tree"], {"encoder": config.num_encoder_layers,
                                                       "decoder": config.num_decoder_layers}, False,
                                   config.num_heads)
  t5x_fixtures.write_orbax(str(tmp_path / "run" / "checkpoint_2"), tree)
  export.export_source(sources.open_source(str(tmp_path / "run")), train_spm(tmp_path / "spiece.model"),
                       str(tmp_path / "hf"), verify=False)
  with open(tmp_path / "hf" / "config.json") as f:
    assert json.load(f)["architectures"] == ["UMT5ForConditionalGeneration"]
  exported = UMT5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
  with torch.no_grad():
    got = exported(input_ids=torch.tensor(base["enc"], dtype=torch.long),
                   decoder_input_ids=torch.tensor(base["dec"], dtype=torch.long)).logits.numpy()
  from xmtf_jax.hf import verify as hf_verify
  np.testing.assert_allclose(got / hf_verify.hf_logit_scale(exported), per_layer["want"], atol=TOL, rtol=0)


def test_without_logits_dense_the_head_is_the_scaled_embedding(base):
  decoder = {k: v for k, v in base["tree"]["decoder"].items() if k != "logits_dense"}
  tree = {**base["tree"], "decoder": decoder}
  step_dir = os.path.join(base["root"], "tied", "checkpoint_1")
  t5x_fixtures.write_legacy(step_dir, tree)
  _, params = xmtf_jax.load_pretrained(step_dir)
  embedding = base["tree"]["token_embedder"]["embedding"]
  np.testing.assert_allclose(np.asarray(params["decoder"]["logits_dense"]["kernel"]),
                             embedding.T / np.sqrt(embedding.shape[1]), rtol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda t: t["encoder"]["layers_0"]["mlp"].update(wi={"kernel": np.zeros((2, 2), np.float32)}),
     "T5 v1.0 MLP"),
    (lambda t: t["encoder"]["layers_0"]["attention"].update(
        qkv_fused={"kernel": np.zeros((2, 2), np.float32)}),
     "fused flaxformer kernels.*qkv_fused"),
    (lambda t: t["encoder"]["layers_1"]["mlp"]["wo"].update(kernel=np.zeros((3, 3), np.float32)),
     "encoder/layers_1/mlp/wo/kernel: stored \\[3, 3\\]"),
])
def test_unsupported_or_damaged_checkpoints_are_named(base, change, message, tmp_path):
  tree = json.loads(json.dumps(base["tree"], default=lambda a: a.tolist()))
  tree = _arrays(tree)
  change(tree)
  t5x_fixtures.write_legacy(str(tmp_path / "checkpoint_1"), tree)
  with pytest.raises(UserError, match=message):
    xmtf_jax.load_pretrained(str(tmp_path / "checkpoint_1"))


def _arrays(node):
  return {k: _arrays(v) if isinstance(v, dict) else np.asarray(v, np.float32) for k, v in node.items()}


def test_export_hf_of_a_t5x_checkpoint_loads_in_transformers(base, tmp_path):
  from transformers import MT5ForConditionalGeneration
  from tests.test_hf_export import train_spm
  from xmtf_jax.hf import export, sources
  model_dir = os.path.join(base["root"], "orbax")
  if not os.path.exists(model_dir):
    t5x_fixtures.write_orbax(os.path.join(model_dir, "checkpoint_3"), base["tree"])
  source = sources.open_source(model_dir)
  assert isinstance(source, sources.T5xParams)
  export.export_source(source, train_spm(tmp_path / "spiece.model"), str(tmp_path / "hf"), verify=False)
  exported = MT5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
  with torch.no_grad():
    got = exported(input_ids=torch.tensor(base["enc"], dtype=torch.long),
                   decoder_input_ids=torch.tensor(base["dec"], dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(got, base["want"], atol=TOL, rtol=0)


def test_read_from_the_gcs_emulator(base, gcs_bucket, tmp_path):
  local = tmp_path / "t5x_run"
  t5x_fixtures.write_legacy(str(local / "checkpoint_9"), base["tree"], inline=False, compressor="zstd",
                            dtype="bfloat16")
  t5x_fixtures.write_orbax(str(local / "checkpoint_10"), base["tree"])
  remote = f"{gcs_bucket}/t5x_run"
  paths.upload(str(local), remote)
  for step in (9, 10):
    opened = open_model_path(remote, step)
    assert (opened.kind, opened.step) == (T5X, step)
    _check_logits(base, opened)


def test_loaded_onto_a_mesh_with_the_model_shardings(base):
  """As training's INITIAL_CHECKPOINT_PATH loads it: onto the mesh, scanned, each array sharded."""
  import jax
  from xmtf_jax.parallel import partitioning
  from xmtf_jax.train import pretrained
  step_dir = os.path.join(base["root"], "mesh", "checkpoint_4")
  t5x_fixtures.write_legacy(step_dir, base["tree"], inline=False, compressor="zstd", dtype="bfloat16")
  mesh = partitioning.make_mesh(num_partitions=2)
  model, params = xmtf_jax.load_pretrained(step_dir, mesh, scan_layers=True)
  shardings = model.param_shardings()
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert got.sharding.is_equivalent_to(want, got.ndim)
  config = pretrained.read_config(step_dir)
  assert config.num_encoder_layers == base["config"].num_encoder_layers
  assert not config.relative_attention_per_layer
  got = np.asarray(model.logits(params, base["enc"], base["dec"]))
  np.testing.assert_allclose(got, base["want"], atol=TOL, rtol=0)


def test_the_vocabulary_comes_from_the_runs_config_gin(base, tmp_path):
  """evaluate/infer with a t5x MODEL_PATH find the SentencePiece model t5x's config.gin names."""
  from tests.test_hf_export import train_spm
  from xmtf_jax.train.vocabulary import load_vocabulary
  spm = train_spm(tmp_path / "mc4.model")
  from xmtf_jax.errors import MissingPathError
  t5x_fixtures.write_legacy(str(tmp_path / "run" / "checkpoint_1"), base["tree"])
  with pytest.raises(MissingPathError, match="no vocabulary"):
    load_vocabulary(str(tmp_path / "run"))
  with open(tmp_path / "run" / "config.gin", "w") as f:
    config = base["config"]
    f.write(t5x_fixtures.GIN.format(axis=1, layers=config.num_encoder_layers, d_model=config.d_model)
            + f"seqio.SentencePieceVocabulary.sentencepiece_model_file = '{spm}'\n")
  vocabulary = load_vocabulary(str(tmp_path / "run"))
  text = "The quick brown fox"
  assert vocabulary.encode(text) == load_vocabulary(None, str(spm)).encode(text)
  assert str(spm) in open_model_path(str(tmp_path / "run")).vocabulary_candidates()


def test_each_host_reads_only_its_part(base):
  """Two processes, a model axis spanning both: each reads about half of the sharded arrays from
  the tensorstore checkpoint (q/k/v by heads out of t5x's joined [embed, heads*kv]) and every shard
  equals the whole array's part (tests/t5x_multiprocess_worker.py)."""
  import subprocess
  import sys
  from tests.test_multiprocess import free_port
  step_dir = os.path.join(base["root"], "hosts", "checkpoint_1")
  t5x_fixtures.write_legacy(step_dir, base["tree"], inline=False)
  worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "t5x_multiprocess_worker.py")
  port = str(free_port())
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  workers = [subprocess.Popen([sys.executable, worker, str(i), port, step_dir], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
  outputs = []
  for process in workers:
    try:
      outputs.append(process.communicate(timeout=180)[0])
    except subprocess.TimeoutExpired:
      for w in workers:
        w.kill()
      raise
  for i, (process, output) in enumerate(zip(workers, outputs)):
    assert process.returncode == 0 and f"process {i}: OK" in output, output[-3000:]


def test_training_init_takes_the_gin_models_table_layout(base):
  """INITIAL_CHECKPOINT_PATH of a t5x checkpoint whose layers' tables are equal (mT5's one table)
  loads into a gin model with per-layer tables too: each layer gets the same table, same logits."""
  import types
  from xmtf_jax.model.family import model_for
  from xmtf_jax.train import loop
  step_dir = os.path.join(base["root"], "init_layout", "checkpoint_2")
  t5x_fixtures.write_legacy(step_dir, base["tree"])
  config = base["config"].replace(relative_attention_per_layer=True)
  model = model_for(config)
  params = loop.initial_params(types.SimpleNamespace(initial_checkpoint_path=step_dir), model)
  tables = [np.asarray(params["encoder"][f"layers_{i}"]["relpos_bias"]["embedding"])
            for i in range(config.num_encoder_layers)]
  assert all(np.array_equal(t, tables[0]) for t in tables) and "relpos_bias" not in params["encoder"]
  got = np.asarray(model.logits(params, base["enc"], base["dec"]))
  np.testing.assert_allclose(got, base["want"], atol=TOL, rtol=0)
