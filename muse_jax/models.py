"""The seed paper's models (Sun et al., MuSe-Wild 2020) as Flax linen modules.

Regressor: optional bias-free projection -> self-attention layers -> (bi)LSTM/GRU -> MLP head.
LateFusion: (bi)LSTM + Dense over stacked per-frame predictions of first-level models.

Every module takes `x` [B, T, D] and the true lengths `lengths` [B]; steps at and past a sequence's
length are padding and never influence valid steps. Parameters mirror torch's layouts (gate order,
separate input/hidden biases, stacked q/k/v) and init, so trained PyTorch weights port by a
transpose (see muse_jax.convert) and training starts from the distribution the paper used.
"""

from collections.abc import Mapping
from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.ops import attention as attention_ops
from muse_jax.ops.attention import length_mask

_GATES = {'lstm': 4, 'gru': 3}


def _uniform(bound: float):
  """torch's default init for Linear and RNN weights: U(-bound, bound)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _torch_dense(
  features: int, fan_in: int, name: str, use_bias: bool = True, bias_init=None
) -> nn.Dense:
  """nn.Dense with torch.nn.Linear's init (U(+-1/sqrt(fan_in)) for weight and bias)."""
  bound = 1.0 / math.sqrt(fan_in)
  return nn.Dense(
    features,
    use_bias=use_bias,
    kernel_init=_uniform(bound),
    bias_init=bias_init or _uniform(bound),
    name=name,
  )


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
  pe[:, 1::2] = np.cos(pos * freq[: d // 2])
  return pe


class RecurrentLayer(nn.Module):
  """One LSTM/GRU layer; a bidirectional one runs its directions as two independent scans.

  The input projection of all steps is one matmul outside the loop; each scan only does h @ W_hh.
  Two scans beat one over stacked directions on CPU, where XLA runs them concurrently, one per
  core (benchmarks/RESULTS.md). Parameters have a
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
      b_hn = b_hh[:, 2 * h :]

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


class Dropout(nn.Module):
  """flax's nn.Dropout whose rate may also be given per call, traced: a sweep's members each
  train with their own rate in one compiled step (config.members). Same class name, so the same
  auto-name, rng stream and mask as nn.Dropout for the same rate: a member equals a separate run
  with that rate."""

  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool, rate=None) -> jax.Array:
    rate = self.rate if rate is None else rate
    if deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
      return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(self.make_rng('dropout'), p=keep, shape=x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


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
  def __call__(
    self, x: jax.Array, lengths: jax.Array, *, deterministic: bool = True, rate=None
  ) -> jax.Array:
    for i in range(self.n_layers):
      if i:
        x = Dropout(self.dropout)(x, deterministic, rate)
      x = RecurrentLayer(self.hidden, self.cell, self.bidirectional, name=f'layer_{i}')(x, lengths)
    return x


class AttentionLayer(nn.Module):
  """LayerNorm(x + Dropout(MHA(x, x, x))), numerically torch's nn.MultiheadAttention.

  Dropout hits the attention weights and the attention output, as in torch's
  TransformerEncoderLayer. `attention`/`block_bytes`: which core computes it (ops.attention).
  """

  d: int
  n_heads: int
  dropout: float = 0.0
  attention: str = 'plain'
  block_bytes: Any = attention_ops.BLOCK_BYTES

  @nn.compact
  def __call__(
    self, x: jax.Array, lengths: jax.Array, *, deterministic: bool = True, rate=None
  ) -> jax.Array:
    """`rate`: this call's dropout rate (traced: a sweep member's own), instead of `dropout`."""
    b, t, d = x.shape
    dh = self.d // self.n_heads
    drop = self.dropout if rate is None else rate
    qkv = nn.Dense(
      3 * self.d,
      kernel_init=nn.initializers.xavier_uniform(),
      bias_init=nn.initializers.zeros,
      name='in_proj',
    )(x)
    q, k, v = (a.reshape(b, t, self.n_heads, dh) for a in jnp.split(qkv, 3, axis=-1))
    static_zero = isinstance(drop, (int, float)) and drop == 0.0
    rng = None if deterministic or static_zero else self.make_rng('dropout')
    y = attention_ops.attention(
      q,
      k,
      v,
      lengths,
      self.attention,
      dropout_rate=drop,
      dropout_rng=rng,
      block_bytes=self.block_bytes,
    ).reshape(b, t, self.d)
    y = _torch_dense(d, self.d, 'out_proj', bias_init=nn.initializers.zeros)(y)
    y = Dropout(self.dropout)(y, deterministic, rate)
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
  attention: str = 'plain'  # the attention core (ops.attention); not a config.model field

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    lengths: jax.Array,
    *,
    deterministic: bool = True,
    rates: Mapping[str, Any] | None = None,
  ) -> jax.Array:
    """x [B, T, D] float, lengths [B] int -> [B, T, n_targets] (padded steps are meaningless).
    `rates`: {'rnn_dropout', 'out_dropout', 'attn_dropout'} for this call (traced), instead of
    the fields."""
    rates = rates or {}
    # Zero padding first: NaN/inf in padded inputs would otherwise reach valid gradients.
    x = jnp.where(length_mask(lengths, x.shape[1])[..., None], x, 0.0)
    if x.shape[-1] != self.d_rnn:
      x = _torch_dense(self.d_rnn, x.shape[-1], 'proj', use_bias=False)(x)
    if self.pos_encoding:
      x = x + sinusoidal_encoding(x.shape[1], self.d_rnn)
    for i in range(self.attn_n_layers):
      x = AttentionLayer(
        self.d_rnn, self.n_heads, self.attn_dropout, self.attention, name=f'attn_{i}'
      )(x, lengths, deterministic=deterministic, rate=rates.get('attn_dropout'))
    x = RNN(
      self.d_rnn, self.rnn_type, self.rnn_n_layers, self.rnn_bi, self.rnn_dropout, name='rnn'
    )(x, lengths, deterministic=deterministic, rate=rates.get('rnn_dropout'))
    x = nn.relu(_torch_dense(self.d_out_fc, x.shape[-1], 'fc1')(x))
    x = Dropout(self.out_dropout)(x, deterministic, rates.get('out_dropout'))
    return _torch_dense(
      self.n_targets, self.d_out_fc, 'fc2', bias_init=_out_bias_init(self.out_bias, self.n_targets)
    )(x)


class LateFusion(nn.Module):
  """The paper's second-level model: (bi)LSTM + Dense over stacked first-level predictions."""

  d_rnn: int = 32
  rnn_n_layers: int = 1
  rnn_bi: bool = True
  rnn_dropout: float = 0.0
  n_targets: int = 1
  out_bias: Sequence[float] = (0.0,)

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    lengths: jax.Array,
    *,
    deterministic: bool = True,
    rates: Mapping[str, Any] | None = None,
  ) -> jax.Array:
    x = RNN(self.d_rnn, 'lstm', self.rnn_n_layers, self.rnn_bi, self.rnn_dropout, name='rnn')(
      x, lengths, deterministic=deterministic, rate=(rates or {}).get('rnn_dropout')
    )
    return _torch_dense(
      self.n_targets, x.shape[-1], 'fc', bias_init=_out_bias_init(self.out_bias, self.n_targets)
    )(x)


MODELS = {'regressor': Regressor, 'late_fusion': LateFusion}


def config_fields(cls) -> set[str]:
  """The fields of a model that config.model may set (not the trainer's `attention`)."""
  return {f for f in cls.__dataclass_fields__ if f not in ('parent', 'name', 'attention')}


def create_model(name: str, fields: Mapping[str, Any], attention: str = 'plain'):
  """The model `name` (a key of MODELS) built from `fields` as config_util.model_fields returns
  them: the config layer is the one place that checks config.model (one line per bad field), so
  this module builds from checked arguments and knows no config. `attention`: the core of its
  attention layers, for Regressor (ops.attention)."""
  kw = dict(fields)
  if 'attention' in MODELS[name].__dataclass_fields__:
    kw['attention'] = attention
  return MODELS[name](**kw)
