"""Host-side schedule of one seed: torch's ReduceLROnPlateau on 1 - devel CCC, early stopping,
and the best epoch. Plain Python state, serialised into every checkpoint, so a resumed run goes
on exactly where the killed one was.

Next to it, the member policy built on what those schedules recorded: which seeds (a sweep's
members) are written, averaged or refused as untrained (`choose`).
"""

import dataclasses

import numpy as np

from muse_jax.errors import MuseError


@dataclasses.dataclass
class SeedTracker:
  """One seed's plateau schedule (torch ReduceLROnPlateau: mode min, rel threshold 1e-4,
  cooldown 0) and early stopping. Serialised into every checkpoint."""

  lr: float
  seed: int = -1  # which seed (for logs, and tests that script a seed's devel scores)
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


# The member policy: which of a run's seeds (members) evaluate, predict and `Predictor` use, from
# what the checkpoint's trackers recorded, so every way of reading a run picks the same ones.


def ensemble_members(trackers, initial) -> list:
  """Indices of the seeds the ensemble averages: those whose best parameters come from training
  and beat the untrained model on devel (what `check_trained` asks of a chosen seed). From the
  checkpoint alone, so training, evaluate, predict and `Predictor` average the same seeds."""
  return [
    s
    for s, t in enumerate(trackers)
    if t.best_epoch > 0
    and np.isfinite(t.best_ccc)
    and not (initial is not None and np.isfinite(initial[s]) and t.best_ccc <= initial[s])
  ]


def best_tracked(trackers) -> int:
  """The seed with the best devel CCC as training's schedules recorded it (predict, Predictor:
  no devel scoring needed)."""
  return int(np.argmax([t.best_ccc if np.isfinite(t.best_ccc) else -np.inf for t in trackers]))


def pick_seeds(eval_seed, trackers, initial, best: int) -> list:
  """The seed indices whose predictions are written: [best], [a seed index], the ensemble's
  members, or a list of indices (the members of one group that a sweep's ensemble averages). An
  ensemble without members is [best], so `check_trained` says why that seed fails."""
  if isinstance(eval_seed, (list, tuple)):
    return list(eval_seed)
  if eval_seed == 'ensemble':
    return ensemble_members(trackers, initial) or [best]
  return [best if eval_seed == 'best' else eval_seed]


def written_name(eval_seed, picked, seeds) -> str:
  """How the log, errors and plots name what was written."""
  if isinstance(eval_seed, (list, tuple)) or eval_seed == 'ensemble':
    return f'the ensemble of seeds {", ".join(str(seeds[s]) for s in picked)}'
  return f'seed {seeds[picked[0]]}'


def seed_value(eval_seed, picked, seeds):
  """results' `seed`: the written seed, or 'ensemble'."""
  return 'ensemble' if eval_seed == 'ensemble' else seeds[picked[0]]


def choose(
  workdir: str, eval_seed, trackers, initial, seeds, scored=None, best: int | None = None
) -> tuple:
  """(picked seed indices, their name): what `eval_seed` picks, each checked by `check_trained`
  against its devel CCC (`scored`: as scored now, per seed; default: as its tracker recorded
  it). `best`: the best seed (default: the best tracked)."""
  best = best_tracked(trackers) if best is None else best
  picked = pick_seeds(eval_seed, trackers, initial, best)
  for s in picked:
    check_trained(
      workdir,
      trackers[s],
      seeds[s],
      trackers[s].best_ccc if scored is None else scored[s],
      initial,
      s,
    )
  return picked, written_name(eval_seed, picked, seeds)


def check_trained(workdir, tracker, seed, ccc, initial, chosen) -> None:
  """The chosen seed's best parameters must come from training and beat the untrained model.

  `ccc`: its devel CCC with those parameters (as scored now, or as the tracker recorded it);
  `initial`: each seed's untrained devel CCC (checkpoint meta), or None."""
  what = f'seed {seed}'
  if tracker.best_epoch == 0 or not np.isfinite(ccc):
    raise MuseError(
      f'{workdir}: devel CCC of {what} is not finite ('
      + (
        'in no epoch: only the untrained parameters exist'
        if tracker.best_epoch == 0
        else f'with its best parameters, of epoch {tracker.best_epoch}'
      )
      + '), so nothing was scored or written; look for absurd values in the devel inputs or '
      'labels (e.g. 1e30 as a missing-value marker; see config.max_abs_z)'
    )
  if (
    initial is not None and np.isfinite(initial[chosen]) and not tracker.best_ccc > initial[chosen]
  ):
    raise MuseError(
      f'{workdir}: training never beat the untrained model on devel ({what}: best devel CCC '
      f'{tracker.best_ccc:.4f} at epoch {tracker.best_epoch}, untrained {initial[chosen]:.4f}), '
      'so no predictions were written; check that labels and features belong together, or try '
      'another learning_rate or more num_epochs in a new --workdir'
    )
