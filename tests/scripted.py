"""Each seed's devel score as its schedule sees it, scripted, in this process (as
tests/scripted_main.py does for the command; its docstring says why).

Whether a short run's parameters beat the untrained model on devel (else `schedule.check_trained`
stops it: no predictions, exit 2), and when a seed early-stops, follow from devel CCCs that move
at float precision with the CPU's kernels. A test about anything else (inputs, layouts, resume,
devices) scripts the score `SeedTracker.update` sees; parameters, dropout, optimiser, checkpoints
and the reported metrics stay the real ones.
"""

from muse_jax import schedule

# A new best every epoch (the last value repeats after 20), above any untrained model's real
# score: a run keeps its last epoch's parameters, never early-stops, and ends in exit 0.
IMPROVING = [0.8 + 0.005 * e for e in range(1, 21)]
_UPDATE = schedule.SeedTracker.update


def update(script=None):
  """A `SeedTracker.update` that sees script[seed][epoch - 1] (the last value repeated) as the
  devel score; script None: IMPROVING for every seed."""

  def scripted(self, devel_ccc, epoch, config):
    del devel_ccc
    scores = IMPROVING if script is None else script[self.seed]
    return _UPDATE(self, scores[min(epoch, len(scores)) - 1], epoch, config)

  return scripted


def script_devel(monkeypatch, script=None) -> None:
  """For one test: the schedule sees `script` (see `update`)."""
  monkeypatch.setattr(schedule.SeedTracker, 'update', update(script))
