"""xmtf_jax: t5x-style multitask prompted finetuning of mT5 into mT0 and of BLOOM into BLOOMZ, in JAX.

The public Python API (README "Python API"; docs/architecture.md for the package map):
  model, params = xmtf_jax.load_pretrained(path, mesh=None)   # EncoderDecoderModel or DecoderOnlyModel
  logits = model.logits(params, encoder_input_tokens, decoder_input_tokens, **packing)   # mT5
  logits = model.logits(params, tokens, segment_ids)                                    # BLOOM
  except xmtf_jax.UserError: a mistake in what was given (path, config, data); message says what to do

The names below are looked up on first use (PEP 562), so `import xmtf_jax.model` or
`python -m xmtf_jax.train` does not import the data stack (TensorFlow, seqio) just for this face.
"""
import importlib

_API = {"T5Config": "xmtf_jax.model.config", "load_pretrained": "xmtf_jax.train.pretrained",
        "EncoderDecoderModel": "xmtf_jax.model.encoder_decoder", "UserError": "xmtf_jax.errors",
        "BloomConfig": "xmtf_jax.model.bloom_config", "DecoderOnlyModel": "xmtf_jax.model.decoder_only",
        "model_for": "xmtf_jax.model.family"}

__all__ = sorted(_API)


def __getattr__(name):
  if name in _API:
    return getattr(importlib.import_module(_API[name]), name)
  raise AttributeError(f"module 'xmtf_jax' has no attribute {name!r}")
