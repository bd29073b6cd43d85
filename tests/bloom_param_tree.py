"""BLOOM's parameter tree as the issue-20 contract writes it down (shapes and logical axes), built from
a `BloomConfig` without the network: what the optimizer and gin tests check against.

Per layer `decoder/layers_{i}/...`; scanned (`scan_layers`), one `decoder/layers/...` subtree with a
leading `layers` axis.
"""
import numpy as np
from jax.sharding import PartitionSpec as P


def layer_tree(h: int, nh: int) -> dict:
  """{name: {leaf: (shape, logical axes)}} of one decoder layer."""
  d = h // nh
  norm = {"scale": ((h,), ("embed",)), "bias": ((h,), ("embed",))}
  return {
      "input_layernorm": dict(norm),
      "self_attention": {
          "query_key_value": {"kernel": ((h, nh, 3, d), ("embed", "heads", "qkv", "kv")),
                              "bias": ((nh, 3, d), ("heads", "qkv", "kv"))},
          "dense": {"kernel": ((nh, d, h), ("heads", "kv", "embed")), "bias": ((h,), ("embed",))},
      },
      "post_attention_layernorm": dict(norm),
      "mlp": {
          "dense_h_to_4h": {"kernel": ((h, 4 * h), ("embed", "mlp")), "bias": ((4 * h,), ("mlp",))},
          "dense_4h_to_h": {"kernel": ((4 * h, h), ("mlp", "embed")), "bias": ((h,), ("embed",))},
      },
  }


def _map(tree, fn):
  return {k: _map(v, fn) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def shapes_and_axes(config, scanned: bool = False) -> dict:
  """The whole tree of (shape, logical axes) leaves for `config` (a BloomConfig)."""
  h, nh, n = config.hidden_size, config.n_head, config.n_layer
  layer = layer_tree(h, nh)
  if scanned:
    layers = {"layers": _map(layer, lambda leaf: ((n,) + leaf[0], ("layers",) + leaf[1]))}
  else:
    layers = {f"layers_{i}": layer_tree(h, nh) for i in range(n)}
  return {
      "word_embeddings": {"embedding": ((config.vocab_size, h), ("vocab", "embed"))},
      "word_embeddings_layernorm": {"scale": ((h,), ("embed",)), "bias": ((h,), ("embed",))},
      "decoder": {**layers, "ln_f": {"scale": ((h,), ("embed",)), "bias": ((h,), ("embed",))}},
  }


def shapes(config, scanned: bool = False) -> dict:
  return _map(shapes_and_axes(config, scanned), lambda leaf: leaf[0])


def logical_axes(config, scanned: bool = False) -> dict:
  return _map(shapes_and_axes(config, scanned), lambda leaf: P(*leaf[1]))


def param_count(config) -> int:
  total = 0
  stack = [shapes(config)]
  while stack:
    for value in stack.pop().values():
      if isinstance(value, dict):
        stack.append(value)
      else:
        total += int(np.prod(value, dtype=np.int64))
  return total
