"""The embedded demo (`./run.sh`): the paper's model on the generated demo tree, sized to train in
about a minute on 2 CPU cores. Only the data-size-driven settings differ from the paper."""

from configs import default


def get_config():
  c = default.get_config()
  c.feature_sets = ('egemaps', 'fasttext')
  c.targets = ('valence',)  # ./run.sh trains one model per target
  c.batch_size = 32  # the demo has ~100s of windows, not the challenge's ~3000
  c.num_epochs = 30
  c.early_stopping_patience = 8
  c.plateau_patience = 3
  return c
