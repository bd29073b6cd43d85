"""`python -m xmtf_jax.build_xp3`: build an xP3-style folder from raw datasets and promptsource
templates, deterministically and resumably; or check an existing folder; or check a template tree.

    python -m xmtf_jax.build_xp3 --preset=xp3 --templates=promptsource/promptsource/templates \\
        --data_dir=raw --output_dir=xP3 [--seed=0] [--workers=16] [--vocabulary=spiece.model]
    python -m xmtf_jax.build_xp3 --check=xP3 --preset=xp3 --templates=promptsource/promptsource/templates
    python -m xmtf_jax.build_xp3 --check_templates=promptsource/promptsource/templates

The output is `{lang}/xp3_{dataset}_{subset}_{split}_{template}.jsonl` plus `{lang}/merged_{lang}.jsonl`
and build_report.{json,md,png}; rerunning into the same folder skips finished jobs.
"""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from xmtf_jax import paths
from xmtf_jax.cli import usage
from xmtf_jax.errors import UserError
from xmtf_jax.prompts.template_tree import TemplateTree
from xmtf_jax.xp3build.build import build
from xmtf_jax.xp3build.check import check
from xmtf_jax.xp3build.spec import load_spec


def _require(args, *names: str) -> None:
  missing = [f"--{n}" for n in names if getattr(args, n) in (None, "")]
  if missing:
    raise UserError(f"{' and '.join(missing)} must be given (see python -m xmtf_jax.build_xp3 --help)")


def _spec(args):
  if not (args.preset or args.spec):
    raise UserError("name what to build or check: --preset=xp3|xp3mt|xp3all or --spec=FILE")
  return load_spec(args.preset or args.spec, split_mode=args.split_mode,
                   prompt_language=args.prompt_language, include_heldout=args.include_heldout)


def _vocabulary(path: Optional[str]):
  if not path:
    return None
  from xmtf_jax.data import tasks as data_tasks  # seqio and TensorFlow: only when tokens are counted
  return data_tasks.vocabulary(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = usage.build_xp3_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  if args.check_templates:
    print(TemplateTree(args.check_templates).check().summary())
    return 0
  spec = _spec(args)
  if args.check:
    _require(args, "templates")
    result = check(args.check, spec, templates_root=args.templates, data_dir=args.data_dir)
    if args.check_json:
      paths.write_text(args.check_json, json.dumps(result.to_json(), indent=1, ensure_ascii=False) + "\n")
    print(result.summary())
    return 1 if result.problems else 0
  _require(args, "templates", "data_dir", "output_dir")
  build(spec, templates_root=args.templates, data_dir=args.data_dir, output_dir=args.output_dir,
        seed=args.seed, workers=args.workers, vocabulary=_vocabulary(args.vocabulary),
        skip_missing=args.skip_missing, download=args.download)
  return 0
