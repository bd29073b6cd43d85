"""The mT5 (T5.1.1) architecture hyper-parameters, as one frozen dataclass (gin: `T5Config.*`).

Field names follow HF's `MT5Config` where one exists (d_model, d_kv, d_ff, ...) so the mapping to and
from HF folders reads one-to-one. Sizes live in `gin/models/mt5_*.gin`.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shapes and numerics of an mT5 encoder-decoder.

  `dtype` is the activation dtype; parameters are always float32 and softmax, logits and the loss are
  computed in float32 whatever it is.
  """
  family: ClassVar[str] = "mt5"

  vocab_size: int = 250112
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # Every layer has its own relative position table (`layers_{i}/relpos_bias/embedding` [buckets, heads];
  # scanned: `layers/relpos_bias/embedding` [layers, buckets, heads]), as umT5 (HF
  # UMT5ForConditionalGeneration; t5x's scanned umT5 checkpoints store one table per layer too).
  # False (default): one table per stack, `{encoder,decoder}/relpos_bias`, shared by its layers (mT5).
  relative_attention_per_layer: bool = False
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  # Rematerialise each layer's activations in the backward pass ("none", "minimal", "full", "dots").
  remat_policy: str = "none"
  # One `nn.scan` over the layers of each stack (parameters stacked on a leading `layers` axis):
  # compile time independent of depth. Same numbers as the per-layer model; see model/layer_stacking.py.
  scan_layers: bool = False

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
