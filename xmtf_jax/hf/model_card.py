"""The `README.md` model card of an exported folder: what the model is, how it was made, how to load it.

Facts come from the caller (the export entry point reads them from the training run: base model,
mixture, steps) and from evaluation results found beside the checkpoints (`results.json` written by
`xmtf_jax.evaluate`). Nothing is invented: a field we do not know is left out.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Optional, Sequence

from xmtf_jax import paths

log = logging.getLogger(__name__)

# The 46 language folders of xP3 / xP3mt / xP3all ("code" is programming languages, not a language).
XP3_LANGUAGES = ("ak ar as bm bn ca code en es eu fon fr gu hi id ig ki kn lg ln ml mr ne nso ny or pa pt "
                 "rn rw sn st sw ta te tn ts tum tw ur vi wo xh yo zh zu").split()


@dataclasses.dataclass
class ModelCard:
  """What the card says. Empty fields are omitted from the card.

  base_model: the checkpoint finetuning started from (an HF id or a path). mixture: the seqio mixture
  trained on. steps: training steps of the exported checkpoint. languages: ISO codes; for the xP3
  mixtures (`xp3`, `xp3mt`, `xp3all`) xP3's 46 folders are used when none are given. eval_results:
  paths of `results.json` files (from `python -m xmtf_jax.evaluate`) to summarise. The card of a
  BLOOM model: `hf/bloom_export.render_card`.
  """
  model_name: Optional[str] = None
  base_model: Optional[str] = None
  mixture: Optional[str] = None
  steps: Optional[int] = None
  languages: Sequence[str] = ()
  eval_results: Sequence[str] = ()
  license: Optional[str] = None  # default: the base model's (mT5 apache-2.0, BLOOM bigscience-bloom-rail-1.0)
  notes: str = ""

  def resolved_languages(self) -> list[str]:
    if self.languages:
      return list(self.languages)
    if self.mixture in ("xp3", "xp3mt", "xp3all"):
      return list(XP3_LANGUAGES)
    return []


def is_hub_id(base_model: Optional[str]) -> bool:
  """An HF hub id (`owner/name`) rather than a path of ours."""
  return bool(base_model and re.fullmatch(r"[\w.-]+/[\w.-]+", base_model)
              and not paths.exists(base_model))


def title(card: ModelCard) -> str:
  """The card's heading: `model_name`, else what the run recorded (base model, mixture), e.g.
  "mT0-style model: mt5-small finetuned on xp3". Never the export folder's name: users export to
  folders like `hf/` or `out`."""
  if card.model_name:
    return card.model_name
  base = paths.basename(card.base_model) if card.base_model else ""  # google/mt5-small: mt5-small
  if base and card.mixture:
    return f"mT0-style model: {base} finetuned on {card.mixture}"
  if base:
    return f"mT0-style model: {base} finetuned"
  return f"mT0-style model trained on {card.mixture}" if card.mixture else "mT0-style model"


def find_eval_results(root: str, max_depth: int = 3) -> list[str]:
  """`results.json` files (as `xmtf_jax.evaluate` writes them) under `root`, nearest first."""
  found = []
  for depth in range(max_depth + 1):
    pattern = paths.join(root, *(["*"] * depth), "results.json")
    for path in paths.glob(pattern):
      if _read_results(path) is not None:
        found.append(path)
  return found


def _read_results(path: str) -> Optional[dict]:
  try:
    document = json.loads(paths.read_text(path))
  except (OSError, ValueError) as e:
    log.warning("%s: not readable as evaluation results (%s); left out of the model card", path, e)
    return None
  if not isinstance(document, dict) or not isinstance(document.get("datasets"), dict):
    return None
  return document


def eval_section(results_files: Sequence[str]) -> list[str]:
  lines: list[str] = []
  for path in results_files:
    document = _read_results(path)
    if not document:
      continue
    metadata = document.get("metadata") or {}
    variant = metadata.get("prompt_variant")
    lines += ["", f"From `{os.path.basename(os.path.dirname(path)) or path}/results.json`"
              + (f" (prompts: {variant})" if variant else "") + ". Accuracy in %: per language the "
              "median over prompts, then the mean over languages (the paper's protocol).", "",
              "| dataset | mean of medians | languages |", "|---|---|---|"]
    for dataset, row in sorted(document["datasets"].items()):
      try:
        lines.append(f"| {dataset} | {100 * float(row['mean_of_medians']):.1f} | "
                     f"{row.get('num_languages', '')} |")
      except (KeyError, TypeError, ValueError):
        log.warning("%s: dataset %s has no mean_of_medians; left out of the model card", path, dataset)
  return lines


def render(card: ModelCard, *, config: Any, dtype: str, num_parameters: int,
           tokenizer_class: str, inputs_end_with_eos: bool = False) -> str:
  """The card as Markdown with HF's YAML front matter (license, languages, tags, base model).
  inputs_end_with_eos: how the model's prompts are encoded (the tokenizer appends EOS or not)."""
  languages = card.resolved_languages()
  # umT5 (per-layer relative position tables) loads as its own transformers class.
  umt5 = getattr(config, "relative_attention_per_layer", False)
  architecture = "UMT5ForConditionalGeneration" if umt5 else "MT5ForConditionalGeneration"
  front = ["---", f"license: {card.license or 'apache-2.0'}", "library_name: transformers",
           "pipeline_tag: text2text-generation", "tags:", "- umt5" if umt5 else "- mt5", "- mt0",
           "- xmtf_jax"]
  iso = [code for code in languages if code != "code"]
  if iso:
    front += ["language:"] + [f"- {code}" for code in iso]
  if is_hub_id(card.base_model):
    front.append(f"base_model: {card.base_model}")  # HF hub ids only; local paths mean nothing there
  front.append("---")

  lines = front + ["", f"# {title(card)}", "",
                   f"An {'umT5' if umt5 else 'mT5'} encoder-decoder finetuned with multitask prompted "
                   "finetuning (the mT0 recipe of *Crosslingual Generalization through Multitask "
                   f"Finetuning*), trained with xmtf_jax and exported to `{architecture}`.", "",
                   "## Training", ""]
  facts = [("base model", card.base_model), ("mixture", card.mixture),
           ("training steps", card.steps)]
  lines += [f"- {label}: `{value}`" for label, value in facts if value not in (None, "")]
  if languages:
    lines.append(f"- languages ({len(languages)}): {', '.join(languages)}")
  lines += [f"- parameters: {num_parameters:,} (untied input embedding and LM head)",
            f"- shape: d_model {config.d_model}, d_ff {config.d_ff}, {config.num_heads} heads x d_kv "
            f"{config.d_kv}, {config.num_encoder_layers}/{config.num_decoder_layers} encoder/decoder "
            f"layers, vocabulary {config.vocab_size}",
            f"- weights: {dtype}"]
  eval_lines = eval_section(card.eval_results)
  if eval_lines:
    lines += ["", "## Zero-shot evaluation (rank classification)"] + eval_lines
  lines += ["", "## How to use", "", "```python",
            f"from transformers import AutoTokenizer, {architecture}",
            "tokenizer = AutoTokenizer.from_pretrained(PATH)",
            f"model = {architecture}.from_pretrained(PATH)",
            "inputs = tokenizer(\"Translate to English: Je t'aime.\", return_tensors=\"pt\")",
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], "
            "skip_special_tokens=True))", "```", "",
            f"The tokenizer (`{tokenizer_class}`, from `spiece.model`) encodes as the SentencePiece "
            "model used in training, and " + (
                "`tokenizer(text)` appends `</s>`: the model was trained on inputs ending in EOS "
                "(`add_eos_to_inputs`), as `xmtf_jax.infer` feeds them."
                if inputs_end_with_eos else
                "`tokenizer(text)` appends no `</s>`: the model was trained on inputs without EOS "
                "(the paper's evaluation feeds none either), as `xmtf_jax.infer` feeds them. Do not "
                "add one; HF's own mT5/mT0 tokenizers do, so use this folder's."), "",
            "With xmtf_jax: `model, params = xmtf_jax.load_pretrained(PATH)`."]
  if umt5:
    lines += ["", "Note: transformers 5.x's `UMT5ForConditionalGeneration` multiplies the decoder output by "
              f"d_model**-0.5 = {config.d_model**-0.5:.6g} before the LM head (its config forces "
              "`tie_word_embeddings`), which umT5, transformers 4.x and xmtf_jax do not: its logits are "
              "this model's times that factor (so its loss differs), its argmax and greedy generations "
              "are the same."]
  if card.notes:
    lines += ["", card.notes]
  return "\n".join(lines) + "\n"
