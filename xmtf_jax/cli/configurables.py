"""The gin names of the project's config objects, registered here and nowhere else.

Library modules define plain (frozen) dataclasses and functions; the entry points register them with
gin under the names the gin files use (`T5Config.d_model`, `mixtures.DataConfig.strict`,
`@zero_shot_eval_hook`, ...) and build them by calling the names below, e.g.
`configurables.T5Config()`: gin's bindings apply, and the value is the plain library class (calling
the library class directly ignores gin).
"""
from __future__ import annotations

import gin

from xmtf_jax.data.config import DataConfig as _DataConfig
from xmtf_jax.evaluation import during_training
from xmtf_jax.evaluation.heldout_tasks import HeldoutSuite as _HeldoutSuite
from xmtf_jax.inference.generation import DecodingConfig as _DecodingConfig
from xmtf_jax.model.bloom_config import BloomConfig as _BloomConfig
from xmtf_jax.model.config import T5Config as _T5Config
from xmtf_jax.parallel.partitioning import PartitioningConfig as _PartitioningConfig
from xmtf_jax.train.loop import TrainConfig as _TrainConfig
from xmtf_jax.train.losses import LossConfig as _LossConfig
from xmtf_jax.train.optim import OptimizerConfig as _OptimizerConfig

T5Config = gin.external_configurable(_T5Config, name="T5Config")
BloomConfig = gin.external_configurable(_BloomConfig, name="BloomConfig")
TrainConfig = gin.external_configurable(_TrainConfig, name="TrainConfig")
PartitioningConfig = gin.external_configurable(_PartitioningConfig, name="PartitioningConfig")
OptimizerConfig = gin.external_configurable(_OptimizerConfig, name="OptimizerConfig")
LossConfig = gin.external_configurable(_LossConfig, name="LossConfig")
DecodingConfig = gin.external_configurable(_DecodingConfig, name="DecodingConfig")
HeldoutSuite = gin.external_configurable(_HeldoutSuite, name="HeldoutSuite")
DataConfig = gin.external_configurable(_DataConfig, name="DataConfig", module="mixtures")
zero_shot_eval_hook = gin.external_configurable(during_training.zero_shot_eval_hook,
                                                name="zero_shot_eval_hook", denylist=["context"])


@gin.configurable
def model_config(config=None):
  """The run's model config: what `model_config.config` names (`@BloomConfig()` in
  gin/models/bloom_*.gin), else `T5Config()` as gin binds it (the mT5 files bind only T5Config)."""
  return T5Config() if config is None else config
