"""Train-step throughput: our jit-compiled step against HF transformers' PyTorch model, same workload.

mT5 workloads (`small`, `tiny`) against `MT5ForConditionalGeneration`: float32, dropout 0.1 in
training mode, Adafactor with the t5x finetuning settings (decay 0.8, update clipping 1.0, parameter
scale, no momentum, learning rate 1e-3; HF's transformers.optimization.Adafactor with
relative_step=False), random tokens with no padding, an untied LM head on both sides (transformers 5.x
ties it on construction: we replace it). BLOOM workloads (`bloom-tiny`, `bloom-560m`: bloom-560m's
shapes, 250880 vocabulary) against `BloomForCausalLM`: float32, hidden and attention dropout 0.1, the
BLOOMZ recipe's AdamW (b2 0.95, weight decay 1e-4 off biases and norms, clip 1.0; torch.optim.AdamW
with the same groups and clip_grad_norm_), a tied head, one row of random tokens per example. The two sides
run interleaved in one process (`--rounds` rounds of `--steps` steps each), PyTorch on all cores;
after `--warmup` untimed steps each, the median step time of each side gives tokens/s (input + target
tokens per second).

Malloc: by default the script re-executes itself with the glibc settings that `python -m
xmtf_jax.train` uses on CPU-only hosts (cpu_malloc.py); they apply to both sides, since both run in
this process. `--malloc=default` keeps glibc's defaults (what a plain Python process gets).

    python benchmarks/train_step.py                       # mt5-small shapes and the tiny model
    python benchmarks/train_step.py --malloc=default      # glibc's default malloc settings
    python benchmarks/train_step.py --workloads=tiny --rounds=5
    python benchmarks/train_step.py --workloads=bloom-tiny,bloom-560m   # BLOOM (560m: ~20 GB RAM)
    python benchmarks/train_step.py --profile=/tmp/trace  # also writes a JAX profiler trace
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from xmtf_jax.cli import cpu_malloc  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workloads", default="small,tiny")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2, help="steps per side per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
  parser.add_argument("--profile", default=None, help="write a JAX profiler trace here")
  parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                      help="tuned: xmtf_jax.train's CPU malloc settings (both sides); default: glibc's")
  return parser.parse_args(argv)


if __name__ == "__main__" and parse_args().malloc == "tuned":
  cpu_malloc.reexec_tuned(None, sys.argv)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from xmtf_jax.model import family  # noqa: E402
from xmtf_jax.model.bloom_config import BloomConfig  # noqa: E402
from xmtf_jax.model.config import T5Config  # noqa: E402
from xmtf_jax.train import losses, optim, step_assembly  # noqa: E402

WORKLOADS = {
    # name: (model config, batch, inputs length, targets length); a BLOOM row is inputs + targets long
    "small": (T5Config(dropout_rate=0.1, dtype="float32"), 8, 512, 128),
    "tiny": (T5Config(vocab_size=2048, d_model=64, d_kv=16, d_ff=128, num_heads=4,
                      num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.1,
                      dtype="float32"), 8, 512, 128),
    "bloom-tiny": (BloomConfig(vocab_size=2048, hidden_size=64, n_layer=2, n_head=4, dropout_rate=0.1,
                               attention_dropout_rate=0.1), 8, 512, 128),
    "bloom-560m": (BloomConfig(dropout_rate=0.1, attention_dropout_rate=0.1), 1, 192, 64),
}
# The BLOOMZ recipe's AdamW (gin/runs/bloomz_recipe.gin) with a visible learning rate.
ADAMW = optim.OptimizerConfig(name="adamw", learning_rate=1e-4, adam_beta2=0.95, weight_decay=1e-4,
                              max_grad_norm=1.0, schedule="constant", warmup_steps=0)


def make_batch(config, batch: int, inputs: int, targets: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  if family.is_decoder_only(config):
    row = rng.integers(4, config.vocab_size, (batch, inputs + targets + 1)).astype(np.int32)
    return {"decoder_input_tokens": row[:, :-1], "decoder_target_tokens": row[:, 1:],
            "decoder_loss_weights": np.ones_like(row[:, 1:]),
            "decoder_segment_ids": np.ones_like(row[:, 1:])}
  encoder = rng.integers(2, config.vocab_size, (batch, inputs)).astype(np.int32)
  target = rng.integers(2, config.vocab_size, (batch, targets)).astype(np.int32)
  decoder = np.concatenate([np.zeros((batch, 1), np.int32), target[:, :-1]], axis=1)
  return {"encoder_input_tokens": encoder, "decoder_input_tokens": decoder,
          "decoder_target_tokens": target, "decoder_loss_weights": np.ones_like(target)}


class Ours:
  def __init__(self, config, batch: dict):
    # HF's loss is the mean token cross-entropy without z-loss: the same here.
    optimizer = ADAMW if family.is_decoder_only(config) else optim.OptimizerConfig(learning_rate=1e-3)
    assembly = step_assembly.assemble_step(
        config, optimizer_config=optimizer,
        loss_config=losses.LossConfig("per_target_token", z_loss=0.0), devices=jax.devices()[:1])
    self.model = assembly.model
    self.state = assembly.init_state(self.model.init_params(jax.random.key(0, impl="rbg")))
    self.step_fn = assembly.train_step
    self.batch = self.model.shard_batch(batch)

  def step(self) -> float:
    self.state, metrics = self.step_fn(self.state, self.batch)
    return float(jax.device_get(metrics["loss"]))


def HuggingFace(config, batch: dict):
  """The PyTorch side of a workload."""
  return (HuggingFaceBloom if family.is_decoder_only(config) else HuggingFaceMT5)(config, batch)


class HuggingFaceBloom:
  def __init__(self, config: BloomConfig, batch: dict):
    import torch
    from transformers import BloomConfig as HFBloomConfig, BloomForCausalLM
    torch.manual_seed(0)
    hf_config = HFBloomConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                              n_layer=config.n_layer, n_head=config.n_head,
                              hidden_dropout=config.dropout_rate,
                              attention_dropout=config.attention_dropout_rate)
    self.model = BloomForCausalLM(hf_config).train()
    decay = [p for n, p in self.model.named_parameters() if not (n.endswith("bias") or "layernorm" in n
                                                                 or "ln_f" in n)]
    no_decay = [p for n, p in self.model.named_parameters() if n.endswith("bias") or "layernorm" in n
                or "ln_f" in n]
    self.torch = torch
    self.optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": ADAMW.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=ADAMW.learning_rate, betas=(ADAMW.adam_beta1, ADAMW.adam_beta2), eps=ADAMW.adam_epsilon)
    tokens = torch.from_numpy(batch["decoder_input_tokens"]).long()
    self.inputs = {"input_ids": tokens, "labels": tokens}

  def step(self) -> float:
    loss = self.model(**self.inputs).loss
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), ADAMW.max_grad_norm)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


class HuggingFaceMT5:
  def __init__(self, config: T5Config, batch: dict):
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration
    from transformers.optimization import Adafactor
    self.torch = torch
    torch.manual_seed(0)
    hf_config = MT5Config(vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv,
                          d_ff=config.d_ff, num_heads=config.num_heads,
                          num_layers=config.num_encoder_layers,
                          num_decoder_layers=config.num_decoder_layers,
                          relative_attention_num_buckets=config.relative_attention_num_buckets,
                          relative_attention_max_distance=config.relative_attention_max_distance,
                          dropout_rate=config.dropout_rate, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False)
    model = MT5ForConditionalGeneration(hf_config)
    # transformers 5.x ties the head to the embedding whatever the config says: untie it.
    model.lm_head.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.d_model) * 0.05)
    model.config.tie_word_embeddings = False
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    self.model = model.train()
    self.optimizer = Adafactor(model.parameters(), lr=1e-3, relative_step=False,
                               scale_parameter=True, warmup_init=False, decay_rate=-0.8,
                               clip_threshold=1.0, beta1=None)
    self.inputs = {"input_ids": torch.from_numpy(batch["encoder_input_tokens"]).long(),
                   "decoder_input_ids": torch.from_numpy(batch["decoder_input_tokens"]).long(),
                   "labels": torch.from_numpy(batch["decoder_target_tokens"]).long()}

  def step(self) -> float:
    loss = self.model(**self.inputs).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def timed_steps(side, steps: int, cpu_times: list) -> list[float]:
  """Wall-clock seconds per step; appends CPU seconds per step (all threads) to `cpu_times`."""
  times = []
  for _ in range(steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    side.step()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - start_cpu)
  return times


def load_average() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def run(name: str, rounds: int, steps: int, warmup: int, profile: str | None) -> dict:
  import torch
  config, batch_size, inputs, targets = WORKLOADS[name]
  batch = make_batch(config, batch_size, inputs, targets)
  tokens = batch_size * (inputs + targets)
  print(f"\n[{name}] {type(config).__name__}: d_model {config.d_model}, vocab {config.vocab_size}, layers "
        f"{config.num_encoder_layers}/{config.num_decoder_layers}; batch {batch_size} x "
        f"({inputs}, {targets}); torch threads {torch.get_num_threads()}; load {load_average()}",
        flush=True)
  ours, hf = Ours(config, batch), HuggingFace(config, batch)
  start = time.perf_counter()
  ours.step()  # compilation
  print(f"  ours: first step (compilation) {time.perf_counter() - start:.1f}s", flush=True)
  for _ in range(warmup):  # both sides: allocator pools (first steps grow the heap), Adafactor state
    ours.step()
    hf.step()
  ours_times, hf_times, ours_cpu, hf_cpu = [], [], [], []
  for r in range(rounds):
    ours_times += timed_steps(ours, steps, ours_cpu)
    hf_times += timed_steps(hf, steps, hf_cpu)
    print(f"  round {r + 1}/{rounds}: ours {statistics.median(ours_times):.3f}s/step, "
          f"HF {statistics.median(hf_times):.3f}s/step (medians so far)", flush=True)
  if profile:
    jax.profiler.start_trace(profile)
    timed_steps(ours, 2, [])
    jax.profiler.stop_trace()
    print(f"  profiler trace in {profile}")
  ours_s, hf_s = statistics.median(ours_times), statistics.median(hf_times)
  result = {"workload": name, "ours_tokens_per_second": tokens / ours_s,
            "hf_tokens_per_second": tokens / hf_s, "ratio": hf_s / ours_s,
            "ours_seconds_per_step": ours_s, "hf_seconds_per_step": hf_s,
            "cpu_ratio": statistics.median(hf_cpu) / statistics.median(ours_cpu)}
  print(f"  ours {result['ours_tokens_per_second']:.0f} tokens/s ({ours_s:.3f}s/step), HF "
        f"{result['hf_tokens_per_second']:.0f} tokens/s ({hf_s:.3f}s/step): "
        f"ratio {result['ratio']:.2f}x (CPU seconds per step: ours {statistics.median(ours_cpu):.1f}, "
        f"HF {statistics.median(hf_cpu):.1f}, ratio {result['cpu_ratio']:.2f}x); load after "
        f"{load_average()}", flush=True)
  del ours, hf
  return result


def main() -> None:
  args = parse_args()
  if args.malloc == "tuned" and not cpu_malloc.is_tuned():
    raise SystemExit("--malloc=tuned: could not apply cpu_malloc.TUNED_ENV (not glibc, an accelerator "
                     "host, or XMTF_CPU_MALLOC=0); run with --malloc=default")
  settings = ", ".join(f"{k}={os.environ.get(k)}" for k in cpu_malloc.TUNED_ENV)
  print(f"malloc settings: {args.malloc} ({settings})")
  import torch
  torch.set_num_threads(os.cpu_count())
  results = [run(name, args.rounds, args.steps, args.warmup, args.profile)
             for name in args.workloads.split(",")]
  print(f"\nmalloc: {args.malloc}\n| workload | ours tokens/s | HF PyTorch tokens/s | ours / HF (wall) "
        "| ours / HF (CPU s) |\n|---|---|---|---|---|")
  for r in results:
    print(f"| {r['workload']} | {r['ours_tokens_per_second']:.0f} | "
          f"{r['hf_tokens_per_second']:.0f} | {r['ratio']:.2f}x | {r['cpu_ratio']:.2f}x |")


if __name__ == "__main__":
  main()
