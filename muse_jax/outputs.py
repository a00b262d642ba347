"""Everything a run writes besides checkpoints: JSON, metric logs, challenge CSVs, plots.

Files are written to a temporary name and renamed, so a killed job never leaves a half-written file
that looks complete. Only process 0 calls these in multi-host runs.
"""
import json
import os
import re

import numpy as np


def _atomic_write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


_TMP = re.compile(r'\.tmp\d+$|\.tmp\.(npz|png)$')


def remove_stale_tmp(workdir: str) -> None:
  """Deletes temporary files a killed job left behind (never read: only renamed files count)."""
  for folder, dirs, files in os.walk(workdir):
    dirs[:] = [d for d in dirs if d != 'checkpoints']  # orbax cleans its own
    for name in files:
      if _TMP.search(name):
        os.remove(os.path.join(folder, name))


def write_json(path: str, obj) -> None:
  _atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + '\n')


class MetricLog:
  """Per-epoch records as JSONL (`metrics.jsonl`) and TensorBoard scalars (`tb/`).

  On resume, records after the resumed epoch (written before the job was killed) are dropped so
  the log reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, resume_after: int = 0):
    import jax  # pylint: disable=import-outside-toplevel
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.records = []
    if not self.active:
      return
    if os.path.exists(self.path):
      with open(self.path, encoding='utf-8') as f:
        for line in f:
          try:
            r = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut by a kill
          if r.get('epoch', 0) <= resume_after:
            self.records.append(r)
    _atomic_write(self.path, ''.join(json.dumps(r) + '\n' for r in self.records))
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self.tb = SummaryWriter(os.path.join(workdir, 'tb'), purge_step=resume_after + 1)

  def write(self, record: dict) -> None:
    if not self.active:
      return
    self.records.append(record)
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(record, default=float) + '\n')
    step = record['epoch']
    multi = len(record['seeds']) > 1
    for r in record['seeds']:
      prefix = f'seed{r["seed"]}/' if multi else ''
      self.tb.add_scalar(f'{prefix}train/loss', r['train_loss'], step)
      self.tb.add_scalar(f'{prefix}train/lr', r['lr'], step)
      for target, m in (r.get('devel') or {}).items():
        if isinstance(m, dict):
          for name, value in m.items():
            self.tb.add_scalar(f'{prefix}devel/{target}/{name}', value, step)
        else:
          self.tb.add_scalar(f'{prefix}devel/{target}', m, step)
    self.tb.add_scalar('train/seconds', record['seconds'], step)
    self.tb.flush()

  def close(self):
    if self.active:
      self.tb.close()


def write_predictions(workdir: str, videos, preds, targets) -> None:
  """Challenge format: <workdir>/predictions/<target>/<Id>.csv, `timestamp,value,segment_id`."""
  for v, p in zip(videos, preds):
    for k, target in enumerate(targets):
      rows = np.column_stack([v.timestamp, p[:, k], v.segment_id])
      lines = ['timestamp,value,segment_id'] + [
          f'{int(t)},{val:.7g},{int(s)}' for t, val, s in rows.tolist()]
      _atomic_write(os.path.join(workdir, 'predictions', target, f'{v.id}.csv'),
                    '\n'.join(lines) + '\n')


def plot_videos(workdir: str, videos, preds, targets) -> None:
  """PNG per video: prediction vs label over time, one panel per target."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.join(workdir, 'plots'), exist_ok=True)
  for v, p in zip(videos, preds):
    fig, axes = plt.subplots(len(targets), 1, figsize=(10, 2.6 * len(targets)), squeeze=False)
    t = (v.timestamp - v.timestamp[0]) / 1000.0
    for k, target in enumerate(targets):
      ax = axes[k, 0]
      ax.plot(t, v.y[:, k], label='label', color='black', lw=1)
      ax.plot(t, p[:, k], label='prediction', color='tab:red', lw=1)
      ax.set_ylabel(target)
      ax.legend(loc='upper right', fontsize=8)
    axes[-1, 0].set_xlabel('seconds')
    fig.suptitle(f'video {v.id}')
    fig.tight_layout()
    path = os.path.join(workdir, 'plots', f'{v.id}.png')
    fig.savefig(path + '.tmp.png', dpi=80)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)
