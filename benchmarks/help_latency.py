"""Seconds `python -m xmtf_jax.<command> --help` takes, against the import it avoids.

    .venv/bin/python benchmarks/help_latency.py [--repeats=3]

Each command's `--help` is answered by its shim from `xmtf_jax/cli/usage.py` before jax or TensorFlow
is imported (issue 19: it took 10-14 s). The baseline is a bare `import jax, tensorflow` in a fresh
process, measured in the same run: --help should take a small fraction of it (goal: under 1 s).
"""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "infer", "evaluate", "export_hf", "data_report", "param_count", "plan", "demo")


def seconds(args: list[str], repeats: int) -> float:
  """The fastest of `repeats` runs (the least disturbed by other work on the machine)."""
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=True, capture_output=True)
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  baseline = seconds(["-c", "import jax, tensorflow"], args.repeats)
  print(f"{'import jax, tensorflow':<28}{baseline:7.2f} s   (baseline)")
  for command in COMMANDS:
    module = "xmtf_jax.train" if command == "train" else f"xmtf_jax.{command}"
    took = seconds(["-m", module, "--help"], args.repeats)
    print(f"{command + ' --help':<28}{took:7.2f} s   ({took / baseline:.0%} of the baseline)"
          f"{'' if took < 1.0 else '   SLOWER THAN THE 1 s GOAL'}")


if __name__ == "__main__":
  main()
