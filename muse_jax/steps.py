"""The model's state and its compiled steps, for several seeds at once.

`config.num_seeds` models (seeds seed, seed+1, ...) train side by side: parameters and optimiser
state carry a leading seed axis and one jitted step updates them all on the same batch (different
init and dropout), vmapped or one seed after the other (`seeds_mapped`). Adam's learning rate is
an injected hyperparameter per seed, so the host-side plateau schedule (schedule.py) changes it
without recompiling.
"""

import flax
import jax
import jax.numpy as jnp
import optax

from muse_jax import config_util
from muse_jax import models
from muse_jax.errors import MuseError


@flax.struct.dataclass
class TrainState:
  """Leading axis of every leaf but `step`: the seed."""

  step: jnp.ndarray
  params: flax.core.FrozenDict
  opt_state: optax.OptState
  best_params: flax.core.FrozenDict


def create_state(config, d_in: int, n_targets: int, seeds=None, attention: str = 'plain'):
  """Model, optimiser and a TrainState with one parameter set per seed (stacked); seeds default
  to config.seed, config.seed + 1, ... (config.num_seeds of them, as Spec.seeds)."""
  if seeds is None:
    seeds = [config.seed + i for i in range(config.num_seeds)]
  model = models.create_model(*config_util.model_fields(config.model, n_targets), attention)
  x = jnp.zeros((1, 8, d_in), jnp.float32)
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)

  def init(key):
    params = model.init(key, x, jnp.array([8], jnp.int32))['params']
    return params, tx.init(params)

  keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 0) for s in seeds])
  params, opt_state = jax.jit(jax.vmap(init))(keys)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=opt_state,
    best_params=jax.tree.map(jnp.copy, params),
  )  # no shared buffers: donated
  return model, tx, state


def micro_batches(config) -> int:
  """Slices per batch for gradient accumulation (config.micro_batch_size; 0 = whole batch)."""
  m = config.get('micro_batch_size', 0)
  return max(1, -(-config.batch_size // m)) if m else 1


def dropout_keys(seeds) -> jax.Array:
  """Raw key data [S, 2] (plain uint32, so it can be placed on a multi-host mesh)."""
  return jnp.stack([jax.random.key_data(jax.random.fold_in(jax.random.key(s), 1)) for s in seeds])


def seeds_mapped(config, platform: str) -> bool:
  """Whether the seeds of a step run one after the other (lax.map) rather than vmapped.

  vmap turns every op into one S times larger: on an accelerator that fills the device. On CPU
  one seed's step already keeps every core busy, so 'auto' maps seeds there (`platform`, of the
  mesh's devices): one seed's temporaries at a time instead of S, and faster
  (benchmarks/RESULTS.md). The mapped body is still vmapped over a size-1 seed axis: with that
  axis XLA:CPU fuses the weight gradients (contractions over all B x T frames) into its matmuls
  instead of a transpose copy and a separate dot each.
  """
  mode = config.get('seed_loop', 'auto')
  if config.get('member_devices', 1) > 1:
    return False  # members sharded over devices: one vmapped step partitioned over them
  return mode == 'map' or (mode == 'auto' and platform == 'cpu')


def attention_impl(config, platform: str) -> str:
  """The attention core (ops.attention): config.attention, 'auto' = blocked on CPU (memory-bound
  there), plain elsewhere (one big kernel beats a loop on GPU/TPU). 'cudnn' needs GPU devices."""
  impl = config.get('attention', 'auto')
  if impl == 'cudnn' and platform != 'gpu':
    raise MuseError(
      f"config.attention='cudnn' (cuDNN's flash attention) needs GPU devices; "
      f"this run's are {platform}: use 'auto'"
    )
  return ('blocked' if platform == 'cpu' else 'plain') if impl == 'auto' else impl


def over_seeds(fn, mapped: bool, n_per_seed: int, skip=None):
  """fn applied per seed: its first n_per_seed arguments carry a leading seed axis, the rest are
  shared by all seeds; vmapped, or mapped one seed after the other.

  `skip`: (i, fallback): mapped, a seed whose i-th argument is False runs `fallback` (same
  arguments, same output structure) instead of fn, so an early-stopped member of a sweep costs
  nothing (lax.cond on its scalar flag: only the taken branch runs). Vmapped, every seed computes
  (a batched flag turns the cond into a select) and the caller discards what it must."""

  def over(*args):
    per_seed, shared = args[:n_per_seed], args[n_per_seed:]
    if not mapped:
      return jax.vmap(lambda *xs: fn(*xs, *shared))(*per_seed)

    def one(_, xs):  # as lax.map(batch_size=1): the body vmapped over a size-1 axis
      run = lambda: jax.tree.map(
        lambda a: a[0], jax.vmap(lambda *x: fn(*x, *shared))(*jax.tree.map(lambda a: a[None], xs))
      )
      if skip is None:
        return None, run()
      i, fallback = skip
      return None, jax.lax.cond(xs[i], run, lambda: fallback(*xs, *shared))

    return jax.lax.scan(one, None, per_seed)[1]

  return over


MEMBER_RATES = ('rnn_dropout', 'out_dropout', 'attn_dropout')  # a member's own dropout rates


def make_train_step(
  model, tx, loss_fn, weights, n_micro: int = 1, per_frame=False, seeds_map: bool = False
):
  """(state, batch, keys [S], active [S] bool, member) -> (state, loss [S], finite [S]).
  `member`: None, or what a sweep's members set for themselves in this one step, leading axis
  [S]: {'rates': [S, 3]} (their MEMBER_RATES, instead of the model's) and/or {'weights': [S, K]}
  (their loss weights, instead of `weights`).

  Inactive (early-stopped) seeds and non-finite steps are not applied (mapped seeds: an
  inactive one is not even computed, its loss NaN); the host reads `finite`
  once per epoch and stops or counts, per config.nonfinite_policy. With n_micro > 1 the
  gradient is accumulated over that many interleaved slices of the batch (bounded memory, same
  result): each slice's mean loss is weighted by its valid sequences (CCC) or frames (per_frame
  losses, MSE/L1), which is exactly the whole batch's mean. seeds_map: see seeds_mapped.
  """

  def loss_of(params, batch, key, member):
    member = member or {}
    kw = {'rates': dict(zip(MEMBER_RATES, member['rates']))} if 'rates' in member else {}
    pred = model.apply(
      {'params': params},
      batch['x'],
      batch['lengths'],
      deterministic=False,
      rngs={'dropout': key},
      **kw,
    )
    return loss_fn(pred, batch['y'], batch['mask'], member.get('weights', weights))

  def grads_of(params, batch, key, member):
    if n_micro == 1:
      return jax.value_and_grad(loss_of)(params, batch, key, member)
    # Slice j holds rows j, j+M, ...: every device keeps an equal share of every slice.
    slices = jax.tree.map(
      lambda a: jnp.swapaxes(a.reshape((a.shape[0] // n_micro, n_micro) + a.shape[1:]), 0, 1), batch
    )

    def body(acc, inputs):
      mb, i = inputs
      n = jnp.sum(mb['mask']) if per_frame else jnp.sum(jnp.any(mb['mask'], axis=1))
      n = n.astype(jnp.float32)
      loss, g = jax.value_and_grad(loss_of)(params, mb, jax.random.fold_in(key, i), member)
      total_loss, total_g, total_n = acc
      return (
        total_loss + loss * n,
        jax.tree.map(lambda a, b: a + b * n, total_g, g),
        total_n + n,
      ), None

    zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params), jnp.zeros(()))
    (loss, g, n), _ = jax.lax.scan(body, zero, (slices, jnp.arange(n_micro)))
    n = jnp.maximum(n, 1.0)
    return loss / n, jax.tree.map(lambda a: a / n, g)

  def one_seed(params, opt_state, key, active, member, step, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(key), step)
    loss, grads = grads_of(params, batch, key, member)
    finite = jnp.isfinite(loss) & jnp.all(
      jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    apply = finite & active
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)
    return keep(new_params, params), keep(new_opt_state, opt_state), loss, finite | ~active

  def stopped(params, opt_state, *_):
    """An early-stopped seed's step when seeds are mapped: nothing computed (loss NaN)."""
    return params, opt_state, jnp.full((), jnp.nan, jnp.float32), jnp.ones((), bool)

  def train_step(state, batch, keys, active, member=None):
    if member is None:
      fn = lambda p, o, k, a, step, b: one_seed(p, o, k, a, None, step, b)
      params, opt_state, loss, finite = over_seeds(fn, seeds_map, 4, (3, stopped))(
        state.params, state.opt_state, keys, active, state.step, batch
      )
    else:
      params, opt_state, loss, finite = over_seeds(one_seed, seeds_map, 5, (3, stopped))(
        state.params, state.opt_state, keys, active, member, state.step, batch
      )
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss, finite

  return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(model, seeds_map: bool = False):
  """(params [S, ...], batch) -> predictions [S, B, T, K]."""

  def eval_step(params, batch):
    apply = lambda p: model.apply({'params': p}, batch['x'], batch['lengths'], deterministic=True)
    return over_seeds(apply, seeds_map, 1)(params)

  return jax.jit(eval_step)


@jax.jit
def keep_best(state, improved):
  """best_params of the seeds that improved := their params (on device, no host copy)."""
  pick = lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  return state.replace(best_params=jax.tree.map(pick, state.params, state.best_params))
