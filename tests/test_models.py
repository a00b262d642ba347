"""Models: parity with the PyTorch fixtures, padding semantics, dropout, config.model checks."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from muse_jax import config_util
from muse_jax import convert
from muse_jax import models
from muse_jax.errors import MuseError
from muse_jax.ops import attention

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
TOL = 1e-5


def _fixture(name):
  """(torch state_dict, x float32, lengths int32, expected, config) of a parity fixture."""
  path = os.path.join(FIXTURES, f'{name}.npz')
  z = np.load(path)
  config = list(z['config']) if 'config' in z.files else []
  return (
    convert.load_torch_state_dict(path),
    jnp.asarray(z['input/x'], jnp.float32),
    jnp.asarray(z['lengths'], jnp.int32),
    z['expected'],
    config,
  )


def _valid(lengths, t):
  return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def _max_valid_diff(y, expected, lengths):
  return float(np.abs(np.asarray(y) - expected)[_valid(lengths, y.shape[1])].max())


@pytest.mark.parametrize('name', ['lstm_uni_1layer', 'lstm_bi_2layer', 'gru_bi_1layer'])
def test_rnn_matches_torch_packed(name):
  state_dict, x, lengths, expected, (cell, n_layers, bi) = _fixture(name)
  rnn = models.RNN(5, cell, int(n_layers), bi == 'True')
  y = rnn.apply({'params': convert.rnn_params_from_torch(state_dict)}, x, lengths)
  assert y.shape == expected.shape
  assert _max_valid_diff(y, expected, lengths) < TOL
  assert np.all(np.asarray(y)[~_valid(lengths, x.shape[1])] == 0)


@pytest.mark.parametrize(
  'blocks', ['plain', 'dot_product', 'default', 'unblocked', 'windows', 'queries']
)
def test_attention_layer_matches_torch(blocks):
  state_dict, x, lengths, expected, _ = _fixture('attention_layer_d8_h2')
  row = 2 * x.shape[1] ** 2 * 4  # one window's score bytes (2 heads)
  block_bytes = {
    'plain': None,
    'dot_product': None,
    'default': attention.BLOCK_BYTES,
    'unblocked': None,
    'windows': 2 * row,
    'queries': row // 3,
  }[blocks]
  impl = blocks if blocks in ('plain', 'dot_product') else 'blocked'
  layer = models.AttentionLayer(8, 2, attention=impl, block_bytes=block_bytes)
  y = layer.apply({'params': convert.attention_params_from_torch(state_dict)}, x, lengths)
  assert _max_valid_diff(y, expected, lengths) < TOL


def test_blocked_attention_gradients_match_autodiff():
  """The blocked core with its hand-written gradient == plain autodiff of the unblocked formula,
  including an empty row (length 0) and a query count that the query blocks do not divide."""
  b, t, h, dh = 6, 37, 2, 4
  rng = np.random.default_rng(0)
  q, k, v, dy = (jnp.asarray(rng.normal(size=(b, t, h, dh)), jnp.float32) for _ in range(4))
  lengths = jnp.asarray([37, 20, 1, 0, 30, 5], jnp.int32)

  def reference(q, k, v):
    s = jnp.einsum('bqhd,bkhd->bhqk', q / np.sqrt(dh), k)
    s = jnp.where(attention.length_mask(lengths, t)[:, None, None, :], s, jnp.finfo(s.dtype).min)
    return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(s, -1), v)

  def loss(fn):
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * dy), (0, 1, 2)))

  want = loss(reference)(q, k, v)
  row = h * t * t * 4
  got = loss(lambda q, k, v: attention.plain_attention(q, k, v, lengths))(q, k, v)
  for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-5, err_msg='plain')
  for block_bytes in (None, 2 * row, 3 * row, row // 5):
    got = loss(
      lambda q, k, v: attention.blocked_attention(q, k, v, lengths, block_bytes=block_bytes)
    )(q, k, v)
    for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-5, err_msg=str(block_bytes))


def test_fused_attention_gradients_match_plain_and_refuse_dropout():
  """jax.nn.dot_product_attention (XLA's kernel) == the plain core, values and gradients, on
  every row with a key; an empty row (length 0, batch padding) stays finite."""
  b, t, h, dh = 5, 29, 2, 4
  rng = np.random.default_rng(2)
  q, k, v, dy = (jnp.asarray(rng.normal(size=(b, t, h, dh)), jnp.float32) for _ in range(4))
  lengths = jnp.asarray([29, 11, 1, 0, 17], jnp.int32)
  live = np.asarray(lengths) > 0
  grad = lambda impl: jax.jit(
    jax.value_and_grad(
      lambda q, k, v: jnp.sum(
        attention.attention(q, k, v, lengths, impl) * dy * live[:, None, None, None]
      ),
      (0, 1, 2),
    )
  )(q, k, v)
  for a, w in zip(jax.tree.leaves(grad('dot_product')), jax.tree.leaves(grad('plain'))):
    np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-5)
  y = attention.attention(q, k, v, lengths, 'dot_product')
  assert np.all(np.isfinite(y))
  with pytest.raises(ValueError, match='no dropout'):
    attention.attention(
      q, k, v, lengths, 'dot_product', dropout_rate=0.1, dropout_rng=jax.random.key(0)
    )


def test_blocked_attention_dropout_is_seeded():
  b, t, h, dh = 4, 24, 2, 4
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, h, dh)), jnp.float32) for _ in range(3))
  lengths = jnp.asarray([24, 10, 3, 0], jnp.int32)
  for block_bytes in (None, 2 * h * t * t * 4, 100):
    run = lambda key: attention.blocked_attention(
      q, k, v, lengths, dropout_rate=0.5, dropout_rng=key, block_bytes=block_bytes
    )
    a, a2, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    plain = attention.blocked_attention(q, k, v, lengths, block_bytes=block_bytes)
    assert np.all(np.isfinite(a)) and np.array_equal(a, a2)
    assert not np.allclose(a, c) and not np.allclose(a, plain)
    g = jax.grad(
      lambda q: jnp.sum(
        attention.blocked_attention(
          q, k, v, lengths, dropout_rate=0.5, dropout_rng=jax.random.key(0), block_bytes=block_bytes
        )
      )
    )(q)
    assert np.all(np.isfinite(g))


def test_regressor_matches_torch():
  state_dict, x, lengths, expected, _ = _fixture('model_din10_drnn8_bi_attn1_h2_out2')
  kwargs = dict(
    d_rnn=8, rnn_n_layers=1, rnn_bi=True, attn_n_layers=1, n_heads=2, d_out_fc=6, n_targets=2
  )
  params = convert.regressor_params_from_torch(state_dict, kwargs)
  y = models.Regressor(**kwargs).apply({'params': params}, x, lengths)
  assert _max_valid_diff(y, expected, lengths) < TOL


def _np_lstm(x, w_ih, w_hh, b_ih, b_hh):
  """One direction of torch's LSTM over x [T, D], torch weight layouts, float64."""
  sig = lambda v: 1.0 / (1.0 + np.exp(-v))
  h = c = np.zeros(w_hh.shape[1])
  out = []
  for xt in x:
    i, f, g, o = np.split(w_ih @ xt + b_ih + w_hh @ h + b_hh, 4)
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
    out.append(h)
  return np.stack(out)


def test_bilstm_long_padded_batch_matches_numpy_reference():
  # Longer than the 200-frame training windows; batch mixes long, medium and length-1 sequences.
  rng = np.random.default_rng(0)
  d, h, lengths = 3, 4, np.array([450, 173, 1])
  sd = {
    f'{k}{s}': rng.uniform(-0.5, 0.5, shape)
    for s in ('', '_reverse')
    for k, shape in [
      ('weight_ih_l0', (4 * h, d)),
      ('weight_hh_l0', (4 * h, h)),
      ('bias_ih_l0', (4 * h,)),
      ('bias_hh_l0', (4 * h,)),
    ]
  }
  x = rng.normal(size=(3, 450, d))
  y = np.asarray(
    models.RNN(h).apply(
      {'params': convert.rnn_params_from_torch(sd, '')},
      jnp.asarray(x, jnp.float32),
      jnp.asarray(lengths, jnp.int32),
    )
  )
  for b, n in enumerate(lengths):
    fw = _np_lstm(
      x[b, :n], *(sd[k] for k in ('weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0'))
    )
    bw = _np_lstm(
      x[b, :n][::-1],
      *(sd[k + '_reverse'] for k in ('weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0')),
    )[::-1]
    np.testing.assert_allclose(y[b, :n], np.concatenate([fw, bw], -1), atol=1e-5)
    assert np.all(y[b, n:] == 0)


def _small_regressor(**kw):
  return models.Regressor(**{**dict(d_rnn=8, n_heads=2, d_out_fc=6, n_targets=2), **kw})


def _key(seed):
  # 'rbg' keys compile much faster on CPU than the default threefry; the models don't care.
  return jax.random.key(seed, impl='rbg')


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _random_params(model, x, lengths, seed=0):
  """Random U(-0.5, 0.5) params of the model's shapes, made without compiling its init."""
  shapes = jax.eval_shape(model.init, _key(0), x, lengths)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype), shapes)


def test_regressor_long_padded_batch_independent_of_batchmates():
  # Each row must come out the same whatever its batch position and amount of padding.
  model = _small_regressor(rnn_n_layers=2)
  x = _normal(0, (3, 450, 5))
  lengths = jnp.array([450, 200, 1], jnp.int32)
  order = jnp.array([2, 0, 1])
  x_other = jnp.pad(x[order], ((0, 1), (0, 7), (0, 0)), constant_values=3.0)
  lengths_other = jnp.pad(lengths[order], (0, 1))
  params = _random_params(model, x, lengths)
  y, y_other = jax.jit(
    lambda p: (model.apply(p, x, lengths), model.apply(p, x_other, lengths_other))
  )(params)
  for b, n in enumerate(lengths.tolist()):
    np.testing.assert_allclose(y[b, :n], y_other[list(order).index(b), :n], atol=1e-5)


@pytest.mark.parametrize(
  'make',
  [
    lambda: _small_regressor(rnn_type='lstm', rnn_n_layers=2),
    lambda: _small_regressor(rnn_type='gru', attn_n_layers=2, pos_encoding=True),
    lambda: models.LateFusion(d_rnn=4, rnn_n_layers=2, n_targets=2),
  ],
)
def test_padding_never_leaks_into_valid_steps(make):
  model = make()
  x = _normal(0, (4, 9, 5))
  lengths = jnp.array([9, 5, 1, 0], jnp.int32)  # 0: an empty row, as batches are padded with
  valid = _valid(lengths, 9)
  x_junk = jnp.where(valid[..., None], x, 1e3 * _normal(2, x.shape)).at[1, 7, 0].set(jnp.nan)
  params = _random_params(model, x, lengths)

  @jax.jit
  def outputs_and_grads(inputs):
    def loss(p):
      y = model.apply(p, inputs, lengths)
      return jnp.sum(jnp.where(valid[..., None], y, 0.0) ** 2), y

    return jax.grad(loss, has_aux=True)(params)[::-1]

  (y, g), (y_junk, g_junk) = outputs_and_grads(x), outputs_and_grads(x_junk)
  np.testing.assert_array_equal(np.asarray(y)[valid], np.asarray(y_junk)[valid])
  assert np.all(np.isfinite(np.asarray(y_junk)))
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_junk)):
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_only_when_not_deterministic():
  model = _small_regressor(rnn_n_layers=2, rnn_dropout=0.5, attn_dropout=0.5, out_dropout=0.5)
  no_dropout = _small_regressor(rnn_n_layers=2)
  x = _normal(0, (2, 7, 5))
  lengths = jnp.array([7, 4], jnp.int32)
  params = _random_params(model, x, lengths)

  @jax.jit
  def run(p):
    train = lambda m, seed: m.apply(
      p, x, lengths, deterministic=False, rngs={'dropout': _key(seed)}
    )
    return (
      model.apply(p, x, lengths),
      train(model, 0),
      train(model, 1),
      train(model, 0),
      no_dropout.apply(p, x, lengths),
      train(no_dropout, 0),
    )

  evaluated, train0, train1, train0_again, plain, plain_train = run(params)
  assert not np.allclose(train0, evaluated)
  assert not np.allclose(train0, train1)
  np.testing.assert_array_equal(train0, train0_again)
  np.testing.assert_array_equal(evaluated, plain)
  np.testing.assert_array_equal(plain, plain_train)


def test_rnn_dropout_acts_between_layers_only():
  rnn = models.RNN(4, n_layers=1, dropout=0.5)  # like torch: nothing to drop in one layer
  x, lengths = _normal(0, (2, 5, 3)), jnp.array([5, 3], jnp.int32)
  params = _random_params(rnn, x, lengths)
  train, evaluated = jax.jit(
    lambda p: (
      rnn.apply(p, x, lengths, deterministic=False, rngs={'dropout': _key(0)}),
      rnn.apply(p, x, lengths),
    )
  )(params)
  np.testing.assert_array_equal(train, evaluated)


def test_init_follows_torch():
  model = _small_regressor(out_bias=(0.25, -0.5))
  lengths = jnp.array([3], jnp.int32)
  params = jax.jit(model.init)(_key(0), jnp.zeros((1, 3, 5)), lengths)['params']
  rnn = params['rnn']['layer_0']
  assert rnn['w_ih'].shape == (2, 8, 32) and rnn['w_hh'].shape == (2, 8, 32)
  bound = 1 / np.sqrt(8)
  assert all(0.5 * bound < np.abs(v).max() <= bound for v in rnn.values())
  np.testing.assert_array_equal(params['fc2']['bias'], [0.25, -0.5])
  np.testing.assert_array_equal(params['attn_0']['in_proj']['bias'], np.zeros(24))
  assert set(params['proj']) == {'kernel'}
  same_dim = jax.eval_shape(model.init, _key(0), jnp.zeros((1, 3, 8)), lengths)['params']
  assert 'proj' not in same_dim


def test_sinusoidal_encoding_formula():
  pe = models.sinusoidal_encoding(50, 7)
  t, i = 37, 2  # dims 2i, 2i+1 share the frequency 10000^(-2i/d)
  np.testing.assert_allclose(pe[t, 2 * i], np.sin(t / 10000 ** (2 * i / 7)), atol=1e-6)
  np.testing.assert_allclose(pe[t, 2 * i + 1], np.cos(t / 10000 ** (2 * i / 7)), atol=1e-6)
  assert pe.shape == (50, 7)


def _model_cfg(**kw):
  cfg = ml_collections.ConfigDict(
    dict(
      name='regressor',
      d_rnn=16,
      rnn_type='lstm',
      rnn_n_layers=1,
      rnn_bi=True,
      rnn_dropout=0.0,
      attn_n_layers=1,
      n_heads=4,
      attn_dropout=0.0,
      pos_encoding=False,
      d_out_fc=8,
      out_dropout=0.0,
      out_bias=(0.0,),
    )
  )
  cfg.update(kw)
  return cfg


def test_create_model_builds_from_config():
  model = models.create_model(
    *config_util.model_fields({**dict(_model_cfg()), 'out_bias': 0.1}, n_targets=2)
  )
  assert isinstance(model, models.Regressor)
  assert (model.d_rnn, model.n_heads, model.n_targets, model.out_bias) == (16, 4, 2, (0.1,))
  assert model.attention == 'plain'
  assert models.create_model(*config_util.model_fields(_model_cfg(), 1), 'blocked').attention == (
    'blocked'
  )
  fusion = models.create_model(
    *config_util.model_fields(_model_cfg(name='late_fusion'), n_targets=2)
  )
  assert isinstance(fusion, models.LateFusion) and fusion.d_rnn == 16
  x, lengths = jnp.ones((2, 4, 3)), jnp.array([4, 2])
  y = jax.eval_shape(fusion.apply, _random_params(fusion, x, lengths), x, lengths)
  assert y.shape == (2, 4, 2)


@pytest.mark.parametrize(
  'override, n_targets, message',
  [
    (
      dict(name='transformer'),
      1,
      r"model\.name='transformer' is unknown; use one of "
      r"\['late_fusion', 'regressor'\]",
    ),
    (dict(rnn_type='rnn'), 1, r"model\.rnn_type='rnn' is invalid: use one of \['gru', 'lstm'\]"),
    (dict(d_rnn=18), 1, r'model\.d_rnn=18 is not divisible by config\.model\.n_heads=4'),
    (dict(d_rnn=-16, n_heads=1), 1, r'model\.d_rnn=-16 is invalid: need an integer >= 1'),
    (dict(rnn_n_layers=0), 1, r'model\.rnn_n_layers=0 is invalid: need an integer >= 1'),
    (dict(attn_n_layers=-1), 1, r'model\.attn_n_layers=-1 is invalid: need an integer >= 0'),
    (dict(rnn_dropout=1.0), 1, r'model\.rnn_dropout=1\.0 is invalid: need a rate in \[0, 1\)'),
    (dict(out_dropout=-0.1), 1, r'model\.out_dropout=-0\.1 is invalid: need a rate in \[0, 1\)'),
    (dict(rnn_bi='yes'), 1, r"model\.rnn_bi='yes' is invalid: need True or False"),
    (
      dict(out_bias=(0.0, 0.0, 0.0)),
      2,
      r'model\.out_bias=\(0\.0, 0\.0, 0\.0\) is invalid: need 1 or 2 \(one per target\)',
    ),
    ({}, 0, r'n_targets=0 is invalid: need at least one target'),
  ],
)
def test_model_fields_rejects_bad_config(override, n_targets, message):
  cfg = {**dict(_model_cfg()), **override}  # a dict: ConfigDict would type-check some itself
  with pytest.raises(MuseError, match=message) as e:
    config_util.model_fields(cfg, n_targets)
  assert '\n' not in str(e.value)


def test_model_fields_rejects_unknown_field():
  with pytest.raises(MuseError, match='d_rnnn'):
    config_util.model_fields({**dict(_model_cfg()), 'd_rnnn': 8}, 1)
