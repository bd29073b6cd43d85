"""Evaluation during training: the evaluator's numbers equal the stand-alone evaluation's, and compiled
functions are reused across calls."""
import jax
import numpy as np
import pytest
import seqio

import mixtures  # noqa: F401  (registers the demo tasks)
from xmtf_jax.evaluation import tasks as eval_tasks
from xmtf_jax.inference import generation
from xmtf_jax.evaluation import metrics
from xmtf_jax.model.encoder_decoder import EncoderDecoderModel
from xmtf_jax.evaluation import rank_classification
from xmtf_jax.evaluation import during_training as train_eval
from xmtf_jax.model.config import T5Config

RANK_TASKS = ["demo_heldout_language_id_en_identify", "demo_heldout_language_id_es_identify",
              "demo_heldout_language_id_es_language_of"]


@pytest.fixture(scope="module")
def tiny():
  config = T5Config(vocab_size=2048, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=2, dropout_rate=0.0)
  model = EncoderDecoderModel(config)
  return model, model.init_params(jax.random.key(0))


def test_evaluator_matches_standalone_evaluation_and_reuses_compilation(tiny):
  model, params = tiny
  decoding = generation.DecodingConfig(max_decode_length=8)
  evaluator = train_eval.TrainingEvaluator(
      model, rank_classification_tasks=RANK_TASKS, generation_tasks=["demo_en"],
      max_examples_per_task=8, batch_size=8, decoding=decoding)
  first = evaluator(10, params)
  # Rank classification: the same numbers as python -m xmtf_jax.evaluate would write.
  standalone = eval_tasks.evaluate_tasks(rank_classification.make_choice_scorer(model, params), RANK_TASKS,
                                         batch_size=8, max_examples_per_task=8, print_fn=None)
  for result in standalone:
    assert first[f"{result.task}/accuracy"] == pytest.approx(result.accuracy)
  en, es = (np.median([r.accuracy for r in standalone if r.language == lang]) for lang in ("en", "es"))
  assert first["language_id/median_accuracy"] == pytest.approx((en + es) / 2)
  # Generation: BLEU / ROUGE of greedy predictions (demo tasks define no metric_fns).
  task = seqio.get_mixture_or_task("demo_en")
  records = eval_tasks.text_records(task, "validation", 8, require_targets=True)
  predictions = generation.predict_texts(model, params, task.output_features["targets"].vocabulary,
                                         [r["inputs"] for r in records], decoding, batch_size=8)
  expected = metrics.bleu([r["targets"] for r in records], predictions)["bleu"]
  assert first["demo_en/bleu"] == pytest.approx(expected)
  assert {"demo_en/rouge1", "demo_en/rougeLsum"} <= set(first)
  # A second call (new params) compiles nothing new.
  sizes = (evaluator._scorer._jitted._cache_size(), evaluator._predictor._jitted._cache_size())
  params2 = jax.tree.map(lambda x: x * 1.01, params)
  second = evaluator(20, params2)
  assert (evaluator._scorer._jitted._cache_size(), evaluator._predictor._jitted._cache_size()) == sizes
  assert set(second) == set(first)



def test_hook_factory_from_gin_builds_the_heldout_suite(tiny, tmp_path):
  import json
  import os
  import types

  import gin
  from xmtf_jax.cli import configurables

  data_dir = tmp_path / "heldout"
  os.makedirs(data_dir / "xnli" / "en")
  rows = [{"premise": "It rains.", "hypothesis": "The street is wet.", "label": 0},
          {"premise": "It rains.", "hypothesis": "The street is dry.", "label": 2}]
  (data_dir / "xnli" / "en" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "promptsource")
  demo_vocab = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "demo",
                            "sentencepiece.model")
  model, params = tiny
  # The trainer passes its eval_hooks.EvalContext; the factory reads these three fields.
  context = types.SimpleNamespace(model=model, batch_size=4, vocabulary_path=demo_vocab)
  gin.clear_config()
  try:
    gin.parse_config([
        "zero_shot_eval_hook.heldout = @HeldoutSuite()",
        f"HeldoutSuite.data_dir = '{data_dir}'",
        f"HeldoutSuite.templates_root = '{fixtures}'",
        "HeldoutSuite.prompts = {'xnli': ['toy support', 'toy arrow']}",
        "HeldoutSuite.languages = {'xnli': ['en']}",
        "HeldoutSuite.datasets = ['xnli']",
        "HeldoutSuite.prefix = 'hook'",
    ])
    hook = configurables.zero_shot_eval_hook(context)  # the gin-registered factory
  finally:
    gin.clear_config()
  assert hook.name == "zero_shot"
  out = hook(5, params)
  assert {"hook_xnli_en_toy_support/accuracy", "hook_xnli_en_toy_arrow/accuracy",
          "xnli/median_accuracy"} <= set(out)
  assert all(out[k] in (0.0, 0.5, 1.0) for k in out if k.endswith("/accuracy"))
  assert train_eval.zero_shot_eval_hook(context) is None  # no tasks chosen
