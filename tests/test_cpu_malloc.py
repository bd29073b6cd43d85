"""cpu_malloc: CLI re-execution with glibc malloc settings, only on CPU-only hosts and once."""
import os
import subprocess
import sys

import pytest

from xmtf_jax.cli import cpu_malloc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
from xmtf_jax.cli import cpu_malloc
print("start", os.getpid(), flush=True)
cpu_malloc.reexec_tuned(None, sys.argv)
print("args", sys.argv[1:])
print("env", [os.environ.get(k) for k in sorted(cpu_malloc.TUNED_ENV)])
"""


def _run(tmp_path, **env):
  script = tmp_path / "probe.py"
  script.write_text(SCRIPT.format(root=REPO_ROOT))
  base = {k: v for k, v in os.environ.items()
          if k not in cpu_malloc.TUNED_ENV and k not in ("XMTF_CPU_MALLOC", "JAX_PLATFORMS")}
  out = subprocess.run([sys.executable, str(script), "--flag=1", "x"], env={**base, **env},
                       capture_output=True, text=True, check=True).stdout.splitlines()
  return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_cpu_only_host_reexecutes_once_with_the_settings_and_the_same_arguments(tmp_path):
  out = _run(tmp_path, JAX_PLATFORMS="cpu")
  starts = [line for line in out if line.startswith("start")]
  assert len(starts) == 2 and starts[0] == starts[1]  # exec: same pid, ran twice, not a third time
  assert "args ['--flag=1', 'x']" in out
  assert f"env {[cpu_malloc.TUNED_ENV[k] for k in sorted(cpu_malloc.TUNED_ENV)]}" in out


@pytest.mark.parametrize("env", [{"JAX_PLATFORMS": "cpu", "XMTF_CPU_MALLOC": "0"},
                                 {"JAX_PLATFORMS": "tpu"}, {"JAX_PLATFORMS": "cuda,cpu"}])
def test_opt_out_and_accelerator_hosts_are_left_alone(tmp_path, env):
  out = _run(tmp_path, **env)
  assert len([line for line in out if line.startswith("start")]) == 1
  assert "env [None, None, None]" in out
