"""Late fusion on the demo tree (`./run.sh reproduce`): configs/late_fusion.py with demo-sized
batches. The demo has 26 train videos, not the challenge's 166: batches of 8 videos keep the
paper's few steps per epoch (166 / 64) instead of a single one."""

from configs import late_fusion


def get_config():
  c = late_fusion.get_config()
  c.batch_size = 8
  return c
