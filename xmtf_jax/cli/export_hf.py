"""`python -m xmtf_jax.export_hf`: write a HuggingFace MT5ForConditionalGeneration or BloomForCausalLM folder.

    python -m xmtf_jax.export_hf --checkpoint_dir=runs/demo --output_dir=runs/demo/hf
    python -m xmtf_jax.export_hf --checkpoint_dir=gs://bucket/mt0-xxl --step=7000 \
        --output_dir=/mnt/disk/mt0-xxl --dtype=bfloat16 --noverify

--checkpoint_dir is a training run's directory (MODEL_DIR: checkpoints, config and vocabulary) or an
HF mT5/mT0 or BLOOM folder (re-export: change the dtype or the sharding); the model family comes from
the checkpoint's metadata or the folder's config.json. gin arguments (`--gin_file`,
`--gin.NAME=VALUE`) are accepted, e.g. to pick the partitioning used to restore a large checkpoint.
See `xmtf_jax.hf_export` for what is written and how memory is bounded.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from xmtf_jax.checkpoint.model_path import open_model_path
from xmtf_jax.errors import UserError
from xmtf_jax.hf import sources as export_sources
from xmtf_jax.cli import gin_flags
from xmtf_jax.cli import runtime, usage
from xmtf_jax.hf import export as hf_export
from xmtf_jax.hf import families, model_card




def main(argv: Optional[Sequence[str]] = None) -> int:
  runtime.configure_logging()  # our progress lines; orbax's per-tensor restore chatter at WARNING
  argv = list(sys.argv[1:] if argv is None else argv)
  gin_files, gin_bindings, rest = gin_flags.split_gin_args(argv)
  if gin_files or gin_bindings:  # gin is optional here; parsing locks gin's config for the process
    rest = gin_flags.parse_gin(argv)
  args = usage.export_hf_parser().parse_args(rest)
  model_path = open_model_path(args.checkpoint_dir, args.step)
  source = export_sources.open_source(model_path)
  vocabulary_path = args.vocabulary_path or getattr(source, "vocabulary_path", None)
  if not vocabulary_path:
    hf_family = families.for_config(source.config)
    raise UserError(f"no {hf_family.vocabulary} recorded with {args.checkpoint_dir}: pass "
                     f"--vocabulary_path={hf_family.vocabulary_example}")
  facts = source.card_facts()
  card = model_card.ModelCard(
      model_name=args.model_name,
      base_model=args.base_model or facts.get("base_model"),
      mixture=args.mixture or facts.get("mixture"), steps=facts.get("steps"))
  if args.languages:
    card.languages = [c.strip() for c in args.languages.split(",") if c.strip()]
  if args.eval_results is not None:
    card.eval_results = args.eval_results
  elif not card.eval_results:
    card.eval_results = model_card.find_eval_results(model_path.path)
  try:
    result = hf_export.export_source(source, vocabulary_path, args.output_dir, dtype=args.dtype,
                                     max_shard_size=args.max_shard_size, card=card,
                                     overwrite=args.overwrite, verify=args.verify)
  except hf_export.VerificationFailed as e:
    print(str(e), file=sys.stderr)
    return 1
  print(f"exported {result.num_parameters:,} parameters ({result.total_bytes / 1e6:.1f} MB, "
        f"{result.dtype}, {result.shards} file(s)) to {result.output_dir} in {result.seconds:.1f}s: "
        f"{', '.join(result.files)}")
  if result.verify_skipped_reason:
    print(result.verify_skipped_reason)
  return 0

