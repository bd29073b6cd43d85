"""Which tensor of an HF BLOOM folder gives each of our parameters (`account_tensors`, the BLOOM family's
accounting; shared checks: hf/accounting.py).

BLOOM folders come in two spellings: `save_pretrained` of a `BloomForCausalLM` writes `transformer.`-
prefixed names, the original bigscience conversions (a `BloomModel`) write them bare; either is read,
one name at a time, so both load as transformers loads them. Neither holds `lm_head.weight` (the head is
tied to the word embeddings); a folder that does is read when its head equals the embedding (a tied
copy, checked), and refused otherwise: our network's head is always the embedding.
"""
from __future__ import annotations

from typing import Optional

from xmtf_jax.errors import UserError
from xmtf_jax.hf import accounting, bloom_mapping
from xmtf_jax.hf.bloom_mapping import EMBEDDING, IGNORED_HF_TENSORS, LM_HEAD, PREFIX
from xmtf_jax.hf.weights import same_values


def folder_name(hf_name: str, available) -> Optional[str]:
  """The folder's spelling of a (prefixed) mapped name: itself, or without `transformer.`; None if absent."""
  if hf_name in available:
    return hf_name
  bare = hf_name[len(PREFIX):] if hf_name.startswith(PREFIX) else None
  return bare if bare is not None and bare in available else None


def account_tensors(source, config, origin: str) -> tuple[list, dict[str, str]]:
  """Checks a BLOOM folder's tensors against the config -> (plan, uses) (see hf/accounting.py).

  Every mapped tensor is read under either spelling; `lm_head.weight`, when present, must equal the
  word embeddings ("tied copy of ..."); anything else is an error naming it (usually a config.json
  that does not belong to the weights). Names and shapes are checked before any data is read.
  """
  mapping = bloom_mapping.parameter_mapping(config)
  our_shapes = accounting.our_shapes(config, bloom_mapping.parameter_mapping)
  available = set(source.shapes)
  reads = [(path, folder_name(hf, available), layout) for path, hf, layout in mapping]
  missing = [hf for (_, hf, _), (_, name, _) in zip(mapping, reads) if name is None]
  unexpected = sorted(available - {name for _, name, _ in reads} - {LM_HEAD} - set(IGNORED_HF_TENSORS))
  summary = (f"{config.n_layer} layers, hidden_size {config.hidden_size}, {config.n_head} heads, "
             f"vocab {config.vocab_size}")
  accounting.refuse_names(origin, summary, missing, unexpected)
  want = {name: bloom_mapping.hf_shape(layout, our_shapes[path]) for path, name, layout in reads}
  if LM_HEAD in available:
    want[LM_HEAD] = (config.vocab_size, config.hidden_size)
  accounting.refuse_shapes(origin, summary, source, want)
  plan = [(path, name, layout, our_shapes[path]) for path, name, layout in reads]
  uses = {name: "read" for _, name, _, _ in plan}
  uses.update({name: "ignored" for name in IGNORED_HF_TENSORS if name in available})
  if LM_HEAD in available:
    embedding = folder_name(EMBEDDING, available)
    if not same_values(source, LM_HEAD, embedding):
      raise UserError(
          f"{origin}: {LM_HEAD} differs from {embedding}: this BLOOM has an LM head of its own, but "
          "xmtf_jax's BLOOM computes logits with the word embeddings (as every BLOOM and BLOOMZ release "
          "does), so it cannot reproduce this model. Save the folder with a tied head (no "
          f"{LM_HEAD}, tie_word_embeddings true) to fine-tune it here anyway, which changes its outputs.")
    uses[LM_HEAD] = f"tied copy of {embedding}"
  return plan, uses
