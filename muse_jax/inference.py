"""Trained parameters at work: scoring the best epoch, evaluate, predict, and `Predictor`.

- `score_best`: the end of training (and all of `--mode=evaluate`): every partition scored with
  each seed's best parameters, the chosen seed's predictions written in the challenge format.
  Exit 0 means trained, finite outputs: a chosen seed that never beat the untrained model on
  devel, or a non-finite prediction, is one line and nothing is written.
- `evaluate`: restores the best parameters and recomputes everything, metrics included, into
  `eval_results.json` (training's `results.json` stays as it was).
- `predict`: predictions only, for every video of every partition of `config.data_root` (which may
  be another tree with the same feature sets, labels not needed), into `<workdir>/predict/`.
- `Predictor`: a trained workdir as a function of one new recording's raw features.
"""
import copy
import json
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from muse_jax import checkpoint
from muse_jax import config_util
from muse_jax import input_pipeline as ip
from muse_jax import metrics as metrics_lib
from muse_jax import normalization
from muse_jax import outputs
from muse_jax import sharding
from muse_jax import sources
from muse_jax import steps
from muse_jax import workdir as wd
from muse_jax.data import layout
from muse_jax.data import video as video_lib
from muse_jax.errors import MuseError
from muse_jax.schedule import SeedTracker


def predict_videos(eval_step, params, videos, mesh) -> list:
  """Per seed, per video predictions: [S][video] -> [T_i, K], batched by length bucket."""
  n_seeds = jax.tree.leaves(params)[0].shape[0]
  preds = [[None] * len(videos) for _ in range(n_seeds)]
  for batch, idxs in ip.eval_batches(videos, multiple=sharding.data_devices(mesh)):
    out = sharding.to_host(eval_step(params, sharding.shard(batch, mesh)))
    for s in range(n_seeds):
      for j, i in enumerate(idxs):
        preds[s][i] = out[s, j, :len(videos[i].x)]
  return preds


def evaluate_split(eval_step, params, videos, targets, mesh, bootstrap=(0, 0)) -> tuple:
  """(predictions [S][video], metrics per seed or None when the split has no labels);
  `bootstrap`: (samples, seed) of the CCC intervals (off during training's epochs)."""
  preds = predict_videos(eval_step, params, videos, mesh)
  labelled = _labelled(videos)
  if not labelled:
    return preds, None
  m = [metrics_lib.partition_metrics([videos[i].y for i in labelled],
                                     [p[i] for i in labelled], targets, *bootstrap)
       for p in preds]
  return preds, m


def bootstrap_of(config) -> tuple:
  """(samples, seed) of the intervals every reported partition CCC carries."""
  return config.get('bootstrap_samples', 1000), config.get('bootstrap_seed', 0)


def seed_spread(values) -> float:
  """The seeds' spread as papers report it: the sample standard deviation (ddof 1)."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else float('nan')


def score_best(spec, workdir, mngr, state, signature, videos, eval_step, mesh,
               by: str = 'train') -> dict:
  """Scores every partition with each seed's best parameters; writes the predictions
  `config.eval_seed` picks (challenge CSVs), `predictions.json` saying what they are (`by`:
  'train' or 'evaluate', the run that wrote them: evaluate may pick another eval_seed than the
  results.json of training) and plots; returns the results dict."""
  config = spec.config
  state, meta = checkpoint.restore(mngr, state, signature, workdir)
  params = sharding.place_members(state.best_params, mesh, len(spec.seeds))
  trackers = [SeedTracker(**t) for t in meta['trackers']]
  targets, seeds, initial = list(spec.targets), list(spec.seeds), meta.get('initial_devel')
  boot = bootstrap_of(config)
  per_split = {s: evaluate_split(eval_step, params, videos[s], targets, mesh, boot)
               for s in layout.SPLITS}
  devel_ccc = [m['mean_ccc'] for m in per_split['devel'][1]] if per_split['devel'][1] else []
  best = int(np.nanargmax(devel_ccc)) if devel_ccc and np.isfinite(devel_ccc).any() else 0
  picked = pick_seeds(spec.eval_seed, trackers, initial, best)
  for s in picked:
    check_trained(workdir, trackers[s], seeds[s], devel_ccc[s] if devel_ccc else float('nan'),
                  initial, s)
  what = written_name(spec.eval_seed, picked, seeds)
  written = {split: combine(preds, picked) for split, (preds, _) in per_split.items()}
  for split, preds in written.items():
    check_finite(preds, videos[split], split, what)
  ensemble = score_ensemble(per_split, videos, targets, trackers, seeds, initial, boot)
  results = {'targets': targets, 'layout': spec.layout.kind, 'task': spec.layout.task,
             'step_ms': signature['step_ms'], 'epochs_run': meta['epoch'],
             'eval_seed': spec.eval_seed, 'seed': _seed_value(spec.eval_seed, picked, seeds),
             'best_seed': seeds[best], 'best_member': best,
             'best_epoch': max(trackers[s].best_epoch for s in picked),
             'skipped_steps': meta['skipped_steps']}
  if initial and len(picked) == 1:
    results['initial_devel_ccc'] = initial[picked[0]]
  for split, (_, m) in per_split.items():
    results[split] = ((m[picked[0]] if len(picked) == 1 else ensemble[split]) if m else None)
  results['seeds'] = [{'seed': seed, 'best_epoch': trackers[s].best_epoch,
                       **({'overrides': spec.members[s]} if spec.members else {}),
                       **{split: (m[s] if m else None) for split, (_, m) in per_split.items()}}
                      for s, seed in enumerate(seeds)]
  if len(seeds) > 1 and devel_ccc:
    results['devel_ccc_mean'] = float(np.mean(devel_ccc))
    results['devel_ccc_std'] = seed_spread(devel_ccc)
    if per_split['test'][1]:
      test_ccc = [m['mean_ccc'] for m in per_split['test'][1]]
      results['test_ccc_mean'] = float(np.mean(test_ccc))
      results['test_ccc_std'] = seed_spread(test_ccc)
  if len(seeds) > 1 or spec.eval_seed == 'ensemble':
    results['ensemble'] = ensemble
  results['per_video'] = {split: _per_video(videos[split], written[split], targets)
                          for split in ('devel', 'test')}
  for line in seed_lines(results):
    logging.info('%s', line)
  if per_split['test'][1] is None and videos['test']:
    logging.info('test: no test video has labels for %s in this tree, so there is no test score '
                 '(predictions are written)', ', '.join(targets))
  if jax.process_index() == 0:
    for split, preds in written.items():
      outputs.write_predictions(os.path.join(workdir, 'predictions'), videos[split], preds,
                                targets, spec.layout.label_columns)
    if spec.members:  # a sweep's group: its members' predictions, for the sweep's ensemble
      outputs.write_member_predictions(workdir, per_split, videos)
    outputs.write_json(os.path.join(workdir, 'predictions.json'), {
        'written_by': by, 'what': what, 'eval_seed': spec.eval_seed, 'seed': results['seed'],
        'best_epoch': results['best_epoch'],
        'results': 'results.json' if by == 'train' else 'eval_results.json'})
    n = config.num_plot_videos
    devel_ccc_of = results['per_video'].get('devel', {})
    outputs.plot_videos(workdir, videos['devel'][:n], written['devel'][:n], targets,
                        [devel_ccc_of.get(v.id) for v in videos['devel'][:n]])
    if devel_ccc_of:
      outputs.plot_per_video_ccc(workdir, devel_ccc_of, targets, 'devel', what)
  return results


def ensemble_members(trackers, initial) -> list:
  """Indices of the seeds the ensemble averages: those whose best parameters come from training
  and beat the untrained model on devel (what `check_trained` asks of a chosen seed). From the
  checkpoint alone, so training, evaluate, predict and `Predictor` average the same seeds."""
  return [s for s, t in enumerate(trackers)
          if t.best_epoch > 0 and np.isfinite(t.best_ccc)
          and not (initial is not None and np.isfinite(initial[s]) and t.best_ccc <= initial[s])]


def pick_seeds(eval_seed, trackers, initial, best: int) -> list:
  """The seed indices whose predictions are written: [best], [a seed index] or the ensemble's
  members. An ensemble without members is [best], so `check_trained` says why that seed fails."""
  if eval_seed == 'ensemble':
    return ensemble_members(trackers, initial) or [best]
  return [best if eval_seed == 'best' else eval_seed]


def written_name(eval_seed, picked, seeds) -> str:
  """How the log, errors and plots name what was written."""
  if eval_seed == 'ensemble':
    return f'the ensemble of seeds {", ".join(str(seeds[s]) for s in picked)}'
  return f'seed {seeds[picked[0]]}'


def _seed_value(eval_seed, picked, seeds):
  """results' `seed`: the written seed, or 'ensemble'."""
  return 'ensemble' if eval_seed == 'ensemble' else seeds[picked[0]]


def combine(preds, picked) -> list:
  """Per video, the mean of the picked seeds' predictions ([S][video] -> [video]); one seed's
  predictions come back unchanged (`ensemble_mean`)."""
  return [ensemble_mean([preds[s][i] for s in picked]) for i in range(len(preds[0]))]


def score_ensemble(per_split, videos, targets, trackers, seeds, initial, bootstrap=(0, 0)) -> dict:
  """Metrics of the mean of the seeds' predictions, each seed at its own best epoch, on every
  partition: what training all seeds bought beyond keeping the best one. The members are
  `ensemble_members`; a partition where their mean is not finite has no score (one log line;
  writing it is refused by `check_finite`)."""
  members = ensemble_members(trackers, initial)
  out = {'seeds': [seeds[s] for s in members],
         'best_epochs': [trackers[s].best_epoch for s in members]}
  for split, (preds, _) in per_split.items():
    labelled = _labelled(videos[split])
    mean = combine(preds, members) if members else []
    if members and not all(np.isfinite(mean[i]).all() for i in labelled):
      logging.warning('%s: the ensemble of seeds %s predicts non-finite values, so it has no '
                      'score there', split, out['seeds'])
      labelled = []
    out[split] = metrics_lib.partition_metrics(
        [videos[split][i].y for i in labelled], [mean[i] for i in labelled],
        targets, *bootstrap) if labelled and members else None
  return out


def _per_video(videos, preds, targets) -> dict:
  """{video id: {target: CCC}} of the labelled videos of a partition."""
  labelled = _labelled(videos)
  cccs = metrics_lib.per_video_ccc([videos[i].y for i in labelled], [preds[i] for i in labelled],
                                   targets)
  return {videos[i].id: c for i, c in zip(labelled, cccs)}


def _labelled(videos) -> list:
  """Indices of the videos with labels (the ones a partition's metrics are computed on)."""
  return [i for i, v in enumerate(videos) if v.has_labels]


def ensemble_mean(preds) -> np.ndarray:
  """The ensemble's prediction of one video: the seeds' predictions averaged frame by frame, in
  float64 (a sum of float32 values is exact there, so identical seeds give exactly that seed)."""
  return np.mean(np.stack(preds).astype(np.float64), axis=0).astype(preds[0].dtype)


def interval(m: dict, key: str = 'ccc') -> str:
  """' [low, high]' of a metrics entry's 95% interval ('' when the bootstrap was off)."""
  ci = m.get(f'{key}_ci95')
  if not ci or ci[0] is None:
    return ''
  return f' [{ci[0]:.2f}, {ci[1]:.2f}]'


def seed_lines(results) -> list:
  """With several seeds, per split: the best seed's mean CCC, the seeds' mean +- std and their
  ensemble's, side by side (the run's log and its last printed lines)."""
  if 'ensemble' not in results or 'devel_ccc_mean' not in results:
    return []
  best = results['seeds'][results['best_member']] if 'best_member' in results else next(
      s for s in results['seeds'] if s['seed'] == results['best_seed'])
  lines = []
  for split in ('devel', 'test'):
    if f'{split}_ccc_mean' in results:
      ens = results['ensemble'].get(split)
      lines.append(f'{split}: mean CCC of the best seed ({best["seed"]}) '
                   f'{best[split]["mean_ccc"]:.4f}{interval(best[split], "mean_ccc")}, of '
                   f'{len(results["seeds"])} seeds {results[f"{split}_ccc_mean"]:.4f} +- '
                   f'{results[f"{split}_ccc_std"]:.4f} (sample std)'
                   + (f', of their ensemble {ens["mean_ccc"]:.4f}{interval(ens, "mean_ccc")}'
                      if ens else ''))
  return lines


def check_trained(workdir, tracker, seed, ccc, initial, chosen) -> None:
  """The chosen seed's best parameters must come from training and beat the untrained model.

  `ccc`: its devel CCC with those parameters (as scored now, or as the tracker recorded it);
  `initial`: each seed's untrained devel CCC (checkpoint meta), or None."""
  what = f'seed {seed}'
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


def check_finite(preds, videos, split, what) -> None:
  """Refuses to write a non-finite prediction; `what`: 'seed 314', 'the ensemble of ...'."""
  for v, p in zip(videos, preds):
    if not np.isfinite(p).all():
      row = int(np.argmax(~np.isfinite(p).all(axis=1)))
      raise MuseError(f'non-finite prediction for {split} video {v.id} at timestamp '
                      f'{v.timestamp[row]} ({what}); no predictions were written; look for '
                      'absurd input values there (or train with a lower config.max_abs_z in a new '
                      '--workdir)')


def _restored(spec, workdir, require):
  """What evaluate and predict share: the manager, a state to restore into, the data."""
  mngr = checkpoint.open_trained(workdir)
  videos, dims = sources.prepare_data(spec, workdir, fit_stats=False, require=require)
  mesh = sharding.make_mesh(spec.config.num_devices, spec.config.get('member_devices', 1))
  platform = sharding.platform(mesh)
  model, _, state = steps.create_state(spec.config, sum(dims), len(spec.targets), spec.seeds,
                                       steps.attention_impl(spec.config, platform))
  eval_step = steps.make_eval_step(model, steps.seeds_mapped(spec.config, platform))
  signature = checkpoint.model_signature(spec, dims, sources.grid_step(spec))
  return mngr, state, signature, videos, eval_step, mesh


def evaluate(config, workdir: str) -> dict:
  """Restores the best parameters, recomputes every partition's metrics, rewrites predictions;
  writes `eval_results.json` (training's `results.json` is left as it was)."""
  spec = config_util.validate_config(config)
  workdir = wd.prepare(workdir)
  with wd.held(workdir, 'evaluate'):
    # Preprocessing fields (nan_policy, max_abs_z, data_root, ...) must be the training's.
    wd.check_resume(workdir, wd.config_record(config), evaluating=True)
    mngr, state, signature, videos, eval_step, mesh = _restored(spec, workdir, ('train', 'devel'))
    results = score_best(spec, workdir, mngr, state, signature, videos, eval_step, mesh,
                         by='evaluate')
    if jax.process_index() == 0:
      outputs.write_json(os.path.join(workdir, 'eval_results.json'), results)
  return results


def predict(config, workdir: str) -> dict:
  """Predictions of the best parameters for every video of `config.data_root`, in
  `<workdir>/predict/<target>/<Id>.csv` (challenge format); no labels needed, no metrics.

  `config.eval_seed` picks them: the seed with the best devel CCC during training (as the
  checkpoint's schedules recorded it), a seed index, or the ensemble of the seeds (the same
  members as training's end). Returns what `predict.json` holds."""
  workdir = wd.prepare(workdir)
  saved = wd.saved_config(workdir) or {}
  if saved.get('targets') and config_util.parse_list(config.targets) in (['all'], []):
    config = copy.deepcopy(config)
    config.targets = tuple(config_util.parse_list(saved['targets']))  # the model's own
  # The tree may have no labels (or other ones): the targets are the model's.
  spec = config_util.validate_config(config, tree_targets=False)
  with wd.held(workdir, 'predict'):
    # Another tree is allowed (that is what predict is for); how it becomes inputs is not.
    wd.check_resume(workdir, wd.config_record(config), evaluating=True, other_tree=True)
    trained = config_util.parse(ml_collections.ConfigDict(saved)) if saved else None
    if trained and trained.data_root != spec.data_root and trained.data_dir == spec.data_dir:
      raise MuseError(f'{spec.data_dir}: holds the build of the training tree '
                      f'{trained.data_root}; predicting on {spec.data_root} would replace it: '
                      'pass another --data_dir for this tree')
    mngr, state, signature, videos, eval_step, mesh = _restored(spec, workdir, ())
    state, meta = checkpoint.restore(mngr, state, signature, workdir)
    trackers = [SeedTracker(**t) for t in meta['trackers']]
    seeds, initial = list(spec.seeds), meta.get('initial_devel')
    picked = pick_seeds(spec.eval_seed, trackers, initial, best_tracked(trackers))
    for s in picked:
      check_trained(workdir, trackers[s], seeds[s], trackers[s].best_ccc, initial, s)
    what = written_name(spec.eval_seed, picked, seeds)
    params = sharding.replicate(jax.tree.map(lambda a: a[np.asarray(picked)], state.best_params),
                                mesh)
    out = os.path.join(workdir, 'predict')
    counts = {}
    for split in layout.SPLITS:
      preds = combine(predict_videos(eval_step, params, videos[split], mesh),
                      range(len(picked)))
      check_finite(preds, videos[split], split, what)
      if jax.process_index() == 0:
        outputs.write_predictions(out, videos[split], preds, list(spec.targets),
                                  spec.layout.label_columns)
      counts[split] = len(videos[split])
    results = {'data_root': spec.data_root, 'layout': spec.layout.kind, 'task': spec.layout.task,
               'step_ms': signature['step_ms'], 'eval_seed': spec.eval_seed,
               'seed': _seed_value(spec.eval_seed, picked, seeds),
               'best_epoch': max(trackers[s].best_epoch for s in picked),
               'targets': list(spec.targets), 'videos': counts, 'predictions': out}
    if spec.eval_seed == 'ensemble':
      results['ensemble'] = {'seeds': [seeds[s] for s in picked],
                             'best_epochs': [trackers[s].best_epoch for s in picked]}
    if jax.process_index() == 0:
      outputs.write_json(os.path.join(workdir, 'predict.json'), results)
    logging.info('predictions of %s (best epoch %d) for %s videos written to %s', what,
                 results['best_epoch'], counts, out)
  return results


def best_tracked(trackers) -> int:
  """The seed with the best devel CCC as training's schedules recorded it (predict, Predictor:
  no devel scoring needed)."""
  return int(np.argmax([t.best_ccc if np.isfinite(t.best_ccc) else -np.inf for t in trackers]))


class Predictor:
  """A trained workdir as a function of raw (unnormalised) features, for new recordings.

  `inputs` names the feature sets (and `segment_id`) the model reads, in column order; calling it
  with one video's joined raw features [T, D] returns predictions [T, K] for `targets`, using the
  workdir's train statistics, NaN policy and best parameters: of the seed (or the ensemble)
  `seed_index` names ('best', 'ensemble' or an index), by default what the workdir's
  results.json wrote. Rows are frames
  of the model's own grid, `step_ms` (the training data's: 250 ms for MuSe-CaR, 500 for
  Ulm-TSST); `timestamps`, when given, are checked against it.
  """

  def __init__(self, workdir: str, seed_index: int | str | None = None):
    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
      raise MuseError(f'{workdir}: no config.json; not a trained muse_jax workdir')
    with open(path, encoding='utf-8') as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    spec = config_util.parse(self.config)
    self.stats = normalization.NormStats.load(os.path.join(workdir, 'norm_stats.npz'))
    self.inputs, self.dims = self.stats.names, self.stats.dims
    self.targets = list(spec.targets)
    self.step_ms = self.stats.step_ms or 250  # older workdirs: all trained on MuSe-CaR's grid
    mngr = checkpoint.open_trained(workdir)
    self._mesh = sharding.make_mesh(1)
    impl = steps.attention_impl(self.config, sharding.platform(self._mesh))
    model, _, state = steps.create_state(self.config, sum(self.dims), len(self.targets),
                                         spec.seeds, impl)
    state, meta = checkpoint.restore(
        mngr, state, checkpoint.model_signature(spec, self.dims, self.step_ms), workdir)
    seeds = list(spec.seeds)
    if seed_index is None:  # what the workdir's results.json wrote: its eval_seed (by index,
      # never by seed value: a sweep's members share seeds)
      written = wd.read_json(os.path.join(workdir, 'results.json'), {})
      seed_index = written.get('eval_seed', 'best')
    choice = config_util.eval_seed(seed_index, len(seeds))
    trackers = [SeedTracker(**t) for t in meta['trackers']]
    picked = pick_seeds(choice, trackers, meta.get('initial_devel'), best_tracked(trackers))
    for s in picked:
      check_trained(workdir, trackers[s], seeds[s], trackers[s].best_ccc,
                    meta.get('initial_devel'), s)
    self.seeds = [seeds[s] for s in picked]  # whose predictions are averaged (one: that seed's)
    self.params = jax.tree.map(lambda a: a[np.asarray(picked)], state.best_params)
    self._eval = steps.make_eval_step(model)
    self._max_abs_z = normalization.max_abs_z(spec)

  def __call__(self, raw_x: np.ndarray, timestamps=None) -> np.ndarray:
    raw_x = np.asarray(raw_x, np.float32)
    if timestamps is not None:
      from muse_jax.data import reader  # pylint: disable=import-outside-toplevel
      if len(timestamps) != len(raw_x):
        raise MuseError(f'{len(timestamps)} timestamps for {len(raw_x)} feature rows')
      step = reader.grid_step(np.asarray(timestamps))
      if step and step != self.step_ms:
        raise MuseError(f'the features are on a {step} ms grid, but the model learnt on a '
                        f'{self.step_ms} ms grid; extract them with --step_ms {self.step_ms}')
    if raw_x.ndim != 2 or raw_x.shape[1] != sum(self.dims):
      raise MuseError(f'expected features [T, {sum(self.dims)}] for inputs '
                      f'{dict(zip(self.inputs, self.dims))}, got {raw_x.shape}')
    bad = self.stats.out_of_range(raw_x, self._max_abs_z)
    if bad.any():
      logging.warning('%d input cells NaN, Inf or out of range set to the train mean', bad.sum())
    x = np.where(bad, self.stats.fill(), self.stats.apply(raw_x)).astype(np.float32)
    n = len(x)
    t = np.arange(n) * self.step_ms if timestamps is None else np.asarray(timestamps)
    video = video_lib.unlabelled('input', t, np.ones(n, np.int32), x, self.targets)
    pred = combine(predict_videos(self._eval, self.params, [video], self._mesh),
                   range(len(self.seeds)))[0]
    check_finite([pred], [video], 'new', f'seeds {self.seeds}')
    return pred
