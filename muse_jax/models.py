"""The seed paper's models (Sun et al., MuSe-Wild 2020) as Flax linen modules.

Regressor: optional bias-free projection -> self-attention layers -> (bi)LSTM/GRU -> MLP head.
LateFusion: (bi)LSTM + Dense over stacked per-frame predictions of first-level models.

Every module takes `x` [B, T, D] and the true lengths `lengths` [B]; steps at and past a sequence's
length are padding and never influence valid steps. Parameters mirror torch's layouts (gate order,
separate input/hidden biases, stacked q/k/v) and init, so trained PyTorch weights port by a
transpose (see muse_jax.convert) and training starts from the distribution the paper used.
"""
import functools
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.errors import MuseError

_GATES = {'lstm': 4, 'gru': 3}


def _uniform(bound: float):
  """torch's default init for Linear and RNN weights: U(-bound, bound)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _torch_dense(features: int, fan_in: int, name: str, use_bias: bool = True,
                 bias_init=None) -> nn.Dense:
  """nn.Dense with torch.nn.Linear's init (U(+-1/sqrt(fan_in)) for weight and bias)."""
  bound = 1.0 / math.sqrt(fan_in)
  return nn.Dense(features, use_bias=use_bias, kernel_init=_uniform(bound),
                  bias_init=bias_init or _uniform(bound), name=name)


def length_mask(lengths: jax.Array, t: int) -> jax.Array:
  """[B, T] bool, True on valid steps."""
  return jnp.arange(t)[None, :] < lengths[:, None]


def reverse_within_length(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses each sequence of x [B, T, ...] within its own length; padding stays in place.

  This is what torch's packed sequences do for the backward direction. It is its own inverse.
  """
  t = jnp.arange(x.shape[1])[None, :]
  idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def sinusoidal_encoding(t: int, d: int) -> np.ndarray:
  """[T, d] sin/cos position codes of 'Attention is all you need' (sin on even, cos on odd)."""
  pos = np.arange(t)[:, None]
  freq = np.exp(-math.log(10000.0) * np.arange(0, d, 2) / d)
  pe = np.zeros((t, d), np.float32)
  pe[:, 0::2] = np.sin(pos * freq)
  pe[:, 1::2] = np.cos(pos * freq[:d // 2])
  return pe


class RecurrentLayer(nn.Module):
  """One LSTM/GRU layer; a bidirectional one runs its directions as two independent scans.

  The input projection of all steps is one matmul outside the loop; each scan only does h @ W_hh.
  Two scans beat one over stacked directions on CPU, where XLA runs them concurrently, one per
  core (fwd+bwd of the paper's step 2.90 -> 2.37 s, benchmarks/RESULTS.md). Parameters have a
  leading direction axis (0 = forward, 1 = backward) and hold torch's matrices transposed:
  w_ih [K, D, G*H], w_hh [K, H, G*H], b_ih/b_hh [K, G*H] with gates in torch's order (LSTM
  i,f,g,o; GRU r,z,n).
  """
  hidden: int
  cell: str = 'lstm'
  bidirectional: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
    """x [B, T, D] -> [B, T, K*H], zero at padded steps."""
    k, h, g = (2 if self.bidirectional else 1), self.hidden, _GATES[self.cell]
    init = _uniform(1.0 / math.sqrt(h))
    w_ih = self.param('w_ih', init, (k, x.shape[-1], g * h))
    w_hh = self.param('w_hh', init, (k, h, g * h))
    b_ih = self.param('b_ih', init, (k, g * h))
    b_hh = self.param('b_hh', init, (k, g * h))

    mask = length_mask(lengths, x.shape[1])
    # Zeroing padded inputs keeps NaN/inf padding out of gradients of valid steps.
    x = jnp.where(mask[..., None], x, 0.0)
    xs = [x, reverse_within_length(x, lengths)][:k]
    if self.cell == 'lstm':
      bias = b_ih + b_hh
    else:  # GRU's b_hn sits inside r * (W_hn h + b_hn): only the r, z parts fold in here.
      bias = b_ih + jnp.where(jnp.arange(g * h) < 2 * h, b_hh, 0.0)
      b_hn = b_hh[:, 2 * h:]

    def direction(j):
      """One direction's scan; the gates come time-major [T, B, G] out of the matmul (only the
      smaller input is transposed)."""
      w = w_hh[j]

      def lstm_step(carry, gx_t):
        hid, c = carry
        i, f, gg, o = jnp.split(gx_t + hid @ w, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        hid = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (hid, c), hid

      def gru_step(hid, gx_t):
        xr, xz, xn = jnp.split(gx_t, 3, axis=-1)
        hr, hz, hn = jnp.split(hid @ w, 3, axis=-1)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * (hn + b_hn[j]))
        hid = (1.0 - z) * n + z * hid
        return hid, hid

      gx = jnp.transpose(xs[j], (1, 0, 2)) @ w_ih[j] + bias[j]
      h0 = jnp.zeros((x.shape[0], h), gx.dtype)
      if self.cell == 'lstm':
        _, ys = jax.lax.scan(lstm_step, (h0, h0), gx)
      else:
        _, ys = jax.lax.scan(gru_step, h0, gx)
      return jnp.transpose(ys, (1, 0, 2))  # [B, T, H]

    outs = [direction(j) for j in range(k)]
    # Padded steps come after all valid ones in both directions, so they never reach valid outputs.
    if k == 2:
      outs[1] = reverse_within_length(outs[1], lengths)
    return jnp.where(mask[..., None], jnp.concatenate(outs, axis=-1), 0.0)


class RNN(nn.Module):
  """Stacked (bi)LSTM/GRU like torch's nn.LSTM/nn.GRU on packed sequences.

  Dropout acts between layers only, as torch's `dropout` argument does.
  """
  hidden: int
  cell: str = 'lstm'
  n_layers: int = 1
  bidirectional: bool = True
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array, *, deterministic: bool = True) -> jax.Array:
    for i in range(self.n_layers):
      if i:
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
      x = RecurrentLayer(self.hidden, self.cell, self.bidirectional, name=f'layer_{i}')(x, lengths)
    return x


# Attention on CPU is memory-bound: the [B, heads, T, T] score tensor (1.3 GB at the paper's batch
# 1024 x T 200) would be written and re-read many times in DRAM. Computed in blocks of about this
# many score bytes (a few windows, or a few queries of one long video), every pass stays in cache:
# ~3x faster fwd+bwd on CPU (benchmarks/RESULTS.md) and far less memory. On GPU/TPU the unblocked
# form is faster (one big kernel instead of a loop), so 'auto' blocks on CPU only.
ATTN_BLOCK_BYTES = 4 << 20


# The block's forward products per layout, (scores, output, key axis): 'bthd' = [B, T, H, dh]
# (blocks of windows, as the layer makes them); 'bhtd' = head-major [B, H, T, dh] (query blocks of
# one long window: k and v are transposed once per window instead of once per block; the forward
# of a 6,144-frame video 195 -> 115 ms). The gradient is computed in 'bthd' for both.
_EINSUMS = {'bthd': ('bqhd,bkhd->bhqk', 'bhqk,bkhd->bqhd', 1),
            'bhtd': ('bhqd,bhkd->bhqk', 'bhqk,bhkd->bhqd', 2)}


def _attention_block(q, k, v, lengths, scale, layout='bthd'):
  """Softmax(q k^T * scale, padded keys masked) v for one block of q [B, Tq, H, dh] and k/v
  [B, T, H, dh] (or all head-major with layout 'bhtd'); returns the output and the weights.

  Padded keys get the dtype's most negative value instead of -inf, so a fully padded row attends
  uniformly (finite, later zeroed) instead of producing NaN as torch does.
  """
  scores, out, key_axis = _EINSUMS[layout]
  s = jnp.einsum(scores, q * scale, k)
  valid = length_mask(lengths, k.shape[key_axis])[:, None, None, :]
  p = jax.nn.softmax(jnp.where(valid, s, jnp.finfo(s.dtype).min), axis=-1)
  return jnp.einsum(out, p, v), p


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attend(q, k, v, lengths, scale, layout):
  return _attention_block(q, k, v, lengths, scale, layout)[0]


def _attend_fwd(q, k, v, lengths, scale, layout):
  y, p = _attention_block(q, k, v, lengths, scale, layout)
  return y, (q, k, v, lengths, p, scale)


def _attend_bwd(layout, res, dy):
  """The softmax-attention gradient by hand: reads the weights p twice instead of autodiff's
  chain of saved intermediates (fewer passes over the score-sized buffers). Always in the 'bthd'
  layout: its products measured faster backward (whole-video fwd+bwd 1.4-1.6 s vs 2.2 s)."""
  q, k, v, lengths, p, scale = res
  if layout == 'bhtd':
    swap = lambda a: jnp.transpose(a, (0, 2, 1, 3))
    dq, dk, dv, _, _ = _attend_bwd('bthd', (swap(q), swap(k), swap(v), lengths, p, scale),
                                   swap(dy))
    return swap(dq), swap(dk), swap(dv), None, None
  dv = jnp.einsum('bhqk,bqhd->bkhd', p, dy)
  dp = jnp.einsum('bqhd,bkhd->bhqk', dy, v)
  ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
  ds = jnp.where(length_mask(lengths, k.shape[1])[:, None, None, :], ds, 0.0)  # masked: constant
  dq = jnp.einsum('bhqk,bkhd->bqhd', ds, k) * scale
  dk = jnp.einsum('bhqk,bqhd->bkhd', ds, q * scale)
  return dq, dk, dv, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _largest_divisor(n: int, at_most: int) -> int:
  return max(c for c in range(1, max(1, min(n, at_most)) + 1) if n % c == 0)


def dot_product_attention(q, k, v, lengths, *, dropout_rate: float = 0.0, dropout_rng=None,
                          block_bytes='auto'):
  """Multi-head attention core, q/k/v [B, T, H, dh] -> [B, T, H, dh]; padded keys are masked.

  block_bytes: 'auto' (ATTN_BLOCK_BYTES on CPU, unblocked elsewhere), None (unblocked) or a
  size. Blocks are groups of windows when one window's scores fit, else query blocks of one
  window; each block is rematerialised in the backward pass instead of stored. Dropout on the
  weights (dropout_rng given) uses plain autodiff, without it a hand-written gradient.
  """
  b, t, h, dh = q.shape
  scale = jnp.asarray(1.0 / math.sqrt(dh), q.dtype)
  drop = dropout_rng is not None and dropout_rate > 0.0

  def block(q, k, v, lengths, rng, layout='bthd'):
    if not drop:
      return _attend(q, k, v, lengths, scale, layout)
    _, p = _attention_block(q, k, v, lengths, scale, layout)
    keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, p.shape)
    return jnp.einsum(_EINSUMS[layout][1], jnp.where(keep, p / (1.0 - dropout_rate), 0.0), v)

  if block_bytes == 'auto':
    block_bytes = ATTN_BLOCK_BYTES if jax.default_backend() == 'cpu' else None
  if block_bytes is None:
    return block(q, k, v, lengths, dropout_rng)
  block = jax.checkpoint(block, static_argnums=(5,))
  row = h * t * t * q.dtype.itemsize
  if row <= block_bytes:  # blocks of c windows: rows j, n + j, 2n + j, ... (keeps a sharded batch
    c = _largest_divisor(b, block_bytes // row)  # axis whole on each device: no communication)
    n = b // c
    split = lambda a: jnp.moveaxis(a.reshape((c, n) + a.shape[1:]), 1, 0)
    rngs = jax.random.split(dropout_rng, n) if drop else jnp.zeros((n,))
    y = jax.lax.map(lambda a: block(*a[:4], a[4] if drop else None, 'bthd'),
                    (split(q), split(k), split(v), split(lengths), rngs))
    return jnp.moveaxis(y, 0, 1).reshape(q.shape)
  # Long windows (whole videos in evaluation): one window at a time, tq queries per block, all
  # head-major (see _EINSUMS).
  nq = -(-t // max(1, block_bytes // (h * t * q.dtype.itemsize)))
  tq = -(-t // nq)  # equal blocks: 400 queries -> 2 x 200, not 327 + 73 padded to 2 x 327
  head_major = lambda a: jnp.transpose(a, (0, 2, 1, 3))
  qb = head_major(jnp.pad(q, ((0, 0), (0, nq * tq - t), (0, 0), (0, 0))))
  qb = jnp.moveaxis(qb.reshape(b, h, nq, tq, dh), 2, 1)  # [B, nq, H, tq, dh]
  rngs = jax.random.split(dropout_rng, (b, nq)) if drop else jnp.zeros((b, nq))

  def one_window(a):
    qw, kw, vw, lw, rw = a
    return jax.lax.map(lambda c: block(c[0][None], kw[None], vw[None], lw[None],
                                       c[1] if drop else None, 'bhtd')[0], (qw, rw))

  y = jax.lax.map(one_window, (qb, head_major(k), head_major(v), lengths, rngs))
  return head_major(jnp.moveaxis(y, 1, 2).reshape(b, h, nq * tq, dh)[:, :, :t])


class AttentionLayer(nn.Module):
  """LayerNorm(x + Dropout(MHA(x, x, x))), numerically torch's nn.MultiheadAttention.

  Dropout hits the attention weights and the attention output, as in torch's
  TransformerEncoderLayer. `block_bytes`: see dot_product_attention.
  """
  d: int
  n_heads: int
  dropout: float = 0.0
  block_bytes: Any = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array, *, deterministic: bool = True) -> jax.Array:
    b, t, d = x.shape
    dh = self.d // self.n_heads
    qkv = nn.Dense(3 * self.d, kernel_init=nn.initializers.xavier_uniform(),
                   bias_init=nn.initializers.zeros, name='in_proj')(x)
    q, k, v = (a.reshape(b, t, self.n_heads, dh) for a in jnp.split(qkv, 3, axis=-1))
    rng = None if deterministic or self.dropout == 0.0 else self.make_rng('dropout')
    y = dot_product_attention(q, k, v, lengths, dropout_rate=self.dropout, dropout_rng=rng,
                              block_bytes=self.block_bytes).reshape(b, t, self.d)
    y = _torch_dense(d, self.d, 'out_proj', bias_init=nn.initializers.zeros)(y)
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    return nn.LayerNorm(epsilon=1e-5, name='norm')(x + y)


def _out_bias_init(out_bias: Sequence[float], n_targets: int):
  """Constant init of the last bias from one value per target (or one value for all)."""
  value = np.broadcast_to(np.asarray(out_bias, np.float32), (n_targets,))
  return lambda key, shape, dtype=jnp.float32: jnp.asarray(value, dtype)


class Regressor(nn.Module):
  """The paper's model: proj -> attention layers -> RNN -> Dense-ReLU-dropout -> Dense."""
  d_rnn: int = 64
  rnn_type: str = 'lstm'
  rnn_n_layers: int = 1
  rnn_bi: bool = True
  rnn_dropout: float = 0.0
  attn_n_layers: int = 1
  n_heads: int = 8
  attn_dropout: float = 0.0
  pos_encoding: bool = False
  d_out_fc: int = 64
  out_dropout: float = 0.0
  n_targets: int = 1
  out_bias: Sequence[float] = (0.0,)

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """x [B, T, D] float, lengths [B] int -> [B, T, n_targets] (padded steps are meaningless)."""
    # Zero padding first: NaN/inf in padded inputs would otherwise reach valid gradients.
    x = jnp.where(length_mask(lengths, x.shape[1])[..., None], x, 0.0)
    if x.shape[-1] != self.d_rnn:
      x = _torch_dense(self.d_rnn, x.shape[-1], 'proj', use_bias=False)(x)
    if self.pos_encoding:
      x = x + sinusoidal_encoding(x.shape[1], self.d_rnn)
    for i in range(self.attn_n_layers):
      x = AttentionLayer(self.d_rnn, self.n_heads, self.attn_dropout, name=f'attn_{i}')(
          x, lengths, deterministic=deterministic)
    x = RNN(self.d_rnn, self.rnn_type, self.rnn_n_layers, self.rnn_bi, self.rnn_dropout,
            name='rnn')(x, lengths, deterministic=deterministic)
    x = nn.relu(_torch_dense(self.d_out_fc, x.shape[-1], 'fc1')(x))
    x = nn.Dropout(self.out_dropout)(x, deterministic=deterministic)
    return _torch_dense(self.n_targets, self.d_out_fc, 'fc2',
                        bias_init=_out_bias_init(self.out_bias, self.n_targets))(x)


class LateFusion(nn.Module):
  """The paper's second-level model: (bi)LSTM + Dense over stacked first-level predictions."""
  d_rnn: int = 32
  rnn_n_layers: int = 1
  rnn_bi: bool = True
  rnn_dropout: float = 0.0
  n_targets: int = 1
  out_bias: Sequence[float] = (0.0,)

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array, *, deterministic: bool = True) -> jax.Array:
    x = RNN(self.d_rnn, 'lstm', self.rnn_n_layers, self.rnn_bi, self.rnn_dropout,
            name='rnn')(x, lengths, deterministic=deterministic)
    return _torch_dense(self.n_targets, x.shape[-1], 'fc',
                        bias_init=_out_bias_init(self.out_bias, self.n_targets))(x)


_MODELS = {'regressor': Regressor, 'late_fusion': LateFusion}
_SIZES = {'d_rnn': 1, 'rnn_n_layers': 1, 'attn_n_layers': 0, 'n_heads': 1, 'd_out_fc': 1}
_DROPOUTS = ('rnn_dropout', 'attn_dropout', 'out_dropout')
_FLAGS = ('rnn_bi', 'pos_encoding')


def _fields(cls) -> set[str]:
  return {f for f in cls.__dataclass_fields__ if f not in ('parent', 'name')}


def create_model(model_cfg: Mapping[str, Any], n_targets: int) -> nn.Module:
  """Builds the model named by `model_cfg.name` from config fields, validating them.

  Fields that belong only to the other model are ignored, so a config can switch `name` without
  deleting fields; fields no model knows are typos and rejected. Missing fields take the module's
  defaults.
  """
  cfg = dict(model_cfg)
  name = cfg.pop('name', None)
  if name not in _MODELS:
    raise MuseError(f"config.model.name={name!r} is unknown; use one of {sorted(_MODELS)}")
  cls = _MODELS[name]
  known = set().union(*(_fields(c) for c in _MODELS.values())) - {'n_targets'}
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise MuseError(f'config.model.{unknown[0]} is not a model field; known: {sorted(known)}')
  if isinstance(n_targets, bool) or not isinstance(n_targets, int) or n_targets < 1:
    raise MuseError(f'n_targets={n_targets!r} is invalid: need at least one target')
  kw = {f: cfg.get(f, cls.__dataclass_fields__[f].default) for f in _fields(cls)}
  kw['n_targets'] = n_targets

  def bad(field, why):
    return MuseError(f'config.model.{field}={kw[field]!r} is invalid: {why}')

  def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)

  for f, lo in _SIZES.items():
    if f in kw and not (isinstance(kw[f], int) and not isinstance(kw[f], bool) and kw[f] >= lo):
      raise bad(f, f'need an integer >= {lo}')
  for f in _DROPOUTS:
    if f in kw and not (is_num(kw[f]) and 0.0 <= kw[f] < 1.0):
      raise bad(f, 'need a rate in [0, 1)')
  for f in _FLAGS:
    if f in kw and not isinstance(kw[f], bool):
      raise bad(f, 'need True or False')
  if kw.get('rnn_type', 'lstm') not in _GATES:
    raise bad('rnn_type', f'use one of {sorted(_GATES)}')
  if kw.get('attn_n_layers') and kw['d_rnn'] % kw['n_heads']:
    raise MuseError(f"config.model.d_rnn={kw['d_rnn']} is not divisible by "
                    f"config.model.n_heads={kw['n_heads']}")
  out_bias = (kw['out_bias'],) if is_num(kw['out_bias']) else kw['out_bias']
  if (not isinstance(out_bias, (list, tuple)) or len(out_bias) not in (1, n_targets)
      or not all(map(is_num, out_bias))):
    raise bad('out_bias', f'need 1 or {n_targets} (one per target) numbers')
  kw['out_bias'] = tuple(float(v) for v in out_bias)
  return cls(**kw)
