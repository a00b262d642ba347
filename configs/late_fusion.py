"""Late fusion, the paper's second level: a small biLSTM over the per-frame predictions of
finished unimodal / early-fusion runs, trained on whole videos with the CCC loss.

  ./run.sh main --config=configs/late_fusion.py --workdir=runs/valence/late_fusion \\
      --data_root=/data/muse2020 --config.targets=valence \\
      --config.fusion_runs=runs/valence/egemaps,runs/valence/egemaps+fasttext

The runs must have predictions for every video of train, devel and test (training writes them).
"""

import ml_collections

from configs import default


def get_config():
  c = default.get_config()
  c.feature_sets = ()  # inputs: the runs' predictions only
  c.fusion_runs = ''  # comma-separated workdirs of finished runs
  c.targets = ('valence',)
  c.whole_videos = True
  c.batch_size = 64  # videos
  c.learning_rate = 1e-3
  c.num_epochs = 20
  c.num_seeds = 5

  c.model = ml_collections.ConfigDict()
  c.model.name = 'late_fusion'  # muse_jax.models.LateFusion: (bi)LSTM -> Dense
  c.model.d_rnn = 32
  c.model.rnn_n_layers = 1
  c.model.rnn_bi = True
  c.model.rnn_dropout = 0.0
  c.model.out_bias = (0.0,)
  return c
