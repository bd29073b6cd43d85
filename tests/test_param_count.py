"""Parameter counts of the six gin sizes equal HF MT5ForConditionalGeneration's (meta device, untied)."""
import gin
import pytest
import torch

from xmtf_jax.cli import gin_flags
from xmtf_jax import hf
from xmtf_jax.cli import param_count
from xmtf_jax.parallel import partitioning
from xmtf_jax.model.config import T5Config
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def config_from_gin(*args):
  gin_flags.parse_gin(list(args))
  return T5Config()


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large", "xl", "xxl"])
def test_gin_sizes_match_hf_parameter_counts(size, clean_gin):
  from transformers import MT5Config, MT5ForConditionalGeneration
  config = config_from_gin(f"--gin_file=gin/models/mt5_{size}.gin")
  if size != "tiny":
    assert config.vocab_size == 250112 and config.d_kv == 64
  with torch.device("meta"):
    hf_model = MT5ForConditionalGeneration(MT5Config(**hf.t5config_to_hf(config)))
  # transformers 5.x ties lm_head to shared on construction; mT5 checkpoints hold a separate head.
  assert hf_model.lm_head.weight is hf_model.shared.weight
  hf_total = sum(p.numel() for p in hf_model.parameters()) + config.vocab_size * config.d_model
  result = param_count.count(config, partitioning.abstract_mesh(1, 1), partitioning.PartitioningConfig())
  assert result["total"][0] == hf_total
  assert result["total"][1] == 4 * hf_total  # one device holds everything, float32
  # And tensor by tensor through the HF name mapping.
  hf_shapes = {k: tuple(v.shape) for k, v in hf_model.state_dict().items()}
  ours = EncoderDecoderModel(config).abstract_params()
  for path, name, layout in hf.parameter_mapping(config):
    shape = ours
    for key in path:
      shape = shape[key]
    hf_shape = hf_shapes["shared.weight" if name == "lm_head.weight" else name]
    assert hf.hf_shape(layout, shape.shape) == hf_shape, name
  if size == "small":
    assert round(hf_total / 1e6, 1) == 300.2  # facts: an untied mt5-small has 300.2M parameters


def test_bytes_per_device_on_a_mesh(clean_gin, capsys):
  param_count.main(["--gin_file=gin/models/mt5_small.gin", "--mesh=data:2,model:4",
                    "--optimizer=adafactor"])
  out = capsys.readouterr().out
  assert "mesh: data=2 x model=4 (8 devices)" in out and "total" in out and "Adafactor state" in out
  config = T5Config()
  result = param_count.count(config, partitioning.abstract_mesh(2, 4), partitioning.PartitioningConfig())
  params, per_device = result["groups"]["encoder/mlp"]
  assert params == 8 * 3 * 512 * 1024 and per_device == 4 * params // 4  # d_ff split over model=4
  params, per_device = result["groups"]["encoder/attention"]
  assert per_device == 4 * params  # 6 heads do not split over 4: replicated
  two_d = param_count.count(config, partitioning.abstract_mesh(2, 4),
                            partitioning.PartitioningConfig(parameter_sharding_2d=True))
  assert two_d["groups"]["encoder/mlp"][1] == result["groups"]["encoder/mlp"][1] // 2  # embed over data=2
  assert two_d["groups"]["token_embedder"][1] == 4 * 250112 * 512 // 8


def test_optimizer_state_bytes_follow_the_factored_adafactor():
  """Hand count for mt5-small on one device: Adafactor without momentum keeps rows + columns of every
  matrix (attention kernels joined as [d_model, heads*d_kv]) and a full second moment of vectors and of
  the [32, 6] relative-position tables; optax adds (1,)-shaped placeholders and a step count."""
  result = param_count.count(T5Config(), partitioning.abstract_mesh(1, 1),
                             partitioning.PartitioningConfig(), "adafactor")
  embedding, attention, mlp, norm = 250112 + 512, 512 + 6 * 64, 512 + 1024, 512
  floats = (2 * embedding + 8 * (4 * attention + 3 * mlp + 2 * norm) + 8 * (8 * attention + 3 * mlp + 3 * norm)
            + 2 * 32 * 6 + 2 * norm)
  placeholders = result["optimizer_bytes_per_device"] - 4 * floats
  assert 0 <= placeholders < 4 * 2 * 200  # at most two (1,) float32 placeholders per parameter


def test_the_command_reads_the_model_from_gin(capsys):
  from xmtf_jax.cli import param_count
  import gin
  gin.clear_config()
  try:
    param_count.main(["--gin_file=gin/models/mt5_tiny.gin", "--mesh=data:2,model:1"])
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert "d_model=64" in out and "vocab=256" in out
