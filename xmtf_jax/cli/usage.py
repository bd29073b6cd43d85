"""What `--help` prints for each command, answered without importing jax or TensorFlow (which take
10 s and more to import): the shims `xmtf_jax/<command>.py` call `answer_help` first.

Commands configured by gin alone print their module's docstring and the gin usage, both read from
source with `ast` (the modules themselves import jax). Commands with flags build their argparse
parser here, from standard-library code only, and use the same parser when they run.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import Optional, Sequence

_CLI_DIR = os.path.dirname(os.path.abspath(__file__))  # local-only: a file of the repository

# Kept equal to xmtf_jax.hf.safetensors_writer.DTYPES and DEFAULT_MAX_SHARD_SIZE (that module imports
# jax; tests/test_cli_usage.py checks they agree).
EXPORT_DTYPES = ("bfloat16", "float32")
EXPORT_DEFAULT_MAX_SHARD_SIZE = "5GB"


def help_requested(argv: Sequence[str]) -> bool:
  return "--help" in argv or "-h" in argv


def _module_tree(command: str) -> ast.Module:
  with open(os.path.join(_CLI_DIR, f"{command}.py"), encoding="utf-8") as f:  # local-only: the package
    return ast.parse(f.read())


def docstring(command: str) -> str:
  """The docstring of `xmtf_jax/cli/<command>.py`, read from its source."""
  return ast.get_docstring(_module_tree(command), clean=False) or ""


def gin_usage() -> str:
  """`errors.GIN_USAGE`, read from source (errors.py imports TensorFlow)."""
  for node in _module_tree("errors").body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "GIN_USAGE" for t in node.targets):
      return ast.literal_eval(node.value)
  raise LookupError("xmtf_jax/cli/errors.py defines no GIN_USAGE")


def plan_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m xmtf_jax.plan", description=docstring("plan"),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--topology", required=True, help="v4-128, v4-256, v5e-256, v5p-128, cpu:8, ...")
  parser.add_argument("--hbm_gib", type=float, default=None,
                      help="memory per device in GiB to plan against (default: the chip's HBM; for "
                           "cpu:N a v4 chip's 32 GiB)")
  parser.add_argument("--output_json", default=None, help="also write the plan as JSON here (with "
                      "--search: every row, and one cached JSON per candidate in OUTPUT.candidates/)")
  parser.add_argument("--search", action="store_true",
                      help="compile every mesh, FSDP, remat and micro-batch setting the topology allows "
                           "and rank those that fit by estimated step time")
  parser.add_argument("--search_space", default=None,
                      help="narrow the search: model=2,4;fsdp=on,off;remat=minimal,dots;microbatches=1,2 "
                           "(default: model axes up to 16 dividing heads, MLP and vocabulary; FSDP both; "
                           "remat minimal, dots and the model's own; micro-batches 1,2,4,8)")
  parser.add_argument("--search_workers", type=int, default=None,
                      help="compiles at once (default: min(cores, available memory / 6 GiB) for TPUs)")
  parser.add_argument("--search_timeout_s", type=float, default=None,
                      help="time limit per candidate compile in seconds; its worker process is killed and "
                           "the row says 'timed out' (default: 300 for TPU targets, none for cpu:N; 0: none)")
  parser.add_argument("--search_exhaustive", action="store_true",
                      help="compile every micro-batch count, not only up to the first that fits")
  parser.add_argument("--chip", default=None,
                      help="peak numbers for the step-time estimate: v4, v5e, v5p, v6e, h100 or h200 "
                           "(default: the topology's chip; cpu:N gets no estimate unless given)")
  return parser


def param_count_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m xmtf_jax.param_count", description=docstring("param_count"),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mesh", help="data:N,model:M (default: PartitioningConfig from gin)")
  parser.add_argument("--num_devices", type=int, default=None,
                      help="devices for a gin PartitioningConfig mesh with data=-1 (default: this host's)")
  parser.add_argument("--optimizer", choices=["adafactor", "adamw"], default=None,
                      help="also count this optimizer's state per device (OptimizerConfig in gin "
                           "sets its other fields)")
  return parser


def export_hf_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m xmtf_jax.export_hf",
                              description=docstring("export_hf").split("\n")[0])
  p.add_argument("--checkpoint_dir", required=True,
                 help="training run directory (MODEL_DIR) or an HF mT5/mT0 or BLOOM folder")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--output_dir", required=True, help="folder to create (must not exist or be empty)")
  p.add_argument("--dtype", choices=EXPORT_DTYPES, default="float32",
                 help="weights' dtype in the folder (float32 is exact; bfloat16 halves the size)")
  p.add_argument("--max_shard_size", default=EXPORT_DEFAULT_MAX_SHARD_SIZE,
                 help="shard the safetensors above this size, e.g. 5GB, 500MB, 2GiB")
  p.add_argument("--verify", dest="verify", action="store_const", const=True, default="auto",
                 help="compare with transformers (default: on when the model fits in host memory)")
  p.add_argument("--noverify", dest="verify", action="store_const", const=False,
                 help="skip the comparison with transformers")
  p.add_argument("--vocabulary_path", default=None,
                 help="SentencePiece model (mT5) or tokenizer.json (BLOOM) (default: the one "
                      "recorded with the checkpoint)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
  card = p.add_argument_group("model card (README.md); defaults come from the training run")
  card.add_argument("--model_name", default=None,
                    help="the card's title (default from the base model and mixture, e.g. "
                         "'mT0-style model: mt5-small finetuned on xp3')")
  card.add_argument("--base_model", default=None,
                    help="e.g. google/mt5-xxl (default: the run's INITIAL_CHECKPOINT_PATH)")
  card.add_argument("--mixture", default=None, help="default: the run's MIXTURE_OR_TASK_NAME")
  card.add_argument("--languages", default=None, help="comma-separated ISO codes")
  card.add_argument("--eval_results", action="append", default=None,
                    help="results.json from `xmtf_jax.evaluate` (repeatable; default: those found "
                         "under --checkpoint_dir)")
  return p


def build_xp3_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m xmtf_jax.build_xp3", description=docstring("build_xp3"),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  what = p.add_mutually_exclusive_group()
  what.add_argument("--preset", choices=("xp3", "xp3mt", "xp3all"), help="the paper's dataset lists")
  what.add_argument("--spec", help="a YAML or JSON file listing units (your own datasets and templates)")
  p.add_argument("--templates", help="a promptsource template tree (<dataset>[/<subset>]/templates.yaml), "
                 "e.g. a checkout of Muennighoff/promptsource@tr13 (xP3) or @xp3mt")
  p.add_argument("--data_dir", help="raw datasets: {data_dir}/{dataset}/{subset}/ holding a save_to_disk "
                 "folder or {split}.jsonl/.json/.parquet/.csv files (local or gs://)")
  p.add_argument("--output_dir", help="the folder to build (local or gs://); rerun into it to resume")
  p.add_argument("--seed", type=int, default=0, help="decides every sample and order (default 0)")
  p.add_argument("--split_mode", choices=("train", "validation"), default="train",
                 help="train: every split but validation (merged files shuffled); validation: only the "
                      "validation split (merged files sorted)")
  p.add_argument("--prompt_language", choices=("english", "native"), default=None,
                 help="english (xP3) or native (xP3mt: the datasets' own translated templates); "
                      "default: the preset's")
  p.add_argument("--include_heldout", action="store_true",
                 help="also build the held-out evaluation datasets (excluded by default)")
  p.add_argument("--workers", type=int, default=None, help="processes (default: the host's cores)")
  p.add_argument("--vocabulary", default=None,
                 help="SentencePiece .model or tokenizer.json: also count tokens per language")
  p.add_argument("--skip_missing", action="store_true",
                 help="leave out datasets missing under --data_dir (listed in the report)")
  p.add_argument("--download", action="store_true",
                 help="fetch datasets missing under --data_dir from the Hub (their current ids, e.g. "
                      "xnli -> facebook/xnli) and save them there (save_to_disk) first; needs network")
  p.add_argument("--check", metavar="FOLDER", default=None,
                 help="check an existing folder (e.g. a downloaded xP3) against --preset/--spec "
                      "instead of building; exit status 1 when problems are found")
  p.add_argument("--check_json", metavar="PATH", default=None, help="with --check: write the findings here")
  p.add_argument("--check_templates", metavar="TREE", default=None,
                 help="parse every templates.yaml of a tree and render each template on a synthetic "
                      "row; print the counts")
  return p


PARSERS = {"plan": plan_parser, "param_count": param_count_parser, "export_hf": export_hf_parser,
           "build_xp3": build_xp3_parser}


def help_text(command: str) -> str:
  """What `python -m xmtf_jax.<command> --help` prints."""
  if command in PARSERS:
    return PARSERS[command]().format_help()
  return docstring(command).rstrip() + "\n\n" + gin_usage()


def answer_help(command: str, argv: Optional[Sequence[str]] = None) -> bool:
  """Prints the command's help and returns True when argv asks for it; False otherwise."""
  if not help_requested(sys.argv[1:] if argv is None else argv):
    return False
  sys.stdout.write(help_text(command))
  sys.stdout.flush()
  return True
