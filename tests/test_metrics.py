"""BLEU and ROUGE metric functions on hand-checked examples."""
import math

import pytest

from xmtf_jax.evaluation import metrics


def test_rouge_is_the_mean_f_measure_with_every_script_tokenized():
  scores = metrics.rouge(["the cat sat", "我爱你"], ["the cat sat", "我爱他"])
  # Example 2: unigrams 2 of 3 match (F 2/3), bigrams 1 of 2 (F 1/2); example 1 is perfect.
  assert scores["rouge1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
  assert scores["rouge2"] == pytest.approx(100 * (1 + 1 / 2) / 2)
  assert scores["rougeLsum"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_tokenizer_keeps_non_latin_scripts_and_drops_punctuation():
  assert metrics.MultilingualTokenizer().tokenize("Hello, World! 我爱你 Straße. नमस्ते") == [
      "hello", "world", "我", "爱", "你", "straße", "नमस्ते"]


def test_bleu_matches_hand_computation():
  assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(100)
  # n-gram precisions 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5).
  score = metrics.bleu(["the cat sat on the mat"], ["the cat sat on mat"])["bleu"]
  expected = 100 * math.exp(1 - 6 / 5) * (1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
  assert score == pytest.approx(expected, rel=1e-6)
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.bleu(["a", "b"], ["a"])
