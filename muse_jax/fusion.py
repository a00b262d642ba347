"""Late fusion's input source: the per-frame predictions of finished runs, one column per run.

The paper's second level reads the prediction CSVs of several unimodal / early-fusion models and
stacks them per frame. Here that is one more input source of `sources.load_videos`: each
(run, target) becomes a one-column "feature set" on the label grid, so windows, normalisation,
checkpoints, metrics and prediction files all work unchanged and there is no second trainer.

A run is the workdir of a finished `train.train_and_evaluate`: its `config.json`,
`predictions/<target>/<Id>.csv` (timestamp,value,segment_id) for every video of every partition
and `predictions.json` (what they are).
Labels and the frame grid come from the MuSe tree, through a built feature set (by default the
first set of the first run, already built by it); prediction rows are matched by timestamp.
"""

import dataclasses
import json
import os

from absl import logging
import numpy as np

from muse_jax import config_util
from muse_jax import outputs
from muse_jax.data import csv_table
from muse_jax.data import layout
from muse_jax.errors import MuseError


def run_config(run: str) -> dict:
  path = os.path.join(run, 'config.json')
  if not os.path.exists(path):
    raise MuseError(
      f'{run}: no config.json; config.fusion_runs must name workdirs of finished '
      'runs (train them first)'
    )
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def grid_feature_set(runs: list, feature_sets: list) -> str:
  """The built set giving labels and grid: the run's own first set, or the first run's."""
  if feature_sets:
    return feature_sets[0]
  sets = config_util.parse_list(run_config(runs[0]).get('feature_sets') or ())
  if not sets:
    raise MuseError(
      f'{runs[0]}/config.json names no feature_sets; set config.feature_sets to '
      'a built feature set to take labels and the frame grid from'
    )
  return sets[0]


def load_runs(runs: list, targets: list, root: str, grid: dict) -> dict:
  """{input name: {split: [Video]}} for every run and target, aligned to `grid`.

  `grid` is {split: [Video]} of a built set (`build.load_feature_set`; `x` may be None); each
  result video is its grid video with `x` = the run's predictions [T, 1]. Runs
  trained on another tree or without this version's predictions.json, and missing or
  misaligned predictions, are errors naming the run, target and video.
  """
  root = os.path.realpath(root)
  out = {}
  names = iter(config_util.fusion_input_names(runs, targets))
  for run in runs:
    saved = run_config(run)
    run_root = saved.get('data_root') or ''
    if run_root:  # as the run resolved it: a release root plus its task is the task's folder
      try:
        run_root = layout.resolve(run_root, saved.get('task') or '').root
      except MuseError:
        pass  # moved or gone: compared as given, and refused below
    if run_root and os.path.realpath(os.path.expanduser(run_root)) != root:
      raise MuseError(
        f'{run}: trained on {run_root}, but this run reads {root}; late fusion '
        'needs first-level runs of the same tree'
      )
    logging.info('late fusion input %s: %s', run, written_choice(run))
    for target in targets:
      out[next(names)] = {
        split: [_aligned(run, target, split, v) for v in videos] for split, videos in grid.items()
      }
  return out


def written_choice(run: str) -> str:
  """What the run's predictions/ hold, from its predictions.json: which seed (or the ensemble),
  and whether training or a later --mode=evaluate (with its own eval_seed) wrote them. A run
  without one of this version is refused (`outputs.read_written`): its predictions would be an
  input of unknown origin."""
  w = outputs.read_written(run)
  return (
    f'predictions of {w["what"]} (eval_seed {w["eval_seed"]}, best epoch '
    f'{w["best_epoch"]}) written by {w["written_by"]}, scored in {w["results"]}'
  )


def _aligned(run: str, target: str, split: str, v):
  """Grid video `v` with the run's predictions of `target` as its one feature column."""
  vid, grid_t = v.id, v.timestamp
  path = os.path.join(run, 'predictions', target, f'{vid}.csv')
  if not os.path.exists(path):
    raise MuseError(
      f'{path}: run {run} has no {target} predictions for {split} video {vid}; '
      'late fusion needs them for every video of train, devel and test (retrain or '
      f'--mode=evaluate that run with {target} among its targets)'
    )
  table = csv_table.read_table(path)
  low = [c.lower() for c in table.columns]
  if 'timestamp' not in low or 'value' not in low:
    raise MuseError(
      f'{path}: columns {",".join(table.columns)}; expected timestamp,value,segment_id'
    )
  t = table.values[:, low.index('timestamp')].astype(np.int64)
  value = table.values[:, low.index('value')].astype(np.float32)
  idx = np.minimum(np.searchsorted(t, grid_t), len(t) - 1)
  hit = t[idx] == grid_t
  k = len(grid_t) if hit.all() else int(np.argmin(hit))  # leading run of matched grid frames
  labelled = any(v.labelled)
  # A labelled grid must be covered; an unlabelled one (each file's own length) may end early.
  if k == 0 or (k < len(grid_t) and (labelled or hit[k:].any())):
    raise MuseError(
      f'{path}: no prediction for timestamp {grid_t[k]} of {split} video {vid} '
      f'(frame {k + 1} of {len(grid_t)}); run {run} must predict on the label grid '
      'of the same tree'
    )
  if k < len(grid_t):
    logging.info(
      '%s: ends %d frames before the grid of unlabelled video %s; using the first %d',
      path,
      len(grid_t) - k,
      vid,
      k,
    )
  return dataclasses.replace(v.head(k), x=value[idx[:k], None])
