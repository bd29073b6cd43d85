"""The non-weight files of an exported BLOOM folder: the tokenizer files, generation_config.json and
the model card (the weights and config.json: hf/export.py with the BLOOM entry of hf/families.py).

The tokenizer is the run's byte-level BPE `tokenizer.json`, copied byte for byte (BLOOM's encodes no
BOS or EOS: prompts are fed without either, as in training and the paper's evaluation), with a
`tokenizer_config.json` and `special_tokens_map.json` that make `AutoTokenizer` load it as a fast
tokenizer with unk/bos/eos/pad = <unk>/<s>/</s>/<pad> = 0/1/2/3 and left padding (how BLOOMZ pads
prompts for scoring and generation).
"""
from __future__ import annotations

import json
from typing import Any

from xmtf_jax import paths
from xmtf_jax.errors import UserError
from xmtf_jax.hf import model_card
from xmtf_jax.hf.tokenizer import MODEL_MAX_LENGTH, TokenizerFiles

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
SPECIAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}


def tokenizer_json_path(vocabulary_path: str) -> str:
  """The tokenizer.json a run's vocabulary path names: the file itself, or the one in an HF folder."""
  if paths.isdir(vocabulary_path):
    return paths.join(vocabulary_path, TOKENIZER_FILE)
  return vocabulary_path


def token_ids(tokenizer: dict) -> dict[str, int]:
  """{token: id} of a `tokenizers` JSON document: the model's vocabulary and the added tokens."""
  vocab = (tokenizer.get("model") or {}).get("vocab") or {}
  if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
    vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
  return {**vocab, **{t["content"]: t["id"] for t in tokenizer.get("added_tokens") or ()}}


def tokenizer_files(vocabulary_path: str, config: Any, add_eos: bool = False) -> TokenizerFiles:
  """tokenizer.json (copied), special_tokens_map.json and tokenizer_config.json. Refuses a file that is
  not a tokenizers JSON, whose special tokens are not BLOOM's ids, or with more ids than the model's
  vocabulary. `add_eos` is not used: BLOOM's prompts never end in EOS."""
  del add_eos
  path = tokenizer_json_path(vocabulary_path)
  if not paths.exists(path):
    raise UserError(f"{vocabulary_path}: no {TOKENIZER_FILE}; a BLOOM model is exported with the "
                    "tokenizer.json it was trained with (a file, or an HF folder holding one)")
  raw = paths.read_bytes(path)
  try:
    document = json.loads(raw)
    ids = token_ids(document)
  except (ValueError, TypeError, KeyError, AttributeError):
    raise UserError(f"{path} is not a tokenizers JSON file (tokenizer.json)") from None
  wrong = {token: ids.get(token) for token, want in SPECIAL_IDS.items() if ids.get(token) != want}
  if wrong:
    raise UserError(f"{path}: BLOOM's special tokens are <unk>=0, <s>=1, </s>=2, <pad>=3; this "
                    f"tokenizer has {wrong}: it is not the tokenizer this model was trained with")
  size = max(ids.values()) + 1
  if size > config.vocab_size:
    raise UserError(f"{path} has {size} token ids but the model's vocabulary is {config.vocab_size}: "
                    "it is not the tokenizer this model was trained with")
  added = {str(i): dict(content=token, lstrip=False, rstrip=False, normalized=False, single_word=False,
                        special=True) for token, i in SPECIAL_IDS.items()}
  tokenizer_config = {**SPECIAL_TOKENS, "tokenizer_class": "PreTrainedTokenizerFast",
                      "padding_side": "left", "add_prefix_space": False,
                      "clean_up_tokenization_spaces": False, "model_max_length": MODEL_MAX_LENGTH,
                      "added_tokens_decoder": added}
  return TokenizerFiles({TOKENIZER_FILE: raw, "special_tokens_map.json": _dumps(SPECIAL_TOKENS),
                         "tokenizer_config.json": _dumps(tokenizer_config)}, "PreTrainedTokenizerFast")


def _dumps(obj: Any) -> str:
  return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def title(card: model_card.ModelCard) -> str:
  """`model_name`, else "BLOOMZ-style model: bloom-560m finetuned on xp3" from what the run recorded."""
  if card.model_name:
    return card.model_name
  base = paths.basename(card.base_model) if card.base_model else ""
  if base and card.mixture:
    return f"BLOOMZ-style model: {base} finetuned on {card.mixture}"
  if base:
    return f"BLOOMZ-style model: {base} finetuned"
  return f"BLOOMZ-style model trained on {card.mixture}" if card.mixture else "BLOOMZ-style model"


def render_card(card: model_card.ModelCard, *, config: Any, dtype: str, num_parameters: int,
                tokenizer_class: str, inputs_end_with_eos: bool = False) -> str:
  """The BLOOMZ model card (Markdown with HF's YAML front matter): a decoder-only model, how it was
  trained, the evaluation protocol, how to load it."""
  del inputs_end_with_eos  # BLOOM's prompts never end in EOS
  languages = card.resolved_languages()
  front = ["---", f"license: {card.license or 'bigscience-bloom-rail-1.0'}", "library_name: transformers",
           "pipeline_tag: text-generation", "tags:", "- bloom", "- bloomz", "- xmtf_jax"]
  iso = [code for code in languages if code != "code"]
  if iso:
    front += ["language:"] + [f"- {code}" for code in iso]
  if model_card.is_hub_id(card.base_model):
    front.append(f"base_model: {card.base_model}")
  front.append("---")
  lines = front + ["", f"# {title(card)}", "",
                   "A BLOOM decoder-only language model (ALiBi positions, tied input and output "
                   "embeddings) finetuned with multitask prompted finetuning (the BLOOMZ recipe of "
                   "*Crosslingual Generalization through Multitask Finetuning*): prompt and target "
                   "are one sequence, the loss is on the target tokens only, each target weighted by "
                   "1/its length. Trained with xmtf_jax and exported to `BloomForCausalLM`.", "",
                   "## Training", ""]
  facts = [("base model", card.base_model), ("mixture", card.mixture), ("training steps", card.steps)]
  lines += [f"- {label}: `{value}`" for label, value in facts if value not in (None, "")]
  if languages:
    lines.append(f"- languages ({len(languages)}): {', '.join(languages)}")
  lines += [f"- parameters: {num_parameters:,} (the LM head is the word embedding)",
            f"- shape: hidden size {config.hidden_size}, {config.n_layer} layers, {config.n_head} heads, "
            f"vocabulary {config.vocab_size}",
            f"- weights: {dtype}"]
  lines += ["", "## Evaluation protocol", "",
            "Zero-shot rank classification as in the paper: each prompt is left-padded, each answer "
            "choice gets a leading space and no `</s>`, and the choice with the highest summed "
            "log-likelihood wins (no length normalisation); per language the median accuracy over "
            "prompts, then the mean over languages."]
  lines += model_card.eval_section(card.eval_results)
  lines += ["", "## How to use", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "tokenizer = AutoTokenizer.from_pretrained(PATH)",
            "model = AutoModelForCausalLM.from_pretrained(PATH)",
            "inputs = tokenizer(\"Translate to English: Je t'aime.\", return_tensors=\"pt\")",
            "outputs = model.generate(**inputs, max_new_tokens=32)",
            "print(tokenizer.decode(outputs[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))",
            "```", "",
            f"The tokenizer (`{tokenizer_class}`, from `tokenizer.json`) is the byte-level BPE the model "
            "was trained with; `tokenizer(text)` adds neither `<s>` nor `</s>`, as training and "
            "evaluation feed prompts, and pads on the left.", "",
            "With xmtf_jax: `model, params = xmtf_jax.load_pretrained(PATH)`."]
  if card.notes:
    lines += ["", card.notes]
  return "\n".join(lines) + "\n"
