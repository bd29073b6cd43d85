"""Checks an exported folder with transformers itself: logits, greedy generations, tokenizer.

    report = hf_verify.verify(folder, model, params)
    print(report.summary()); assert report.ok

Loads the folder offline (`HF_HUB_OFFLINE=1`) as `MT5ForConditionalGeneration` (umT5:
`UMT5ForConditionalGeneration`; torch, CPU, float32 whatever the stored dtype) and `AutoTokenizer`,
then on a few multilingual prompts plus random token rows compares:
  - teacher-forced logits with ours (`model.logits`, float32 matmuls at "highest" precision) computed
    on our parameters rounded to the exported dtype, so the check is of the export, not of bfloat16;
  - greedy generations, token for token (ours from `xmtf_jax.inference.generation`, KV cache);
  - the tokenizer's ids against our seqio SentencePiece vocabulary;
  - and that transformers found every tensor (no missing/unexpected keys, LM head untied).
transformers 5.x's UMT5 multiplies the decoder output by d_model**-0.5 before its untied LM head (its
config forces tie_word_embeddings=True, and its forward scales when that is set; T5 has its own
`scale_decoder_outputs` for this since transformers#42815, UMT5 not yet), which umT5 (t5x, transformers
4.x) does not: `hf_logit_scale` reads the condition as the model does and ours are compared scaled.
torch and transformers are test extras (requirements-test.txt).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from xmtf_jax.inference import generation
from xmtf_jax.parallel.partitioning import fetch_global

# Prompts in several scripts; short so the check stays fast on CPU even for large models.
SAMPLE_TEXTS = (
    "Translate to English: Je t'aime.",
    "¿Cuál es la capital de Francia? Respuesta:",
    "这是一个测试。请回答：是或否？",
    "यह वाक्य सकारात्मक है या नकारात्मक?",
    "هل هذه الجملة صحيحة؟",
    "Habari ya asubuhi, rafiki yangu.",
)


def require_dependencies() -> None:
  missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
  if missing:
    raise RuntimeError(f"--verify needs {' and '.join(missing)} (test extras): install them with "
                       "`pip install -r requirements-test.txt`, or pass --noverify (verify=False) to "
                       "export without the check")


@dataclasses.dataclass
class VerifyReport:
  max_abs_logit_diff: float
  logit_tolerance: float
  max_abs_logit: float
  generations_equal: bool
  ours: list[list[int]]
  theirs: list[list[int]]
  decoder: str
  tokenizer_mismatches: list[str]
  loading_problems: list[str]
  architecture: str = "MT5ForConditionalGeneration"
  tokenizer_reference: str = "seqio"  # what the tokenizer's ids were compared with

  @property
  def ok(self) -> bool:
    return (self.max_abs_logit_diff <= self.logit_tolerance and self.generations_equal
            and not self.tokenizer_mismatches and not self.loading_problems)

  def summary(self) -> str:
    lines = [f"verify: {'OK' if self.ok else 'MISMATCH'} (transformers {self.architecture}, "
             "torch CPU float32)",
             f"  logits: max |ours - transformers| = {self.max_abs_logit_diff:.3g} (tolerance "
             f"{self.logit_tolerance:.3g}; max |logit| {self.max_abs_logit:.3g})",
             f"  greedy generations ({len(self.ours)} prompts, ours via {self.decoder}): "
             + ("identical" if self.generations_equal else "DIFFER")]
    if not self.generations_equal:
      for i, (a, b) in enumerate(zip(self.ours, self.theirs)):
        if a != b:
          lines.append(f"    row {i}: ours {a} vs transformers {b}")
    lines.append("  tokenizer: " + (f"same ids as {self.tokenizer_reference} on the sample prompts" if not
                                    self.tokenizer_mismatches else "DIFFERS"))
    lines += [f"    {m}" for m in self.tokenizer_mismatches]
    lines += [f"  loading: {p}" for p in self.loading_problems]
    return "\n".join(lines)


class _DropUntiedHeadWarning(logging.Filter):
  """transformers 5.23's MT5Config sets tie_word_embeddings=True whatever config.json says (Google's
  own mT5 folders say False, as ours do), then warns on every load of a folder with its own
  lm_head.weight that it will not tie them. `verify` checks the head is untied itself."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "specifies to tie shared.weight to lm_head.weight, but both are present" not in record.getMessage()


@contextlib.contextmanager
def _without_untied_head_warning():
  drop = _DropUntiedHeadWarning()
  logger = logging.getLogger("transformers.modeling_utils")
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def _trim(row) -> list[int]:
  """Generated ids up to and including the first EOS (1)."""
  out = []
  for token in row:
    out.append(int(token))
    if token == 1:
      break
  return out


def _greedy_ours(model, params, encoder_tokens: np.ndarray, max_new_tokens: int) -> tuple[np.ndarray, str]:
  config = generation.DecodingConfig(method="greedy", max_decode_length=max_new_tokens)
  predict = jax.jit(lambda p, x: generation.predict_batch(model, p, x, config).sequences)
  return fetch_global(predict(params, encoder_tokens)), "xmtf_jax.inference.generation (KV cache)"


def hf_logit_scale(hf_model: Any) -> float:
  """The factor transformers' forward applies to the logits of this MT5/UMT5 model (1 or d_model**-0.5):
  `scale_decoder_outputs` where the class has it, else UMT5's `tie_word_embeddings` test; MT5 none."""
  hf_config = hf_model.config
  if hf_config.model_type != "umt5":
    return 1.0
  scaled = getattr(hf_config, "scale_decoder_outputs", hf_config.tie_word_embeddings)
  return hf_config.d_model**-0.5 if scaled else 1.0


def verify(folder: str, model: Any, params: Any, *, dtype: str = "float32",
           vocabulary_path: Optional[str] = None, texts=SAMPLE_TEXTS, num_random_rows: int = 2,
           max_new_tokens: int = 12, rtol: float = 1e-4, seed: int = 0,
           inputs_end_with_eos: Optional[bool] = None,
           architecture: str = "MT5ForConditionalGeneration") -> VerifyReport:
  """Compares the folder, loaded by transformers, with `model`/`params` (see the module docstring).

  The logit tolerance is rtol x max(1, max |logit|): float32 sums over d_model terms per layer grow
  with the logits' scale. vocabulary_path defaults to the folder's spiece.model. Teacher-forced
  decoder inputs are `max_new_tokens` long, so the fallback greedy loop reuses the same compilation.
  inputs_end_with_eos (when given): `tokenizer(text)` must end in EOS exactly then, as training fed it.
  """
  require_dependencies()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  import seqio
  import torch
  import transformers
  from transformers import AutoTokenizer

  config = model.config
  rng = np.random.default_rng(seed)
  vocab = seqio.SentencePieceVocabulary(vocabulary_path or os.path.join(folder, "spiece.model"),
                                        extra_ids=0)
  rows = [list(vocab.encode(t))[:48] for t in texts]
  rows += [list(rng.integers(3, config.vocab_size, 24)) for _ in range(num_random_rows)]
  encoder = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, r in enumerate(rows):
    encoder[i, :len(r)] = r
  decoder = np.concatenate([np.zeros((len(rows), 1), np.int32),
                            rng.integers(3, config.vocab_size, (len(rows), max_new_tokens - 1))],
                           axis=1).astype(np.int32)

  # Ours, on parameters as the folder stores them.
  if dtype != "float32":
    store = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    params = jax.tree.map(lambda x: jnp.asarray(x).astype(store).astype(jnp.float32), params)
  # Rows for ours padded (with copies of the last row) to a multiple of the mesh's data axis, which
  # shards the batch; the extra rows are dropped.
  rows_multiple = model.mesh.shape["data"] if getattr(model, "mesh", None) is not None else 1
  pad = -len(rows) % rows_multiple
  padded = lambda x: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
  with jax.default_matmul_precision("highest"):
    ours_logits = fetch_global(model.logits(params, padded(encoder), padded(decoder)))[:len(rows)]
    ours_generated, decoder_name = _greedy_ours(model, params, padded(encoder), max_new_tokens)
    ours_generated = ours_generated[:len(rows)]

  # Theirs.
  problems = []
  with _without_untied_head_warning():
    hf_model, info = getattr(transformers, architecture).from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True, local_files_only=True)
  hf_model.eval()
  for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
    if info.get(kind):
      problems.append(f"{kind}: {sorted(map(str, info[kind]))}")
  if hf_model.lm_head.weight.data_ptr() == hf_model.shared.weight.data_ptr():
    problems.append("transformers tied lm_head to shared (the folder must hold a distinct lm_head.weight)")
  with torch.no_grad():
    enc = torch.tensor(encoder, dtype=torch.long)
    mask = (enc > 0).long()
    theirs_logits = hf_model(input_ids=enc, attention_mask=mask,
                             decoder_input_ids=torch.tensor(decoder, dtype=torch.long)).logits.numpy()
    # transformers 5.23 sizes its KV cache by the encoder's depth: without the cache when they differ.
    generated = hf_model.generate(
        input_ids=enc, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        use_cache=config.num_encoder_layers == config.num_decoder_layers).numpy()[:, 1:]  # drop start 0

  diff = float(np.max(np.abs(ours_logits * hf_logit_scale(hf_model) - theirs_logits)))
  scale = float(np.max(np.abs(theirs_logits)))
  ours_rows = [_trim(r) for r in ours_generated]
  theirs_rows = [_trim(r) for r in generated]

  tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
  mismatches = []
  for text in texts:
    want, got = list(vocab.encode(text)), tokenizer(text, add_special_tokens=False)["input_ids"]
    if want != got:
      mismatches.append(f"{text!r}: seqio {want} vs transformers {got}")
    elif inputs_end_with_eos is not None:
      full = tokenizer(text)["input_ids"]
      if full != want + [1] * inputs_end_with_eos:
        mismatches.append(f"{text!r}: tokenizer(text) gives {full}; the model was trained "
                          f"{'with' if inputs_end_with_eos else 'without'} EOS after its inputs")
  return VerifyReport(max_abs_logit_diff=diff, logit_tolerance=rtol * max(1.0, scale),
                      max_abs_logit=scale, generations_equal=ours_rows == theirs_rows, ours=ours_rows,
                      theirs=theirs_rows, decoder=decoder_name, tokenizer_mismatches=mismatches,
                      loading_problems=problems, architecture=architecture)
