"""The promptsource template reader: parsing, promptsource rendering semantics, errors.

Hand-written fixtures in tests/fixtures/promptsource are always tested; the real template files of
the four held-out sets are an extra check when a copy is reachable (env PROMPTSOURCE_TEMPLATES or
../shared/promptsource_templates next to the repository).
"""
import glob
import os

import pytest

from xmtf_jax.prompts import templates as T

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "promptsource")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def real_templates_root():
  for candidate in (os.environ.get("PROMPTSOURCE_TEMPLATES"),
                    os.path.join(REPO_ROOT, "..", "shared", "promptsource_templates")):
    if candidate and os.path.isdir(candidate):
      return os.path.abspath(candidate)
  return None


def fixture(dataset, subset="en"):
  return T.load_templates(T.templates_file(FIXTURES, dataset, subset))


def by_name(templates):
  return {t.name: t for t in templates}


def test_reads_template_fields_and_custom_tags():
  templates = by_name(fixture("xnli"))
  assert sorted(templates) == ["toy arrow", "toy generate", "toy support"]
  support = templates["toy support"]
  assert support.id == "0a0a0a0a-0000-4000-8000-000000000001"
  assert support.answer_choices == "Yes ||| Perhaps ||| No"
  assert support.metadata == {"choices_in_prompt": False, "languages": ["en"],
                              "metrics": ["Accuracy"], "original_task": True}
  assert support.dataset == "xnli" and support.subset == "en"
  assert support.source.endswith(os.path.join("xnli", "en", "templates.yaml"))
  assert templates["toy generate"].answer_choices is None


def test_renders_input_target_and_choices_like_promptsource():
  templates = by_name(fixture("xnli"))
  example = {"premise": "The cat sleeps.", "hypothesis": "An animal rests.", "label": 0}
  rendered = templates["toy support"].render(example)
  # YAML folds the single-quoted block's blank lines into "\n"; the target part is stripped.
  assert rendered.inputs == "Text: The cat sleeps.\nClaim: An animal rests.\nDoes the text support the claim?"
  assert rendered.target == "Yes"
  assert rendered.answer_choices == ("Yes", "Perhaps", "No")
  arrow = templates["toy arrow"].render(dict(example, label=2))
  assert arrow.inputs == ("The cat sleeps. => An animal rests.? Options: entailed, undetermined, "
                          "contradicted")
  assert arrow.target == "contradicted"
  generate = templates["toy generate"].render(example)
  assert generate == T.RenderedPrompt("Write a sentence that follows from: The cat sleeps.",
                                      "An animal rests.", None)


def test_answer_choices_rendered_from_example_fields():
  template = by_name(fixture("Muennighoff/xstory_cloze"))["toy ending"]
  example = {"input_sentence_1": "A.", "input_sentence_2": "B.", "input_sentence_3": "C.",
             "input_sentence_4": "D.", "sentence_quiz1": "E1.", "sentence_quiz2": "E2.",
             "answer_right_ending": 2}
  rendered = template.render(example)
  assert rendered.inputs == "A. B. C. D.\nHow does it end?\n- E1.\n- E2."
  assert rendered.target == "E2." and rendered.answer_choices == ("E1.", "E2.")


def test_winograd_style_conditional_target_is_stripped():
  templates = by_name(fixture("Muennighoff/xwinograd"))
  example = {"sentence": "Ann thanked Bea because _ helped.", "option1": "Ann", "option2": "Bea",
             "answer": "2"}
  assert templates["toy who"].render(example).target == "Bea"
  assert templates["toy right or wrong"].render(example).target == "Wrong"


def test_template_that_does_not_apply_renders_none():
  templates = by_name(fixture("xcopa"))
  cause = {"premise": "The glass broke.", "choice1": "It fell.", "choice2": "It was full.",
           "question": "cause", "label": 0}
  assert templates["toy effects only"].render(cause) is None
  assert templates["toy why or next"].render(cause).inputs == "The glass broke. Why?"
  effect = dict(cause, question="effect", label=1)
  assert templates["toy effects only"].render(effect).inputs == (
      'The glass broke. Then: "It fell." or "It was full."?')


def test_separator_inside_example_text_does_not_split():
  template = by_name(fixture("xnli"))["toy support"]
  rendered = template.render({"premise": "a ||| b", "hypothesis": "c", "label": 1})
  assert rendered.inputs.startswith("Text: a ||| b\n") and rendered.target == "Perhaps"


def test_each_variable_is_truncated_to_2048_characters():
  template = by_name(fixture("xnli"))["toy support"]
  long_premise = " ".join(["word"] * 1000)  # 4999 characters
  rendered = template.render({"premise": long_premise, "hypothesis": "h", "label": 0})
  shown = rendered.inputs.split("\n")[0][len("Text: "):]
  assert shown.endswith("...") and len(shown) <= 2048
  assert shown[:-3] == long_premise[:2045].rsplit(" ", 1)[0]
  # Within the tolerance (5 characters) nothing is cut.
  near = "x" * 2050
  assert template.render({"premise": near, "hypothesis": "h", "label": 0}).inputs.startswith(
      f"Text: {near}\n")


@pytest.mark.parametrize("example, message", [
    ({"premise": "p", "label": 0}, "'hypothesis' is undefined"),
    ({"premise": "p", "hypothesis": "h", "label": 3}, "no element 3"),
])
def test_render_errors_name_template_file_and_example(example, message):
  template = by_name(fixture("xnli"))["toy support"]
  with pytest.raises(T.TemplateError) as info:
    template.render(example, example_id="dev.jsonl:7")
  text = str(info.value)
  assert "'toy support'" in text and template.source in text and "dev.jsonl:7" in text
  assert message in text


def test_reserved_answer_choices_field_is_an_error():
  template = by_name(fixture("xnli"))["toy support"]
  with pytest.raises(T.TemplateError, match="reserve"):
    template.render({"premise": "p", "hypothesis": "h", "label": 0, "answer_choices": "x"})


def test_bad_files_name_the_file(tmp_path):
  unsafe = tmp_path / "unsafe.yaml"
  unsafe.write_text("dataset: x\ntemplates:\n  a: !!python/object/apply:os.system ['true']\n")
  with pytest.raises(T.TemplateError, match="unsafe.yaml"):
    T.load_templates(unsafe)
  no_name = tmp_path / "no_name.yaml"
  no_name.write_text("dataset: x\ntemplates:\n  a: !Template\n    jinja: 'hi ||| there'\n")
  with pytest.raises(T.TemplateError, match=r"no_name.yaml, template a: missing or non-text 'name'"):
    T.load_templates(no_name)
  syntax = tmp_path / "syntax.yaml"
  syntax.write_text("dataset: x\ntemplates:\n  a: !Template\n    name: broken\n"
                    "    jinja: '{{ premise ||| x'\n    answer_choices: null\n")
  [template] = T.load_templates(syntax)
  with pytest.raises(T.TemplateError, match=r"'broken'.*syntax.yaml.*syntax error"):
    template.render({"premise": "p"})
  with pytest.raises(T.TemplateError, match="template file not found"):
    T.load_templates(tmp_path / "missing.yaml")


def test_templates_file_finds_checkout_layouts(tmp_path):
  nested = tmp_path / "checkout" / "promptsource" / "templates" / "xnli" / "en"
  nested.mkdir(parents=True)
  (nested / "templates.yaml").write_text("dataset: xnli\nsubset: en\ntemplates: {}\n")
  assert T.templates_file(tmp_path / "checkout", "xnli", "en") == str(nested / "templates.yaml")
  with pytest.raises(T.TemplateError, match="no promptsource templates for dataset 'xcopa'"):
    T.templates_file(tmp_path / "checkout", "xcopa", "en")


def test_translation_suffixes():
  templates = by_name(fixture("xnli", "fr"))
  assert templates["toy support_frmt"].translation == ("fr", "mt")
  assert templates["toy support_frht"].translation == ("fr", "ht")
  assert templates["toy support_frht"].base_name == "toy support"
  assert by_name(fixture("xnli"))["toy support"].translation is None


# ---- the real promptsource files of the held-out sets (extra check; skipped when absent) ----

# One hand-written example per dataset, in its published (HF datasets) field layout.
HAND_WRITTEN_EXAMPLES = {
    "xnli": {"premise": "The museum opens at nine.", "hypothesis": "The museum opens in the morning.",
             "label": 0},
    "xcopa": {"premise": "The road was icy.", "choice1": "The car slid.", "choice2": "The sun rose.",
              "question": "effect", "label": 0, "idx": 0},
    "Muennighoff/xstory_cloze": {
        "story_id": "s1", "input_sentence_1": "Mia planted seeds.", "input_sentence_2": "She watered them.",
        "input_sentence_3": "Weeks passed.", "input_sentence_4": "Sprouts appeared.",
        "sentence_quiz1": "Mia was happy.", "sentence_quiz2": "Mia hated plants.",
        "answer_right_ending": 1},
    "Muennighoff/xwinograd": {"sentence": "The bag would not fit in the box because _ was too big.",
                              "option1": "the bag", "option2": "the box", "answer": "1"},
}


def _real_files():
  root = real_templates_root()
  if root is None:
    return []
  return sorted(glob.glob(os.path.join(root, "**", "templates.yaml"), recursive=True))


@pytest.mark.skipif(real_templates_root() is None,
                    reason="real promptsource templates not found (set PROMPTSOURCE_TEMPLATES or "
                           "place them at ../shared/promptsource_templates); the hand-written "
                           "fixtures above still test the reader")
def test_every_real_template_file_loads_and_renders():
  files = _real_files()
  assert len(files) >= 40
  rendered_count = 0
  for path in files:
    templates = T.load_templates(path)
    assert templates, path
    for template in templates:
      example = HAND_WRITTEN_EXAMPLES[template.dataset]
      rendered = template.render(example, example_id=path)
      if rendered is None:  # e.g. an XCOPA prompt written only for "cause" questions
        rendered = template.render(dict(example, question="cause"))
      assert rendered.inputs, (path, template.name)
      assert rendered.target in rendered.answer_choices, (path, template.name, rendered)
      # Every hand-written example's correct answer is the first choice.
      assert rendered.answer_choices.index(rendered.target) == 0, (path, template.name)
      rendered_count += 1
  assert rendered_count >= 290


def test_random_choice_depends_on_the_example_not_on_what_was_rendered_before():
  template = T.PromptTemplate(
      id="c1", name="pick", jinja="{{ ['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H'] | choice }} {{ x }} ||| y",
      answer_choices=None, metadata={}, reference="", dataset="toy", subset=None, source="inline")
  examples = [{"x": str(i)} for i in range(20)]
  first = [template.render(e).inputs for e in examples]
  template.render({"x": "something else"})  # an extra render in between changes nothing
  assert [template.render(e).inputs for e in reversed(examples)] == first[::-1]
  assert len({text.split()[0] for text in first}) > 1  # still a choice: examples differ
