"""What a run checks before it trains: the data's vocabulary against the model's embedding, and a
checkpoint's shapes against the gin model. Both fail with the setting to change."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import seqio

from xmtf_jax import paths
from xmtf_jax.data import tasks as data_tasks
from xmtf_jax.errors import UserError
from xmtf_jax.model import family

# A fresh embedding this much larger than the vocabulary is almost certainly a gin mix-up (mT5's
# 250112 rows for a demo-sized vocabulary), not padding to a multiple of 128.
OVERSIZED_EMBEDDING_FACTOR = 2


@dataclasses.dataclass(frozen=True)
class TaskFeatures:
  """What a checkpoint records about the data it was trained on, for evaluation and inference."""
  vocabulary_path: Optional[str]
  add_eos_to_inputs: bool


def task_features(mixture_or_task_name: str, model_config: family.ModelConfig, fresh_model: bool
                  ) -> TaskFeatures:
  """The mixture's SentencePiece file and whether its inputs end in EOS; checks the vocabulary
  against the embedding: smaller is an error, much larger for a fresh model a warning."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  vocabulary = provider.output_features["targets"].vocabulary
  if vocabulary.vocab_size > model_config.vocab_size:
    raise UserError(f"the vocabulary of {mixture_or_task_name!r} has {vocabulary.vocab_size} ids but "
                    f"the model's embedding only {model_config.vocab_size} (VOCAB_SIZE); set "
                    f"--gin.VOCAB_SIZE={-(-vocabulary.vocab_size // 128) * 128} or use the matching "
                    "model/mixture gin files")
  if fresh_model and model_config.vocab_size > OVERSIZED_EMBEDDING_FACTOR * max(vocabulary.vocab_size, 128):
    logging.warning(
        "VOCAB_SIZE=%d is %.0fx the vocabulary of %r (%d pieces): the randomly initialised embedding "
        "and LM head are mostly unused rows. Set --gin.VOCAB_SIZE=%d (the vocabulary rounded up to a "
        "multiple of 128) unless this is intended.", model_config.vocab_size,
        model_config.vocab_size / vocabulary.vocab_size, mixture_or_task_name, vocabulary.vocab_size,
        -(-vocabulary.vocab_size // 128) * 128)
  path = data_tasks.path_of(vocabulary)  # the SentencePiece model or tokenizer.json
  path = paths.abspath(path) if path else path
  return TaskFeatures(path, bool(provider.output_features["inputs"].add_eos))


SHAPE_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_encoder_layers",
                "num_decoder_layers", "relative_attention_num_buckets", "relative_attention_max_distance",
                "relative_attention_per_layer")


def check_same_shapes(theirs: family.ModelConfig, ours: family.ModelConfig, origin: str) -> None:
  """A checkpoint of another family or other shapes than the gin model is one clear error."""
  if family.family_of(theirs) != family.family_of(ours):
    raise UserError(f"{origin} holds a {family.family_of(theirs)} model but the gin model is "
                    f"{family.family_of(ours)} ({type(ours).__name__}): use the matching gin/models/*.gin")
  diffs = [f"{f}: {getattr(theirs, f)} there vs {getattr(ours, f)} in gin" for f in SHAPE_FIELDS
           if hasattr(ours, f) and getattr(theirs, f) != getattr(ours, f)]
  if diffs:
    raise UserError(f"{origin} does not match the gin model (gin/models/*.gin): " + "; ".join(diffs))
