"""What every command prints besides its work: `--help` at once (without importing jax or TensorFlow),
no C++ start-up lines from TensorFlow on stderr, a Hub id refused with how to download it, and no
config.gin left behind by a run that failed before it started (issue 19, items 12 and 13)."""
import os
import subprocess
import sys
import textwrap

import gin
import pytest

from xmtf_jax.checkpoint import hub_ids
from xmtf_jax.cli import quiet_start, usage
from xmtf_jax.hf import safetensors_writer
from xmtf_jax.train import pretrained

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("train", "infer", "evaluate", "export_hf", "data_report", "param_count", "plan", "demo",
            "build_xp3")
NOISE = ("All log messages before absl::InitializeLog()", "cudart_stub.cc", "failed call to cuInit")


def _python(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu", "XMTF_CPU_MALLOC": "0"}
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_help_of_every_command_imports_neither_jax_nor_tensorflow():
  code = textwrap.dedent("""
      import runpy, sys
      for command in sys.argv[1:]:
        module = "xmtf_jax.train" if command == "train" else f"xmtf_jax.{command}"
        sys.argv = [module, "--help"]
        try:
          runpy.run_module(module, run_name="__main__")
          code = None
        except SystemExit as e:
          code = e.code
        heavy = sorted(m for m in ("jax", "tensorflow", "seqio", "torch") if m in sys.modules)
        print(f"@@ {command} exit={code} heavy={heavy}")
      """)
  proc = _python(code, *COMMANDS)
  assert proc.returncode == 0, proc.stderr
  for command in COMMANDS:
    assert f"@@ {command} exit=0 heavy=[]" in proc.stdout, proc.stdout[-3000:]
  assert "--topology" in proc.stdout and "--hbm_gib" in proc.stdout and "--checkpoint_dir" in proc.stdout and "--mesh" in proc.stdout
  assert "--check_templates" in proc.stdout  # build_xp3
  assert proc.stdout.count("gin settings (t5x style, repeatable)") == 5  # the gin-only commands
  assert proc.stderr == ""


def test_fast_help_is_the_help_the_commands_parse_with():
  assert usage.EXPORT_DTYPES == tuple(sorted(safetensors_writer.DTYPES))
  assert usage.EXPORT_DEFAULT_MAX_SHARD_SIZE == safetensors_writer.DEFAULT_MAX_SHARD_SIZE
  from xmtf_jax.cli import errors, infer
  assert usage.gin_usage() == errors.GIN_USAGE
  assert usage.help_text("infer").startswith(infer.__doc__.rstrip())


def test_startup_noise_is_dropped_and_everything_else_kept():
  code = textwrap.dedent("""
      import os, sys
      from xmtf_jax.cli import quiet_start
      with quiet_start.drop_lines():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 00:00:1796615247.628316   20790 cudart_stub.cc:31] Could not find cuda "
                    b"drivers on your machine, GPU will not be used.\\n")
        os.write(2, b"E0000 00:00:1796615687.148912   28740 cuda_platform.cc:52] failed call to cuInit: "
                    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\\n")
        os.write(2, b"E0000 00:00:1.2 7 cuda_platform.cc:52] a real error about cuInit\\n")
        print("a Python warning", file=sys.stderr)
        os.write(2, b"a line without its end")
      print("after", file=sys.stderr)
      """)
  proc = _python(code, timeout=60)
  assert proc.returncode == 0
  assert proc.stderr == ("E0000 00:00:1.2 7 cuda_platform.cc:52] a real error about cuInit\n"
                         "a Python warning\na line without its endafter\n"), proc.stderr


def test_a_command_shows_its_error_but_not_tensorflows_startup_lines():
  proc = _python("from xmtf_jax.infer import main; raise SystemExit(main())",
                 "--gin_file=gin/models/mt5_tiny.gin", "--gin.NOPE=1")
  assert proc.returncode != 0
  assert "--gin.NOPE: no gin file given defines the macro NOPE" in proc.stderr
  assert not [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)], proc.stderr


# ---- Hub ids ----------------------------------------------------------------------------------------

def test_hub_ids_are_told_apart_from_paths(tmp_path, monkeypatch):
  assert hub_ids.looks_like_hub_id("google/mt5-small") and hub_ids.looks_like_hub_id("bigscience/mt0-xxl")
  for path in ("/models/mt5", "models", "./google/mt5-small", "gs://b/mt5", "a/b/c", "~/mt5/x", ""):
    assert not hub_ids.looks_like_hub_id(path), path
  monkeypatch.chdir(tmp_path)
  (tmp_path / "google" / "mt5-small").mkdir(parents=True)
  assert not hub_ids.looks_like_hub_id("google/mt5-small")  # a local folder of that name wins


def test_a_hub_id_not_in_the_cache_offline_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache; HF_HUB_OFFLINE=1 (conftest)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError) as raised:
    pretrained.load_pretrained("google/mt5-small")
  message = str(raised.value)
  assert "google/mt5-small: a Hugging Face Hub id" in message and "HF_HUB_OFFLINE is set" in message
  assert "`hf download google/mt5-small`" in message and "local folder" in message
  assert "\n" not in message


def test_a_failed_start_leaves_no_config_gin(tmp_path, capsys):
  from xmtf_jax.cli import errors, train
  gin.clear_config()
  model_dir = tmp_path / "run"
  try:
    code = errors.run(train.main, train.__doc__, [
        "--gin_file=gin/runs/demo.gin", f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.INITIAL_CHECKPOINT_PATH='google/mt5-small'", "--gin.EVAL_BATCHES=0"])
  finally:
    gin.clear_config()
  assert code == 2
  assert "INITIAL_CHECKPOINT_PATH='google/mt5-small'" in capsys.readouterr().err
  assert not (model_dir / "config.gin").exists()
  assert not model_dir.exists(), sorted(os.listdir(model_dir))



def test_verifying_our_export_does_not_warn_about_tied_weights(tmp_path, capfd):
  """transformers 5.23 forces MT5Config.tie_word_embeddings=True over config.json's False and warns
  about our (correctly) separate lm_head on every load; verify checks untying itself."""
  import jax
  import sentencepiece as spm
  from xmtf_jax.hf import export as hf_export
  from xmtf_jax.model.config import T5Config
  from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
  vocabulary = os.path.join(REPO_ROOT, "data/demo/sentencepiece.model")
  size = spm.SentencePieceProcessor(model_file=vocabulary).get_piece_size()
  config = T5Config(vocab_size=size, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=1,
                    num_decoder_layers=1, dropout_rate=0.0)
  params = EncoderDecoderModel(config).init_params(jax.random.key(0))
  result = hf_export.export(config, params, vocabulary, str(tmp_path / "hf"), verify=True)
  assert result.verification is not None and result.verification.ok, result.verification.summary()
  captured = capfd.readouterr()
  assert "tie_word_embeddings" not in captured.out + captured.err, captured.err[-2000:]


def test_a_model_dir_that_is_a_file_is_one_paragraph(tmp_path, capsys):
  from xmtf_jax.cli import errors, train
  model_dir = tmp_path / "afile"
  model_dir.write_text("")
  gin.clear_config()
  try:
    code = errors.run(train.main, train.__doc__, [
        "--gin_file=gin/runs/demo.gin", f"--gin.MODEL_DIR='{model_dir}'", "--gin.EVAL_BATCHES=0"])
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert code == 2 and "is a file, not a directory" in " ".join(err.split()), err
  assert "Traceback" not in err
  assert model_dir.read_text() == ""
