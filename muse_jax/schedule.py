"""Host-side schedule of one seed: torch's ReduceLROnPlateau on 1 - devel CCC, early stopping,
and the best epoch. Plain Python state, serialised into every checkpoint, so a resumed run goes
on exactly where the killed one was."""
import dataclasses


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
