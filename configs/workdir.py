"""The config a run was trained with, read back from its workdir's config.json.

  python -m muse_jax.main --config=configs/workdir.py:W --workdir=W --mode=evaluate

Evaluate or predict any finished run, a sweep's group included (`W/groups/g<i>`, whose members
differ in seed and schedule: `config.members`), without restating its settings; `--config.x=...`
still overrides a field (what evaluate and predict may change: eval_seed, bootstrap_samples, ...).
"""

import json
import os

import ml_collections

from configs import default


def _merge(node, saved: dict) -> None:
  for k, v in saved.items():
    if k not in node:
      continue  # a field the defaults lack (a user's own config file may add one)
    if hasattr(node[k], 'keys') and isinstance(v, dict):
      _merge(node[k], v)
    else:
      node[k] = tuple(v) if isinstance(node[k], tuple) and isinstance(v, list) else v


def get_config(workdir=None):
  if not workdir:
    raise ValueError('configs/workdir.py reads a workdir: --config=configs/workdir.py:W')
  path = os.path.join(os.path.expanduser(workdir), 'config.json')
  with open(path, encoding='utf-8') as f:
    saved = json.load(f)
  c = default.get_config()
  _merge(c, saved)
  if isinstance(saved.get('model'), dict):  # the run's own model fields, not the defaults' (a
    # late-fusion model has fewer): the checkpoint's signature holds exactly these
    c.model = ml_collections.ConfigDict(
      {k: tuple(v) if isinstance(v, list) else v for k, v in saved['model'].items()}
    )
  return c
