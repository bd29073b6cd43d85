"""BLOOM's architecture hyper-parameters as one frozen dataclass (gin: `BloomConfig.*`).

Field names follow HF's `BloomConfig` (hidden_size, n_layer, n_head, layer_norm_epsilon, ...) so the
mapping to and from HF folders reads one-to-one; the properties give the names the rest of the system
uses for either family (d_model, num_heads, d_kv, d_ff, num_decoder_layers). Sizes live in
`gin/models/bloom_*.gin`.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class BloomConfig:
  """Shapes and numerics of a BLOOM decoder (ALiBi, embedding LayerNorm, fused QKV, tanh GELU, tied head).

  `dtype` is the activation dtype; parameters are always float32 and softmax, logits and the loss are
  computed in float32 whatever it is. `dropout_rate` is Megatron's hidden dropout (after the embedding
  LayerNorm and before each residual add), `attention_dropout_rate` its dropout on attention
  probabilities; both 0.1 in BLOOMZ training (Megatron's defaults), 0 in HF configs (inference).
  """
  family: ClassVar[str] = "bloom"

  vocab_size: int = 250880
  hidden_size: int = 1024
  n_layer: int = 24
  n_head: int = 16
  layer_norm_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  initializer_range: float = 0.02
  dtype: str = "float32"
  # As T5Config's: "none", "minimal", "full", "dots" (model/network.py REMAT_POLICIES).
  remat_policy: str = "none"
  # One `nn.scan` over the layers (parameters stacked on a leading `layers` axis).
  scan_layers: bool = False

  # ---- the names both families answer to ----
  @property
  def d_model(self) -> int:
    return self.hidden_size

  @property
  def num_heads(self) -> int:
    return self.n_head

  @property
  def d_kv(self) -> int:
    return self.hidden_size // self.n_head

  @property
  def d_ff(self) -> int:
    return 4 * self.hidden_size  # HF ignores `n_inner`: the MLP is always 4H wide

  @property
  def num_decoder_layers(self) -> int:
    return self.n_layer

  @property
  def num_encoder_layers(self) -> int:
    return 0

  def replace(self, **changes) -> "BloomConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
