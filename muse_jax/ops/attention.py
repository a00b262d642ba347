"""Multi-head attention cores over padded sequences: a plain reference, a blocked CPU kernel and
jax.nn.dot_product_attention (XLA's or cuDNN's fused kernel).

Both take q/k/v [B, T, H, dh] and the true lengths [B]; padded keys are masked with the dtype's
most negative value instead of -inf, so a fully padded row attends uniformly (finite, later
zeroed) instead of producing NaN as torch does.

- `plain_attention`: the formula, differentiated by autodiff. The reference the blocked kernel is
  tested against, and the faster form where one big kernel beats a loop (GPU/TPU).
- `blocked_attention`: on CPU attention is memory-bound: the [B, heads, T, T] score tensor (1.3 GB
  at the paper's batch 1024 x T 200) would be written and re-read many times in DRAM. Computed in
  blocks of about BLOCK_BYTES of scores (a few windows, or a few queries of one long video), every
  pass stays in cache, with a hand-written gradient that reads the weights twice instead of
  autodiff's chain of saved intermediates (benchmarks/RESULTS.md has the measurements).

- `fused_attention` ('dot_product', 'cudnn'): `jax.nn.dot_product_attention`, so GPU users can
  pick the library's kernel: 'cudnn' is cuDNN's flash attention (never holds the [T, T] scores;
  cuDNN takes only bfloat16/float16, so q, k, v are cast to bfloat16 and the output back).
  Neither has dropout on the weights: a config with model.attn_dropout > 0 is refused for them.

Which one a run uses is the trainer's choice (config.attention, 'auto': blocked when the mesh's
devices are CPUs); the model only passes `impl` through.
"""

import functools
import math

import jax
import jax.numpy as jnp

IMPLS = ('plain', 'blocked', 'dot_product', 'cudnn')
FUSED = ('dot_product', 'cudnn')  # no dropout on the attention weights


def length_mask(lengths: jax.Array, t: int) -> jax.Array:
  """[B, T] bool, True on valid steps."""
  return jnp.arange(t)[None, :] < lengths[:, None]


def _drops(rate) -> bool:
  """Whether a dropout rate acts: a traced one (a sweep member's own, muse_jax.models.Dropout)
  always does (a traced 0 keeps every weight, exactly); a number only when positive."""
  return not isinstance(rate, (int, float)) or rate > 0.0


def plain_attention(q, k, v, lengths, *, dropout_rate: float = 0.0, dropout_rng=None):
  """Softmax(q k^T / sqrt(dh), padded keys masked) v, with dropout on the weights."""
  s = jnp.einsum('bqhd,bkhd->bhqk', q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype), k)
  valid = length_mask(lengths, k.shape[1])[:, None, None, :]
  p = jax.nn.softmax(jnp.where(valid, s, jnp.finfo(s.dtype).min), axis=-1)
  if dropout_rng is not None and _drops(dropout_rate):
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, p.shape)
    p = jnp.where(keep, p / (1.0 - dropout_rate), 0.0)
  return jnp.einsum('bhqk,bkhd->bqhd', p, v)


# Score bytes per block: small enough that a block's passes stay in a CPU core's cache.
BLOCK_BYTES = 4 << 20


# The block's forward products per layout, (scores, output, key axis): 'bthd' = [B, T, H, dh]
# (blocks of windows, as the layer makes them); 'bhtd' = head-major [B, H, T, dh] (query blocks of
# one long window: k and v are transposed once per window instead of once per block). The gradient
# is computed in 'bthd' for both (its products are the faster ones backward).
_EINSUMS = {
  'bthd': ('bqhd,bkhd->bhqk', 'bhqk,bkhd->bqhd', 1),
  'bhtd': ('bhqd,bhkd->bhqk', 'bhqk,bhkd->bhqd', 2),
}


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
  chain of saved intermediates (fewer passes over the score-sized buffers); always in 'bthd'."""
  q, k, v, lengths, p, scale = res
  if layout == 'bhtd':
    swap = lambda a: jnp.transpose(a, (0, 2, 1, 3))
    dq, dk, dv, _, _ = _attend_bwd('bthd', (swap(q), swap(k), swap(v), lengths, p, scale), swap(dy))
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


def blocked_attention(
  q, k, v, lengths, *, dropout_rate: float = 0.0, dropout_rng=None, block_bytes=BLOCK_BYTES
):
  """q/k/v [B, T, H, dh] -> [B, T, H, dh] in blocks of about `block_bytes` of scores (None: one
  block). Blocks are groups of windows when one window's scores fit, else query blocks of one
  window; each block is rematerialised in the backward pass instead of stored. Dropout on the
  weights (dropout_rng given) uses autodiff, without it the hand-written gradient.
  """
  b, t, h, dh = q.shape
  scale = jnp.asarray(1.0 / math.sqrt(dh), q.dtype)
  drop = dropout_rng is not None and _drops(dropout_rate)

  def block(q, k, v, lengths, rng, layout='bthd'):
    if not drop:
      return _attend(q, k, v, lengths, scale, layout)
    _, p = _attention_block(q, k, v, lengths, scale, layout)
    keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, p.shape)
    return jnp.einsum(_EINSUMS[layout][1], jnp.where(keep, p / (1.0 - dropout_rate), 0.0), v)

  if block_bytes is None:
    return block(q, k, v, lengths, dropout_rng)
  block = jax.checkpoint(block, static_argnums=(5,))
  row = h * t * t * q.dtype.itemsize
  if row <= block_bytes:  # blocks of c windows: rows j, n + j, 2n + j, ... (keeps a sharded batch
    c = _largest_divisor(b, block_bytes // row)  # axis whole on each device: no communication)
    n = b // c
    split = lambda a: jnp.moveaxis(a.reshape((c, n) + a.shape[1:]), 1, 0)
    rngs = jax.random.split(dropout_rng, n) if drop else jnp.zeros((n,))
    y = jax.lax.map(
      lambda a: block(*a[:4], a[4] if drop else None, 'bthd'),
      (split(q), split(k), split(v), split(lengths), rngs),
    )
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
    return jax.lax.map(
      lambda c: block(c[0][None], kw[None], vw[None], lw[None], c[1] if drop else None, 'bhtd')[0],
      (qw, rw),
    )

  y = jax.lax.map(one_window, (qb, head_major(k), head_major(v), lengths, rngs))
  return head_major(jnp.moveaxis(y, 1, 2).reshape(b, h, nq * tq, dh)[:, :, :t])


def fused_attention(
  q, k, v, lengths, *, implementation: str = 'xla', dropout_rate: float = 0.0, dropout_rng=None
):
  """jax.nn.dot_product_attention with the padded keys masked by length ('xla' or 'cudnn')."""
  if dropout_rng is not None and dropout_rate > 0.0:
    raise ValueError(
      'jax.nn.dot_product_attention has no dropout on the attention weights: '
      "use attention 'plain' or 'blocked', or model.attn_dropout=0"
    )
  dtype = q.dtype
  if implementation == 'cudnn':  # cuDNN's kernels take only 16-bit floats
    q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
  # An empty (batch-padding) row has length 0; attending to its first, zero-padded key keeps it
  # finite in any kernel (its outputs are zeroed later, as for every padded step).
  y = jax.nn.dot_product_attention(
    q,
    k,
    v,
    key_value_seq_lengths=jnp.maximum(lengths, 1).astype(jnp.int32),
    implementation=implementation,
  )
  return y.astype(dtype)


def attention(q, k, v, lengths, impl: str = 'plain', **kwargs):
  """The core named by `impl` (one of IMPLS); kwargs as the cores take them."""
  if impl == 'blocked':
    return blocked_attention(q, k, v, lengths, **kwargs)
  kwargs.pop('block_bytes', None)
  if impl == 'plain':
    return plain_attention(q, k, v, lengths, **kwargs)
  if impl in FUSED:
    return fused_attention(
      q, k, v, lengths, implementation='cudnn' if impl == 'cudnn' else 'xla', **kwargs
    )
  raise ValueError(f'attention impl {impl!r}: use one of {IMPLS}')
