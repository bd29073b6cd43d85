"""Which tensor of an HF mT5/mT0 folder gives each of our parameters (`account_tensors`, the mT5 family's
accounting; shared checks: hf/accounting.py). The embedding a folder's encoder and decoder use is the one
transformers gives them (`xmtf_jax.hf.ties`), or the load is refused.
"""
from __future__ import annotations

import logging
from typing import Mapping

from xmtf_jax.errors import UserError
from xmtf_jax.hf import accounting, ties
from xmtf_jax.hf.mapping import IGNORED_HF_TENSORS, LM_HEAD, SHARED, hf_shape, parameter_mapping
from xmtf_jax.hf.weights import same_values
from xmtf_jax.model.config import T5Config

log = logging.getLogger(__name__)


def account_tensors(source, config: T5Config, origin: str) -> tuple[list, dict[str, str]]:
  """Checks a folder's tensors against the config -> (plan, uses).

  plan: [(our path, folder tensor to read, layout, our shape)]. uses: {every tensor in the folder: how
  it is used}: "read" (it gives a parameter), "tied copy of X" (verified equal to the tensor X that is
  read, as transformers verifies tied copies), "unused" (transformers loads it but its forward pass
  never uses it: `shared.weight` when the encoder's and decoder's own embeddings differ from it; logged
  as a warning) or "ignored" (listed in transformers' `_keys_to_ignore_on_load_unexpected`). Nothing is
  skipped silently: the tied names resolve as transformers 5.x resolves them (`xmtf_jax.hf.ties`), and a
  folder whose encoder and decoder embeddings differ, which our one token embedding cannot represent,
  is refused naming both tensors. Any other tensor the mapping does not know is an error, where
  transformers would warn ("UNEXPECTED") and drop it: it usually means a config.json that does not
  belong to the weights (more layers than the config says) or another architecture.
  Names and shapes are all checked before any tensor data is read (only tied copies are compared).
  """
  mapping = parameter_mapping(config)
  our_shapes = accounting.our_shapes(config, parameter_mapping)
  available = set(source.shapes)
  tied = ties.tie_sources(available)
  if LM_HEAD not in available and LM_HEAD in tied:
    # What HF does silently for such folders (tied T5 v1.0 style exports); we do it and say so.
    log.warning("%s: no %s; tying the LM head to %s, as transformers does", origin, LM_HEAD, tied[LM_HEAD])
  # Names: every mapped name from the folder (the tied ones through `tied`), nothing unknown.
  reads = [(path, tied.get(hf) if hf in ties.TIE_GROUP else hf if hf in available else None, layout)
           for path, hf, layout in mapping]
  missing = [hf for (_, hf, _), (_, name, _) in zip(mapping, reads) if name is None]
  unexpected = sorted(available - {name for _, name, _ in reads} - set(ties.TIE_GROUP)
                      - set(IGNORED_HF_TENSORS))
  summary = (f"{config.num_encoder_layers}/{config.num_decoder_layers} layers, d_model {config.d_model}, "
             f"d_ff {config.d_ff}, {config.num_heads} heads of {config.d_kv}, vocab {config.vocab_size}")
  accounting.refuse_names(origin, summary, missing, unexpected)
  # Shapes: the mapped tensors and every tensor of the tied group (all [vocab, d_model]).
  want = {name: hf_shape(layout, our_shapes[path]) for path, name, layout in reads}
  want.update({name: (config.vocab_size, config.d_model) for name in ties.TIE_GROUP if name in available})
  accounting.refuse_shapes(origin, summary, source, want)
  # Values: our one token embedding is what transformers gives both stacks, so those must be equal.
  embedding = _token_embedding_source(source, tied, origin)
  plan = [(path, embedding if hf == SHARED else name, layout, our_shapes[path])
          for (path, hf, _), (_, name, layout) in zip(mapping, reads)]
  uses = {name: "read" for _, name, _, _ in plan}
  uses.update({name: "ignored" for name in IGNORED_HF_TENSORS if name in available})
  for name in sorted(available - set(uses)):  # the tied group's tensors that are not read
    if same_values(source, name, embedding):
      uses[name] = f"tied copy of {embedding}"
    else:
      uses[name] = "unused"
      log.warning("%s: %s differs from %s, which transformers gives the encoder and the decoder; it is "
                  "not used (nor is it by transformers' forward pass)", origin, name, embedding)
  return plan, uses


def _token_embedding_source(source, tied: Mapping[str, str], origin: str) -> str:
  """The folder tensor for our one token embedding: what transformers gives the encoder's and the
  decoder's `embed_tokens`, which must hold equal values (`shared.weight` when it holds them too)."""
  encoder, decoder = tied[ties.ENCODER_EMBEDDING], tied[ties.DECODER_EMBEDDING]
  if encoder != decoder and not same_values(source, encoder, decoder):
    raise UserError(
        f"{origin}: the encoder and the decoder embed tokens with different tables: transformers gives "
        f"the encoder {ties.describe(ties.ENCODER_EMBEDDING, encoder)} and the decoder "
        f"{ties.describe(ties.DECODER_EMBEDDING, decoder)}, whose values differ, but xmtf_jax's network has "
        "one token embedding for both, so it cannot reproduce this model. (transformers writes such a folder "
        "for an MT5 built with tie_word_embeddings=False: shared.weight, encoder.embed_tokens.weight and "
        "decoder.embed_tokens.weight as separate tensors.) To fine-tune it here anyway, tie the embeddings "
        "first, which changes the model's outputs: in transformers, model.encoder.embed_tokens = "
        "model.decoder.embed_tokens = model.shared, then model.save_pretrained(new_folder); or start from a "
        "folder whose embeddings are tied (all mT5/mT0 releases are).")
  if SHARED in source.shapes and SHARED != encoder and same_values(source, SHARED, encoder):
    return SHARED  # .bin files: all three names, one storage
  return encoder
