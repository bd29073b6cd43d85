"""The project installs as a package: `import xmtf_jax` and the `xmtf-*` commands work outside the
repository (README "Install")."""
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_package_imports_and_runs_its_commands_from_elsewhere(tmp_path):
  target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
  elsewhere.mkdir()
  # A real (non-editable) build of pyproject.toml; dependencies are this venv's.
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-build-isolation", "--target", str(target), REPO_ROOT],
                 check=True, cwd=tmp_path, capture_output=True, text=True)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(target)
  probe = subprocess.run(
      [sys.executable, "-c", "import xmtf_jax, mixtures; print(xmtf_jax.__file__); "
       "print(xmtf_jax.load_pretrained.__module__, xmtf_jax.T5Config().d_model)"],
      cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
  assert probe.stdout.splitlines()[0].startswith(str(target)), probe.stdout
  assert "xmtf_jax.train.pretrained" in probe.stdout or "pretrained" in probe.stdout
  scripts = sorted(os.listdir(target / "bin"))
  assert {"xmtf-train", "xmtf-infer", "xmtf-evaluate", "xmtf-export-hf", "xmtf-plan",
          "xmtf-param-count", "xmtf-data-report", "xmtf-demo"} <= set(scripts), scripts
  helped = subprocess.run([str(target / "bin" / "xmtf-infer"), "--help"], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
  assert helped.returncode == 0 and "gin settings" in helped.stdout, helped.stderr[-2000:]
