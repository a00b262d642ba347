"""Trained parameters at work on a tree's videos: predictions, scores, the end of training.

- `predict_videos` / `evaluate_split`: every member's predictions of a partition, batched by
  length, and their metrics (each epoch's devel score; the partitions at the end).
- `score_best`: the end of training (and all of `--mode=evaluate`, muse_jax.modes): every
  partition scored with each seed's best parameters, the chosen seed's predictions written in
  the challenge format. Exit 0 means trained, finite outputs: a chosen seed that never beat the
  untrained model on devel, or a non-finite prediction, is one line and nothing is written.
Which members are written is the schedule's member policy (`schedule.choose`).
"""

from collections.abc import Callable
import os

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from muse_jax import checkpoint
from muse_jax import config_util
from muse_jax import input_pipeline as ip
from muse_jax import metrics as metrics_lib
from muse_jax import outputs
from muse_jax import schedule
from muse_jax import sharding
from muse_jax import steps
from muse_jax.data import layout
from muse_jax.data.video import Video
from muse_jax.errors import MuseError


def predict_videos(
  eval_step: Callable, params, videos: list[Video], mesh: jax.sharding.Mesh
) -> list:
  """Per seed, per video predictions: [S][video] -> [T_i, K], batched by length bucket."""
  n_seeds = jax.tree.leaves(params)[0].shape[0]
  preds = [[None] * len(videos) for _ in range(n_seeds)]
  for batch, idxs in ip.eval_batches(videos, multiple=sharding.data_devices(mesh)):
    out = sharding.to_host(eval_step(params, sharding.shard(batch, mesh)))
    for s in range(n_seeds):
      for j, i in enumerate(idxs):
        preds[s][i] = out[s, j, : len(videos[i].x)]
  return preds


def evaluate_split(
  eval_step: Callable,
  params,
  videos: list[Video],
  targets: list[str],
  mesh: jax.sharding.Mesh,
  bootstrap: tuple = (0, 0),
) -> tuple:
  """(predictions [S][video], metrics per seed or None when the split has no labels);
  `bootstrap`: (samples, seed) of the CCC intervals (off during training's epochs)."""
  preds = predict_videos(eval_step, params, videos, mesh)
  labelled = _labelled(videos)
  if not labelled:
    return preds, None
  m = [
    metrics_lib.partition_metrics(
      [videos[i].y for i in labelled], [p[i] for i in labelled], targets, *bootstrap
    )
    for p in preds
  ]
  return preds, m


def bootstrap_of(config) -> tuple:
  """(samples, seed) of the intervals every reported partition CCC carries."""
  return config.get('bootstrap_samples', 1000), config.get('bootstrap_seed', 0)


def score_best(
  spec: config_util.Spec,
  workdir: str,
  mngr: ocp.CheckpointManager,
  state: steps.TrainState,
  signature: dict,
  videos: dict[str, list[Video]],
  eval_step: Callable,
  mesh: jax.sharding.Mesh,
  by: str = 'train',
) -> dict:
  """Scores every partition with each seed's best parameters; writes the predictions
  `config.eval_seed` picks (challenge CSVs), `predictions.json` saying what they are (`by`:
  'train' or 'evaluate', the run that wrote them: evaluate may pick another eval_seed than the
  results.json of training) and plots; returns the results dict."""
  config = spec.config
  state, meta = checkpoint.restore(mngr, state, signature, workdir)
  params = sharding.place_members(state.best_params, mesh, len(spec.seeds))
  trackers = [schedule.SeedTracker(**t) for t in meta['trackers']]
  targets, seeds, initial = list(spec.targets), list(spec.seeds), meta['initial_devel']
  boot = bootstrap_of(config)
  per_split = {
    s: evaluate_split(eval_step, params, videos[s], targets, mesh, boot) for s in layout.SPLITS
  }
  devel_ccc = [m['mean_ccc'] for m in per_split['devel'][1]] if per_split['devel'][1] else []
  best = int(np.nanargmax(devel_ccc)) if devel_ccc and np.isfinite(devel_ccc).any() else 0
  picked, what = schedule.choose(
    workdir,
    spec.eval_seed,
    trackers,
    initial,
    seeds,
    devel_ccc or [float('nan')] * len(seeds),
    best,
  )
  written = {split: combine(preds, picked) for split, (preds, _) in per_split.items()}
  for split, preds in written.items():
    check_finite(preds, videos[split], split, what)
  ensemble = score_ensemble(per_split, videos, targets, trackers, seeds, initial, boot)
  results = {
    'targets': targets,
    'layout': spec.layout.kind,
    'task': spec.layout.task,
    'step_ms': signature['step_ms'],
    'epochs_run': meta['epoch'],
    'eval_seed': spec.eval_seed,
    'seed': schedule.seed_value(spec.eval_seed, picked, seeds),
    'best_seed': seeds[best],
    'best_member': best,
    'best_epoch': max(trackers[s].best_epoch for s in picked),
    'skipped_steps': meta['skipped_steps'],
  }
  if initial and len(picked) == 1:
    results['initial_devel_ccc'] = initial[picked[0]]
  for split, (_, m) in per_split.items():
    results[split] = (m[picked[0]] if len(picked) == 1 else ensemble[split]) if m else None
  results['seeds'] = [
    {
      'seed': seed,
      'best_epoch': trackers[s].best_epoch,
      **({'overrides': spec.members[s]} if spec.members else {}),
      **{split: (m[s] if m else None) for split, (_, m) in per_split.items()},
    }
    for s, seed in enumerate(seeds)
  ]
  if len(seeds) > 1 and devel_ccc:
    results['devel_ccc_mean'] = float(np.mean(devel_ccc))
    results['devel_ccc_std'] = metrics_lib.seed_spread(devel_ccc)
    if per_split['test'][1]:
      test_ccc = [m['mean_ccc'] for m in per_split['test'][1]]
      results['test_ccc_mean'] = float(np.mean(test_ccc))
      results['test_ccc_std'] = metrics_lib.seed_spread(test_ccc)
  if len(seeds) > 1 or spec.eval_seed == 'ensemble':
    results['ensemble'] = ensemble
  results['per_video'] = {
    split: _per_video(videos[split], written[split], targets) for split in ('devel', 'test')
  }
  for line in outputs.seed_lines(results):
    logging.info('%s', line)
  if per_split['test'][1] is None and videos['test']:
    logging.info(
      'test: no test video has labels for %s in this tree, so there is no test score '
      '(predictions are written)',
      ', '.join(targets),
    )
  if jax.process_index() == 0:
    for split, preds in written.items():
      outputs.write_predictions(
        os.path.join(workdir, 'predictions'),
        videos[split],
        preds,
        targets,
        spec.layout.label_columns,
      )
    if spec.members:  # a sweep's group: its members' predictions, for the sweep's ensemble
      outputs.write_member_predictions(workdir, per_split, videos)
    outputs.write_json(
      os.path.join(workdir, 'predictions.json'),
      {
        'written_by': by,
        'what': what,
        'eval_seed': spec.eval_seed,
        'seed': results['seed'],
        'best_epoch': results['best_epoch'],
        'results': 'results.json' if by == 'train' else 'eval_results.json',
      },
    )
    n = config.num_plot_videos
    devel_ccc_of = results['per_video'].get('devel', {})
    outputs.plot_videos(
      workdir,
      videos['devel'][:n],
      written['devel'][:n],
      targets,
      [devel_ccc_of.get(v.id) for v in videos['devel'][:n]],
    )
    if devel_ccc_of:
      outputs.plot_per_video_ccc(workdir, devel_ccc_of, targets, 'devel', what)
  return results


def combine(preds, picked) -> list:
  """Per video, the mean of the picked seeds' predictions ([S][video] -> [video]); one seed's
  predictions come back unchanged (`ensemble_mean`)."""
  return [ensemble_mean([preds[s][i] for s in picked]) for i in range(len(preds[0]))]


def score_ensemble(per_split, videos, targets, trackers, seeds, initial, bootstrap=(0, 0)) -> dict:
  """Metrics of the mean of the seeds' predictions, each seed at its own best epoch, on every
  partition: what training all seeds bought beyond keeping the best one. The members are
  `schedule.ensemble_members`; a partition where their mean is not finite has no score (one log
  line; writing it is refused by `check_finite`)."""
  members = schedule.ensemble_members(trackers, initial)
  out = {
    'seeds': [seeds[s] for s in members],
    'best_epochs': [trackers[s].best_epoch for s in members],
  }
  for split, (preds, _) in per_split.items():
    labelled = _labelled(videos[split])
    mean = combine(preds, members) if members else []
    if members and not all(np.isfinite(mean[i]).all() for i in labelled):
      logging.warning(
        '%s: the ensemble of seeds %s predicts non-finite values, so it has no score there',
        split,
        out['seeds'],
      )
      labelled = []
    out[split] = (
      metrics_lib.partition_metrics(
        [videos[split][i].y for i in labelled], [mean[i] for i in labelled], targets, *bootstrap
      )
      if labelled and members
      else None
    )
  return out


def _per_video(videos, preds, targets) -> dict:
  """{video id: {target: CCC}} of the labelled videos of a partition."""
  labelled = _labelled(videos)
  cccs = metrics_lib.per_video_ccc(
    [videos[i].y for i in labelled], [preds[i] for i in labelled], targets
  )
  return {videos[i].id: c for i, c in zip(labelled, cccs)}


def _labelled(videos) -> list:
  """Indices of the videos with labels (the ones a partition's metrics are computed on)."""
  return [i for i, v in enumerate(videos) if v.has_labels]


def ensemble_mean(preds) -> np.ndarray:
  """The ensemble's prediction of one video: the seeds' predictions averaged frame by frame, in
  float64 (a sum of float32 values is exact there, so identical seeds give exactly that seed)."""
  return np.mean(np.stack(preds).astype(np.float64), axis=0).astype(preds[0].dtype)


def check_finite(preds, videos, split, what) -> None:
  """Refuses to write a non-finite prediction; `what`: 'seed 314', 'the ensemble of ...'."""
  for v, p in zip(videos, preds):
    if not np.isfinite(p).all():
      row = int(np.argmax(~np.isfinite(p).all(axis=1)))
      raise MuseError(
        f'non-finite prediction for {split} video {v.id} at timestamp '
        f'{v.timestamp[row]} ({what}); no predictions were written; look for '
        'absurd input values there (or train with a lower config.max_abs_z in a new '
        '--workdir)'
      )
