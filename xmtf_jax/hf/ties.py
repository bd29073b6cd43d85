"""Which folder tensor each of MT5's tied names gets its values from when transformers loads the folder.

transformers 5.x (`MT5ForConditionalGeneration._tied_weights_keys`) ties `encoder.embed_tokens.weight`,
`decoder.embed_tokens.weight` and `lm_head.weight` to `shared.weight`, and `from_pretrained` resolves
each pair in that order (`PreTrainedModel.tie_weights(missing_keys=...)`):
  both in the folder          each keeps its own values (tied when equal; when they differ transformers
                              warns and does not tie: then the tensors differ and both count)
  only the tied name          `shared.weight` takes its values ("symmetric" tying)
  only `shared.weight`        the tied name takes shared's values
  neither                     the tied name takes the values of the next tied name present
MT5Config forces `tie_word_embeddings=True` on load, so a folder's config cannot switch this off. The
forward pass uses the encoder's and decoder's `embed_tokens` and `lm_head`, never `shared` itself.
Our network has one token embedding for both stacks and a separate LM head, so it represents a folder
exactly when the encoder's and decoder's embeddings end up with equal values.
"""
from __future__ import annotations

SHARED = "shared.weight"
ENCODER_EMBEDDING = "encoder.embed_tokens.weight"
DECODER_EMBEDDING = "decoder.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
TIED_TO_SHARED = (ENCODER_EMBEDDING, DECODER_EMBEDDING, LM_HEAD)  # transformers' order
TIE_GROUP = (SHARED,) + TIED_TO_SHARED


def tie_sources(present) -> dict[str, str]:
  """{name in TIE_GROUP: the folder tensor whose values transformers gives it}, from the names present in
  the folder alone (no values needed: a pair transformers ties is equal anyway). A name no tensor can
  give (none of the group present) is absent."""
  value = {name: name for name in TIE_GROUP if name in present}
  for i, target in enumerate(TIED_TO_SHARED):
    if SHARED in value and target in value:
      continue
    if target in value:
      value[SHARED] = value[target]
    elif SHARED in value:
      value[target] = value[SHARED]
    else:
      later = next((name for name in TIED_TO_SHARED[i + 1:] if name in value), None)
      if later is not None:
        value[target] = value[later]
  return value


def describe(name: str, source: str) -> str:
  """'encoder.embed_tokens.weight', or 'shared.weight (as encoder.embed_tokens.weight is absent)'."""
  return name if name == source else f"{source} (as {name} is absent)"
