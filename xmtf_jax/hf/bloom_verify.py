"""Checks an exported BLOOM folder with transformers itself (`hf/verify.py` is mT5's check).

Loads the folder offline as `BloomForCausalLM` (torch, CPU, float32 whatever the stored dtype) and
`AutoTokenizer`, then on a few multilingual prompts (left-padded, as BLOOMZ feeds them) plus random
token rows compares:
  - logits at every real position with ours (`model.logits`, float32 matmuls at "highest" precision)
    on our parameters rounded to the exported dtype;
  - greedy continuations, token for token (ours: the full forward over a fixed-length row, one
    compilation; transformers: `generate`);
  - the tokenizer: ids equal to the folder's tokenizer.json read by `tokenizers`, no BOS/EOS added,
    unk/bos/eos/pad 0/1/2/3, left padding;
  - that transformers found every tensor and tied the head to the word embeddings.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from xmtf_jax.hf import verify as mt5_verify
from xmtf_jax.parallel.partitioning import fetch_global

PAD, EOS = 3, 2


def _left_padded(rows: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(rows), width), PAD, np.int32)
  segments = np.zeros((len(rows), width), np.int32)
  for i, row in enumerate(rows):
    if row:
      tokens[i, width - len(row):], segments[i, width - len(row):] = row, 1
  return tokens, segments


def _trim(row) -> list[int]:
  out = []
  for token in row:
    out.append(int(token))
    if token == EOS:
      break
  return out


def verify(folder: str, model: Any, params: Any, *, dtype: str = "float32", texts=mt5_verify.SAMPLE_TEXTS,
           num_random_rows: int = 2, max_new_tokens: int = 8, rtol: float = 1e-4, seed: int = 0,
           inputs_end_with_eos: Any = None, vocabulary_path: Any = None) -> mt5_verify.VerifyReport:
  """Compares the folder, loaded by transformers, with `model`/`params` (see the module docstring).
  The logit tolerance is rtol x max(1, max |logit|), as for mT5."""
  del inputs_end_with_eos, vocabulary_path  # BLOOM prompts never end in EOS; the folder's tokenizer.json
  mt5_verify.require_dependencies()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  import tokenizers
  import torch
  from transformers import AutoTokenizer, BloomForCausalLM

  config = model.config
  rng = np.random.default_rng(seed)
  reference = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
  rows = [reference.encode(t, add_special_tokens=False).ids[:32] for t in texts]
  rows += [list(rng.integers(4, config.vocab_size, 16)) for _ in range(num_random_rows)]
  prompt_length = max(len(r) for r in rows)
  tokens, segments = _left_padded(rows, prompt_length + max_new_tokens)
  segments[:, prompt_length:] = 0  # the continuation, written step by step

  if dtype != "float32":
    store = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    params = jax.tree.map(lambda x: jnp.asarray(x).astype(store).astype(jnp.float32), params)
  rows_multiple = model.mesh.shape["data"] if getattr(model, "mesh", None) is not None else 1
  pad = -len(rows) % rows_multiple
  padded = lambda x: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
  with jax.default_matmul_precision("highest"):
    ours_logits = fetch_global(model.logits(params, padded(tokens), padded(segments)))[:len(rows)]
    # Greedy: position t's logits give token t + 1; keys past the row's end are masked (segment 0).
    generated, greedy_segments = tokens.copy(), segments.copy()
    for t in range(prompt_length - 1, prompt_length - 1 + max_new_tokens):
      logits = fetch_global(model.logits(params, padded(generated), padded(greedy_segments)))[:len(rows)]
      generated[:, t + 1], greedy_segments[:, t + 1] = np.argmax(logits[:, t], axis=-1), 1
  ours_rows = [_trim(r) for r in generated[:, prompt_length:]]

  problems = []
  hf_model, info = BloomForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True,
                                                    local_files_only=True)
  hf_model.eval()
  for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
    if info.get(kind):
      problems.append(f"{kind}: {sorted(map(str, info[kind]))}")
  if hf_model.lm_head.weight.data_ptr() != hf_model.transformer.word_embeddings.weight.data_ptr():
    problems.append("transformers did not tie lm_head to the word embeddings")
  prompt, prompt_mask = tokens[:, :prompt_length], segments[:, :prompt_length]
  with torch.no_grad():
    theirs_logits = hf_model(input_ids=torch.tensor(prompt, dtype=torch.long),
                             attention_mask=torch.tensor(prompt_mask, dtype=torch.long)).logits.numpy()
    theirs = hf_model.generate(input_ids=torch.tensor(prompt, dtype=torch.long),
                               attention_mask=torch.tensor(prompt_mask, dtype=torch.long),
                               max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=PAD, eos_token_id=EOS).numpy()[:, prompt_length:]
  real = prompt_mask.astype(bool)
  diff = float(np.max(np.abs(ours_logits[:, :prompt_length][real] - theirs_logits[real])))
  scale = float(np.max(np.abs(theirs_logits[real])))
  theirs_rows = [_trim(r) for r in theirs]

  tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
  mismatches = []
  for text in texts:
    want, got = reference.encode(text, add_special_tokens=False).ids, tokenizer(text)["input_ids"]
    if want != got:
      mismatches.append(f"{text!r}: tokenizer.json {want} vs transformers {got}")
  special = (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
  if special != (0, 1, 2, 3):
    mismatches.append(f"unk/bos/eos/pad ids are {special}, not (0, 1, 2, 3)")
  if tokenizer.padding_side != "left":
    mismatches.append(f"padding_side is {tokenizer.padding_side!r}, not 'left'")
  return mt5_verify.VerifyReport(
      max_abs_logit_diff=diff, logit_tolerance=rtol * max(1.0, scale), max_abs_logit=scale,
      generations_equal=ours_rows == theirs_rows, ours=ours_rows, theirs=theirs_rows,
      decoder="xmtf_jax full forward (greedy)", tokenizer_mismatches=mismatches,
      loading_problems=problems, architecture="BloomForCausalLM", tokenizer_reference="tokenizer.json")
