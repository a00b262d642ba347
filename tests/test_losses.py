"""Losses: parity with the torch CCC loss, numpy references, degenerate inputs, empty rows."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import losses
from muse_jax.errors import MuseError

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def _mask(lengths, t):
  return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def _np_ccc_loss(pred, true, mask, weights):
  """Plain-numpy reference: loops over targets and non-empty sequences."""
  per_target = []
  for k in range(pred.shape[-1]):
    cccs = []
    for p, y, m in zip(pred[..., k], true[..., k], mask):
      if m.any():
        p, y = p[m], y[m]
        cov = np.mean((p - p.mean()) * (y - y.mean()))
        cccs.append(2 * cov / (p.var() + y.var() + (p.mean() - y.mean()) ** 2))
    per_target.append(1 - np.mean(cccs))
  return np.dot(per_target, weights) / np.sum(weights)


def _random_batch(seed, b=5, t=11, k=2):
  rng = np.random.default_rng(seed)
  pred, true = rng.normal(size=(b, t, k)), rng.normal(size=(b, t, k)) + 0.3 * rng.normal(size=k)
  lengths = rng.integers(2, t + 1, size=b)
  return pred, true, _mask(lengths, t)


def test_ccc_loss_matches_torch_fixture():
  z = np.load(os.path.join(FIXTURES, 'ccc_loss.npz'))
  pred, true = (jnp.asarray(z[k][..., None], jnp.float32) for k in ('input/pred', 'input/true'))
  loss = losses.ccc_loss(pred, true, _mask(z['lengths'], pred.shape[1]))
  assert abs(float(loss) - float(z['expected'])) < 1e-5


def test_ccc_loss_matches_numpy_with_target_weights():
  pred, true, mask = _random_batch(0)
  for weights in (None, (0.2, 0.8)):
    got = losses.ccc_loss(
      jnp.asarray(pred, jnp.float32),
      jnp.asarray(true, jnp.float32),
      jnp.asarray(mask, jnp.float32),
      weights,
    )
    want = _np_ccc_loss(pred, true, mask, weights or (1, 1))
    assert abs(float(got) - want) < 1e-5


@pytest.mark.parametrize('loss_fn, err', [(losses.mse_loss, np.square), (losses.l1_loss, np.abs)])
def test_mean_losses_match_numpy(loss_fn, err):
  pred, true, mask = _random_batch(1)
  got = loss_fn(jnp.asarray(pred, jnp.float32), jnp.asarray(true, jnp.float32), mask, (1.0, 3.0))
  want = np.dot([err(pred - true)[..., k][mask].mean() for k in range(2)], [0.25, 0.75])
  assert abs(float(got) - want) < 1e-5


def _degenerate(case):
  """(pred, true, mask) [3, 6, 2] batches that put 0/0 traps in the CCC."""
  rng = np.random.default_rng(2)
  pred, true = rng.normal(size=(3, 6, 2)), rng.normal(size=(3, 6, 2))
  mask = _mask([6, 4, 3], 6)
  if case == 'constant_pred':
    pred[:] = 0.5
  elif case == 'constant_true':
    true[:] = -0.2
  elif case == 'both_constant_equal':
    pred[:], true[:] = 0.1, 0.1
  elif case == 'length_1':
    mask = _mask([1, 1, 6], 6)
  elif case == 'empty_rows':
    mask = _mask([0, 5, 0], 6)
  elif case == 'all_padding':
    mask = _mask([0, 0, 0], 6)
  return jnp.asarray(pred, jnp.float32), jnp.asarray(true, jnp.float32), mask


@pytest.mark.parametrize('name', ['ccc', 'mse', 'l1'])
@pytest.mark.parametrize(
  'case',
  [
    'constant_pred',
    'constant_true',
    'both_constant_equal',
    'length_1',
    'empty_rows',
    'all_padding',
  ],
)
def test_finite_loss_and_grads_on_degenerate_inputs(name, case):
  pred, true, mask = _degenerate(case)
  loss, grad = jax.value_and_grad(losses.get_loss(name))(pred, true, mask)
  assert np.isfinite(float(loss))
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.all(np.asarray(grad)[~mask] == 0)  # padding gets no gradient


@pytest.mark.parametrize('name', ['ccc', 'mse', 'l1'])
def test_loss_and_grads_invariant_to_appended_empty_rows(name):
  # Batches are padded with empty rows for sharding; their number must not matter, nor their junk.
  pred, true, mask = (jnp.asarray(a, jnp.float32) for a in _random_batch(3))
  junk = jnp.full((4,) + pred.shape[1:], jnp.nan)
  pad = lambda a, fill: jnp.concatenate([a, fill])
  padded = (pad(pred, junk), pad(true, junk), pad(mask, jnp.zeros((4,) + mask.shape[1:])))
  loss_fn = jax.value_and_grad(losses.get_loss(name))
  (loss, grad), (loss_p, grad_p) = loss_fn(pred, true, mask), loss_fn(*padded)
  np.testing.assert_allclose(loss_p, loss, rtol=1e-6)
  np.testing.assert_allclose(grad_p[: len(pred)], grad, rtol=1e-5, atol=1e-8)
  assert np.all(grad_p[len(pred) :] == 0)


def test_ccc_loss_jits_and_is_zero_for_perfect_predictions():
  _, true, mask = _random_batch(4)
  true = jnp.asarray(true, jnp.float32)
  assert abs(float(jax.jit(losses.ccc_loss)(true, true, mask))) < 1e-5


def test_loss_errors():
  with pytest.raises(MuseError, match='huber'):
    losses.get_loss('huber')
  pred, true, mask = (jnp.asarray(a, jnp.float32) for a in _random_batch(5))
  with pytest.raises(MuseError, match='one value per target'):
    losses.ccc_loss(pred, true, mask, weights=(1.0, 1.0, 1.0))
