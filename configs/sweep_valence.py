"""A ready sweep over the paper's valence config (configs/valence.py): the schedule and the output
dropout, the settings the authors tuned by hand.

  python -m muse_jax.main --config=configs/sweep_valence.py --workdir=W --config.num_seeds=5

get_sweep() lists the settings (not a product: three learning rates, a longer patience, and
the output dropout at the middle rate). They differ only in fields a member may set for itself
(schedule, seed, rnn/output dropout), so all of them and their seeds train side by side in one
compiled step (muse_jax.sweep). --sweep=field=a,b flags replace this list with their product.
"""

from configs import valence


def get_config():
  return valence.get_config()


def get_sweep():
  return [
    {'learning_rate': 0.002},
    {'learning_rate': 0.005},
    {'learning_rate': 0.01},
    {'learning_rate': 0.005, 'early_stopping_patience': 25},
    {'learning_rate': 0.005, 'model.out_dropout': 0.3},
  ]
