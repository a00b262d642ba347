"""The authors' README example, exactly: valence from egemaps + fasttext with the segment id.

  python main.py --emo_dim_set valence --feature_set egemaps fasttext --d_rnn 64 --rnn_n_layers 1
    --rnn_bi --attn --n_layers 1 --n_heads 8 --epochs 100 --batch_size 1024 --lr 0.005 --seed 43
    --n_seeds 1 --min_lr 1e-5 --rnn_dr 0.0 --attn_dr 0.0 --out_dr 0.0 --win_len 200
    --hop_len 100 --add_seg_id --log --gpu 6          (youcaiSUN/MuSe-Wild_2020, README)

The command passes no --normalize, so the features and the segment id go in raw. The
z-normalised variant is configs/valence_normalized.py: which is better is measured
(benchmarks/RESULTS.md), not assumed.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.targets = ('valence',)
  c.feature_sets = ('egemaps', 'fasttext')
  c.add_segment_id = True
  c.normalize = 'none'
  c.seed, c.num_seeds = 43, 1
  return c
