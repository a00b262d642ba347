"""A trained workdir read back: `--mode=evaluate` and `--mode=predict`.

- `evaluate`: restores the best parameters and recomputes everything, metrics included, into
  `eval_results.json` (training's `results.json` stays as it was).
- `predict`: predictions only, for every video of every partition of `config.data_root` (which may
  be another tree with the same feature sets, labels not needed), into `<workdir>/predict/`.
- `predictions_of`: the restored members' predictions of a tree, what predict and a sweep's
  ensemble (muse_jax.sweep_report) build on.
Both check first that the workdir's preprocessing holds for this config (`check_evaluate`,
`check_predict`); which members are read is the schedule's member policy (`schedule.choose`).
"""

import copy
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from muse_jax import checkpoint
from muse_jax import config_util
from muse_jax import inference
from muse_jax import outputs
from muse_jax import schedule
from muse_jax import sharding
from muse_jax import sources
from muse_jax import steps
from muse_jax import workdir as workdir_lib
from muse_jax.data import layout
from muse_jax.errors import MuseError


def _restored(spec, workdir, require):
  """What evaluate and predict share: the manager, a state to restore into, the data."""
  mngr = checkpoint.open_trained(workdir)
  videos, dims = sources.prepare_data(spec, workdir, fit_stats=False, require=require)
  mesh = sharding.make_mesh(spec.config.num_devices, spec.config.get('member_devices', 1))
  platform = sharding.platform(mesh)
  model, _, state = steps.create_state(
    spec.config,
    sum(dims),
    len(spec.targets),
    spec.seeds,
    steps.attention_impl(spec.config, platform),
  )
  eval_step = steps.make_eval_step(model, steps.seeds_mapped(spec.config, platform))
  signature = checkpoint.model_signature(spec, dims, sources.grid_step(spec))
  return mngr, state, signature, videos, eval_step, mesh


def evaluate(config, workdir: str) -> dict:
  """Restores the best parameters, recomputes every partition's metrics, rewrites predictions;
  writes `eval_results.json` (training's `results.json` is left as it was)."""
  spec = config_util.validate_config(config)
  workdir = workdir_lib.prepare(workdir)
  with workdir_lib.held(workdir, 'evaluate'):
    check_evaluate(config, workdir)
    mngr, state, signature, videos, eval_step, mesh = _restored(spec, workdir, ('train', 'devel'))
    results = inference.score_best(
      spec, workdir, mngr, state, signature, videos, eval_step, mesh, by='evaluate'
    )
    if jax.process_index() == 0:
      outputs.write_json(os.path.join(workdir, 'eval_results.json'), results)
  return results


def check_evaluate(config, workdir: str) -> None:
  """Preprocessing fields (nan_policy, max_abs_z, data_root, ...) must be the training's."""
  workdir_lib.check_resume(workdir, workdir_lib.config_record(config), evaluating=True)


def predict_spec(config, workdir: str):
  """The Spec predict reads `workdir` with: targets are the model's (the tree may have no labels,
  or other ones), `config.targets` 'all' meaning the model's own."""
  saved = workdir_lib.saved_config(workdir) or {}
  if saved.get('targets') and config_util.parse_list(config.targets) in (['all'], []):
    config = copy.deepcopy(config)
    config.targets = tuple(config_util.parse_list(saved['targets']))  # the model's own
  return config_util.validate_config(config, tree_targets=False)


def check_predict(spec, workdir: str) -> None:
  """Another tree is allowed (that is what predict is for); how it becomes inputs is not, nor
  replacing the training tree's build with another tree's."""
  workdir_lib.check_resume(
    workdir, workdir_lib.config_record(spec.config), evaluating=True, other_tree=True
  )
  saved = workdir_lib.saved_config(workdir)
  trained = config_util.parse(ml_collections.ConfigDict(saved)) if saved else None
  if trained and trained.data_root != spec.data_root and trained.data_dir == spec.data_dir:
    raise MuseError(
      f'{spec.data_dir}: holds the build of the training tree '
      f'{trained.data_root}; predicting on {spec.data_root} would replace it: '
      'pass another --data_dir for this tree'
    )


def predictions_of(
  spec: config_util.Spec, workdir: str, require: tuple = (), choice: int | str | list | None = None
) -> dict:
  """The predictions of what `choice` picks (default `spec.eval_seed`; a list of member indices
  for a sweep's ensemble) for every video of every partition of the spec's tree: {'videos',
  'preds' ({split: [video] -> [T, K]}), 'picked', 'seeds', 'what', 'best_epoch', 'step_ms'}.
  Each picked member is checked as trained, each prediction as finite."""
  mngr, state, signature, videos, eval_step, mesh = _restored(spec, workdir, require)
  state, meta = checkpoint.restore(mngr, state, signature, workdir)
  trackers = [schedule.SeedTracker(**t) for t in meta['trackers']]
  choice = spec.eval_seed if choice is None else choice
  seeds = list(spec.seeds)
  picked, what = schedule.choose(workdir, choice, trackers, meta['initial_devel'], seeds)
  params = sharding.replicate(
    jax.tree.map(lambda a: a[np.asarray(picked)], state.best_params), mesh
  )
  preds = {}
  for split in layout.SPLITS:
    preds[split] = inference.combine(
      inference.predict_videos(eval_step, params, videos[split], mesh), range(len(picked))
    )
    inference.check_finite(preds[split], videos[split], split, what)
  return {
    'videos': videos,
    'preds': preds,
    'picked': picked,
    'what': what,
    'seeds': [seeds[s] for s in picked],
    'step_ms': signature['step_ms'],
    'best_epochs': [trackers[s].best_epoch for s in picked],
    'seed': schedule.seed_value(choice, picked, seeds),
  }


def predict(config, workdir: str) -> dict:
  """Predictions of the best parameters for every video of `config.data_root`, in
  `<workdir>/predict/<target>/<Id>.csv` (challenge format); no labels needed, no metrics.

  `config.eval_seed` picks them: the seed with the best devel CCC during training (as the
  checkpoint's schedules recorded it), a seed index, or the ensemble of the seeds (the same
  members as training's end). Returns what `predict.json` holds."""
  workdir = workdir_lib.prepare(workdir)
  spec = predict_spec(config, workdir)
  with workdir_lib.held(workdir, 'predict'):
    check_predict(spec, workdir)
    got = predictions_of(spec, workdir)
    out = os.path.join(workdir, 'predict')
    if jax.process_index() == 0:
      for split in layout.SPLITS:
        outputs.write_predictions(
          out,
          got['videos'][split],
          got['preds'][split],
          list(spec.targets),
          spec.layout.label_columns,
        )
    results = {
      'data_root': spec.data_root,
      'layout': spec.layout.kind,
      'task': spec.layout.task,
      'step_ms': got['step_ms'],
      'eval_seed': spec.eval_seed,
      'seed': got['seed'],
      'best_epoch': max(got['best_epochs']),
      'targets': list(spec.targets),
      'videos': {split: len(v) for split, v in got['videos'].items()},
      'predictions': out,
    }
    if spec.eval_seed == 'ensemble':
      results['ensemble'] = {'seeds': got['seeds'], 'best_epochs': got['best_epochs']}
    if jax.process_index() == 0:
      outputs.write_json(os.path.join(workdir, 'predict.json'), results)
    logging.info(
      'predictions of %s (best epoch %d) for %s videos written to %s',
      got['what'],
      results['best_epoch'],
      results['videos'],
      out,
    )
  return results
