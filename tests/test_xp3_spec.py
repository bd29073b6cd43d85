"""The xP3 build spec: the presets ask for the pairs the original script built (counts from facts
1.2/1.3, checked against the template trees the published xP3 was made with), splits and skipped
templates follow facts 1.4, file names facts 1.8, language folders facts 1.7."""
import json
import os
import re

import pytest

from xmtf_jax.errors import MissingPathError, UserError
from xmtf_jax.xp3build import languages, spec
from xmtf_jax.xp3build.spec import Unit

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREES = os.path.join(REPO_ROOT, "..", "shared", "promptsource_xp3")
needs_trees = pytest.mark.skipif(not os.path.isdir(os.path.join(TREES, "tr13")),
                                 reason="the promptsource template trees (../shared/promptsource_xp3) "
                                        "are not next to this checkout")


@pytest.fixture(scope="module")
def xp3():
  return spec.load_spec("xp3")


def pairs_of(build):
  return {(u.dataset, u.subset) for u in build.units}


def unit(dataset, subset, **kw):
  return Unit(dataset, subset, kw.pop("prompt_dataset", dataset), kw.pop("prompt_subset", subset), **kw)


# ---- presets ---------------------------------------------------------------------------------------

def test_xp3_preset_counts(xp3):
  static = spec.presets_data()["xp3_static"]
  assert (len(static), len(set(static))) == (213, 209)
  assert len({d for d, _ in static}) == 63
  assert len(spec.wiki_lingua_cross_pairs()) == 9 * 8
  assert len(spec.flores_pairs()) == 45 * 44
  assert len(spec.wmt22_pairs()) == 92
  assert len(xp3.units) == 209 + 72 + 1980 + 92
  assert len(pairs_of(xp3)) == len(xp3.units)
  assert xp3.units[0] == Unit("glue", "mrpc", "glue", "mrpc", None, 100_000)


def test_flores_languages_are_the_45_bloom_codes_without_arabic():
  codes = sorted({p.split("-")[0] for _, p in spec.flores_pairs()})
  assert len(codes) == 45
  assert {"zho_Hans", "zho_Hant", "npi_Deva", "ory_Orya", "swh_Latn", "fon_Latn", "nso_Latn",
          "tum_Latn", "eng_Latn"} <= set(codes)
  assert not [c for c in codes if c.endswith("_Arab") and c != "urd_Arab"]
  assert ("facebook/flores", "aka_Latn-npi_Deva") in spec.flores_pairs()
  assert ("allenai/wmt22_african", "eng-ibo") in spec.wmt22_pairs()
  assert ("allenai/wmt22_african", "eng-hau") not in spec.wmt22_pairs()  # Hausa: not a BLOOM language


def test_mlqa_keeps_the_scripts_copy_paste_block(xp3):
  mlqa = {s for d, s in pairs_of(xp3) if d == "mlqa"}
  assert len(mlqa) == 32  # 36 lines, 4 repeated
  assert {"mlqa.en.en", "mlqa.en.ar"} <= mlqa
  assert not {"mlqa.en.vi", "mlqa.en.zh", "mlqa.en.es", "mlqa.en.hi"} & mlqa


def test_heldout_sets_are_excluded_unless_asked(xp3):
  heldout = {("xnli", "en"), ("super_glue", "rte"), ("super_glue", "cb"), ("anli", None),
             ("xcopa", "id"), ("Muennighoff/xwinograd", "ru"), ("super_glue", "wsc.fixed"),
             ("hellaswag", None), ("story_cloze", "2016")}
  assert not heldout & pairs_of(xp3)
  xp3all = spec.load_spec("xp3all")
  assert len(xp3all.units) == len(xp3.units) + 24
  added = pairs_of(xp3all) - pairs_of(xp3)
  assert {("xcopa", "id"), ("super_glue", "wsc.fixed"), ("hellaswag", None), ("clue", "cluewsc2020"),
          ("multi_eurlex", "all_languages")} <= added
  assert not {("xnli", "en"), ("super_glue", "rte"), ("anli", None), ("Muennighoff/xwinograd", "ru")} & added
  with_heldout = spec.load_spec("xp3", include_heldout=True)
  assert len(with_heldout.units) == len(xp3.units) + 32 + 14 + 3
  assert heldout <= pairs_of(with_heldout)


def test_prompt_sources_and_caps(xp3):
  by_pair = {(u.dataset, u.subset): u for u in xp3.units}
  assert by_pair[("paws-x", "fr")].prompt_subset == "en"
  assert by_pair[("GEM/wiki_lingua", "ar_en")].prompt_subset == "en_en"
  assert by_pair[("mlqa", "mlqa.ar.vi")].prompt_subset == "mlqa.en.en"
  assert by_pair[("pasinit/xlwic", "xlwic_fr_fr")].prompt_subset == "en"
  assert by_pair[("facebook/flores", "aka_Latn-npi_Deva")].prompt_subset == "aka_Latn-npi_Deva"
  assert by_pair[("web_questions", None)].prompt_key == "web_questions"
  assert by_pair[("allenai/wmt22_african", "eng-ibo")].cap == 50_000
  assert by_pair[("glue", "mrpc")].cap == 100_000
  xp3mt = {(u.dataset, u.subset): u for u in spec.load_spec("xp3mt").units}
  assert spec.load_spec("xp3mt").prompt_language == "native"
  assert xp3mt[("paws-x", "fr")].prompt_key == "paws-x/fr"
  assert xp3mt[("GEM/xlsum", "swahili")].prompt_key == "GEM/xlsum/swahili"
  assert xp3mt[("glue", "mrpc")].prompt_key == "glue/mrpc"
  assert set(xp3mt) == set(by_pair)


@needs_trees
def test_presets_match_the_template_trees(xp3):
  tr13 = os.path.join(TREES, "tr13")
  assert set(os.listdir(os.path.join(tr13, "facebook", "flores"))) == {s for _, s in spec.flores_pairs()}
  assert set(os.listdir(os.path.join(tr13, "allenai", "wmt22_african"))) == {
      s for _, s in spec.wmt22_pairs()}
  has = lambda root, u: os.path.isfile(os.path.join(TREES, root, u.prompt_key, "templates.yaml"))
  assert [u.prompt_key for u in spec.load_spec("xp3all").units if not has("tr13", u)] == []
  # xP3mt: the cross-lingual wiki_lingua subsets, mlqa.en.ar and xlsum/kirundi have no native prompts
  missing = [u.prompt_key for u in spec.load_spec("xp3mt").units if not has("xp3mt", u)]
  assert len(missing) == 72 + 2
  assert {"mlqa/mlqa.en.ar", "GEM/xlsum/kirundi", "GEM/wiki_lingua/ar_en"} <= set(missing)


@needs_trees
def test_translation_templates_route_to_their_target_language(xp3):
  """Every tatoeba and wmt22 template of the tr13 tree names a BLOOM target language."""
  tr13, folders = os.path.join(TREES, "tr13"), set()
  for u in xp3.units:
    if u.dataset in ("Helsinki-NLP/tatoeba_mt", "allenai/wmt22_african"):
      text = open(os.path.join(tr13, u.prompt_key, "templates.yaml"), encoding="utf-8").read()
      names = re.findall(r"^    name: (.+)$", text, re.M)
      assert names, u
      folders |= {languages.route(u, name) for name in names}
  assert folders <= {c for c, _, _ in languages.BLOOM_LANGUAGES}
  assert {"en", "zh", "ig", "yo", "fr", "ur"} <= folders


# ---- user specs ------------------------------------------------------------------------------------

def write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_user_spec_yaml_and_json(tmp_path):
  path = write(tmp_path, "mine.yaml", """
name: small
units:
  - {dataset: paws-x, subset: fr}
  - {dataset: GEM/xlsum, subset: swahili, templates: [docsummary], cap: 7}
  - {dataset: my/own, subset: null, prompt_dataset: glue, prompt_subset: mrpc}
  - {dataset: allenai/wmt22_african, subset: eng-ibo}
""")
  build = spec.load_spec(path)
  assert build.name == "small" and build.split_mode == "train" and build.prompt_language == "english"
  assert build.units == (Unit("paws-x", "fr", "paws-x", "en", None, 100_000),
                         Unit("GEM/xlsum", "swahili", "GEM/xlsum", "english", ("docsummary",), 7),
                         Unit("my/own", None, "glue", "mrpc", None, 100_000),
                         Unit("allenai/wmt22_african", "eng-ibo", "allenai/wmt22_african", "eng-ibo",
                              None, 50_000))
  native = spec.load_spec(path, prompt_language="native", split_mode="validation")
  assert native.units[0].prompt_subset == "fr" and native.split_mode == "validation"
  json_path = write(tmp_path, "other.json", json.dumps({"units": [{"dataset": "xquad", "subset": "xquad.vi"}]}))
  build = spec.load_spec(json_path)
  assert build.name == "other" and build.units == (Unit("xquad", "xquad.vi", "xquad", "xquad.en"),)


@pytest.mark.parametrize("text, message", [
    ("units: [{dataset: xnli, subset: en}]", "entry 1 (xnli en) is a held-out evaluation set"),
    ("units: [{subset: fr}]", "entry 1 has no `dataset`"),
    ("units: [{dataset: story_cloze, subset: 2016}]", 'quote it (`subset: "2016"`)'),
    ("units: [{dataset: paws-x, subset: fr, cap: 0}]", "`cap` must be a positive whole number"),
    ("units: [{dataset: paws-x, subset: fr, split: train}]", "unknown key(s) split"),
    ("units: [{dataset: paws-x, subset: fr, templates: []}]", "`templates` must be a non-empty list"),
    ("units: [{dataset: paws-x, subset: fr}, {dataset: paws-x, subset: fr}]", "entry 2 (paws-x fr) repeats entry 1"),
    ("units: [paws-x]", "units entry 1 is 'paws-x'"),
    ("units: []", "a non-empty list `units`"),
    ("name: x\nunits: [{dataset: a}]\nseed: 3", "unknown top-level key(s) seed"),
    ("units: [{dataset: a", "not valid YAML or JSON"),
])
def test_bad_user_specs_name_file_and_entry(tmp_path, text, message):
  path = write(tmp_path, "bad.yaml", text)
  with pytest.raises(UserError) as e:
    spec.load_spec(path)
  assert path in str(e.value) and message in str(e.value)


def test_heldout_unit_with_include_heldout_and_other_errors(tmp_path):
  path = write(tmp_path, "eval.yaml", "units: [{dataset: xnli, subset: en}]")
  assert spec.load_spec(path, include_heldout=True).units[0].prompt_key == "xnli/en"
  assert "--include_heldout" in str(pytest.raises(UserError, spec.load_spec, path).value)
  with pytest.raises(MissingPathError, match="not a preset name"):
    spec.load_spec(str(tmp_path / "nope.yaml"))
  with pytest.raises(UserError, match="--split_mode='dev'"):
    spec.load_spec("xp3", split_mode="dev")
  with pytest.raises(UserError, match="--prompt_language='french'"):
    spec.load_spec("xp3", prompt_language="french")


def test_flores_overlap(xp3, tmp_path):
  overlap = spec.flores_overlap(xp3)
  assert len(overlap) == 1980 and "facebook/flores/aka_Latn-npi_Deva" in overlap
  assert spec.flores_overlap(spec.load_spec("xp3", split_mode="validation")) == []
  assert spec.flores_overlap(spec.load_spec(write(tmp_path, "s.yaml", "units: [{dataset: paws-x, subset: fr}]"))) == []


# ---- splits, skipped templates, file names ---------------------------------------------------------

@pytest.mark.parametrize("u, available, mode, expected", [
    (unit("paws-x", "fr"), ["train", "validation", "test"], "train", ["train", "test"]),
    (unit("paws-x", "fr"), ["validation"], "train", ["validation"]),  # the only split stays
    (unit("GEM/wiki_lingua", "ar"), ["train", "validation", "test", "sampled_validation", "sampled_test"],
     "train", ["train", "test"]),
    (unit("pasinit/xlwic", "xlwic_en_zh"), ["train", "validation", "test"], "train", ["test"]),
    (unit("pasinit/xlwic", "xlwic_fr_fr"), ["train", "validation", "test"], "train", ["train", "test"]),
    (unit("teven/code_docstring_corpus", "top_level"), ["train", "validation", "test", "class_level"],
     "train", ["train", "test"]),
    (unit("paws-x", "fr"), ["train", "validation", "test"], "validation", ["validation"]),
    (unit("paws-x", "fr"), ["validation"], "validation", []),
    (unit("paws-x", "fr"), ["train", "test"], "validation", []),
    (unit("pasinit/xlwic", "xlwic_en_zh"), ["train", "validation"], "validation", []),
])
def test_select_splits(u, available, mode, expected):
  assert spec.select_splits(u, available, mode) == expected


def test_skip_template():
  assert spec.skip_template(unit("common_gen", None), "test", "anything")
  assert not spec.skip_template(unit("common_gen", None), "train", "anything")
  assert spec.skip_template(unit("imdb", None), "unsupervised", "x")
  assert spec.skip_template(unit("glue", "qqp"), "test", "x")
  assert not spec.skip_template(unit("glue", "mrpc"), "test", "x")
  assert spec.skip_template(unit("cosmos_qa", None), "test", "no_prompt_text")
  assert not spec.skip_template(unit("cosmos_qa", None), "test", "context_answer_to_question_x")
  assert spec.skip_template(unit("hellaswag", None), "test", "Topic of the context")
  assert spec.skip_template(unit("clue", "drcd"), "test", "xp3longcontinue")
  assert not spec.skip_template(unit("clue", "drcd"), "test", "xp3longrest")
  # keyed by the prompt folder, not the data
  assert spec.skip_template(unit("mine", None, prompt_dataset="clue", prompt_subset="tnews"), "test", "x")


@pytest.mark.parametrize("u, split, template, expected", [
    (unit("GEM/xlsum", "swahili"), "train", "xp3longcontinue", "xp3_GEM_xlsum_swahili_train_xp3longcontinue.jsonl"),
    (unit("facebook/flores", "aka_Latn-npi_Deva"), "devtest", "in-aka_Latn-npi_Deva",
     "xp3_facebook_flores_aka_Latn-npi_Deva_devtest_in-aka_Latn-npi_Deva.jsonl"),
    (unit("facebook/flores", "aka_Latn-ibo_Latn"), "dev", "prev-aka_Latn-ibo_Latn",
     "xp3_facebook_flores_aka_Latn-ibo_Latn_dev_prev-aka_Latn-ibo_Latn.jsonl"),
    (unit("GEM/xlsum", "swahili"), "train", "docsummary_swmt", "xp3_GEM_xlsum_swahili_train_docsummary_swmt.jsonl"),
    (unit("web_questions", None), "train", "get_the_answer", "xp3_web_questions_None_train_get_the_answer.jsonl"),
    (unit("hellaswag", None), "train", "Topic of the context", "xp3_hellaswag_None_train_Topic_of_the_context.jsonl"),
    (unit("cos_e", "v1.11"), "train", "i_think", "xp3_cos_e_v1.11_train_i_think.jsonl"),
])
def test_file_name(u, split, template, expected):
  assert spec.file_name(u, split, template) == expected


def test_file_name_and_route_give_the_published_path():
  u = unit("facebook/flores", "aka_Latn-npi_Deva")
  name = "in-aka_Latn-npi_Deva"
  assert f"{languages.route(u, name)}/{spec.file_name(u, 'devtest', name)}" == (
      "ne/xp3_facebook_flores_aka_Latn-npi_Deva_devtest_in-aka_Latn-npi_Deva.jsonl")


# ---- routing ---------------------------------------------------------------------------------------

def test_language_table():
  codes = [c for c, _, _ in languages.BLOOM_LANGUAGES]
  assert codes == ("ak ar as bm bn ca code en es eu fon fr gu hi id ig ki kn lg ln ml mr ne nso ny or pa pt "
                   "rn rw sn st sw ta te tn ts tum tw ur vi wo xh yo zh zu").split()
  lookup = languages.LOOKUP
  assert [lookup[k] for k in ("swahili", "swahili (macrolanguage)", "swa", "swh", "kirundi", "rundi",
                              "punjabi", "panjabi", "nepali", "npi", "cmn", "zho", "ory", "fon")] == (
      ["sw", "sw", "sw", "sw", "rn", "rn", "pa", "pa", "ne", "ne", "zh", "zh", "or", "fon"])
  assert languages.english_name("zh") == "Chinese" and languages.english_name("code") is None
  assert languages.is_code("code") and not languages.is_code("en")


@pytest.mark.parametrize("u, template, lang", [
    (unit("facebook/flores", "aka_Latn-npi_Deva"), "in-aka_Latn-npi_Deva", "ne"),
    (unit("facebook/flores", "npi_Deva-zho_Hant"), "ab-npi_Deva-zho_Hant", "zh"),
    (unit("GEM/wiki_lingua", "ar_en"), "x", "en"),
    (unit("GEM/wiki_lingua", "ar"), "x", "ar"),
    (unit("pasinit/xlwic", "xlwic_en_zh"), "x", "zh"),
    (unit("pasinit/xlwic", "xlwic_fr_fr"), "x", "fr"),
    (unit("xquad", "xquad.vi"), "x", "vi"),
    (unit("mlqa", "mlqa.ar.vi"), "x", "ar"),  # the context's language
    (unit("Helsinki-NLP/tatoeba_mt", "eng-cmn_Hans"), "translate-this-eng-cmn_Hans", "zh"),
    (unit("Helsinki-NLP/tatoeba_mt", "eng-cmn_Hans"), "translate-this-cmn_Hans-eng", "en"),
    (unit("Helsinki-NLP/tatoeba_mt", "eng-cmn_Hans"), "translate", "en"),  # the script's fallback
    (unit("allenai/wmt22_african", "eng-ibo"), "text-translation-eng-ibo", "ig"),
    (unit("allenai/wmt22_african", "eng-ibo"), "text-translation-ibo-eng", "en"),
    (unit("multi_eurlex", "all_languages"), "version-fr-en-source+target", "en"),
    (unit("multi_eurlex", "all_languages"), "version-en-fr", "fr"),
    (unit("GEM/xlsum", "kirundi"), "x", "rn"),
    (unit("GEM/xlsum", "chinese_traditional"), "x", "zh"),
    (unit("GEM/xlsum", "nepali"), "x", "ne"),
    (unit("khalidalt/tydiqa-goldp", "bengali"), "x", "bn"),
    (unit("clue", "c3"), "x", "zh"),
    (unit("codeparrot/apps", "all"), "x", "code"),
    (unit("Muennighoff/mbpp", "sanitized"), "x", "code"),
    (unit("glue", "mrpc"), "x", "en"),
    (unit("web_questions", None), "x", "en"),
    (unit("cos_e", "v1.11"), "x", "en"),
    (unit("Muennighoff/xstory_cloze", "eu"), "x", "eu"),
])
def test_route(u, template, lang):
  assert languages.route(u, template) == lang


def test_route_to_a_language_bloom_lacks_is_a_user_error():
  with pytest.raises(UserError, match="'text-translation-eng-hau' of allenai/wmt22_african eng-hau"):
    languages.route(unit("allenai/wmt22_african", "eng-hau"), "text-translation-eng-hau")
