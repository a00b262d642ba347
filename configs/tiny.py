"""A seconds-long config for tests and smoke runs on the `tiny` demo tree."""

from configs import default


def get_config():
  c = default.get_config()
  c.feature_sets = ('egemaps', 'fasttext')
  c.targets = ('arousal', 'valence')
  c.win_len, c.hop_len, c.batch_size = 48, 24, 8
  c.model.d_rnn, c.model.n_heads, c.model.d_out_fc = 16, 2, 16
  c.learning_rate = 5e-3
  c.num_epochs = 6
  c.early_stopping_patience = 6
  c.plateau_patience = 2
  c.num_plot_videos = 1
  return c
