"""BLOOM parameter shapes from the real model's abstract parameters (no allocation), as tuples."""
import jax
import numpy as np

from xmtf_jax.model.decoder_only import DecoderOnlyModel


def shapes(config, scanned: bool = False) -> dict:
  """Nested dict of the parameter shapes (tuples) of `config`, per-layer or scanned."""
  abstract = DecoderOnlyModel(config.replace(scan_layers=scanned)).abstract_params()
  return jax.tree.map(lambda s: tuple(s.shape), abstract)


def param_count(config) -> int:
  return sum(int(np.prod(s.shape, dtype=np.int64))
             for s in jax.tree.leaves(DecoderOnlyModel(config).abstract_params()))
