"""Training, evaluation and prediction: `train_and_evaluate(config, workdir)` is the whole loop.

- Seeds: `config.num_seeds` models (seeds seed, seed+1, ...) train side by side: parameters and
  optimiser state carry a leading seed axis and one jitted step updates them all on the same
  batch (different init and dropout), vmapped or, on CPU, one seed after the other
  (config.seed_loop). Each seed has its own plateau schedule, early stopping
  and best parameters; the paper keeps the seed with the best devel CCC.
- Devices: batches are sharded over all devices on a `data` mesh axis, parameters replicated;
  global batches are padded with empty rows to a multiple of the device count, and the loss
  ignores empty rows, so results do not depend on how many devices there are.
- Schedule: Adam with an injected learning rate (per seed), changed by a host-side
  ReduceLROnPlateau on 1 - devel CCC without recompiling.
- Checkpoints: one orbax CheckpointManager keeps the latest epoch; it holds the training state,
  each seed's best-so-far parameters and all host counters, so a killed job resumes exactly and
  evaluate/predict restore the best parameters from the same place.
"""
import contextlib
import dataclasses
import json
import os
import time

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from muse_jax import compile_cache
from muse_jax import host_memory
from muse_jax import input_pipeline as ip
from muse_jax import losses
from muse_jax import metrics as metrics_lib
from muse_jax import models
from muse_jax import outputs
from muse_jax import workdir as wd
from muse_jax.errors import MuseError

LOSSES = ('ccc', 'mse', 'l1')
NAN_POLICIES = ('zero', 'error')
NONFINITE_POLICIES = ('stop', 'skip')


@flax.struct.dataclass
class TrainState:
  """Leading axis of every leaf but `step`: the seed."""
  step: jnp.ndarray
  params: flax.core.FrozenDict
  opt_state: optax.OptState
  best_params: flax.core.FrozenDict


def validate_config(config) -> None:
  """Fails fast, with one line, on values that cannot work (before data loading or compute)."""
  def need(ok, msg):
    if not ok:
      raise MuseError(f'config: {msg}')
  sets = ip.parse_list(config.feature_sets)
  need(sets or ip.fusion_runs(config), 'feature_sets is empty; name at least one feature folder, '
       'e.g. egemaps (or finished runs in fusion_runs, for late fusion)')
  need(len(set(sets)) == len(sets), f'feature_sets lists a set twice: {sets}')
  targets = ip.parse_list(config.targets)
  need(targets and set(targets) <= set(ip.TARGETS),
       f'targets {targets} must be a non-empty subset of {list(ip.TARGETS)}')
  need(config.win_len >= 1, f'win_len must be >= 1, got {config.win_len}')
  need(1 <= config.hop_len <= config.win_len,
       f'hop_len must be in [1, win_len={config.win_len}], got {config.hop_len}')
  need(config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}')
  need(config.micro_batch_size >= 0, f'micro_batch_size must be >= 0 (0 = whole batch), got '
       f'{config.micro_batch_size}')
  need(config.loss in LOSSES, f'loss must be one of {LOSSES}, got {config.loss!r}')
  need(config.nan_policy in NAN_POLICIES,
       f'nan_policy must be one of {NAN_POLICIES}, got {config.nan_policy!r}')
  need(config.get('max_abs_z', 1.0) > 0, f'max_abs_z must be > 0, got {config.get("max_abs_z")}')
  need(config.nonfinite_policy in NONFINITE_POLICIES,
       f'nonfinite_policy must be one of {NONFINITE_POLICIES}, got {config.nonfinite_policy!r}')
  need(config.learning_rate > 0, f'learning_rate must be > 0, got {config.learning_rate}')
  need(0 < config.plateau_factor < 1,
       f'plateau_factor must be in (0, 1), got {config.plateau_factor}')
  need(config.num_epochs >= 1, f'num_epochs must be >= 1, got {config.num_epochs}')
  need(config.early_stopping_patience >= 1, 'early_stopping_patience must be >= 1')
  need(config.num_seeds >= 1, f'num_seeds must be >= 1, got {config.num_seeds}')
  need(config.get('seed_loop', 'auto') in ('auto', 'vmap', 'map'),
       f"seed_loop must be 'auto', 'vmap' or 'map', got {config.get('seed_loop')!r}")
  need(config.inputs_on_disk in ('auto', 'yes', 'no'),
       f"inputs_on_disk must be 'auto', 'yes' or 'no', got {config.inputs_on_disk!r}")
  need(config.num_devices >= 0, f'num_devices must be >= 0 (0 = all), got {config.num_devices}')
  need(isinstance(config.get('reuse_cpu_buffers', True), bool),
       f'reuse_cpu_buffers must be True or False, got {config.get("reuse_cpu_buffers")!r}')
  need(isinstance(config.get('compilation_cache_dir', 'auto'), str),
       "compilation_cache_dir must be 'auto', a folder or 'none', got "
       f"{config.get('compilation_cache_dir')!r}")
  need(-1 <= config.eval_seed < config.num_seeds,
       f'eval_seed must be -1 (best) or in [0, num_seeds={config.num_seeds}), '
       f'got {config.eval_seed}')
  weights = list(config.loss_weights)
  need(not weights or len(weights) == len(targets),
       f'loss_weights has {len(weights)} values for {len(targets)} targets')
  ip.normalized_names(config)
  models.create_model(config.model, len(targets))  # checks the model fields


# ------------------------------------------------------------------------------------------------
# Model state and compiled steps


def make_mesh(num_devices: int = 0) -> Mesh:
  """1-D `data` mesh over the first num_devices devices (0 = all, across every process)."""
  devices = jax.devices()
  if num_devices > len(devices):
    raise MuseError(f'config.num_devices={num_devices}, but only {len(devices)} devices exist')
  return Mesh(np.array(devices[:num_devices or len(devices)]), ('data',))


def seeds_of(config) -> list:
  return [config.seed + i for i in range(config.num_seeds)]


def create_state(config, d_in: int, n_targets: int, seeds=None):
  """Model, optimiser and a TrainState with one parameter set per seed (stacked)."""
  seeds = seeds_of(config) if seeds is None else seeds
  model = models.create_model(config.model, n_targets)
  x = jnp.zeros((1, 8, d_in), jnp.float32)
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)

  def init(key):
    params = model.init(key, x, jnp.array([8], jnp.int32))['params']
    return params, tx.init(params)

  keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 0) for s in seeds])
  params, opt_state = jax.jit(jax.vmap(init))(keys)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                     best_params=jax.tree.map(jnp.copy, params))  # no shared buffers: donated
  return model, tx, state


def micro_batches(config) -> int:
  """Slices per batch for gradient accumulation (config.micro_batch_size; 0 = whole batch)."""
  m = config.get('micro_batch_size', 0)
  return max(1, -(-config.batch_size // m)) if m else 1


def dropout_keys(seeds) -> jax.Array:
  """Raw key data [S, 2] (plain uint32, so it can be placed on a multi-host mesh)."""
  return jnp.stack([jax.random.key_data(jax.random.fold_in(jax.random.key(s), 1)) for s in seeds])


def seeds_mapped(config) -> bool:
  """Whether the seeds of a step run one after the other (lax.map) rather than vmapped.

  vmap turns every op into one S times larger: on an accelerator that fills the device. On CPU
  one seed's step already keeps every core busy, so 'auto' maps seeds there: one seed's
  temporaries at a time instead of S, and faster (5 seeds: 7.4 s mapped, 8.2 s vmapped;
  benchmarks/RESULTS.md). The mapped body is still vmapped over a size-1 seed axis: with that
  axis XLA:CPU fuses the weight gradients (contractions over all B x T frames) into its YNNPACK
  matmuls instead of a transpose copy and a separate dot each; one seed's step 1.65 -> 1.49 s.
  """
  mode = config.get('seed_loop', 'auto')
  return mode == 'map' or (mode == 'auto' and jax.default_backend() == 'cpu')


def _over_seeds(fn, mapped: bool, n_per_seed: int):
  """fn applied per seed: its first n_per_seed arguments carry a leading seed axis, the rest are
  shared by all seeds; vmapped, or mapped one seed after the other."""
  def over(*args):
    per_seed, shared = args[:n_per_seed], args[n_per_seed:]
    if mapped:  # batch_size=1: each seed's body is vmapped over a size-1 axis (see seeds_mapped)
      return jax.lax.map(lambda xs: fn(*xs, *shared), per_seed, batch_size=1)
    return jax.vmap(lambda *xs: fn(*xs, *shared))(*per_seed)
  return over


def make_train_step(model, tx, loss_fn, weights, n_micro: int = 1, per_frame=False,
                    seeds_map: bool = False):
  """(state, batch, keys [S], active [S] bool) -> (state, loss [S], finite [S]).

  Inactive (early-stopped) seeds and non-finite steps are not applied; the host reads `finite`
  once per epoch and stops or counts, per config.nonfinite_policy. With n_micro > 1 the
  gradient is accumulated over that many interleaved slices of the batch (bounded memory, same
  result): each slice's mean loss is weighted by its valid sequences (CCC) or frames (per_frame
  losses, MSE/L1), which is exactly the whole batch's mean. seeds_map: see seeds_mapped.
  """
  def loss_of(params, batch, key):
    pred = model.apply({'params': params}, batch['x'], batch['lengths'], deterministic=False,
                       rngs={'dropout': key})
    return loss_fn(pred, batch['y'], batch['mask'], weights)

  def grads_of(params, batch, key):
    if n_micro == 1:
      return jax.value_and_grad(loss_of)(params, batch, key)
    # Slice j holds rows j, j+M, ...: every device keeps an equal share of every slice.
    slices = jax.tree.map(lambda a: jnp.swapaxes(
        a.reshape((a.shape[0] // n_micro, n_micro) + a.shape[1:]), 0, 1), batch)

    def body(acc, inputs):
      mb, i = inputs
      n = jnp.sum(mb['mask']) if per_frame else jnp.sum(jnp.any(mb['mask'], axis=1))
      n = n.astype(jnp.float32)
      loss, g = jax.value_and_grad(loss_of)(params, mb, jax.random.fold_in(key, i))
      total_loss, total_g, total_n = acc
      return (total_loss + loss * n, jax.tree.map(lambda a, b: a + b * n, total_g, g),
              total_n + n), None

    zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params), jnp.zeros(()))
    (loss, g, n), _ = jax.lax.scan(body, zero, (slices, jnp.arange(n_micro)))
    n = jnp.maximum(n, 1.0)
    return loss / n, jax.tree.map(lambda a: a / n, g)

  def one_seed(params, opt_state, key, active, step, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(key), step)
    loss, grads = grads_of(params, batch, key)
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    apply = finite & active
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)
    return keep(new_params, params), keep(new_opt_state, opt_state), loss, finite | ~active

  def train_step(state, batch, keys, active):
    params, opt_state, loss, finite = _over_seeds(one_seed, seeds_map, 4)(
        state.params, state.opt_state, keys, active, state.step, batch)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss, finite
  return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(model, seeds_map: bool = False):
  """(params [S, ...], batch) -> predictions [S, B, T, K]."""
  def eval_step(params, batch):
    apply = lambda p: model.apply({'params': p}, batch['x'], batch['lengths'], deterministic=True)
    return _over_seeds(apply, seeds_map, 1)(params)
  return jax.jit(eval_step)


def shard(batch: dict, mesh: Mesh) -> dict:
  """Global batch (same on every process) -> arrays sharded on the `data` axis.

  Every process computes the same deterministic batch order but hands only its own contiguous
  block of rows to its own devices (`jax.devices()` is ordered by process).
  """
  sharding = NamedSharding(mesh, P('data'))
  if jax.process_count() == 1:
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}
  n, i = jax.process_count(), jax.process_index()
  out = {}
  for k, v in batch.items():
    rows = v.shape[0] // n
    out[k] = jax.make_array_from_process_local_data(sharding, v[i * rows:(i + 1) * rows],
                                                    v.shape)
  return out


def to_host(x) -> np.ndarray:
  """A (possibly multi-process sharded) array as one numpy array on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def replicate(tree, mesh: Mesh):
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  # Multi-host: build each global array from host values (identical on every process).
  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, tree)


def predict_videos(eval_step, params, videos, mesh) -> list:
  """Per seed, per video predictions: [S][video] -> [T_i, K], batched by length bucket."""
  n_seeds = jax.tree.leaves(params)[0].shape[0]
  preds = [[None] * len(videos) for _ in range(n_seeds)]
  for batch, idxs in ip.eval_batches(videos, multiple=mesh.devices.size):
    out = to_host(eval_step(params, shard(batch, mesh)))
    for s in range(n_seeds):
      for j, i in enumerate(idxs):
        preds[s][i] = out[s, j, :len(videos[i].x)]
  return preds


def evaluate_split(eval_step, params, videos, targets, mesh) -> tuple:
  """(predictions [S][video], metrics per seed or None when the split has no labels)."""
  preds = predict_videos(eval_step, params, videos, mesh)
  labelled = [i for i, v in enumerate(videos) if v.has_labels]
  if not labelled:
    return preds, None
  m = [metrics_lib.partition_metrics([videos[i].y for i in labelled],
                                     [p[i] for i in labelled], targets) for p in preds]
  return preds, m


# ------------------------------------------------------------------------------------------------
# Host-side schedule and per-seed bookkeeping


@dataclasses.dataclass
class SeedTracker:
  """One seed's plateau schedule (torch ReduceLROnPlateau: mode min, rel threshold 1e-4,
  cooldown 0) and early stopping. Serialised into every checkpoint."""
  lr: float
  seed: int = -1          # which seed (for logs, and tests that script a seed's devel scores)
  plateau_best: float = float('inf')
  plateau_bad: int = 0
  best_ccc: float = -float('inf')
  best_epoch: int = 0
  since_best: int = 0
  active: bool = True

  def update(self, devel_ccc: float, epoch: int, config) -> bool:
    """Records an epoch's devel CCC; returns True when it is this seed's new best."""
    value = 1.0 - devel_ccc
    if value < self.plateau_best * (1 - 1e-4):
      self.plateau_best, self.plateau_bad = value, 0
    else:
      self.plateau_bad += 1
    if self.plateau_bad > config.plateau_patience:
      self.lr = max(self.lr * config.plateau_factor, config.min_learning_rate)
      self.plateau_bad = 0
    improved = devel_ccc > self.best_ccc  # NaN never improves
    if improved:
      self.best_ccc, self.best_epoch, self.since_best = devel_ccc, epoch, 0
    else:
      self.since_best += 1
    self.active = self.since_best < config.early_stopping_patience
    return improved


# ------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(workdir: str, read_only: bool = False):
  path = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  # cleanup_tmp_directories: a save cut by a kill leaves `<step>.orbax-checkpoint-tmp`; never
  # read as a checkpoint, it is removed when the next run opens the workdir. Two epochs are kept:
  # a latest one damaged on disk (truncated, a full disk) falls back to the one before (restore).
  options = ocp.CheckpointManagerOptions(max_to_keep=2, read_only=read_only,
                                         enable_async_checkpointing=False, create=not read_only,
                                         cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(path, options=options, item_names=('state', 'meta'))


def model_signature(config, dims) -> dict:
  """What a checkpoint's arrays depend on; restore refuses a workdir written for another one."""
  return {'model': json.loads(config.model.to_json()), 'inputs': ip.input_names(config),
          'dims': list(dims), 'targets': ip.parse_list(config.targets),
          'seeds': seeds_of(config)}


def _check_signature(saved, signature, workdir) -> None:
  diff = [k for k in signature if signature[k] != saved.get(k)]
  if diff:
    k = diff[0]
    what = f'{k} ({saved.get(k)} in the checkpoint, {signature[k]} now)'
    if k == 'model':  # name the fields that differ, not two whole dicts
      old, new = saved.get(k) or {}, signature[k]
      what = 'model config (' + ', '.join(
          f'model.{f} {old.get(f)} in the checkpoint, {new.get(f)} now'
          for f in sorted(set(old) | set(new)) if old.get(f) != new.get(f)) + ')'
    raise MuseError(f'{workdir}: its checkpoint was written for a different {what}; use another '
                    'workdir or the config it was trained with')


def restore(mngr, state, signature, workdir):
  """(state, meta) of the newest readable epoch. A newest epoch that cannot be read (cut short
  on disk) is reported and the one before is used; only once an older one has been read are the
  newer ones deleted (in a writable workdir: training redoes them). If none can be read, nothing
  is deleted: the failure may not be the checkpoint's (memory, permissions, a network mount)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  steps = sorted(mngr.all_steps(), reverse=True)
  failed = []
  for i, step in enumerate(steps):
    try:
      meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      _check_signature(meta['signature'], signature, workdir)
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))['state']
    except MuseError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      failed.append((step, e))
      older = f'falling back to epoch {steps[i + 1]}' if i + 1 < len(steps) else 'no older epoch'
      text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
      logging.warning('%s: checkpoint of epoch %d is unreadable (%s: %s); %s', mngr.directory,
                      step, type(e).__name__, text, older)
      continue
    for bad, _ in failed:
      try:
        mngr.delete(bad)
      except Exception:  # pylint: disable=broad-except
        pass  # a read-only manager (evaluate, predict) leaves the workdir as it is
    return restored, meta
  step, e = failed[0]
  raise MuseError(f'{mngr.directory}: no checkpoint could be read (epoch {step}: '
                  f'{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ""}); '
                  'if the files are damaged, train again in a new --workdir') from None


# ------------------------------------------------------------------------------------------------
# The loop


def prepare_data(config, workdir, fit_stats: bool):
  """Videos joined and normalised; stats fitted on train (training) or read from the workdir."""
  if jax.process_count() > 1:  # one process builds the dataset, the others wait and then read it
    if jax.process_index() == 0:
      ip.ensure_built(config)
    multihost_utils.sync_global_devices('muse_jax dataset built')
  # Large inputs go to an unlinked file in the workdir as they are read, never all into memory.
  spill_dir = None if config.inputs_on_disk == 'no' else workdir
  spill_over = 0.25 * _physical_memory() if config.inputs_on_disk == 'auto' else None
  videos, dims = ip.load_videos(config, spill_dir, spill_over)
  stats_path = os.path.join(workdir, 'norm_stats.npz')
  fit = fit_stats and not os.path.exists(stats_path)
  stats = ip.compute_stats(config, videos['train'], dims) if fit else ip.NormStats.load(stats_path)
  ip.normalize(config, videos, stats)
  if fit and jax.process_index() == 0:  # only once the data passed: a fixed file is refitted
    stats.save(stats_path)
  return videos, dims


def _physical_memory() -> int:
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return 1 << 40  # unknown: never spill automatically


def _process_settings(config):
  """Process-wide runtime settings, before anything compiles: large CPU buffers kept across
  steps (host_memory) and the persistent compilation cache (compile_cache)."""
  host_memory.reuse_cpu_buffers(config.get('reuse_cpu_buffers', True))
  compile_cache.enable(config.get('compilation_cache_dir', 'auto'))


@contextlib.contextmanager
def _holding(workdir: str, what: str):
  """The workdir's lock, held by process 0 for the whole job. In a multi-host job the others
  learn whether it got it, so a refused job ends on every process instead of leaving them
  waiting at the next barrier."""
  if jax.process_count() == 1:
    with wd.locked(workdir, what):
      yield
    return
  lock = wd.locked(workdir, what) if jax.process_index() == 0 else contextlib.nullcontext()
  error = None
  try:
    lock.__enter__()
  except MuseError as e:
    error = e
  refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
  if refused:
    raise error or MuseError(f'{workdir}: process 0 could not take the workdir lock (its log says '
                             'why)')
  try:
    yield
  finally:
    lock.__exit__(None, None, None)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains on train, selects on devel, writes checkpoints, metrics, predictions and plots.

  Resumes from the workdir's checkpoint when there is one (a finished run just re-reports); a
  resume may change only the fields of `workdir.RESUMABLE`. One run at a time per workdir.
  """
  validate_config(config)
  _process_settings(config)
  workdir = wd.prepare(workdir)
  with _holding(workdir, 'train'):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
  targets = ip.parse_list(config.targets)
  seeds = seeds_of(config)
  data_seed = config.seed if config.data_seed < 0 else config.data_seed
  t_start = time.time()
  mngr = checkpoint_manager(workdir)
  config_json = wd.config_record(config)
  if mngr.latest_step() is not None:
    wd.check_resume(workdir, config_json)  # before any data work: a refused resume costs nothing
  videos, dims = prepare_data(config, workdir, fit_stats=True)
  if jax.process_index() == 0:
    outputs.remove_stale_tmp(workdir)
    outputs.write_json(os.path.join(workdir, wd.CONFIG_FILE), config_json)
  mesh = make_mesh(config.num_devices)
  windows = ip.train_windows(config, videos['train'])
  n_dev = mesh.devices.size
  unit = n_dev * micro_batches(config)  # rows split evenly over devices and micro-batches
  n_win = len(windows.lengths)
  step_rows = sorted(set(ip.step_rows(n_win, config.batch_size, unit)), reverse=True)
  logging.info('data: %s videos; %d train windows -> %d steps/epoch of %s rows on %d device(s); '
               'devel/test in %d/%d length buckets; seeds %s',
               {s: len(v) for s, v in videos.items()}, n_win,
               -(-n_win // config.batch_size), ' or '.join(map(str, step_rows)), n_dev,
               ip.num_eval_shapes(videos['devel']), ip.num_eval_shapes(videos['test']), seeds)

  model, tx, state = create_state(config, sum(dims), len(targets), seeds)
  weights = jnp.asarray(config.loss_weights, jnp.float32) if len(config.loss_weights) else None
  train_step = make_train_step(model, tx, losses.get_loss(config.loss), weights,
                               micro_batches(config), per_frame=config.loss != 'ccc',
                               seeds_map=seeds_mapped(config))
  eval_step = make_eval_step(model, seeds_mapped(config))
  signature = model_signature(config, dims)

  trackers = [SeedTracker(lr=config.learning_rate, seed=seed) for seed in seeds]
  start_epoch, skipped, initial = 1, 0, None
  if mngr.latest_step() is not None:
    state, meta = restore(mngr, state, signature, workdir)
    start_epoch, skipped = meta['epoch'] + 1, meta['skipped_steps']
    trackers = [SeedTracker(**t) for t in meta['trackers']]
    initial = meta.get('initial_devel')
    logging.info('resuming after epoch %d from %s', meta['epoch'], mngr.directory)
  state = replicate(state, mesh)
  keys = replicate(dropout_keys(seeds), mesh)
  # A checkpoint holds the state's arrays and some metadata; 2x: a margin for orbax's layout.
  ckpt_bytes = 2 * sum(x.nbytes for x in jax.tree.leaves(state)) + (1 << 20)
  if start_epoch == 1:
    # The untrained model's devel score: what training must beat for its parameters to be kept.
    _, devel0 = evaluate_split(eval_step, state.params, videos['devel'], targets, mesh)
    initial = [m['mean_ccc'] for m in devel0]
    _log_epoch(0, [float('nan')] * len(seeds), devel0, trackers, targets,
               [t.lr for t in trackers], 0.0, np.zeros(len(seeds), bool), seeds)
  log = outputs.MetricLog(workdir, resume_after=start_epoch - 1)
  for epoch in range(start_epoch, config.num_epochs + 1):
    if not any(t.active for t in trackers):
      logging.info('early stop: every seed went %d epochs without devel improvement',
                   config.early_stopping_patience)
      break
    t0 = time.time()
    lrs = np.asarray([t.lr for t in trackers], np.float32)
    state.opt_state.hyperparams['learning_rate'] = replicate(lrs, mesh)
    active = replicate(np.array([t.active for t in trackers]), mesh)
    step_losses, step_finite = [], []
    for batch in ip.train_batches(windows, config.batch_size, data_seed, epoch, unit):
      state, loss, finite = train_step(state, shard(batch, mesh), keys, active)
      step_losses.append(loss)
      step_finite.append(finite)
      # Where dispatch is async (GPU/TPU; CPU when host_memory is off), this keeps one step in
      # flight while the next batch is gathered, instead of queueing the epoch's batches.
      if len(step_losses) > 1:
        step_losses[-2].block_until_ready()
    step_losses, step_finite = to_host(jnp.stack(step_losses)), to_host(jnp.stack(step_finite))
    if not step_finite.all():
      bad_step, bad_seed = map(int, np.argwhere(~step_finite)[0])
      where = f'epoch {epoch}, step {bad_step + 1} of {len(step_finite)}, seed {seeds[bad_seed]}'
      if config.nonfinite_policy == 'stop':
        kept = (f'the workdir keeps the last good checkpoint (epoch {epoch - 1})' if epoch > 1
                else 'no checkpoint was written')
        raise MuseError(f'non-finite loss or gradient at {where}; {kept}; lower learning_rate, '
                        'check the inputs, or set --config.nonfinite_policy=skip')
      skipped += int((~step_finite).sum())
      logging.warning('skipped %d non-finite step(s), first at %s', (~step_finite).sum(), where)
    train_loss = np.nanmean(np.where(step_finite, step_losses, np.nan), axis=0)  # [S]

    t_eval = time.time()
    _, devel = evaluate_split(eval_step, state.params, videos['devel'], targets, mesh)
    improved = np.zeros(len(seeds), bool)
    for s, t in enumerate(trackers):
      if t.active:
        improved[s] = t.update(devel[s]['mean_ccc'] if devel else float('nan'), epoch, config)
    state = _keep_best(state, replicate(improved, mesh))
    seconds = time.time() - t0
    log.write({'epoch': epoch, 'seconds': seconds, 'train_seconds': t_eval - t0,
               'eval_seconds': time.time() - t_eval, 'steps': len(step_finite),
               'skipped_steps': skipped,
               'seeds': [{'seed': seed, 'train_loss': float(train_loss[s]), 'lr': float(lrs[s]),
                          'devel': devel[s] if devel else None}
                         for s, seed in enumerate(seeds)]})
    _log_epoch(epoch, train_loss, devel, trackers, targets, lrs, seconds, improved, seeds)
    meta = {'epoch': epoch, 'skipped_steps': skipped, 'signature': signature,
            'trackers': [dataclasses.asdict(t) for t in trackers], 'initial_devel': initial}
    kept = (f'the workdir keeps the last good checkpoint (epoch {epoch - 1})' if epoch > 1
            else 'no checkpoint was written')
    wd.check_space(workdir, ckpt_bytes, f'the checkpoint of epoch {epoch}', kept)  # every process
    mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)))
  mngr.wait_until_finished()
  log.close()
  results = finish(config, workdir, mngr, state, signature, videos, eval_step, mesh)
  results['seconds'] = time.time() - t_start
  if jax.process_index() == 0:
    outputs.write_json(os.path.join(workdir, 'results.json'), results)
  return results


@jax.jit
def _keep_best(state, improved):
  pick = lambda new, old: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  return state.replace(best_params=jax.tree.map(pick, state.params, state.best_params))


def _log_epoch(epoch, train_loss, devel, trackers, targets, lrs, seconds, improved, seeds):
  for s, t in enumerate(trackers):
    ccc = ' '.join(f'{k} {devel[s][k]["ccc"]:.4f}' for k in targets) if devel else 'n/a'
    prefix = f'epoch {epoch:3d}' + (f' seed {seeds[s]}' if len(trackers) > 1 else '')
    if epoch == 0:
      logging.info('%s  devel CCC %s  (untrained)', prefix, ccc)
      continue
    logging.info('%s  loss %.4f  devel CCC %s  lr %.2g  %.1fs%s%s', prefix, train_loss[s], ccc,
                 lrs[s], seconds, '  *' if improved[s] else '',
                 '' if t.active else '  (stopped)')


def finish(config, workdir, mngr, state, signature, videos, eval_step, mesh) -> dict:
  """Scores every partition with each seed's best parameters; writes the chosen seed's
  predictions (challenge CSVs) and plots; returns the results dict.

  Refuses (one-line MuseError, nothing written) a chosen seed whose training never beat the
  untrained model on devel, or whose predictions are not finite: exit 0 means trained, finite
  outputs.
  """
  state, meta = restore(mngr, state, signature, workdir)
  params = replicate(state.best_params, mesh)
  trackers = [SeedTracker(**t) for t in meta['trackers']]
  targets = ip.parse_list(config.targets)
  seeds = seeds_of(config)
  per_split = {s: evaluate_split(eval_step, params, videos[s], targets, mesh) for s in ip.SPLITS}
  devel_ccc = [m['mean_ccc'] for m in per_split['devel'][1]] if per_split['devel'][1] else []
  best = int(np.nanargmax(devel_ccc)) if devel_ccc and np.isfinite(devel_ccc).any() else 0
  chosen = best if config.eval_seed < 0 else config.eval_seed
  _check_trained(workdir, trackers[chosen], seeds[chosen], devel_ccc, chosen,
                 meta.get('initial_devel'))
  for split, (preds, _) in per_split.items():
    _check_finite(preds[chosen], videos[split], split, seeds[chosen])
  results = {'targets': targets, 'epochs_run': meta['epoch'], 'seed': seeds[chosen],
             'best_seed': seeds[best], 'best_epoch': trackers[chosen].best_epoch,
             'skipped_steps': meta['skipped_steps']}
  if meta.get('initial_devel'):
    results['initial_devel_ccc'] = meta['initial_devel'][chosen]
  for split, (_, m) in per_split.items():
    results[split] = m[chosen] if m else None
  results['seeds'] = [{'seed': seed, 'best_epoch': trackers[s].best_epoch,
                       **{split: (m[s] if m else None) for split, (_, m) in per_split.items()}}
                      for s, seed in enumerate(seeds)]
  if len(seeds) > 1 and devel_ccc:
    results['devel_ccc_mean'] = float(np.mean(devel_ccc))
    results['devel_ccc_std'] = float(np.std(devel_ccc))
  if jax.process_index() == 0:
    for split, (preds, _) in per_split.items():
      outputs.write_predictions(workdir, videos[split], preds[chosen], targets)
    n = config.num_plot_videos
    outputs.plot_videos(workdir, videos['devel'][:n], per_split['devel'][0][chosen][:n], targets)
  return results


def _check_trained(workdir, tracker, seed, devel_ccc, chosen, initial) -> None:
  """The chosen seed's best parameters must come from training and beat the untrained model."""
  what = f'seed {seed}'
  ccc = devel_ccc[chosen] if devel_ccc else float('nan')
  if tracker.best_epoch == 0 or not np.isfinite(ccc):
    raise MuseError(
        f'{workdir}: devel CCC of {what} is not finite (' + (
            'in no epoch: only the untrained parameters exist' if tracker.best_epoch == 0
            else f'with its best parameters, of epoch {tracker.best_epoch}') +
        '), so nothing was scored or written; look for absurd values in the devel inputs or '
        'labels (e.g. 1e30 as a missing-value marker; see config.max_abs_z)')
  if (initial is not None and np.isfinite(initial[chosen])
      and not tracker.best_ccc > initial[chosen]):
    raise MuseError(
        f'{workdir}: training never beat the untrained model on devel ({what}: best devel CCC '
        f'{tracker.best_ccc:.4f} at epoch {tracker.best_epoch}, untrained {initial[chosen]:.4f}), '
        'so no predictions were written; check that labels and features belong together, or try '
        'another learning_rate or more num_epochs in a new --workdir')


def _check_finite(preds, videos, split, seed) -> None:
  for v, p in zip(videos, preds):
    if not np.isfinite(p).all():
      row = int(np.argmax(~np.isfinite(p).all(axis=1)))
      raise MuseError(f'non-finite prediction for {split} video {v.id} at timestamp '
                      f'{v.timestamp[row]} (seed {seed}); no predictions were written; look for '
                      'absurd input values there (or train with a lower config.max_abs_z in a new '
                      '--workdir)')


def _restore_for_eval(config, workdir):
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise MuseError(f'{workdir}: no checkpoint found; train first (--mode=train)')
  mngr = checkpoint_manager(workdir, read_only=True)
  if mngr.latest_step() is None:
    raise MuseError(f'{workdir}: no checkpoint found; train first (--mode=train)')
  videos, dims = prepare_data(config, workdir, fit_stats=False)
  model, _, state = create_state(config, sum(dims), len(ip.parse_list(config.targets)))
  return (mngr, state, model_signature(config, dims), videos,
          make_eval_step(model, seeds_mapped(config)))


def evaluate(config, workdir: str) -> dict:
  """Restores the best parameters, recomputes every partition's metrics, rewrites predictions;
  writes `eval_results.json` (training's `results.json` is left as it was)."""
  validate_config(config)
  _process_settings(config)
  workdir = wd.prepare(workdir)
  with _holding(workdir, 'evaluate'):
    # Preprocessing fields (nan_policy, max_abs_z, data_root, ...) must be the training's.
    wd.check_resume(workdir, wd.config_record(config), evaluating=True)
    mngr, state, signature, videos, eval_step = _restore_for_eval(config, workdir)
    results = finish(config, workdir, mngr, state, signature, videos, eval_step,
                     make_mesh(config.num_devices))
    if jax.process_index() == 0:
      outputs.write_json(os.path.join(workdir, 'eval_results.json'), results)
  return results


def predict(config, workdir: str) -> dict:
  """Writes challenge-format predictions for every partition from the best parameters."""
  results = evaluate(config, workdir)
  logging.info('predictions written to %s', os.path.join(os.path.abspath(workdir), 'predictions'))
  return results


class Predictor:
  """A trained workdir as a function of raw (unnormalised) features, for new recordings.

  `inputs` names the feature sets (and `segment_id`) the model reads, in column order; calling it
  with one video's joined raw features [T, D] returns predictions [T, K] for `targets`, using the
  workdir's train statistics, NaN policy and the chosen seed's best parameters.
  """

  def __init__(self, workdir: str, seed_index: int | None = None):
    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
      raise MuseError(f'{workdir}: no config.json; not a trained muse_jax workdir')
    with open(path, encoding='utf-8') as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    self.stats = ip.NormStats.load(os.path.join(workdir, 'norm_stats.npz'))
    self.inputs, self.dims = self.stats.names, self.stats.dims
    self.targets = ip.parse_list(self.config.targets)
    mngr = checkpoint_manager(workdir, read_only=True)
    if not os.path.isdir(mngr.directory) or mngr.latest_step() is None:
      raise MuseError(f'{workdir}: no checkpoint found; train first (--mode=train)')
    model, _, state = create_state(self.config, sum(self.dims), len(self.targets))
    state, meta = restore(mngr, state, model_signature(self.config, self.dims), workdir)
    if seed_index is None:
      results = os.path.join(workdir, 'results.json')
      seed = json.load(open(results, encoding='utf-8'))['seed'] if os.path.exists(results) else None
      seed_index = seeds_of(self.config).index(seed) if seed is not None else 0
    self.params = jax.tree.map(lambda a: a[seed_index:seed_index + 1], state.best_params)
    self._eval = make_eval_step(model)
    self._mesh = make_mesh(1)
    del meta

  def __call__(self, raw_x: np.ndarray) -> np.ndarray:
    raw_x = np.asarray(raw_x, np.float32)
    if raw_x.ndim != 2 or raw_x.shape[1] != sum(self.dims):
      raise MuseError(f'expected features [T, {sum(self.dims)}] for inputs '
                      f'{dict(zip(self.inputs, self.dims))}, got {raw_x.shape}')
    bad = self.stats.out_of_range(raw_x, float(self.config.get('max_abs_z', ip.DEFAULT_MAX_ABS_Z)))
    if bad.any():
      logging.warning('%d input cells NaN, Inf or out of range set to the train mean', bad.sum())
    x = np.where(bad, 0.0, self.stats.apply(raw_x)).astype(np.float32)
    video = ip.Video('input', np.arange(len(x)) * 250, np.ones(len(x), np.int32), x,
                     np.full((len(x), len(self.targets)), np.nan, np.float32), False)
    pred = predict_videos(self._eval, self.params, [video], self._mesh)[0][0]
    _check_finite([pred], [video], 'new', seed='chosen')
    return pred
