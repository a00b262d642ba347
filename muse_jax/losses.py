"""Training losses over padded batches: 1 - CCC (the paper's), MSE and L1.

All take pred/true [B, T, K], mask [B, T] (True/1 on valid steps) and optional per-target weights,
and return a scalar. Rows without valid steps (the empty rows that pad a batch for sharding) carry
no weight, so a loss never depends on how many of them there are.
"""

from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from muse_jax.errors import MuseError

# Keeps 0/0 out of CCC when both sequences are constant; far below any real variance of labels.
_EPS = 1e-8


def _target_weights(weights: Sequence[float] | None, k: int, dtype) -> jax.Array:
  """Normalised weights [K] (equal by default)."""
  if weights is None or len(weights) == 0:
    return jnp.full((k,), 1.0 / k, dtype)
  if len(weights) != k:
    raise MuseError(f'loss weights {tuple(weights)} need one value per target ({k} targets)')
  w = jnp.asarray(weights, dtype)
  return w / jnp.sum(w)


def ccc_loss(
  pred: jax.Array, true: jax.Array, mask: jax.Array, weights: Sequence[float] | None = None
) -> jax.Array:
  """1 - CCC per sequence and target (biased variances), averaged over non-empty sequences.

  Matches the paper's loss. Constant, single-step and empty sequences give finite values and
  gradients: empty sequences count 0, and eps in the denominator bounds 0/0 (CCC -> 0).
  """
  m = mask.astype(bool)[..., None]  # [B, T, 1]
  n = jnp.sum(m, axis=1)  # [B, 1]
  n_safe = jnp.maximum(n, 1).astype(pred.dtype)
  # where (not multiply) so NaN/inf at padded steps never reach values or gradients.
  pred, true = jnp.where(m, pred, 0.0), jnp.where(m, true, 0.0)
  mp, mt = jnp.sum(pred, axis=1) / n_safe, jnp.sum(true, axis=1) / n_safe  # [B, K]
  dp = jnp.where(m, pred - mp[:, None], 0.0)
  dt = jnp.where(m, true - mt[:, None], 0.0)
  vp, vt = jnp.sum(dp * dp, axis=1) / n_safe, jnp.sum(dt * dt, axis=1) / n_safe
  cov = jnp.sum(dp * dt, axis=1) / n_safe
  ccc = 2.0 * cov / (vp + vt + (mp - mt) ** 2 + _EPS)  # [B, K]
  row = (n > 0).astype(pred.dtype)  # [B, 1]
  per_target = jnp.sum(row * (1.0 - ccc), axis=0) / jnp.maximum(jnp.sum(row), 1.0)
  return jnp.sum(per_target * _target_weights(weights, pred.shape[-1], pred.dtype))


def _masked_mean(
  err: Callable[[jax.Array], jax.Array],
  pred: jax.Array,
  true: jax.Array,
  mask: jax.Array,
  weights: Sequence[float] | None,
) -> jax.Array:
  """Weighted mean over targets of the mean of err(pred - true) over all valid steps."""
  m = mask.astype(bool)[..., None]
  e = jnp.where(m, err(jnp.where(m, pred - true, 0.0)), 0.0)
  per_target = jnp.sum(e, axis=(0, 1)) / jnp.maximum(jnp.sum(m), 1).astype(pred.dtype)
  return jnp.sum(per_target * _target_weights(weights, pred.shape[-1], pred.dtype))


def mse_loss(
  pred: jax.Array, true: jax.Array, mask: jax.Array, weights: Sequence[float] | None = None
) -> jax.Array:
  """Mean squared error over valid steps, weighted mean over targets."""
  return _masked_mean(jnp.square, pred, true, mask, weights)


def l1_loss(
  pred: jax.Array, true: jax.Array, mask: jax.Array, weights: Sequence[float] | None = None
) -> jax.Array:
  """Mean absolute error over valid steps, weighted mean over targets."""
  return _masked_mean(jnp.abs, pred, true, mask, weights)


_LOSSES = {'ccc': ccc_loss, 'mse': mse_loss, 'l1': l1_loss}


def get_loss(name: str) -> Callable[..., jax.Array]:
  """The loss function for config.loss."""
  if name not in _LOSSES:
    raise MuseError(f'config.loss={name!r} is unknown; use one of {sorted(_LOSSES)}')
  return _LOSSES[name]
