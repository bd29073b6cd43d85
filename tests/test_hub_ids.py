"""HF Hub ids as model paths: an id resolves through huggingface_hub into its cache (here a cache
written beforehand in huggingface_hub's layout, read with HF_HUB_OFFLINE=1: no network) and is then an
HF folder for load_pretrained, the export and training init; an id it cannot have is one paragraph."""
import os
import shutil

import numpy as np
import pytest
import torch

import xmtf_jax
from xmtf_jax.checkpoint import HF_FOLDER, ModelPathError, hub_ids, open_model_path
from xmtf_jax.cli import export_hf
from xmtf_jax.train import pretrained

from tests.conftest import build_random_hf_mt5
from tests.test_bloom_hf import batch, build_random_hf_bloom, hf_logits, tiny_tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_VOCAB = os.path.join(REPO_ROOT, "data", "demo", "sentencepiece.model")
MT5_ID, BLOOM_ID = "xmtf-test/tiny-mt5", "xmtf-test/tiny-bloomz"
SHA = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache, hub_id, folder, sha=SHA):
  """`folder` as huggingface_hub caches a download: blobs, snapshots/<sha>/ links, refs/main."""
  repo = os.path.join(cache, "models--" + hub_id.replace("/", "--"))
  snapshot = os.path.join(repo, "snapshots", sha)
  os.makedirs(snapshot)
  os.makedirs(os.path.join(repo, "blobs"))
  for name in os.listdir(folder):
    blob = os.path.join(repo, "blobs", f"{sha[:8]}-{name}")
    shutil.copy(os.path.join(folder, name), blob)
    os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))
  os.makedirs(os.path.join(repo, "refs"))
  with open(os.path.join(repo, "refs", "main"), "w") as f:
    f.write(sha)
  return snapshot


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
  """(cache dir, mT5 torch model, BLOOM torch model): a tiny mT5 (safetensors + spiece.model) and a
  tiny BLOOM (tokenizer.json) in an HF cache."""
  cache = str(tmp_path_factory.mktemp("hf_home") / "hub")
  mt5 = build_random_hf_mt5(seed=5, vocab_size=2048)
  folder = tmp_path_factory.mktemp("mt5_src")
  mt5.save_pretrained(folder)
  shutil.copy(DEMO_VOCAB, folder / "spiece.model")
  put_in_cache(cache, MT5_ID, str(folder))
  bloom = build_random_hf_bloom(seed=2)
  folder = tmp_path_factory.mktemp("bloom_src")
  bloom.save_pretrained(folder)
  tiny_tokenizer(folder)
  put_in_cache(cache, BLOOM_ID, str(folder))
  return cache, mt5, bloom


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", hub_cache[0])
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return hub_cache


def mt5_logits(model, encoder, decoder):
  with torch.no_grad():
    return model(input_ids=torch.tensor(encoder).long(), attention_mask=torch.tensor(encoder > 0).long(),
                 decoder_input_ids=torch.tensor(decoder).long()).logits.numpy()


ENCODER = np.array([[5, 9, 17, 3, 0], [4, 100, 2000, 0, 0]], np.int32)
DECODER = np.array([[0, 7, 8], [0, 1200, 1]], np.int32)


def test_a_hub_id_opens_its_cached_snapshot_as_an_hf_folder(offline_cache):
  opened = open_model_path(MT5_ID)
  assert opened.kind == HF_FOLDER
  assert opened.path == os.path.join(offline_cache[0], "models--xmtf-test--tiny-mt5", "snapshots", SHA)
  assert {"config.json", "model.safetensors", "spiece.model"} <= opened.names
  assert opened.vocabulary_candidates() == [os.path.join(opened.path, "spiece.model")]


def test_load_pretrained_of_an_id_gives_the_logits_of_transformers_for_either_family(offline_cache):
  _, mt5, bloom = offline_cache
  model, params = xmtf_jax.load_pretrained(MT5_ID)
  np.testing.assert_allclose(np.asarray(model.logits(params, ENCODER, DECODER)),
                             mt5_logits(mt5, ENCODER, DECODER), atol=1e-4, rtol=1e-4)
  model, params = pretrained.load_pretrained(BLOOM_ID)
  tokens, segments = batch()
  ours = np.asarray(model.logits(params, tokens, segments))
  np.testing.assert_allclose(ours[segments > 0], hf_logits(bloom, tokens, segments)[segments > 0],
                             atol=1e-4, rtol=1e-4)


def test_export_hf_of_an_id_loads_in_transformers_with_its_logits(offline_cache, tmp_path, capsys):
  _, mt5, _ = offline_cache
  out = str(tmp_path / "exported")
  assert export_hf.main([f"--checkpoint_dir={MT5_ID}", f"--output_dir={out}"]) == 0
  assert "exported" in capsys.readouterr().out
  from transformers import MT5ForConditionalGeneration
  reloaded = MT5ForConditionalGeneration.from_pretrained(out).eval()
  np.testing.assert_array_equal(mt5_logits(reloaded, ENCODER, DECODER), mt5_logits(mt5, ENCODER, DECODER))
  assert os.path.exists(os.path.join(out, "spiece.model"))


def test_an_id_missing_from_the_cache_offline_is_one_paragraph(offline_cache):
  with pytest.raises(ModelPathError) as raised:
    pretrained.read_config("xmtf-test/no-such-model")
  message = str(raised.value)
  assert "\n" not in message and message.startswith("xmtf-test/no-such-model: a Hugging Face Hub id")
  assert "HF_HUB_OFFLINE is set" in message and offline_cache[0] in message
  assert "`hf download xmtf-test/no-such-model`" in message and "local folder" in message


def test_a_cached_snapshot_without_weights_is_named(offline_cache, tmp_path):
  folder = tmp_path / "config_only"
  folder.mkdir()
  shutil.copy(os.path.join(open_model_path(MT5_ID).path, "config.json"), folder / "config.json")
  put_in_cache(offline_cache[0], "xmtf-test/config-only", str(folder))
  with pytest.raises(ModelPathError, match=r"has no weights \(\*\.safetensors or pytorch_model\*\.bin\)"):
    open_model_path("xmtf-test/config-only")


def test_an_id_the_hub_does_not_know_is_one_paragraph(hub_cache, monkeypatch):
  """Online: the Hub's 404 (huggingface_hub's RepositoryNotFoundError) becomes our one paragraph."""
  import httpx2
  import huggingface_hub
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
  monkeypatch.setenv("HF_HUB_CACHE", hub_cache[0])
  response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))

  def not_found(repo_id, *args, **kwargs):
    raise huggingface_hub.errors.RepositoryNotFoundError(f"404 {repo_id}", response=response)
  monkeypatch.setattr(huggingface_hub, "list_repo_files", not_found)
  monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
  with pytest.raises(ModelPathError) as raised:
    open_model_path("google/mt5-smal")
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith("google/mt5-smal: no such model on the Hugging Face Hub")
  assert "hf auth login" in message and "google/mt5-small" in message


def test_the_weights_fetched_are_safetensors_when_the_repository_has_them(monkeypatch, tmp_path):
  """What is asked of the Hub: config, tokenizer files, and one weight format (safetensors first)."""
  import huggingface_hub
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
  asked = {}
  files = {"a/st": ["config.json", "model.safetensors", "pytorch_model.bin", "spiece.model"],
           "a/bin": ["config.json", "pytorch_model.bin", "tokenizer.json"]}
  folder = tmp_path / "snap"
  folder.mkdir()
  (folder / "config.json").write_text("{}")
  (folder / "model.safetensors").write_text("")

  def download(repo_id, allow_patterns, cache_dir, local_files_only):
    asked[repo_id] = set(allow_patterns)
    assert not local_files_only
    return str(folder)
  monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id: files[repo_id])
  monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
  hub_ids.snapshot_folder("a/st")
  hub_ids.snapshot_folder("a/bin")
  assert "model.safetensors" in asked["a/st"] and "pytorch_model.bin" not in asked["a/st"]
  assert "pytorch_model.bin" in asked["a/bin"] and "model.safetensors" not in asked["a/bin"]
  for patterns in asked.values():
    assert {"config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json"} <= patterns
