"""`python -m muse_jax.main` with each seed's devel score, as the schedule sees it, scripted.

Why: which epoch a seed early-stops at, or when its learning rate is cut, follows from devel CCCs
that move at float precision with the CPU's kernels. Tests of the host state a resume must restore
(plateau cuts, a stopped seed) need those events at known epochs on any CPU. Only the value
`SeedTracker.update` sees is replaced; parameters, dropout, optimiser, checkpoints and the
reported metrics are the real ones. SCRIPTED_DEVEL='{"314": [0.1, 0.2], ...}' (JSON: seed ->
score per epoch, the last value repeated).
"""

import json
import os
import runpy

from muse_jax import schedule

_SCRIPT = {int(k): v for k, v in json.loads(os.environ['SCRIPTED_DEVEL']).items()}
_update = schedule.SeedTracker.update


def _scripted(self, devel_ccc, epoch, config):
  del devel_ccc
  scores = _SCRIPT[self.seed]
  return _update(self, scores[min(epoch, len(scores)) - 1], epoch, config)


schedule.SeedTracker.update = _scripted
runpy.run_module('muse_jax.main', run_name='__main__', alter_sys=True)
