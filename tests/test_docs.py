"""The docs stay true: every module, name, gin name, file and link they mention resolves in the code.

The checker (scripts/check_docs.py) reads the code with `ast`; these tests run it on the real docs
(no findings) and on a copy of the repository with one stale statement injected at a time (exactly
that finding, with its doc and line).
"""
import glob
import os
import shutil
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
import check_docs  # noqa: E402  (scripts/ is not a package)


def test_the_docs_name_only_what_exists():
  findings = check_docs.check(REPO_ROOT)
  assert not findings, "stale names in the docs:\n" + "\n".join(map(str, findings))


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("repo") / "xmtf_jax_copy")
  def ignore(folder, names):  # the code, gin files and docs; not the demo data, runs or caches
    top = {".git", ".venv", "runs", "data"} if os.path.samefile(folder, REPO_ROOT) else set()
    return [n for n in names if n in top or n in ("__pycache__", ".pytest_cache")]
  shutil.copytree(REPO_ROOT, root, ignore=ignore)
  project = check_docs.Project(root)
  originals = {check_docs.module_name(path, REPO_ROOT) for tree in check_docs.PY_TREES
               for path in glob.glob(os.path.join(REPO_ROOT, tree, "**", "*.py"), recursive=True)}
  assert set(project.modules) == originals  # the copy holds every module the checker resolves against
  return root, project


# (text injected as a new last line of a doc, the name reported, words of the reason)
STALE = [
    ("docs/architecture.md", "The loop is `xmtf_jax.train.loop.train_forever`.",
     "xmtf_jax.train.loop.train_forever", "defines no train_forever"),
    ("docs/architecture.md", "| `xmtf_jax/train/loop.py` | `TrainConfig.no_such_knob` |",
     "TrainConfig.no_such_knob", "has no member no_such_knob"),
    ("docs/architecture.md", "| `xmtf_jax/model/scoring.py` | `score_batch`, `BatchFunction` |",
     "BatchFunction", "defined in xmtf_jax/parallel/batch_function.py, not in this row"),
    ("docs/architecture.md", "| `xmtf_jax/train/pretrained.py` | `default_mesh` for the entry points |",
     "default_mesh", "the code defines and mentions no such name"),
    ("docs/architecture.md", "Tasks are looked up with `data_tasks.get_mixture_or_task`.",
     "data_tasks.get_mixture_or_task", "alias of xmtf_jax.data.tasks"),
    ("docs/architecture.md", "| `xmtf_jax/evaluation/tasks.py`, `eval_results.py` | results |",
     "eval_results.py", "no such file in xmtf_jax/evaluation/"),
    ("README.md", "See `data/pipelines.py`.", "data/pipelines.py", "no such file"),
    ("README.md", "Set `--gin.TrainConfig.num_data_shard=2`.", "TrainConfig.num_data_shard",
     "has no parameter or field num_data_shard"),
    ("docs/data.md", "Call `mixtures.register_variants(\"xp3\")`.", "mixtures.register_variants",
     "defines no register_variants"),
    ("docs/reference.md", "```python\nfrom xmtf_jax.model import scoring\n"
     "scorer = scoring.make_choice_scorer(model, params)\n```", "scoring.make_choice_scorer",
     "defines no make_choice_scorer"),
    ("docs/reference.md", "```python\nfrom xmtf_jax.inference import generation\n"
     "generation.DecodingConfig(beams=4)\n```", "generation.DecodingConfig",
     "takes no keyword argument beams"),
    ("docs/configuration.md", "```bash\npython -m xmtf_jax.train --gin.TRAIN_STEP=10\n```",
     "--gin.TRAIN_STEP", "no gin file sets or uses this macro"),
    ("docs/configuration.md", "```\nTrainConfig.eval_hook_factories = [@zero_shot_hook]\n```",
     "@zero_shot_hook", "not a registered gin configurable"),
    ("docs/configuration.md", "| `infer.*` | default | meaning |\n|---|---|---|\n| `beams` | 4 | x |",
     "beams", "no parameter or field of infer"),
    ("docs/configuration.md", "| macro | default | meaning |\n|---|---|---|\n| `TRAIN_STEP` | 1 | x |",
     "TRAIN_STEP", "no gin file sets or uses this macro"),
    ("docs/architecture.md", "| `mixtures/` | `config.py` (`DataConfig`), `demo.py` |", "config.py",
     "no such file in mixtures/"),
    ("docs/architecture.md", "| `xmtf_jax/train/pretrained.py` | `hf_reader` folders |", "hf_reader",
     "alias of xmtf_jax.hf.reader"),
    ("README.md", "Decoding: `model.predict_batch(params, tokens)`.", "model.predict_batch",
     "has no member predict_batch"),
]

DEAD_LINKS = [
    ("docs/configuration.md", "The recipe: [training.md](training.md).", "training.md",
     "link target docs/training.md does not exist"),
    ("docs/data.md", "Knobs: [configuration.md](configuration.md#data-knobs).",
     "configuration.md#data-knobs", "has no heading with anchor #data-knobs"),
    ("README.md", "See docs/reference.md#no-such-section.", "docs/reference.md#no-such-section",
     "has no heading with anchor #no-such-section"),
]


@pytest.mark.parametrize("doc,injected,name,why", STALE + DEAD_LINKS,
                         ids=[case[2] for case in STALE + DEAD_LINKS])
def test_the_checker_finds_an_injected_stale_statement(repo_copy, doc, injected, name, why):
  root, project = repo_copy
  path = os.path.join(root, doc)
  original = open(path, encoding="utf-8").read()
  before = {(f.name, f.why) for f in check_docs.check(root, [path], project)}  # none once the docs are true
  try:
    with open(path, "a", encoding="utf-8") as f:
      f.write("\n" + injected + "\n")
    findings = check_docs.check(root, [path], project)
  finally:
    with open(path, "w", encoding="utf-8") as f:
      f.write(original)
  findings = [f for f in findings if (f.name, f.why) not in before]
  first_line = original.count("\n") + 2
  assert [(f.doc, f.name) for f in findings] == [(doc, name)], "\n".join(map(str, findings))
  assert first_line <= findings[0].line <= first_line + injected.count("\n")
  assert why in findings[0].why
  assert str(findings[0]).startswith(f"{doc}:{findings[0].line}: `{name}`: ")


def test_anchors_follow_githubs_rule():
  assert check_docs.slug("Data (`gin/mixtures/data_defaults.gin`, included by every mixture file)") == \
      "data-ginmixturesdata_defaultsgin-included-by-every-mixture-file"
  assert check_docs.slug("Will it fit? Plan a pod run without the pod") == \
      "will-it-fit-plan-a-pod-run-without-the-pod"


def test_prose_and_other_libraries_are_not_names_of_the_project(tmp_path):
  """The grammar's limits, each of which once looked like a finding: tensor and task names, other
  libraries' modules and classes, variables of the examples, user placeholders, file names."""
  doc = tmp_path / "prose.md"
  doc.write_text(
      "`lm_head.weight`, `xp3_code.codeparrot_train`, `tf.io.gfile`, `jax.make_array_from_callback`,\n"
      "`seqio.Mixture.get_dataset`, `Mixture.get_dataset`, `model.safetensors`, `config.json`,\n"
      "`my_tasks.py`, `@my_module.my_factory`, `mixtures.add_jsonl_task(\"qa\", files, vocab=v)`,\n"
      "`model.logits(params, tokens)`, `e.g.`, `os.path.exists/isdir`, `np.asarray`.\n",
      encoding="utf-8")
  assert check_docs.check(REPO_ROOT, [str(doc)]) == []


def test_the_command_prints_doc_line_name_and_reason(repo_copy, capsys):
  root, _ = repo_copy
  path = os.path.join(root, "docs", "gcs.md")
  original = open(path, encoding="utf-8").read()
  try:
    with open(path, "a", encoding="utf-8") as f:
      f.write("\nSee [the layer](paths.md#the-layer).\n")
    status = check_docs.main(["check_docs.py", root])
  finally:
    with open(path, "w", encoding="utf-8") as f:
      f.write(original)
  line = original.count("\n") + 2
  assert status == 1
  assert capsys.readouterr().out.splitlines()[-1] == (
      f"docs/gcs.md:{line}: `paths.md#the-layer`: link target docs/paths.md does not exist")
