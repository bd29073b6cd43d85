"""The two input pipelines side by side: throughput, packing, and the cost of resuming.

    .venv/bin/python benchmarks/input_pipeline.py [--batches 200] [--synthetic_lines 20000]
        [--positions 1000,100000,1000000]

Runs on the bundled demo mixture and on a synthetic xP3-layout folder (8 languages, per-prompt and
merged files, longer records) written to a temporary directory, with the tf.data pipeline
(data/pipeline.py, restores by re-reading and skipping) and the indexed one (data/indexed_pipeline.py,
restores from a few integers). For each it prints examples/s per host and tokens/s after warm-up,
and the time from `set_state` at a position of 1e3, 1e5, 1e6 examples to the first batch there.
As a baseline measured in the same run it also times the checked-JSONL source alone (read + parse +
check, no tokenization).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mixtures  # noqa: E402
import seqio  # noqa: E402
from xmtf_jax.data import indexed_pipeline  # noqa: E402
from xmtf_jax.data import pipeline as input_pipeline  # noqa: E402

WORDS = {
    "en": "the cat sleeps on a warm mat while children read stories about distant mountains".split(),
    "fr": "le chat dort sur un tapis chaud pendant que les enfants lisent des histoires".split(),
    "es": "el gato duerme sobre una alfombra caliente mientras los niños leen cuentos".split(),
    "ar": "القطة تنام على سجادة دافئة بينما يقرأ الأطفال قصصا عن جبال بعيدة".split(),
    "ru": "кошка спит на тёплом коврике пока дети читают истории о далёких горах".split(),
    "hi": "बिल्ली गर्म चटाई पर सोती है जबकि बच्चे दूर के पहाड़ों की कहानियाँ पढ़ते हैं".split(),
    "te": "పిల్లలు దూరపు పర్వతాల కథలు చదువుతుండగా పిల్లి వెచ్చని చాపపై నిద్రిస్తుంది".split(),
    "code": "def for in range return if else while import numpy as np x y total += 1".split(),
}


def write_synthetic_xp3(root: str, lines_per_language: int, seed: int = 0) -> int:
  """An xP3-layout folder: per-prompt files (4 per language), plus merged files for half of them."""
  rng = random.Random(seed)
  total = 0
  for i, (lang, words) in enumerate(sorted(WORDS.items())):
    os.makedirs(os.path.join(root, lang), exist_ok=True)
    records = []
    for n in range(lines_per_language):
      inputs = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
      targets = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
      records.append(json.dumps({"inputs": f"Prompt {n % 4}: {inputs}", "targets": targets},
                                ensure_ascii=False))
    for p in range(4):
      with open(os.path.join(root, lang, f"xp3_synthetic_{lang}_train_prompt-{p}.jsonl"), "w") as f:
        f.write("\n".join(records[p::4]) + "\n")
    if i % 2 == 0:
      with open(os.path.join(root, lang, f"merged_{lang}.jsonl"), "w") as f:
        f.write("\n".join(records) + "\n")
    total += len(records)
  return total


def make_iterator(kind: str, name: str, lengths: dict, batch_size: int, packing: bool,
                  index_dir: str):
  if kind == "tf_data":
    return input_pipeline.make_batch_iterator(name, lengths, "train", batch_size,
                                              use_packing=packing, shuffle=True, seed=0,
                                              shard_index=0, num_shards=1)
  return indexed_pipeline.make_indexed_batches(name, lengths, "train", batch_size,
                                               use_packing=packing, seed=0, process_index=0,
                                               process_count=1, index_dir=index_dir)


def time_pipeline(kind: str, name: str, lengths: dict, batch_size: int, batches: int,
                  packing: bool, index_dir: str) -> dict:
  start = time.perf_counter()
  it = make_iterator(kind, name, lengths, batch_size, packing, index_dir)
  next(it)
  first = time.perf_counter() - start
  for _ in range(3):
    next(it)  # warm up
  examples = tokens = 0
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(batches):
    b = next(it)
    if packing:
      examples += int(b["encoder_segment_ids"].max(axis=1).sum())
    else:
      examples += int((b["decoder_loss_weights"].sum(axis=1) > 0).sum())
    tokens += int((b["encoder_input_tokens"] > 0).sum() + b["decoder_loss_weights"].sum())
  seconds = time.perf_counter() - start
  cpu_seconds = time.process_time() - cpu_start
  bad_lines = sum(sum(reasons.values()) for reasons in it.stats()["bad_lines"].values())
  if hasattr(it, "close"):
    it.close()
  slots = batches * batch_size * (lengths["inputs"] + lengths["targets"])
  return {"pipeline": kind, "mixture": name, "packing": packing,
          "examples_per_second": examples / seconds,
          "cpu_microseconds_per_example": 1e6 * cpu_seconds / examples,
          "tokens_per_second": tokens / seconds, "non_pad_share": tokens / slots,
          "first_batch_seconds": first, "bad_lines": bad_lines}


def time_resume(kind: str, name: str, lengths: dict, batch_size: int, position: int,
                index_dir: str) -> float:
  """Seconds from set_state at `position` examples (unpacked) to the first batch there."""
  steps = position // batch_size
  if kind == "tf_data":
    fresh = make_iterator(kind, name, lengths, batch_size, False, index_dir)
    state = dict(fresh.get_state(), batches_consumed=steps)
  else:
    state = {**make_iterator(kind, name, lengths, batch_size, False, index_dir).get_state(),
             "positions": [[steps, batch_size]]}
  it = make_iterator(kind, name, lengths, batch_size, False, index_dir)
  start = time.perf_counter()
  it.set_state(state)
  next(it)
  seconds = time.perf_counter() - start
  if hasattr(it, "close"):
    it.close()
  return seconds


def time_source_only(task_name: str, max_examples: int) -> dict:
  """Baseline: the checked-JSONL source alone (read, parse, check; no tokenization)."""
  source = seqio.get_mixture_or_task(task_name).source
  # batched like the pipeline's output, so Python's per-element iteration cost is not measured
  ds = source.get_dataset("train", shuffle=False).take(max_examples).batch(256)
  start, cpu_start = time.perf_counter(), time.process_time()
  n = sum(len(b["inputs"]) for b in ds.as_numpy_iterator())
  return {"task": task_name, "examples_per_second": n / (time.perf_counter() - start),
          "cpu_microseconds_per_example": 1e6 * (time.process_time() - cpu_start) / n}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--synthetic_lines", type=int, default=20000, help="lines per language")
  parser.add_argument("--positions", default="1000,100000,1000000",
                      help="resume positions in examples, comma-separated")
  args = parser.parse_args(argv)
  positions = [int(p) for p in args.positions.split(",") if p]
  kinds = ("tf_data", "indexed")
  rows, resumes = [], []
  demo_lengths = {"inputs": 32, "targets": 16}
  with tempfile.TemporaryDirectory() as root:
    index_dir = os.path.join(root, ".index")
    for kind in kinds:
      for packing in (False, True):
        rows.append(time_pipeline(kind, "demo", demo_lengths, args.batch_size, args.batches,
                                  packing, index_dir))
    start = time.perf_counter()
    n = write_synthetic_xp3(root, args.synthetic_lines)
    print(f"synthetic xP3 layout: {n} examples in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    config = mixtures.DataConfig(vocabulary_path=mixtures.demo.DEMO_VOCABULARY_PATH,
                                 line_counts_cache_dir=os.path.join(root, ".counts"))
    mixtures.register_variant("xp3", config, data_dir=root, name="bench_xp3")
    lengths = {"inputs": 256, "targets": 64}
    baseline = time_source_only("bench_xp3_en", 20000)
    for kind in kinds:
      for packing in (False, True):
        rows.append(time_pipeline(kind, "bench_xp3", lengths, args.batch_size, args.batches,
                                  packing, index_dir))
    for position in positions:
      for kind in kinds:
        seconds = time_resume(kind, "bench_xp3", lengths, args.batch_size, position, index_dir)
        resumes.append((position, kind, seconds))
        print(f"resume {kind} at {position} examples: {seconds:.2f}s", file=sys.stderr)
  print(f"\nbaseline: checked-JSONL source alone (read + parse + check), bench_xp3_en: "
        f"{baseline['examples_per_second']:.0f} examples/s, "
        f"{baseline['cpu_microseconds_per_example']:.0f} CPU-us/example")
  print("\n| pipeline | mixture | lengths | packing | examples/s per host | tokens/s | CPU-us/example "
        "| non-pad share | x baseline (examples/s) | first batch |")
  print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    ls = demo_lengths if r["mixture"] == "demo" else lengths
    print(f"| {r['pipeline']} | {r['mixture']} | {ls['inputs']}/{ls['targets']} | "
          f"{'on' if r['packing'] else 'off'} | {r['examples_per_second']:.0f} | "
          f"{r['tokens_per_second']:.0f} | {r['cpu_microseconds_per_example']:.0f} | "
          f"{r['non_pad_share']:.1%} | "
          f"{r['examples_per_second'] / baseline['examples_per_second']:.2f} | "
          f"{r['first_batch_seconds']:.1f}s |")
  by = {(p, k): s for p, k, s in resumes}
  print("\n| resume at (examples) | tf_data: set_state to first batch | indexed | tf_data / indexed |")
  print("|---:|---:|---:|---:|")
  for p in positions:
    print(f"| {p:,} | {by[(p, 'tf_data')]:.2f}s | {by[(p, 'indexed')]:.2f}s | "
          f"{by[(p, 'tf_data')] / by[(p, 'indexed')]:.0f}x |")
  for packing in (False, True):
    old, new = (next(r for r in rows if r["pipeline"] == k and r["mixture"] == "bench_xp3"
                     and r["packing"] == packing) for k in kinds)
    print(f"indexed / tf_data throughput, bench_xp3, packing {'on' if packing else 'off'}: "
          f"{new['examples_per_second'] / old['examples_per_second']:.2f}x examples/s")
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"\n(batch {args.batch_size}, {args.batches} batches after warm-up, {os.cpu_count()} CPUs, "
        f"load average {load:.1f}; bad lines: {sum(r['bad_lines'] for r in rows)})")


if __name__ == "__main__":
  main()
