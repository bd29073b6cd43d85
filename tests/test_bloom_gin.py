"""The BLOOM gin files: each size parses into the BloomConfig of the hub model (facts: bloomz.md §2) with
its parameter count, `model_config` picks the family, and gin/runs/bloomz_recipe.gin gives the BLOOMZ
recipe's optimizer, loss, batch and data settings."""
import gin
import pytest

from tests import bloom_param_tree
from xmtf_jax.cli import configurables, gin_flags
from xmtf_jax.errors import UserError
from xmtf_jax.model.bloom_config import BloomConfig
from xmtf_jax.model.config import T5Config
from xmtf_jax.train import optim

# hidden, layers, heads, head size (bloomz.md §2 "Hub sizes and configs").
SIZES = {"560m": (1024, 24, 16, 64), "1b1": (1536, 24, 16, 96), "1b7": (2048, 24, 16, 128),
         "3b": (2560, 30, 32, 80), "7b1": (4096, 30, 32, 128), "176b": (14336, 70, 112, 128)}
# bloomz.md §1.1, counted from HF's parameter shapes (tied head counted once).
PARAMETER_COUNTS = {"560m": 559_214_592, "7b1": 7_069_016_064}


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def model_config_from_gin(*args):
  gin_flags.parse_gin(list(args))
  return configurables.model_config()


@pytest.mark.parametrize("size", sorted(SIZES))
def test_bloom_sizes(size, clean_gin):
  config = model_config_from_gin(f"--gin_file=gin/models/bloom_{size}.gin")
  assert isinstance(config, BloomConfig)
  assert (config.hidden_size, config.n_layer, config.n_head, config.d_kv) == SIZES[size]
  assert config.vocab_size == 250880 and config.layer_norm_epsilon == 1e-5
  assert config.d_ff == 4 * config.hidden_size
  assert config.dtype == "bfloat16" and config.dropout_rate == config.attention_dropout_rate == 0.1
  assert config.scan_layers == (size in ("7b1", "176b"))
  if size in PARAMETER_COUNTS:
    assert bloom_param_tree.param_count(config) == PARAMETER_COUNTS[size]


def test_bloom_tiny_and_the_dropout_macros(clean_gin):
  config = model_config_from_gin("--gin_file=gin/models/bloom_tiny.gin", "--gin.DROPOUT_RATE=0.0")
  assert (config.vocab_size, config.hidden_size, config.n_layer, config.n_head) == (512, 64, 2, 4)
  assert config.dtype == "float32"
  # ATTENTION_DROPOUT_RATE follows DROPOUT_RATE unless it is set itself.
  assert config.dropout_rate == config.attention_dropout_rate == 0.0
  gin.clear_config()
  config = model_config_from_gin("--gin_file=gin/models/bloom_tiny.gin",
                                 "--gin.ATTENTION_DROPOUT_RATE=0.05")
  assert (config.dropout_rate, config.attention_dropout_rate) == (0.1, 0.05)


def test_mt5_files_still_give_t5config(clean_gin):
  config = model_config_from_gin("--gin_file=gin/models/mt5_small.gin")
  assert isinstance(config, T5Config) and config.d_model == 512 and config.num_heads == 6


RECIPE = ["--gin_file=gin/models/bloom_560m.gin", "--gin_file=gin/runs/bloomz_recipe.gin",
          "--gin.MODEL_DIR='/tmp/bloomz'", "--gin.XP3_DATA_DIR='/data/xP3'"]


def test_bloomz_recipe(clean_gin):
  model = model_config_from_gin(*RECIPE, "--gin.VOCABULARY_PATH='/m/tokenizer.json'")
  assert isinstance(model, BloomConfig) and model.dtype == "bfloat16"
  assert model.dropout_rate == model.attention_dropout_rate == 0.1
  optimizer = configurables.OptimizerConfig()
  assert (optimizer.name, optimizer.adam_beta1, optimizer.adam_beta2, optimizer.adam_epsilon) == (
      "adamw", 0.9, 0.95, 1e-8)
  assert (optimizer.weight_decay, optimizer.weight_decay_mask, optimizer.max_grad_norm) == (
      1e-4, "except_bias_and_norm", 1.0)
  assert (optimizer.learning_rate, optimizer.schedule, optimizer.warmup_steps) == (2e-5, "constant", 0)
  assert optimizer.weight_decay_rate is None
  optim.make_optimizer(optimizer)  # builds
  loss = configurables.LossConfig()
  assert (loss.normalization, loss.z_loss, loss.label_smoothing) == ("average_per_sequence", 0.0, 0.0)
  train = configurables.TrainConfig()
  assert train.batch_size == 2048 and train.use_packing
  assert sum(train.task_feature_lengths.values()) == 2048  # a row: inputs + targets positions
  assert train.mixture_or_task_name == "xp3"
  data = configurables.DataConfig()
  assert data.vocabulary_path == "/m/tokenizer.json"
  assert (data.mixing_scheme, data.mixing_weights) == ("explicit", "bloomz")


def test_bloomz_recipe_requires_the_bloom_tokenizer(clean_gin):
  # Not mT5's SentencePiece from data_defaults.gin: the run stops before it starts.
  with pytest.raises(UserError, match="the macro VOCABULARY_PATH is required: set it with "
                                      r"--gin.VOCABULARY_PATH=\.\.\."):
    gin_flags.parse_gin(RECIPE)


def test_a_bad_optimizer_name_is_one_paragraph(clean_gin):
  gin_flags.parse_gin(RECIPE + ["--gin.VOCABULARY_PATH='/m/tokenizer.json'",
                                "--gin.OptimizerConfig.name='adam'"])
  with pytest.raises(UserError, match="OptimizerConfig.name='adam': choose one of"):
    configurables.OptimizerConfig()
