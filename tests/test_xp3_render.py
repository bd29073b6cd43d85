"""xP3 rendering follows the promptsource fork (tr13) that built xP3: truncation, strips, drops, choice."""
import random

import jinja2
import pytest

from xmtf_jax.prompts.templates import PromptTemplate
from xmtf_jax.prompts.xp3_render import Dropped, Rendered, render_xp3


def template(jinja, answer_choices=None):
  return PromptTemplate(id="t1", name="toy", jinja=jinja, answer_choices=answer_choices, metadata={},
                        reference="", dataset="toy", subset=None, source="toy/templates.yaml")


def render(jinja, example, answer_choices=None, code=False, seed=0):
  return render_xp3(template(jinja, answer_choices), example, code=code, rng=random.Random(seed))


def words(n_chars):
  """n_chars of 'abcd abcd ...' (spaces every 5 characters, so truncate cuts at a word boundary)."""
  return ("abcd " * (n_chars // 5 + 1))[:n_chars]


def test_every_output_is_truncated_like_jinja2_truncate_2048_with_its_leeway():
  reference = jinja2.Environment().from_string("{{ text | truncate(2048) }}")
  long, limit = words(2054), words(2053)
  out = render("{{text}} ||| t", {"text": long})
  assert out.inputs == reference.render(text=long)
  assert out.inputs == words(2044) + "..."  # cut at the last space before 2045, then "..."
  assert len(out.inputs) == 2047
  # 2048 + leeway 5 = 2053 characters pass whole.
  assert render("{{text}} ||| t", {"text": limit}).inputs == limit
  # Targets are truncated too; answer_choices are not (only the template text is rewritten).
  assert render("x ||| {{text}}", {"text": long}).targets == words(2044) + "..."
  kept = render("x ||| {{ answer_choices[0] | length }}", {"text": long},
                answer_choices="{{text}} ||| b")
  assert kept.targets == "2054"


def test_string_filter_and_undefined_variables_render_like_the_fork():
  assert render("{{a}} {{b}} {{missing}} ||| {{c}}", {"a": None, "b": [1, "x"], "c": 2}) == \
      Rendered(inputs="None [1, 'x']", targets="2")
  assert render("{{missing}} ||| y", {}) == Dropped("empty inputs")


def test_non_code_strips_every_part():
  assert render("  \n Q: {{q}} \n|||\n  A  \n", {"q": "why"}) == Rendered("Q: why", "A")


def test_code_keeps_the_connection_and_applies_the_single_space_rule():
  # Input ends with a space and the target starts with one: one trailing space goes; the target
  # keeps its leading whitespace and loses its trailing whitespace; the input is left-stripped only.
  assert render("\n  Write Python: ||| {{s}}", {"s": "  def f():\n  return 1\n\n"}, code=True) == \
      Rendered(inputs="Write Python:", targets="   def f():\n  return 1")
  assert render("  Code:  |||{{s}}", {"s": "\nx = 1 "}, code=True) == \
      Rendered(inputs="Code:  ", targets="\nx = 1")
  # Two trailing spaces and a target starting with a space: only one is removed.
  assert render("Code:  ||| x", {}, code=True) == Rendered(inputs="Code: ", targets=" x")
  # The same render outside code is stripped on both sides.
  assert render("Code:  ||| x", {}) == Rendered(inputs="Code:", targets="x")


def test_code_with_an_empty_input_fails_as_in_the_fork():
  # The fork indexes the input's last character unguarded: IndexError, and the build skipped
  # the whole template.
  assert render("||| x", {}, code=True) == Dropped("render error: IndexError", skips_template=True)


def test_pipes_in_top_level_strings_are_masked_nested_ones_are_not():
  assert render("{{q}} ||| {{a}}", {"q": "a|||b", "a": "c ||| d"}) == Rendered("a|||b", "c ||| d")
  assert render("{{q[0]}} ||| {{a}}", {"q": ["a|||b"], "a": "c"}) == Dropped("more than one target")
  # Answer choices see the masked example too, and each choice is stripped.
  assert render("{{q}} ||| {{answer_choices[1]}}", {"q": "x", "o": "p|||q"},
                answer_choices="{{o}} |||  second ") == Rendered("x", "second")
  # ...but the choices are unmasked before the template sees them (a list, so not masked again):
  # a choice holding "|||" splits the render, as in the fork.
  assert render("{{q}} ||| {{answer_choices[0]}}", {"q": "x", "o": "p|||q"},
                answer_choices="{{o}} ||| second") == Dropped("more than one target")


@pytest.mark.parametrize("jinja, example, reason", [
    ("{% if lang == 'fr' %}{{q}} ||| {{a}}{% endif %}", {"lang": "en", "q": "x", "a": "y"}, "blank render"),
    ("{{q}} {{a}}", {"q": "x", "a": "y"}, "no '|||' separator"),
    ("{{q}} ||| {{a}} ||| {{a}}", {"q": "x", "a": "y"}, "more than one target"),
    (" ||| {{a}}", {"a": "y"}, "empty inputs"),
    ("{{q}} ||| {{a}}", {"q": "x", "a": "  "}, "empty targets"),
    ("{{q}} ||| {{a}}", {"q": "x", "a": "y", "answer_choices": "z"}, "example has an answer_choices field"),
])
def test_each_drop_reason(jinja, example, reason):
  assert render(jinja, example) == Dropped(reason)


def test_errors_say_whether_the_fork_dropped_the_row_or_the_template():
  # A ValueError was caught per row by the build script; anything else skipped the template.
  assert render("{{ xs.index('z') }} ||| y", {"xs": ["a"]}) == Dropped("render error: ValueError")
  assert render("{{ q.a.b }} ||| y", {}) == Dropped("render error: UndefinedError", skips_template=True)
  assert render("{{ q ||| y", {"q": 1}) == Dropped("render error: TemplateSyntaxError",
                                                   skips_template=True)
  # The fork's environment has `zip` but not `enumerate`.
  assert render("{% for a, b in zip(xs, ys) %}{{a}}{{b}}{% endfor %} ||| y",
                {"xs": [1, 2], "ys": [3, 4]}) == Rendered("1324", "y")
  assert render("{% for i, x in enumerate(xs) %}{{i}}{% endfor %} ||| y", {"xs": [1]}) == \
      Dropped("render error: UndefinedError", skips_template=True)


def test_most_frequent_and_highlight_are_the_forks():
  # The fork's most_frequent returns every item sharing the top count, first seen first.
  assert render("{{ xs | most_frequent }} ||| y", {"xs": ["b", "a", "a", "b", "c"]}).inputs == "['b', 'a']"
  assert render("{{ q | highlight }} ||| y", {"q": "x"}).inputs == "<span style='color: #F08080'>x</span>"


def test_choice_draws_from_the_callers_rng():
  jinja = "{{q}} ||| {{ xs | choice }}"
  example = {"q": "x", "xs": [str(i) for i in range(100)]}

  def draws(seed):
    rng = random.Random(seed)
    return [render_xp3(template(jinja), example, code=False, rng=rng).targets for _ in range(20)]

  expected = [str(v) for v in (lambda r: [r.choice(range(100)) for _ in range(20)])(random.Random(7))]
  assert draws(7) == draws(7) == expected
  assert draws(7) != draws(8)
  # As the fork's `random.choice`, no list() first: a generator fails (the build skipped the template).
  assert render("x ||| {{ xs | select | choice }}", example) == Dropped("render error: TypeError",
                                                                     skips_template=True)
