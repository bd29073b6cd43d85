"""TemplateTree: the layout of a promptsource templates tree, duplicate names as the fork resolves
them, parse errors, and the synthetic-row check (on a tiny tree, and on the real xP3 trees)."""
import os

import pytest

from xmtf_jax.prompts.template_tree import TemplateTree
from xmtf_jax.prompts.templates import TemplateError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def real_tree(name):
  for base in (os.environ.get("PROMPTSOURCE_XP3"), os.path.join(REPO_ROOT, "..", "shared", "promptsource_xp3")):
    if base and os.path.isdir(os.path.join(base, name)):
      return os.path.join(base, name)
  return None


def entry(key, name, jinja, answer_choices=None, template_id=None):
  choices = "null" if answer_choices is None else repr(answer_choices)
  return (f"  {key}: !Template\n    answer_choices: {choices}\n    id: {template_id or key}\n"
          f"    jinja: {jinja!r}\n    metadata: !TemplateMetadata\n      languages: []\n"
          f"      metrics: [Accuracy]\n      original_task: true\n    name: {name}\n    reference: ''\n")


def write(root, folder, dataset, subset, *entries, file_name="templates.yaml"):
  path = root / folder / file_name
  path.parent.mkdir(parents=True, exist_ok=True)
  head = f"dataset: {dataset}\n" + (f"subset: {subset}\n" if subset else "") + "templates:\n"
  path.write_text(head + "".join(entries), encoding="utf-8")
  return path


@pytest.fixture
def tree_root(tmp_path):
  write(tmp_path, "GEM/xlsum/swahili", "GEM/xlsum", "swahili",
        entry("a1", "summarize", "{{text}} Summary: ||| {{target}}"))
  write(tmp_path, "super_glue/copa", "super_glue", "copa",
        entry("c1", "effect", "{% if question == 'effect' %}{{premise}} so? ||| {{ answer_choices[label] }}"
                              "{% endif %}", "{{choice1}} ||| {{choice2}}"))
  write(tmp_path, "blimp", "blimp", None,
        entry("b1", "null_prompt", " ||| {{sentence_good}}"),
        entry("b2", "broken", "{{ sentence_good ||| x"))
  # Copied folder with a stale subset key: the folder names the subset, as the fork reads by path.
  write(tmp_path, "codeparrot/xlcost/Java", "codeparrot/xlcost", "Python",
        entry("x1", "translate", "{{text}} ||| {{code}}"))
  # Duplicate names: the later one in file order wins; a winner whose id is not a key is lost.
  write(tmp_path, "dup", "dup", None,
        entry("k1", "same", "first ||| {{a}}"), entry("k2", "same", "second ||| {{a}}"),
        entry("k3", "ghost", "g ||| {{a}}"), entry("k4", "ghost", "h ||| {{a}}", template_id="zz"))
  write(tmp_path, "ignored", "ignored", None, entry("i1", "x", "x ||| y"), file_name="template.yaml")
  return tmp_path


def test_layout_names_datasets_and_subsets(tree_root):
  tree = TemplateTree(tree_root)
  assert tree.subsets() == [("GEM/xlsum", "swahili"), ("blimp", None), ("codeparrot/xlcost", "Java"),
                            ("dup", None), ("super_glue", "copa")]
  [java] = tree.templates("codeparrot/xlcost", "Java")
  assert (java.dataset, java.subset, java.name) == ("codeparrot/xlcost", "Java", "translate")
  assert [t.name for t in tree.templates("blimp", None)] == ["broken", "null_prompt"]
  with pytest.raises(TemplateError, match=r"no templates for dataset 'GEM/xlsum' subset 'yoruba'.*"
                                          r"GEM/xlsum/yoruba/templates.yaml does not exist"):
    tree.templates("GEM/xlsum", "yoruba")


def test_a_checkout_root_finds_its_templates_folder(tree_root, tmp_path_factory):
  checkout = tmp_path_factory.mktemp("checkout")
  os.makedirs(checkout / "promptsource")
  os.symlink(tree_root, checkout / "promptsource" / "templates")
  tree = TemplateTree(checkout)
  assert tree.root == str(checkout / "promptsource" / "templates")
  assert ("GEM/xlsum", "swahili") in tree.subsets()


def test_duplicate_names_resolve_as_the_forks_name_to_id_lookup(tree_root):
  tree = TemplateTree(tree_root)
  [same] = tree.templates("dup", None)
  assert (same.name, same.id, same.jinja) == ("same", "k2", "second ||| {{a}}")
  assert tree.unreachable("dup", None) == ["ghost"]


def test_a_broken_file_is_an_error_naming_it(tmp_path):
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "templates.yaml").write_text("dataset: bad\ntemplates: {a: [unclosed\n")
  with pytest.raises(TemplateError, match=r"bad/templates.yaml: not a readable promptsource template file"):
    TemplateTree(tmp_path).subsets()
  with pytest.raises(TemplateError, match="templates tree not found"):
    TemplateTree(tmp_path / "absent").subsets()


def test_check_counts_renders_and_reasons(tree_root):
  report = TemplateTree(tree_root).check()
  # 6 templates reachable: summarize, effect, null_prompt, broken, translate, same.
  assert (report.files, report.templates, report.rendered) == (5, 6, 4)
  assert dict(report.reported) == {"empty inputs": 1, "render error: TemplateSyntaxError": 1}
  assert sorted(name for _, name, _ in report.failures) == ["broken", "null_prompt"]
  assert [name for _, name in report.unreachable] == ["ghost"]
  assert [os.path.relpath(f, tree_root) for f, _ in report.key_mismatches] == [
      os.path.join("codeparrot", "xlcost", "Java", "templates.yaml")]
  assert "5 files, 6 templates, 4 render" in report.summary()


@pytest.fixture(scope="module", params=[("tr13", 2597, 11403), ("xp3mt", 2685, 12159)])
def real(request):
  name, files, templates = request.param
  root = real_tree(name)
  if root is None:
    pytest.skip(f"promptsource_xp3/{name} not found (set PROMPTSOURCE_XP3 or place it at "
                "../shared/promptsource_xp3)")
  return TemplateTree(root), files, templates


def test_the_real_trees_parse_and_a_sample_renders(real):
  tree, files, templates = real
  assert len(tree.subsets()) == files
  assert sum(len(tree.templates(*key)) for key in tree.subsets()) == templates
  report = tree.check(every=40)  # a deterministic 1-in-40 sample; the full check takes ~70 s
  assert report.files == files and report.templates == (templates + 39) // 40
  assert report.rendered >= 0.95 * report.templates, report.summary()
  apps = tree.templates("codeparrot/apps", "all")
  assert [(t.name, t.id) for t in apps] == [("abovesol", "5b318b2c-7514-488f-99ed-3ca5da70e103"),
                                            ("qsol", "5b318b1c-7514-488f-99ed-3ca5da70e103")]
  assert tree.unreachable("multi_eurlex", "all_languages") == ["a_good_translation-en-pt-source+target"]
