"""Host memory of loading a t5x checkpoint against the size of the model and of its largest array.

    .venv/bin/python benchmarks/t5x_load_memory.py [--size=base] [--format=legacy|orbax]
        [--workdir=/tmp/t5x_bench] [--baseline=OTHER_CHECKOUT]

Writes a random-weight T5.1.1-shaped model (vocabulary 32128) as a t5x checkpoint, bfloat16 as t5x
stores it: `legacy` (msgpack + tensorstore zarr directories, gzip) or `orbax` (OCDBT), as
tests/t5x_fixtures.py writes them. Then, in fresh processes, peak resident memory (VmHWM) of
  1. the imports (jax with its CPU backend started, tensorstore, the checkpoint modules): the floor;
  2. `read`: every parameter read (float32, our layout) one at a time and dropped, as the export and
     a load onto an accelerator (the array leaves the host) do;
  3. `load`: `pretrained.load_params` onto the CPU device, where the loaded model itself lives in
     host memory (floor + the float32 model is then the least possible).

Measured (2 CPU cores, glibc 2.36, jax 0.10.2, tensorstore 0.1.86; `--baseline` = the reader before
issue 21's memory work, same checkpoint, same run; two runs, ~15 MB apart), T5.1.1-base: model
990 MB float32, largest array 99 MB, imports 238 MB:
                 read (above imports)                load (above imports)
  legacy before  236-253 MB = 2.39-2.57 largest      model + 221-236 MB = 2.24-2.39 largest
  legacy now     190-202 MB = 1.93-2.05 largest      model +  72-96 MB  = 0.73-0.97 largest
  orbax  before  215-217 MB = 2.18-2.20 largest      model + 186-187 MB = 1.88-1.89 largest
  orbax  now     194 MB     = 1.96 largest           model +  95 MB     = 0.96 largest
Where it goes now: tensorstore converts each chunk to float32 as it decodes it, straight into one
64-byte-aligned output, which jax's CPU backend keeps without a copy (no bfloat16 copy of the array,
no second float32 one); the read still holds ~30 MB of jax state from building the parameter plan
(abstract params), the decoded chunks in flight (a whole-array chunk, as Orbax and a one-host t5x
save write it: half the array in bfloat16) and ~40 MB that glibc keeps in tensorstore's threads'
malloc arenas (malloc_trim cannot return an arena's top). With MALLOC_MMAP_THRESHOLD_=1048576 in
the environment (no dynamic threshold: large buffers go straight back) read is 168 / 181 MB, load
model + 55 / 83 MB (legacy / orbax).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {  # d_model, d_ff, heads, layers (T5.1.1 shapes, vocabulary 32128)
    "small": (512, 1024, 6, 8), "base": (768, 2048, 12, 12)}


def child(kind: str, workdir: str, code: str) -> None:
  sys.path.insert(0, code)
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import tensorstore  # noqa: F401  (the reader imports it when it opens an array: part of the floor)
  from xmtf_jax.checkpoint import open_model_path, t5x_names
  from xmtf_jax.train import pretrained
  jax.numpy.zeros(1).block_until_ready()  # the CPU backend, as every kind starts it: the floor too
  run = os.path.join(workdir, "run")
  if kind == "read":
    layout = t5x_names.T5xLayout(open_model_path(run).t5x())
    plan = t5x_names.read_plan(layout, layout.config())
    for path in plan:
      t5x_names.read_param(plan, path)
  elif kind == "load":
    pretrained.load_params(run)
  with open("/proc/self/status") as f:  # VmHWM: this process image's peak (ru_maxrss carries the parent's)
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
  print(json.dumps({"peak_rss_bytes": peak}))


def make_checkpoint(size: str, fmt: str, workdir: str) -> dict:
  sys.path.insert(0, REPO)
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import numpy as np
  from tests import t5x_fixtures
  from xmtf_jax.model import family, layer_stacking
  from xmtf_jax.model.config import T5Config
  d_model, d_ff, heads, layers = SIZES[size]
  config = T5Config(vocab_size=32128, d_model=d_model, d_ff=d_ff, num_heads=heads, d_kv=64,
                    num_encoder_layers=layers, num_decoder_layers=layers)
  rng = np.random.default_rng(0)
  params: dict = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(family.model_for(config).abstract_params())[0]:
    node = params
    path = layer_stacking.path_keys(key_path)
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = (rng.standard_normal(leaf.shape, np.float32) * 0.05)
  tree = t5x_fixtures.t5x_tree(params)
  del params
  step_dir = os.path.join(workdir, "run", "checkpoint_1")
  if fmt == "legacy":
    t5x_fixtures.write_legacy(step_dir, tree, inline=False, dtype="bfloat16")
  else:
    t5x_fixtures.write_orbax(step_dir, tree)
  sizes = [x.size * 4 for x in jax.tree.leaves(tree)]
  stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(step_dir) for f in fs)
  return {"model_bytes": sum(sizes), "largest_tensor_bytes": max(sizes), "stored_bytes": stored}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="base", choices=sorted(SIZES))
  parser.add_argument("--format", default="legacy", choices=("legacy", "orbax"))
  parser.add_argument("--workdir", default="/tmp/t5x_bench")
  parser.add_argument("--baseline", default=None,
                      help="another checkout (e.g. `git worktree add /tmp/old main`): its reader is "
                           "measured too, on the same checkpoint, in the same run")
  parser.add_argument("--child", default=None)
  parser.add_argument("--code", default=REPO)
  args = parser.parse_args()
  if args.child:
    return child(args.child, args.workdir, args.code)
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  facts = make_checkpoint(args.size, args.format, args.workdir)
  codes = {"this checkout": REPO, **({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})}
  peaks = {}
  for label, code in codes.items():
    for kind in ("imports", "read", "load"):
      out = subprocess.run([sys.executable, __file__, f"--child={kind}", f"--workdir={args.workdir}",
                            f"--code={code}"], check=True, capture_output=True, text=True).stdout
      peaks[label, kind] = json.loads(out.strip().splitlines()[-1])["peak_rss_bytes"]
  mb = lambda b: f"{b / 1e6:.0f} MB"
  model, largest = facts["model_bytes"], facts["largest_tensor_bytes"]
  print(f"t5x {args.format} checkpoint, T5.1.1-{args.size} shapes: stored {mb(facts['stored_bytes'])} "
        f"(bfloat16), model {mb(model)} float32, largest array {mb(largest)} float32")
  for (label, kind), peak in peaks.items():
    above = peak - peaks[label, "imports"]
    extra = above - model if kind == "load" else above  # load: what is held beside the model
    print(f"  {label:13s} peak RSS {kind:8s} {mb(peak)}  (above imports: {mb(above)}; "
          f"{'model + ' if kind == 'load' else ''}{mb(extra)} = {extra / largest:.2f} largest arrays)")
  shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
