"""Training: `train_and_evaluate(config, workdir)` is the whole loop.

Data (`sources.prepare_data`: built sets joined and normalised) -> train windows and batches
(`input_pipeline`) -> the compiled step for all seeds at once (`steps`), sharded over the devices
(`sharding`) -> after each epoch, devel CCC per seed feeds its plateau schedule and early stopping
(`schedule`) and picks its best parameters; a checkpoint per epoch (`checkpoint`) -> at the end the
best parameters are scored on every partition and written (`inference.score_best`).

It never changes the process behind its caller: allocator, dispatch, compilation cache and log
filters are the entry points' business (`runtime.configure`).
"""

import dataclasses
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from muse_jax import checkpoint
from muse_jax import config_util
from muse_jax import files
from muse_jax import inference
from muse_jax import input_pipeline as ip
from muse_jax import losses
from muse_jax import outputs
from muse_jax import sharding
from muse_jax import sources
from muse_jax import steps
from muse_jax import workdir as workdir_lib
from muse_jax.errors import MuseError
from muse_jax.schedule import SeedTracker


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains on train, selects on devel, writes checkpoints, metrics, predictions and plots.

  Resumes from the workdir's checkpoint when there is one (a finished run just re-reports); a
  resume may change only the fields of `workdir.RESUMABLE`. One run at a time per workdir.
  """
  spec = config_util.validate_config(config)
  workdir = workdir_lib.prepare(workdir)
  with workdir_lib.held(workdir, 'train'):
    return _train(spec, workdir)


def _train(spec, workdir: str) -> dict:
  config, targets, seeds = spec.config, list(spec.targets), list(spec.seeds)
  t_start = time.time()
  mngr = checkpoint.checkpoint_manager(workdir)
  # Targets and tree as resolved ('all' -> the tree's targets; a release root -> the task's
  # folder): what the model predicts and read, even if the root gains other tasks later.
  config_json = dict(
    workdir_lib.config_record(config),
    targets=list(targets),
    data_root=spec.data_root,
    task=spec.layout.task,
  )
  if mngr.latest_step() is not None:
    workdir_lib.check_resume(
      workdir, config_json
    )  # before any data work: a refused resume costs nothing
  videos, dims = sources.prepare_data(spec, workdir, fit_stats=True)
  if jax.process_index() == 0:
    files.remove_stale_tmp(workdir)
    outputs.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE), config_json)
  mesh = sharding.make_mesh(config.num_devices, config.get('member_devices', 1))
  platform = sharding.platform(mesh)
  windows = ip.train_windows(config, videos['train'])
  n_dev = sharding.data_devices(mesh)
  unit = n_dev * steps.micro_batches(config)  # rows split evenly over devices and micro-batches
  n_win = len(windows.lengths)
  step_rows = sorted(set(ip.step_rows(n_win, config.batch_size, unit)), reverse=True)
  impl = steps.attention_impl(config, platform)
  mapped = steps.seeds_mapped(config, platform)
  logging.info(
    'data: %s videos; %d train windows -> %d steps/epoch of %s rows on %d %s '
    'device(s); devel/test in %d/%d length buckets; seeds %s (%s), %s attention',
    {s: len(v) for s, v in videos.items()},
    n_win,
    -(-n_win // config.batch_size),
    ' or '.join(map(str, step_rows)),
    n_dev,
    platform,
    ip.num_eval_shapes(videos['devel']),
    ip.num_eval_shapes(videos['test']),
    seeds,
    ('one after the other' if mapped else 'vmapped')
    + (
      f', sharded over {mesh.shape["member"]} member devices' if 'member' in mesh.axis_names else ''
    ),
    impl,
  )

  model, tx, state = steps.create_state(config, sum(dims), len(targets), seeds, impl)
  weights = jnp.asarray(spec.loss_weights, jnp.float32) if spec.loss_weights else None
  train_step = steps.make_train_step(
    model,
    tx,
    losses.get_loss(config.loss),
    weights,
    steps.micro_batches(config),
    per_frame=config.loss != 'ccc',
    seeds_map=mapped,
  )
  eval_step = steps.make_eval_step(model, mapped)
  signature = checkpoint.model_signature(spec, dims, sources.grid_step(spec))

  # Each member (seed) its own schedule: config.members may give each its own (a sweep's).
  member_configs = [spec.member_config(i) for i in range(len(seeds))]
  # What members set for themselves beyond the schedule goes into the step, traced: their dropout
  # rates and loss weights (else the model's rates and the config's weights, compiled in).
  member = {}
  if any(f in m for m in spec.members for f in config_util.MEMBER_RATES):
    member['rates'] = np.asarray(
      [
        [float(config_util.get_field(c, f) or 0.0) for f in config_util.MEMBER_RATES]
        for c in member_configs
      ],
      np.float32,
    )
  if any('loss_weights' in m for m in spec.members):
    member['weights'] = np.asarray(
      [config_util.loss_weights(c, targets) or (1.0,) * len(targets) for c in member_configs],
      np.float32,
    )
  place = lambda tree: sharding.place_members(tree, mesh, len(seeds))
  member = place(member) if member else None
  trackers = [SeedTracker(lr=c.learning_rate, seed=seed) for c, seed in zip(member_configs, seeds)]
  start_epoch, skipped, initial = 1, 0, None
  if mngr.latest_step() is not None:
    state, meta = checkpoint.restore(mngr, state, signature, workdir)
    start_epoch, skipped = meta['epoch'] + 1, meta['skipped_steps']
    trackers = [SeedTracker(**t) for t in meta['trackers']]
    initial = meta['initial_devel']
    logging.info('resuming after epoch %d from %s', meta['epoch'], mngr.directory)
  state = place(state)
  keys = place(steps.dropout_keys(seeds))
  # A checkpoint holds the state's arrays and some metadata; 2x: a margin for orbax's layout.
  ckpt_bytes = 2 * sum(x.nbytes for x in jax.tree.leaves(state)) + (1 << 20)
  if start_epoch == 1:
    # The untrained model's devel score: what training must beat for its parameters to be kept.
    _, devel0 = inference.evaluate_split(eval_step, state.params, videos['devel'], targets, mesh)
    initial = [m['mean_ccc'] for m in devel0]
    _log_epoch(0, None, devel0, trackers, targets, None, 0.0, None, seeds)
  log = outputs.MetricLog(workdir, resume_after=start_epoch - 1)
  for epoch in range(start_epoch, config.num_epochs + 1):
    if not any(t.active for t in trackers):
      logging.info(
        'early stop: every seed went %s epochs without devel improvement',
        '/'.join(sorted({str(c.early_stopping_patience) for c in member_configs})),
      )
      break
    t0 = time.time()
    was_active = [t.active for t in trackers]
    lrs = np.asarray([t.lr for t in trackers], np.float32)
    state.opt_state.hyperparams['learning_rate'] = place(lrs)
    active = place(np.array(was_active))
    step_losses, step_finite = [], []
    for batch in ip.train_batches(windows, config.batch_size, spec.data_seed, epoch, unit):
      state, loss, finite = train_step(state, sharding.shard(batch, mesh), keys, active, member)
      step_losses.append(loss)
      step_finite.append(finite)
      # Where dispatch is async (GPU/TPU; CPU when runtime.host_memory is off), this keeps one
      # step in flight while the next batch is gathered, instead of queueing the epoch's batches.
      if len(step_losses) > 1:
        step_losses[-2].block_until_ready()
    step_losses = sharding.to_host(jnp.stack(step_losses))
    step_finite = sharding.to_host(jnp.stack(step_finite))
    if not step_finite.all():
      bad_step, bad_seed = map(int, np.argwhere(~step_finite)[0])
      where = f'epoch {epoch}, step {bad_step + 1} of {len(step_finite)}, seed {seeds[bad_seed]}'
      if config.nonfinite_policy == 'stop':
        raise MuseError(
          f'non-finite loss or gradient at {where}; {_kept(epoch)}; lower '
          'learning_rate, check the inputs, or set --config.nonfinite_policy=skip'
        )
      skipped += int((~step_finite).sum())
      logging.warning('skipped %d non-finite step(s), first at %s', (~step_finite).sum(), where)
    # [S]; NaN for a seed that was stopped (mapped: not computed) or had no finite step.
    counted = step_finite & np.asarray(was_active)[None, :]
    train_loss = np.where(counted, step_losses, 0.0).sum(0) / np.maximum(counted.sum(0), 1)
    train_loss = np.where(counted.any(0), train_loss, np.nan)

    t_eval = time.time()
    _, devel = inference.evaluate_split(eval_step, state.params, videos['devel'], targets, mesh)
    improved = np.zeros(len(seeds), bool)
    for s, t in enumerate(trackers):
      if t.active:
        improved[s] = t.update(
          devel[s]['mean_ccc'] if devel else float('nan'), epoch, member_configs[s]
        )
    state = steps.keep_best(state, place(improved))
    seconds = time.time() - t0
    log.write(
      {
        'epoch': epoch,
        'seconds': seconds,
        'train_seconds': t_eval - t0,
        'eval_seconds': time.time() - t_eval,
        'steps': len(step_finite),
        'skipped_steps': skipped,
        'seeds': [
          {
            'seed': seed,
            'lr': float(lrs[s]),
            'train_loss': float(train_loss[s]) if was_active[s] else None,
            'devel': devel[s] if devel else None,
          }
          for s, seed in enumerate(seeds)
        ],
      }
    )
    _log_epoch(
      epoch, train_loss, devel, trackers, targets, lrs, seconds, improved, seeds, was_active
    )
    meta = {
      'epoch': epoch,
      'skipped_steps': skipped,
      'signature': signature,
      'trackers': [dataclasses.asdict(t) for t in trackers],
      'initial_devel': initial,
    }
    workdir_lib.check_space(workdir, ckpt_bytes, f'the checkpoint of epoch {epoch}', _kept(epoch))
    checkpoint.save(mngr, epoch, state, meta)
  mngr.wait_until_finished()
  log.close()
  results = inference.score_best(spec, workdir, mngr, state, signature, videos, eval_step, mesh)
  results['seconds'] = time.time() - t_start
  if results['best_epoch'] == config.num_epochs:
    logging.info(
      'best epoch %d is the last one (num_epochs): devel CCC was still improving, so '
      'more epochs may help (resume with a larger --config.num_epochs)',
      results['best_epoch'],
    )
  if jax.process_index() == 0:
    outputs.write_json(os.path.join(workdir, 'results.json'), results)
  return results


def _kept(epoch: int) -> str:
  return (
    f'the workdir keeps the last good checkpoint (epoch {epoch - 1})'
    if epoch > 1
    else 'no checkpoint was written'
  )


def _log_epoch(
  epoch, train_loss, devel, trackers, targets, lrs, seconds, improved, seeds, was_active=None
):
  """One line per seed that trained this epoch (a stopped seed's line says so once, then it is
  quiet); epoch 0 is the untrained score."""
  for s, t in enumerate(trackers):
    if was_active is not None and not was_active[s]:
      continue
    ccc = ' '.join(f'{k} {devel[s][k]["ccc"]:.4f}' for k in targets) if devel else 'n/a'
    prefix = f'epoch {epoch:3d}' + (f' seed {seeds[s]}' if len(trackers) > 1 else '')
    if epoch == 0:
      logging.info('%s  devel CCC %s  (untrained)', prefix, ccc)
      continue
    logging.info(
      '%s  loss %.4f  devel CCC %s  lr %.2g  %.1fs%s%s',
      prefix,
      train_loss[s],
      ccc,
      lrs[s],
      seconds,
      '  *' if improved[s] else '',
      '' if t.active else f'  (stopped: best epoch {t.best_epoch})',
    )
