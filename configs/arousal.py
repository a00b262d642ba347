"""The arousal counterpart of the authors' README example (configs/valence.py): the same command
with --emo_dim_set arousal (egemaps + fasttext + raw segment id, no normalisation, seed 43). The
z-normalised variant is configs/arousal_normalized.py."""

from configs import valence


def get_config():
  c = valence.get_config()
  c.targets = ('arousal',)
  return c
