"""Losses against hand computations in numpy: cross-entropy, z-loss, label smoothing, normalisations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_jax.train import losses


def _log_softmax(x):
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture
def logits_and_targets():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
  return logits, targets


def test_cross_entropy_and_z_loss_match_hand_computation(logits_and_targets):
  logits, targets = logits_and_targets
  ce, z = losses.cross_entropy_with_z_loss(logits, targets, z_loss=1e-4)
  logp = _log_softmax(logits.astype(np.float64))
  expected_ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  np.testing.assert_allclose(np.asarray(ce), expected_ce, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(z), 1e-4 * log_z**2, rtol=1e-5)


def test_label_smoothing_is_cross_entropy_to_smoothed_targets_minus_their_entropy(logits_and_targets):
  logits, targets = logits_and_targets
  smoothing, vocab = 0.1, logits.shape[-1]
  ce, z = losses.cross_entropy_with_z_loss(logits, targets, label_smoothing=smoothing)
  q = np.full(logits.shape, smoothing / (vocab - 1))
  np.put_along_axis(q, targets[..., None], 1 - smoothing, -1)
  logp = _log_softmax(logits.astype(np.float64))
  expected = -(q * logp).sum(-1) + (q * np.log(q)).sum(-1)
  np.testing.assert_allclose(np.asarray(ce), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(z), 0.0)
  # A prediction equal to the smoothed targets scores 0.
  perfect, _ = losses.cross_entropy_with_z_loss(np.log(q).astype(np.float32), targets,
                                                label_smoothing=smoothing)
  np.testing.assert_allclose(np.asarray(perfect), 0.0, atol=1e-5)


def _batch(packed=False):
  weights = np.array([[1, 1, 1, 1, 0, 0],
                      [1, 1, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 0]], np.float32)
  batch = {"decoder_loss_weights": weights}
  if packed:
    # Row 0 holds two examples (3 + 1 target tokens), row 1 one, row 2 is padding.
    batch["decoder_segment_ids"] = np.array([[1, 1, 1, 2, 0, 0],
                                             [1, 1, 0, 0, 0, 0],
                                             [0, 0, 0, 0, 0, 0]], np.int32)
  return batch


def test_per_target_token_normalisation():
  weights, factor = losses.normalized_loss_weights(_batch(), losses.LossConfig("per_target_token"))
  np.testing.assert_array_equal(np.asarray(weights), _batch()["decoder_loss_weights"])
  assert float(factor) == 6.0


def test_fixed_normalisation():
  config = losses.LossConfig("fixed", normalizing_factor=233472)
  weights, factor = losses.normalized_loss_weights(_batch(), config)
  np.testing.assert_array_equal(np.asarray(weights), _batch()["decoder_loss_weights"])
  assert float(factor) == 233472.0


@pytest.mark.parametrize("packed", [False, True])
def test_average_per_sequence_gives_every_sequence_weight_one(packed):
  weights, factor = losses.normalized_loss_weights(_batch(packed),
                                                   losses.LossConfig("average_per_sequence"))
  if packed:
    expected = [[1 / 3, 1 / 3, 1 / 3, 1, 0, 0], [0.5, 0.5, 0, 0, 0, 0], [0] * 6]
    expected_sequences = 3.0
  else:
    expected = [[0.25] * 4 + [0, 0], [0.5, 0.5, 0, 0, 0, 0], [0] * 6]
    expected_sequences = 2.0
  np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-6)
  assert float(factor) == pytest.approx(expected_sequences)


def test_average_per_sequence_ignores_padding_with_a_loss_weight():
  """t5x excludes segment 0: a padding token with weight 1 is not a third sequence."""
  batch = {"decoder_loss_weights": np.array([[1, 1, 1, 1]], np.float32),
           "decoder_segment_ids": np.array([[1, 1, 2, 0]], np.int32)}
  weights, factor = losses.normalized_loss_weights(batch, losses.LossConfig("average_per_sequence"))
  np.testing.assert_allclose(np.asarray(weights), [[0.5, 0.5, 1.0, 0.0]], rtol=1e-6)
  assert float(factor) == pytest.approx(2.0)  # two sequences, not three


def test_loss_sums_and_normalised_loss_by_hand(logits_and_targets):
  logits, targets = logits_and_targets
  weights = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], np.float32)
  config = losses.LossConfig("average_per_sequence", z_loss=1e-3)
  norm_weights, factor = losses.normalized_loss_weights({"decoder_loss_weights": weights}, config)
  sums = losses.loss_sums(logits, targets, norm_weights, config)
  logp = _log_softmax(logits.astype(np.float64))
  ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  z = 1e-3 * np.log(np.exp(logits.astype(np.float64)).sum(-1)) ** 2
  per_sequence = [((ce + z)[i] * weights[i]).sum() / weights[i].sum() for i in range(3)]
  loss = (float(sums["cross_entropy_sum"]) + float(sums["z_loss_sum"])) / float(factor)
  assert loss == pytest.approx(np.mean(per_sequence), rel=1e-5)
  correct = (logits.argmax(-1) == targets) & (weights > 0)
  assert float(sums["num_correct"]) == correct.sum()
  assert float(sums["num_tokens"]) == 9.0
  # The per-token loss ignores the normalisation: plain cross-entropy of the 9 real tokens.
  assert float(sums["token_cross_entropy_sum"]) == pytest.approx((ce * (weights > 0)).sum(), rel=1e-5)


def test_loss_config_errors_name_the_setting():
  with pytest.raises(ValueError, match="normalization='per_word'"):
    losses.LossConfig("per_word")
  with pytest.raises(ValueError, match="normalizing_factor"):
    losses.LossConfig("fixed")
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.LossConfig(label_smoothing=1.5)


@pytest.mark.parametrize("label_smoothing, z_loss", [(0.0, 0.0), (0.0, 1e-2), (0.1, 1e-4)])
def test_gradient_matches_autodiff_of_the_textbook_loss(logits_and_targets, label_smoothing, z_loss):
  """The custom logits gradient (one fused pass) equals autodiff of the plain formula."""
  logits, targets = logits_and_targets
  weights = jax.random.uniform(jax.random.key(3), targets.shape)
  vocab = logits.shape[-1]

  def ours(logits):
    cross_entropy, z = losses.cross_entropy_with_z_loss(logits, targets, z_loss=z_loss,
                                                        label_smoothing=label_smoothing)
    return jnp.sum((cross_entropy + z) * weights)

  def textbook(logits):
    q = jax.nn.one_hot(targets, vocab) * (1 - label_smoothing - label_smoothing / (vocab - 1))
    q = q + label_smoothing / (vocab - 1)
    cross_entropy = -jnp.sum(q * jax.nn.log_softmax(logits), axis=-1)
    z = z_loss * jnp.square(jax.nn.logsumexp(logits, axis=-1))
    return jnp.sum((cross_entropy + z) * weights)

  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(textbook)(logits), atol=1e-6, rtol=1e-5)
