"""Host memory of `python -m xmtf_jax.export_hf` against the size of the model it exports.

    .venv/bin/python benchmarks/export_memory.py [--size=base] [--workdir=/tmp/export_bench]

Saves a random-weight mT5 of the given size as a training checkpoint (orbax, as the trainer writes
it), then in fresh processes measures peak resident memory (VmHWM) of
  1. the bare imports (jax, orbax, seqio, the export modules): the floor;
  2. loading the whole checkpoint into host memory (what a non-streaming export would need);
  3. the streaming export (--noverify), float32 and bfloat16.
The export should sit near floor + ~2 copies of the largest tensor (the embedding or the LM head:
read, then transposed), far below floor + the model.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {  # d_model, d_ff, heads, layers (mT5 shapes; vocabulary 250112)
    "small": (512, 1024, 6, 8), "base": (768, 2048, 12, 12), "large": (1024, 2816, 16, 24)}


def child(kind: str, workdir: str) -> None:
  sys.path.insert(0, REPO)
  os.environ["JAX_PLATFORMS"] = "cpu"
  from xmtf_jax.train import pretrained
  from xmtf_jax.cli import export_hf
  from xmtf_jax.hf import sources as export_sources  # noqa: F401
  if kind == "load":
    pretrained.load_params(os.path.join(workdir, "run"))
  elif kind.startswith("export"):
    dtype = kind.split("_")[1]
    out = os.path.join(workdir, f"hf_{dtype}")
    shutil.rmtree(out, ignore_errors=True)
    assert export_hf.main([f"--checkpoint_dir={workdir}/run", f"--output_dir={out}", "--noverify",
                           f"--dtype={dtype}"]) == 0
  # VmHWM (peak resident set of this process image); ru_maxrss would include the parent's peak,
  # which Linux carries across fork + exec.
  with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
  print(json.dumps({"peak_rss_bytes": peak}))


def make_checkpoint(size: str, workdir: str) -> dict:
  sys.path.insert(0, REPO)
  import jax
  import numpy as np
  import sentencepiece as spm
  import io
  from xmtf_jax.train import checkpoints
  from xmtf_jax.model.config import T5Config
  from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
  d_model, d_ff, heads, layers = SIZES[size]
  config = T5Config(vocab_size=250112, d_model=d_model, d_ff=d_ff, num_heads=heads, d_kv=64,
                    num_encoder_layers=layers, num_decoder_layers=layers)
  params = EncoderDecoderModel(config).init_params(jax.random.key(0))
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["a small text to train on"] * 50),
                                 model_writer=model, vocab_size=30, hard_vocab_limit=False,
                                 pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  vocab = os.path.join(workdir, "spm.model")
  open(vocab, "wb").write(model.getvalue())
  saver = checkpoints.Checkpointer(os.path.join(workdir, "run"), save_period=1, async_save=False)
  saver.save(1, params, {"count": np.zeros(())}, {"t5_config": config.to_dict(),
                                                   "vocabulary_path": vocab}, {}, force=True)
  saver.close()
  sizes = [x.size * 4 for x in jax.tree.leaves(params)]
  return {"model_bytes": sum(sizes), "largest_tensor_bytes": max(sizes)}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="base", choices=sorted(SIZES))
  parser.add_argument("--workdir", default="/tmp/export_bench")
  parser.add_argument("--child", default=None)
  args = parser.parse_args()
  if args.child:
    return child(args.child, args.workdir)
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  facts = make_checkpoint(args.size, args.workdir)
  for kind in ("imports", "load", "export_float32", "export_bfloat16"):
    out = subprocess.run([sys.executable, __file__, f"--child={kind}", f"--workdir={args.workdir}"],
                         check=True, capture_output=True, text=True).stdout
    facts[kind] = json.loads(out.strip().splitlines()[-1])["peak_rss_bytes"]
  gb = lambda b: f"{b / 1e9:.2f} GB"
  print(f"mT5-{args.size}: model {gb(facts['model_bytes'])} float32, largest tensor "
        f"{gb(facts['largest_tensor_bytes'])}")
  for kind in ("imports", "load", "export_float32", "export_bfloat16"):
    print(f"  peak RSS {kind:16s} {gb(facts[kind])}  (above imports: "
          f"{gb(facts[kind] - facts['imports'])})")
  shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
