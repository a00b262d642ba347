"""`Predictor`: a trained workdir as a function of one new recording's raw features.

What a notebook or a service wants from a run: no tree, no build, no labels; the workdir's own
train statistics, NaN policy and best parameters applied to raw feature rows. A sweep's workdir
with `seed_index='sweep_ensemble'` is the mean of its best members (each group's own
statistics), as `--mode=predict --config.eval_seed=sweep_ensemble` writes it.
"""

import os

from absl import logging
import jax
import ml_collections
import numpy as np

from muse_jax import checkpoint
from muse_jax import config_util
from muse_jax import inference
from muse_jax import normalization
from muse_jax import schedule
from muse_jax import sharding
from muse_jax import steps
from muse_jax import workdir as workdir_lib
from muse_jax.data import reader
from muse_jax.data import video as video_lib
from muse_jax.errors import MuseError


class Predictor:
  """A trained workdir as a function of raw (unnormalised) features, for new recordings.

  `inputs` names the feature sets (and `segment_id`) the model reads, in column order; calling it
  with one video's joined raw features [T, D] returns predictions [T, K] for `targets`, using the
  workdir's train statistics, NaN policy and best parameters: of the seed (or the ensemble)
  `seed_index` names ('best', 'ensemble', a seed index, a list of member indices, or
  'sweep_ensemble' for a sweep's workdir), by default what the workdir's results.json wrote.
  Rows are frames of the model's own grid, `step_ms` (the training data's: 250 ms for
  MuSe-CaR, 500 for Ulm-TSST); `timestamps`, when given, are checked against it.
  """

  def __init__(self, workdir: str, seed_index: int | str | list | None = None):
    workdir = os.path.abspath(os.path.expanduser(workdir))
    self._parts = None
    if seed_index == 'sweep_ensemble':
      self._sweep(workdir)
      return
    saved = workdir_lib.saved_config(workdir)
    if saved is None:
      raise MuseError(f'{workdir}: no config.json; not a trained muse_jax workdir')
    self.config = ml_collections.ConfigDict(saved)
    spec = config_util.parse(self.config)
    self.stats = normalization.NormStats.load(os.path.join(workdir, 'norm_stats.npz'))
    self.inputs, self.dims = self.stats.names, self.stats.dims
    self.targets = list(spec.targets)
    self.step_ms = self.stats.step_ms
    mngr = checkpoint.open_trained(workdir)
    self._mesh = sharding.make_mesh(1)
    impl = steps.attention_impl(self.config, sharding.platform(self._mesh))
    model, _, state = steps.create_state(
      self.config, sum(self.dims), len(self.targets), spec.seeds, impl
    )
    state, meta = checkpoint.restore(
      mngr, state, checkpoint.model_signature(spec, self.dims, self.step_ms), workdir
    )
    seeds = list(spec.seeds)
    if seed_index is None:  # what the workdir's results.json wrote: its eval_seed (by index,
      # never by seed value: a sweep's members share seeds)
      written = workdir_lib.read_json(os.path.join(workdir, 'results.json'), {})
      seed_index = written.get('eval_seed', 'best')
    if isinstance(seed_index, (list, tuple)):
      bad = [i for i in seed_index if not 0 <= i < len(seeds)]
      if bad or not seed_index:
        raise MuseError(
          f'{workdir}: member indices {list(seed_index)} are not in [0, {len(seeds)})'
        )
      choice = list(seed_index)
    else:
      choice = config_util.eval_seed(seed_index, len(seeds))
    trackers = [schedule.SeedTracker(**t) for t in meta['trackers']]
    picked, _ = schedule.choose(workdir, choice, trackers, meta['initial_devel'], seeds)
    self.seeds = [seeds[s] for s in picked]  # whose predictions are averaged (one: that seed's)
    self.params = jax.tree.map(lambda a: a[np.asarray(picked)], state.best_params)
    self._eval = steps.make_eval_step(model)
    self._max_abs_z = normalization.max_abs_z(spec)

  def _sweep(self, workdir: str) -> None:
    """The sweep's ensemble: one Predictor per group holding its members, averaged by member
    count; they must read the same raw inputs on the same grid."""
    parts, _ = workdir_lib.sweep_ensemble_parts(workdir)
    self._parts = [(Predictor(group, members), len(members)) for group, members in parts]
    first = self._parts[0][0]
    for p, _ in self._parts[1:]:
      if (p.inputs, p.dims, p.step_ms, p.targets) != (
        first.inputs,
        first.dims,
        first.step_ms,
        first.targets,
      ):
        raise MuseError(
          f"{workdir}: the sweep's ensemble members read different inputs "
          f'({first.inputs} and {p.inputs}) or predict different targets; a '
          'Predictor takes one set of raw features: use --mode=predict '
          '--config.eval_seed=sweep_ensemble on a tree instead'
        )
    self.config, self.stats, self.targets = first.config, first.stats, first.targets
    self.inputs, self.dims, self.step_ms = first.inputs, first.dims, first.step_ms
    self.seeds = [s for p, _ in self._parts for s in p.seeds]

  def __call__(self, raw_x: np.ndarray, timestamps=None) -> np.ndarray:
    if self._parts:
      k = sum(n for _, n in self._parts)
      return (sum(n * p(raw_x, timestamps).astype(np.float64) for p, n in self._parts) / k).astype(
        np.float32
      )
    raw_x = np.asarray(raw_x, np.float32)
    if timestamps is not None:
      if len(timestamps) != len(raw_x):
        raise MuseError(f'{len(timestamps)} timestamps for {len(raw_x)} feature rows')
      step = reader.grid_step(np.asarray(timestamps))
      if step and step != self.step_ms:
        raise MuseError(
          f'the features are on a {step} ms grid, but the model learnt on a '
          f'{self.step_ms} ms grid; extract them with --step_ms {self.step_ms}'
        )
    if raw_x.ndim != 2 or raw_x.shape[1] != sum(self.dims):
      raise MuseError(
        f'expected features [T, {sum(self.dims)}] for inputs '
        f'{dict(zip(self.inputs, self.dims))}, got {raw_x.shape}'
      )
    bad = self.stats.out_of_range(raw_x, self._max_abs_z)
    if bad.any():
      logging.warning('%d input cells NaN, Inf or out of range set to the train mean', bad.sum())
    x = np.where(bad, self.stats.fill(), self.stats.apply(raw_x)).astype(np.float32)
    n = len(x)
    t = np.arange(n) * self.step_ms if timestamps is None else np.asarray(timestamps)
    video = video_lib.unlabelled('input', t, np.ones(n, np.int32), x, self.targets)
    pred = inference.combine(
      inference.predict_videos(self._eval, self.params, [video], self._mesh), range(len(self.seeds))
    )[0]
    inference.check_finite([pred], [video], 'new', f'seeds {self.seeds}')
    return pred
