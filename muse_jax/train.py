"""Training, evaluation and prediction: `train_and_evaluate(config, workdir)` is the whole loop.

One jitted train step (Adam with an injected learning rate, so the host-side plateau schedule
changes it without recompiling), evaluation on whole devel videos every epoch with the challenge
CCC, early stopping, and one orbax CheckpointManager that keeps both the latest epoch (resume) and
the best-by-devel-CCC epoch (evaluate/predict). Batches are sharded over all devices on a `data`
mesh axis with replicated parameters; global batches are padded with empty rows to a multiple of
the device count, so results do not depend on how many devices there are.
"""
import functools
import json
import os
import time

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from muse_jax import input_pipeline as ip
from muse_jax import losses
from muse_jax import metrics as metrics_lib
from muse_jax import models
from muse_jax import outputs
from muse_jax.errors import MuseError

LOSSES = ('ccc', 'mse', 'l1')
NAN_POLICIES = ('zero', 'error')


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: flax.core.FrozenDict
  opt_state: optax.OptState


def validate_config(config) -> None:
  """Fails fast, with one line, on values that cannot work (before data loading or compute)."""
  def need(ok, msg):
    if not ok:
      raise MuseError(f'config: {msg}')
  sets = ip.parse_list(config.feature_sets)
  need(sets, 'feature_sets is empty; name at least one feature folder, e.g. egemaps')
  need(len(set(sets)) == len(sets), f'feature_sets lists a set twice: {sets}')
  targets = ip.parse_list(config.targets)
  need(targets and set(targets) <= set(ip.TARGETS),
       f'targets {targets} must be a non-empty subset of {list(ip.TARGETS)}')
  need(config.win_len >= 1, f'win_len must be >= 1, got {config.win_len}')
  need(1 <= config.hop_len <= config.win_len,
       f'hop_len must be in [1, win_len={config.win_len}], got {config.hop_len}')
  need(config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}')
  need(config.loss in LOSSES, f'loss must be one of {LOSSES}, got {config.loss!r}')
  need(config.nan_policy in NAN_POLICIES,
       f'nan_policy must be one of {NAN_POLICIES}, got {config.nan_policy!r}')
  need(config.learning_rate > 0, f'learning_rate must be > 0, got {config.learning_rate}')
  need(0 < config.plateau_factor < 1, f'plateau_factor must be in (0, 1), got {config.plateau_factor}')
  need(config.num_epochs >= 1, f'num_epochs must be >= 1, got {config.num_epochs}')
  need(config.early_stopping_patience >= 1, 'early_stopping_patience must be >= 1')
  weights = list(config.loss_weights)
  need(not weights or len(weights) == len(targets),
       f'loss_weights has {len(weights)} values for {len(targets)} targets')
  ip._normalized_names(config)  # pylint: disable=protected-access
  models.create_model(config.model, len(targets))  # checks the model fields


# ------------------------------------------------------------------------------------------------
# Steps


def make_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ('data',))


def create_state(config, d_in: int, n_targets: int, seed: int):
  model = models.create_model(config.model, n_targets)
  x = jnp.zeros((1, 8, d_in), jnp.float32)
  params = model.init(jax.random.key(seed), x, jnp.array([8], jnp.int32))['params']
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return model, tx, state


def make_train_step(model, tx, loss_fn, weights):
  def train_step(state, batch, dropout_key):
    key = jax.random.fold_in(dropout_key, state.step)

    def loss_of(params):
      pred = model.apply({'params': params}, batch['x'], batch['lengths'], deterministic=False,
                         rngs={'dropout': key})
      return loss_fn(pred, batch['y'], batch['mask'], weights)

    loss, grads = jax.value_and_grad(loss_of)(state.params)
    finite = jnp.isfinite(loss) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite step is not applied: the host decides to stop (default) or to count it.
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new = TrainState(step=state.step + 1, params=keep(params, state.params),
                     opt_state=keep(opt_state, state.opt_state))
    return new, loss, finite
  return jax.jit(train_step, donate_argnums=(0,))


def make_eval_step(model):
  def eval_step(params, batch):
    return model.apply({'params': params}, batch['x'], batch['lengths'], deterministic=True)
  return jax.jit(eval_step)


def predict_videos(eval_step, params, videos, mesh) -> list:
  """Predictions [T_i, K] for each video, batched by length bucket."""
  preds = [None] * len(videos)
  n_dev = mesh.devices.size
  for batch, idxs in ip.eval_batches(videos, multiple=n_dev):
    out = np.asarray(eval_step(params, shard(batch, mesh)))
    for j, i in enumerate(idxs):
      preds[i] = out[j, :len(videos[i].x)]
  return preds


def shard(batch: dict, mesh: Mesh) -> dict:
  sharding = NamedSharding(mesh, P('data'))
  return {k: jax.device_put(v, sharding) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def evaluate_split(eval_step, params, videos, targets, mesh) -> tuple:
  preds = predict_videos(eval_step, params, videos, mesh)
  labelled = [i for i, v in enumerate(videos) if v.has_labels]
  if not labelled:
    return preds, None
  m = metrics_lib.partition_metrics([videos[i].y for i in labelled],
                                    [preds[i] for i in labelled], targets)
  return preds, m


# ------------------------------------------------------------------------------------------------
# Host-side schedule


class Plateau:
  """torch.optim.lr_scheduler.ReduceLROnPlateau(mode='min', threshold=1e-4 rel, cooldown 0)."""

  def __init__(self, lr, patience, factor, min_lr, best=float('inf'), num_bad=0):
    self.lr, self.patience, self.factor, self.min_lr = lr, patience, factor, min_lr
    self.best, self.num_bad = best, num_bad

  def step(self, value: float) -> float:
    if value < self.best * (1 - 1e-4):
      self.best, self.num_bad = value, 0
    else:
      self.num_bad += 1
    if self.num_bad > self.patience:
      new = max(self.lr * self.factor, self.min_lr)
      if self.lr - new > 1e-8:
        logging.info('plateau: learning rate %.3g -> %.3g', self.lr, new)
        self.lr = new
      self.num_bad = 0
    return self.lr

  def state(self):
    return {'lr': self.lr, 'best': self.best, 'num_bad': self.num_bad}


# ------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_manager(workdir: str, read_only: bool = False):
  path = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  policy = ocm.AnyPreservationPolicy([
      ocm.LatestN(n=1),
      # Ties keep the earliest epoch, matching best_epoch (strict improvement).
      ocm.BestN(get_metric_fn=lambda m: (m['devel_ccc'], -m['epoch']), n=1,
                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, read_only=read_only,
                                         enable_async_checkpointing=False, create=not read_only)
  return ocp.CheckpointManager(path, options=options, item_names=('state', 'meta'))


def model_signature(config, dims) -> dict:
  """What a checkpoint's arrays depend on; restore refuses a workdir written for another one."""
  return {'model': json.loads(config.model.to_json()), 'inputs': ip.input_names(config),
          'dims': list(dims), 'targets': ip.parse_list(config.targets)}


def restore(mngr, step, state, signature, workdir):
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  if meta['signature'] != signature:
    diff = [k for k in signature if signature[k] != meta['signature'].get(k)]
    raise MuseError(f'{workdir}: its checkpoint was written for a different {"/".join(diff)} '
                    f'({meta["signature"].get(diff[0])} vs {signature[diff[0]]}); use another '
                    'workdir or the config it was trained with')
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))['state']
  return restored, meta


# ------------------------------------------------------------------------------------------------
# The loop


def prepare_data(config, workdir, fit_stats: bool):
  """Videos joined and normalised; stats fitted on train (training) or read from the workdir."""
  videos, dims = ip.load_videos(config)
  stats_path = os.path.join(workdir, 'norm_stats.npz')
  if fit_stats and not os.path.exists(stats_path):
    stats = ip.compute_stats(config, videos['train'], dims)
    if jax.process_index() == 0:
      stats.save(stats_path)
  else:
    stats = ip.NormStats.load(stats_path)
  ip.normalize(config, videos, stats)
  return videos, dims


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains on train, selects on devel, writes checkpoints, metrics, predictions and plots."""
  validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  targets = ip.parse_list(config.targets)
  t_start = time.time()
  videos, dims = prepare_data(config, workdir, fit_stats=True)
  outputs.write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))
  mesh = make_mesh()
  n_dev = mesh.devices.size
  windows = ip.make_windows(videos['train'], config.win_len, config.hop_len)
  rows = -(-config.batch_size // n_dev) * n_dev
  steps_per_epoch = -(-len(windows.lengths) // config.batch_size)
  logging.info('data: %s; %d train windows -> %d steps/epoch of %d rows on %d device(s); '
               'devel/test in %d/%d length buckets', {s: len(v) for s, v in videos.items()},
               len(windows.lengths), steps_per_epoch, rows, n_dev,
               ip.num_eval_shapes(videos['devel']), ip.num_eval_shapes(videos['test']))

  model, tx, state = create_state(config, sum(dims), len(targets), config.seed)
  loss_fn = losses.get_loss(config.loss)
  weights = jnp.asarray(config.loss_weights, jnp.float32) if len(config.loss_weights) else None
  train_step = make_train_step(model, tx, loss_fn, weights)
  eval_step = make_eval_step(model)
  signature = model_signature(config, dims)

  mngr = checkpoint_manager(workdir)
  plateau = Plateau(config.learning_rate, config.plateau_patience, config.plateau_factor,
                    config.min_learning_rate)
  start_epoch, best_epoch, best_ccc, since_best = 1, 0, -float('inf'), 0
  if mngr.latest_step() is not None:
    state, meta = restore(mngr, mngr.latest_step(), state, signature, workdir)
    start_epoch = meta['epoch'] + 1
    best_epoch, best_ccc, since_best = meta['best_epoch'], meta['best_ccc'], meta['since_best']
    plateau = Plateau(**meta['plateau'], patience=config.plateau_patience,
                      factor=config.plateau_factor, min_lr=config.min_learning_rate)
    logging.info('resuming after epoch %d (best devel CCC %.4f at epoch %d)', meta['epoch'],
                 best_ccc, best_epoch)
  state = replicate(state, mesh)
  log = outputs.MetricLog(workdir, resume_after=start_epoch - 1)
  dropout_key = jax.random.key(config.seed + 1)
  stopped_early = since_best >= config.early_stopping_patience
  epoch = start_epoch - 1
  for epoch in range(start_epoch, config.num_epochs + 1):
    if stopped_early:
      break
    t0 = time.time()
    state = state.replace(opt_state=_with_lr(state.opt_state, plateau.lr))
    losses_dev, finite_dev = [], []
    for batch in ip.train_batches(windows, rows, config.seed, epoch):
      state, loss, finite = train_step(state, shard(batch, mesh), dropout_key)
      losses_dev.append(loss)
      finite_dev.append(finite)
    step_losses, step_finite = jax.device_get((losses_dev, finite_dev))  # one transfer per epoch
    if not all(step_finite):
      bad = int(np.argmin(step_finite))
      raise MuseError(f'non-finite loss or gradient at epoch {epoch}, step {bad + 1} of '
                      f'{len(step_finite)}; the last good checkpoint (epoch {epoch - 1}) is kept '
                      'in the workdir; lower learning_rate or check the inputs')
    train_loss = float(np.mean(step_losses))
    _, devel = evaluate_split(eval_step, state.params, videos['devel'], targets, mesh)
    devel_ccc = devel['mean_ccc'] if devel else float('nan')
    lr = plateau.lr
    if devel is not None:
      plateau.step(1.0 - devel_ccc)
    if devel_ccc > best_ccc:
      best_ccc, best_epoch, since_best = devel_ccc, epoch, 0
    else:
      since_best += 1
    stopped_early = since_best >= config.early_stopping_patience
    seconds = time.time() - t0
    record = {'epoch': epoch, 'train_loss': train_loss, 'lr': lr, 'seconds': seconds,
              'devel': devel}
    log.write(record)
    logging.info('epoch %3d  loss %.4f  devel CCC %s  lr %.2g  %.1fs%s', epoch, train_loss,
                 ' '.join(f'{t} {devel[t]["ccc"]:.4f}' for t in targets) if devel else 'n/a',
                 lr, seconds, '  *' if best_epoch == epoch else '')
    meta = {'epoch': epoch, 'best_epoch': best_epoch, 'best_ccc': best_ccc,
            'since_best': since_best, 'plateau': plateau.state(), 'signature': signature}
    mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)),
              metrics={'devel_ccc': devel_ccc if np.isfinite(devel_ccc) else -1e9, 'epoch': epoch})
  mngr.wait_until_finished()
  if stopped_early:
    logging.info('early stop: no devel improvement for %d epochs', config.early_stopping_patience)
  log.close()
  results = finish(config, workdir, mngr, state, signature, videos, eval_step, mesh)
  results['train_seconds'] = time.time() - t_start
  if jax.process_index() == 0:
    outputs.write_json(os.path.join(workdir, 'results.json'), results)
  return results


def _with_lr(opt_state, lr):
  opt_state.hyperparams['learning_rate'] = jnp.asarray(lr, jnp.float32)
  return opt_state


def finish(config, workdir, mngr, state, signature, videos, eval_step, mesh) -> dict:
  """Restores the best epoch, scores every partition, writes predictions and plots."""
  meta_latest = mngr.restore(mngr.latest_step(),
                             args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  best_epoch = meta_latest['best_epoch'] or mngr.latest_step()
  state, _ = restore(mngr, best_epoch, state, signature, workdir)
  params = replicate(state.params, mesh)
  targets = ip.parse_list(config.targets)
  results = {'best_epoch': best_epoch, 'epochs_run': meta_latest['epoch'], 'targets': targets}
  for split in ip.SPLITS:
    preds, m = evaluate_split(eval_step, params, videos[split], targets, mesh)
    results[split] = m
    if jax.process_index() == 0:
      outputs.write_predictions(workdir, videos[split], preds, targets)
      if split == 'devel':
        outputs.plot_videos(workdir, videos[split][:config.num_plot_videos], preds, targets)
  return results


def _restore_best(config, workdir):
  validate_config(config)
  workdir = os.path.abspath(workdir)
  mngr = checkpoint_manager(workdir, read_only=True)
  if mngr.latest_step() is None:
    raise MuseError(f'{workdir}: no checkpoint found; train first (--mode=train)')
  videos, dims = prepare_data(config, workdir, fit_stats=False)
  targets = ip.parse_list(config.targets)
  model, _, state = create_state(config, sum(dims), len(targets), config.seed)
  return workdir, mngr, state, model_signature(config, dims), videos, make_eval_step(model)


def evaluate(config, workdir: str) -> dict:
  """Recomputes every partition's metrics (and predictions) from the best checkpoint."""
  workdir, mngr, state, signature, videos, eval_step = _restore_best(config, workdir)
  results = finish(config, workdir, mngr, state, signature, videos, eval_step, make_mesh())
  if jax.process_index() == 0:
    outputs.write_json(os.path.join(workdir, 'eval_results.json'), results)
  return results


predict = evaluate  # predictions are written by the same pass; kept as a named mode for the CLI
