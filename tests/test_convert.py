"""Converter: loading torch weight files and strict mapping of torch names to Flax params."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import convert
from muse_jax import models
from muse_jax.errors import MuseError

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
MODEL_NPZ = os.path.join(FIXTURES, 'model_din10_drnn8_bi_attn1_h2_out2.npz')
MODEL_KWARGS = dict(
  d_rnn=8, rnn_n_layers=1, rnn_bi=True, attn_n_layers=1, n_heads=2, d_out_fc=6, n_targets=2
)


def _to_torch(params):
  """Inverse mapping written from torch's documented layouts: Flax params -> torch state_dict."""
  sd = {}
  if 'proj' in params:
    sd['proj.weight'] = params['proj']['kernel'].T
  for name, layer in params.items():
    if name.startswith('attn_'):
      p = f'attn.{name[5:]}.'
      sd[p + 'mha.in_proj_weight'] = layer['in_proj']['kernel'].T
      sd[p + 'mha.in_proj_bias'] = layer['in_proj']['bias']
      sd[p + 'mha.out_proj.weight'] = layer['out_proj']['kernel'].T
      sd[p + 'mha.out_proj.bias'] = layer['out_proj']['bias']
      sd[p + 'norm.weight'], sd[p + 'norm.bias'] = layer['norm']['scale'], layer['norm']['bias']
  for name, layer in params['rnn'].items():
    for d, suffix in enumerate(('', '_reverse')[: layer['w_ih'].shape[0]]):
      k = name[6:]
      sd[f'rnn.rnn.weight_ih_l{k}{suffix}'] = layer['w_ih'][d].T
      sd[f'rnn.rnn.weight_hh_l{k}{suffix}'] = layer['w_hh'][d].T
      sd[f'rnn.rnn.bias_ih_l{k}{suffix}'] = layer['b_ih'][d]
      sd[f'rnn.rnn.bias_hh_l{k}{suffix}'] = layer['b_hh'][d]
  for fc in ('fc1', 'fc2'):
    sd[f'{fc}.weight'], sd[f'{fc}.bias'] = params[fc]['kernel'].T, params[fc]['bias']
  return {k: np.asarray(v, np.float64) for k, v in sd.items()}


@pytest.mark.parametrize(
  'kwargs, d_in',
  [
    (dict(d_rnn=8, n_heads=2, rnn_n_layers=2, attn_n_layers=2, rnn_type='gru', n_targets=2), 5),
    (dict(d_rnn=6, n_heads=3, rnn_bi=False, attn_n_layers=0), 6),
  ],
)
def test_regressor_round_trip_through_torch_names(kwargs, d_in):
  model = models.Regressor(**kwargs)
  x, lengths = jnp.zeros((1, 2, d_in)), jnp.array([2], jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0, impl='rbg'), x, lengths)['params']
  back = convert.regressor_params_from_torch(_to_torch(params), kwargs)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


def test_load_npz_with_and_without_param_prefix(tmp_path):
  sd = convert.load_torch_state_dict(MODEL_NPZ)
  assert 'proj.weight' in sd and not any(k.startswith(('param/', 'input/')) for k in sd)
  assert 'expected' not in sd and 'lengths' not in sd
  plain = tmp_path / 'weights.npz'
  np.savez(plain, **sd)
  again = convert.load_torch_state_dict(str(plain))
  assert sorted(again) == sorted(sd)
  np.testing.assert_array_equal(
    again['rnn.rnn.weight_hh_l0_reverse'], sd['rnn.rnn.weight_hh_l0_reverse']
  )


def test_load_pt_without_torch_says_so(tmp_path, monkeypatch):
  path = tmp_path / 'model.pt'
  path.write_bytes(b'not really a checkpoint')
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  with pytest.raises(MuseError, match='needs torch'):
    convert.load_torch_state_dict(path)


def test_load_rejects_missing_and_unknown_files(tmp_path):
  with pytest.raises(MuseError, match='no such'):
    convert.load_torch_state_dict(tmp_path / 'absent.npz')
  (tmp_path / 'w.h5').write_bytes(b'')
  with pytest.raises(MuseError, match='unknown weight file type'):
    convert.load_torch_state_dict(tmp_path / 'w.h5')


@pytest.mark.parametrize(
  'edit, kwargs, match',
  [
    (lambda sd: sd.pop('fc2.bias'), {}, 'fc2.bias'),
    (lambda sd: sd.update({'attn.1.norm.weight': np.ones(8)}), {}, 'attn.1.norm.weight'),
    (lambda sd: None, dict(n_targets=1), 'fc2'),
    (lambda sd: None, dict(attn_n_layers=0), 'attn.0'),
    (lambda sd: None, dict(rnn_bi=False), 'do not fit'),
  ],
)
def test_regressor_conversion_is_strict(edit, kwargs, match):
  sd = convert.load_torch_state_dict(MODEL_NPZ)
  edit(sd)
  with pytest.raises(MuseError, match=match) as e:
    convert.regressor_params_from_torch(sd, {**MODEL_KWARGS, **kwargs})
  assert '\n' not in str(e.value)
