"""Shared test setup: a simulated 8-device TPU slice on the CPU, float32 matmuls, no downloads.

Fixtures that several test files need (tiny vocabulary, tiny HF models, xP3-layout folders) live here
and are built once per session.
"""
import atexit
import os
import shutil
import sys
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One XLA compilation cache per test session, shared with the subprocesses the tests start: many tests
# compile the same tiny programs (train steps, decoders) again, in-process and in `python -m` runs.
# It starts empty each session, so no test depends on an earlier run.
_JIT_CACHE = tempfile.mkdtemp(prefix="xmtf_jax_test_jit_cache_")
atexit.register(shutil.rmtree, _JIT_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JIT_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# ------------------------------------------------------------------------------------------------------
# Random-weight HF mT5 models (network / hf / decoding / export tests).
import pytest  # noqa: E402

# heads * d_kv (4 * 12 = 48) != d_model (32); unequal depths; few buckets and a short max distance so
# that short test sequences reach the log-spaced and the clipped buckets.
TINY_HF_MT5 = dict(vocab_size=128, d_model=32, d_kv=12, d_ff=48, num_heads=4, num_layers=2,
                   num_decoder_layers=3, relative_attention_num_buckets=8,
                   relative_attention_max_distance=20, dropout_rate=0.0)


def build_random_hf_mt5(seed: int = 0, **overrides):
  """An HF MT5ForConditionalGeneration with random weights everywhere (layer norms too) and an LM head
  distinct from the input embedding (transformers 5.x ties them on construction)."""
  import torch
  from transformers import MT5Config, MT5ForConditionalGeneration
  torch.manual_seed(seed)
  config = MT5Config(**{**TINY_HF_MT5, **overrides})
  model = MT5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name == "shared.weight":
        p.copy_(torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.ndim == 2 else 0.5))
    model.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model) * 0.2)
  assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  return model


@pytest.fixture(scope="session")
def hf_mt5_dir(tmp_path_factory):
  """(folder, torch model): a random untied tiny mT5 saved by transformers (model.safetensors)."""
  model = build_random_hf_mt5()
  folder = tmp_path_factory.mktemp("hf_mt5")
  model.save_pretrained(folder)
  return str(folder), model


# ---- data fixtures (xP3-family layouts, a tiny SentencePiece model); see tests/data_fixtures.py ----
@pytest.fixture(scope="session")
def data_spm_path(tmp_path_factory):
  """A tiny lossless SentencePiece model (pad 0, eos 1, unk 2, byte fallback) trained on fixture text."""
  from tests import data_fixtures
  return data_fixtures.train_tiny_spm(str(tmp_path_factory.mktemp("spm") / "tiny.model"))


@pytest.fixture(scope="session")
def bpe_tokenizer_path(tmp_path_factory):
  """A tiny BLOOM-style byte-level BPE tokenizer.json (unk/bos/eos/pad 0..3, ~300 ids; in an HF
  tokenizer folder); built offline by tests/bpe_fixture.py."""
  from tests import bpe_fixture
  return bpe_fixture.write_tokenizer_folder(str(tmp_path_factory.mktemp("bpe_tokenizer")))


def _register_fixture(tmp_path_factory, data_spm_path, make, variant, name):
  import mixtures
  root = str(tmp_path_factory.mktemp(name))
  expected = make(root)
  config = mixtures.DataConfig(vocabulary_path=data_spm_path, shuffle_buffer_size=64,
                               line_counts_cache_dir=str(tmp_path_factory.mktemp("counts")))
  info = mixtures.register_variant(variant, config, data_dir=root, name=name, overwrite=True)
  return {"root": root, "expected": expected, "info": info, "name": name, "config": config}


@pytest.fixture(scope="session")
def xp3_fixture(tmp_path_factory, data_spm_path):
  """An xP3-layout folder (en per-prompt + merged, ar/zh/hi per-prompt, code merged) as mixture `fx_xp3`."""
  from tests import data_fixtures
  return _register_fixture(tmp_path_factory, data_spm_path, data_fixtures.make_xp3, "xp3", "fx_xp3")


@pytest.fixture(scope="session")
def xp3x_fixture(tmp_path_factory, data_spm_path):
  from tests import data_fixtures
  return _register_fixture(tmp_path_factory, data_spm_path, data_fixtures.make_xp3x, "xp3x", "fx_xp3x")


@pytest.fixture(scope="session")
def p3_fixture(tmp_path_factory, data_spm_path):
  from tests import data_fixtures
  return _register_fixture(tmp_path_factory, data_spm_path, data_fixtures.make_p3, "p3", "fx_p3")


# ---- a trained tiny run (export and evaluation tests) -------------------------------------------------
@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory):
  """(MODEL_DIR, T5Config): 3 training steps of a tiny random mT5 (vocab 2048 = the bundled demo
  SentencePiece model, padded) on the demo mixture, checkpoints at steps 2 and 3, on a 4x2 mesh."""
  from xmtf_jax.parallel import partitioning
  from xmtf_jax.train import loop as training
  from xmtf_jax.model.config import T5Config
  config = T5Config(vocab_size=2048, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=2, relative_attention_num_buckets=8,
                    relative_attention_max_distance=20, dropout_rate=0.0)
  model_dir = str(tmp_path_factory.mktemp("tiny_run"))
  run = training.TrainConfig(model_dir=model_dir, mixture_or_task_name="demo",
                             task_feature_lengths={"inputs": 32, "targets": 16}, train_steps=3,
                             batch_size=8, checkpoint_period=2, eval_period=1000, eval_batches=0,
                             async_checkpointing=False, log_period=1)
  result = training.train(run, config, partitioning.PartitioningConfig(num_partitions=2))
  assert result.status == "finished" and result.step == 3
  return model_dir, config


# ---- a local Google Cloud Storage (tests/gcs_emulator.py) -----------------------------------------------
@pytest.fixture(scope="session")
def gcs_bucket():
  """gs://BUCKET of a gcp-storage-emulator running in this process for the session; os.environ points
  this process and its subprocesses at it (the variables: tests/gcs_emulator.py, docs/gcs.md)."""
  from tests import gcs_emulator
  with gcs_emulator.Emulator() as url:
    yield f"gs://{gcs_emulator.BUCKET}"
