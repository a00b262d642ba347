"""Ports trained PyTorch weights into muse_jax's Flax params.

Input is a torch `state_dict` as a mapping of torch names to numpy arrays, named like the PyTorch
reference model (`proj.weight`, `attn.0.mha.in_proj_weight`, `rnn.rnn.weight_ih_l0_reverse`,
`fc1.weight`, ...). The layouts differ only by transposes and a stacked direction axis (see
muse_jax.models.RecurrentLayer), so the ported model computes the same function.
"""

from collections.abc import Mapping
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import models
from muse_jax.errors import MuseError

_PREFIX = 'param/'


class _Reader:
  """Reads named tensors as float32 and remembers which were used, to reject leftovers."""

  def __init__(self, state_dict: Mapping[str, Any]):
    self.state_dict, self.used = state_dict, set()

  def __contains__(self, name):
    return name in self.state_dict

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.state_dict:
      raise MuseError(
        f'torch state_dict has no {name!r} (it has e.g. {sorted(self.state_dict)[:4]})'
      )
    self.used.add(name)
    return np.asarray(self.state_dict[name], np.float32)


def _rnn(read: _Reader, prefix: str) -> dict:
  n_layers = 0
  while f'{prefix}weight_ih_l{n_layers}' in read:
    n_layers += 1
  if not n_layers:
    raise MuseError(
      f'torch state_dict has no {prefix}weight_ih_l0: not an nn.LSTM/nn.GRU at {prefix!r}'
    )
  dirs = ('', '_reverse') if f'{prefix}weight_ih_l0_reverse' in read else ('',)
  params = {}
  for i in range(n_layers):

    def stack(kind, transpose):
      arrays = [read(f'{prefix}{kind}_l{i}{d}') for d in dirs]
      return np.stack([a.T if transpose else a for a in arrays])

    params[f'layer_{i}'] = {
      'w_ih': stack('weight_ih', True),
      'w_hh': stack('weight_hh', True),
      'b_ih': stack('bias_ih', False),
      'b_hh': stack('bias_hh', False),
    }
  return params


def _dense(read: _Reader, prefix: str, bias: bool = True) -> dict:
  params = {'kernel': read(f'{prefix}weight').T}
  if bias:
    params['bias'] = read(f'{prefix}bias')
  return params


def _attention(read: _Reader, prefix: str) -> dict:
  return {
    'in_proj': {
      'kernel': read(f'{prefix}mha.in_proj_weight').T,
      'bias': read(f'{prefix}mha.in_proj_bias'),
    },
    'out_proj': _dense(read, f'{prefix}mha.out_proj.'),
    'norm': {'scale': read(f'{prefix}norm.weight'), 'bias': read(f'{prefix}norm.bias')},
  }


def rnn_params_from_torch(state_dict: Mapping[str, Any], prefix: str = 'rnn.') -> dict:
  """Params of models.RNN from an nn.LSTM/nn.GRU's tensors under `prefix`.

  The number of layers and directions are read off the names; the cell type does not change the
  layout.
  """
  return _rnn(_Reader(state_dict), prefix)


def attention_params_from_torch(state_dict: Mapping[str, Any], prefix: str = '') -> dict:
  """Params of models.AttentionLayer from `<prefix>mha.*` (nn.MultiheadAttention) and
  `<prefix>norm.*`."""
  return _attention(_Reader(state_dict), prefix)


def _shapes(tree) -> dict[str, tuple]:
  return {
    jax.tree_util.keystr(p): tuple(a.shape)
    for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def regressor_params_from_torch(
  state_dict: Mapping[str, Any], model_kwargs: Mapping[str, Any]
) -> dict:
  """Params (the 'params' collection) of models.Regressor(**model_kwargs) from a torch state_dict.

  Strict like torch's load_state_dict: missing or unused tensors and shape mismatches with the
  model that `model_kwargs` describes raise MuseError.
  """
  model = models.Regressor(**model_kwargs)
  read = _Reader(state_dict)
  params = {}
  d_in = model.d_rnn
  if 'proj.weight' in read:
    params['proj'] = _dense(read, 'proj.', bias=False)
    d_in = params['proj']['kernel'].shape[0]
  for i in range(model.attn_n_layers):
    params[f'attn_{i}'] = _attention(read, f'attn.{i}.')
  params['rnn'] = _rnn(read, 'rnn.rnn.')
  params['fc1'] = _dense(read, 'fc1.')
  params['fc2'] = _dense(read, 'fc2.')

  unused = sorted(set(state_dict) - read.used)
  if unused:
    raise MuseError(
      f'torch state_dict has tensors the model does not use, e.g. {unused[0]!r}; '
      'check attn_n_layers/rnn_n_layers/rnn_bi'
    )
  want = _shapes(
    jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 1, d_in), jnp.float32), jnp.ones((1,), jnp.int32)
    )
  )
  got = _shapes({'params': params})
  diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
  if diff:
    raise MuseError(
      f'torch weights do not fit the model at {diff[0]}: model wants '
      f'{want.get(diff[0])}, weights give {got.get(diff[0])}; check model_kwargs'
    )
  return params


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads torch weights from `.npz` (names with or without a `param/` prefix) or `.pt`/`.pth`.

  An .npz that has `param/` keys (like the parity fixtures) yields only those, prefix removed.
  .pt/.pth need torch; they may hold a state_dict or a checkpoint dict with a 'state_dict' entry.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MuseError(f'{path}: no such weight file')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npz':
    with np.load(path) as z:
      if any(k.startswith(_PREFIX) for k in z.files):
        return {k[len(_PREFIX) :]: z[k] for k in z.files if k.startswith(_PREFIX)}
      return {k: z[k] for k in z.files}
  if ext not in ('.pt', '.pth'):
    raise MuseError(f'{path}: unknown weight file type {ext!r}; use .npz, .pt or .pth')
  try:
    import torch  # noqa: PLC0415  (optional: only to read a torch checkpoint)
  except ImportError:
    raise MuseError(
      f'{path}: reading {ext} needs torch (pip install torch), or save the state_dict '
      'as .npz: np.savez(f, **{k: v.numpy() for k, v in sd.items()})'
    ) from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # noqa: BLE001
    raise MuseError(
      f'{path}: torch.load failed ({type(e).__name__}); save model.state_dict(), '
      'not the whole model'
    ) from e
  if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
    obj = obj['state_dict']
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if torch.is_tensor(v)}
