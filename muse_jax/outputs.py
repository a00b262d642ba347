"""Everything a run writes besides checkpoints: JSON, metric logs, challenge CSVs, plots.

Every file is written atomically (files.py). Only process 0 calls these in multi-host runs.
"""

import json
import os

import numpy as np

from muse_jax import files
from muse_jax.errors import MuseError

# What predictions.json holds: what predictions/ are, written with them by training, evaluate
# and a sweep's ensemble (inference.score_best, sweep_report).
WRITTEN_FIELDS = ('written_by', 'what', 'eval_seed', 'seed', 'best_epoch', 'results')


def pyplot():
  """matplotlib's pyplot on the file-only Agg backend (no display on a cluster node)."""
  import matplotlib  # noqa: PLC0415  (Agg set before pyplot loads)

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415  (after the backend)

  return plt


def write_json(path: str, obj) -> None:
  files.atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + '\n')


def write_text(path: str, text: str) -> None:
  files.atomic_write(path, text)


def read_written(workdir: str) -> dict:
  """A finished run's predictions.json. One format: missing (a run killed before it, or of
  another version of muse_jax), unreadable or without a field of WRITTEN_FIELDS, it is one line,
  never a default: the predictions beside it would be of an unknown choice."""
  path = os.path.join(workdir, 'predictions.json')
  try:
    with open(path, encoding='utf-8') as f:
      w = json.load(f)
  except FileNotFoundError:
    raise MuseError(
      f'{path}: not found, so {workdir} is unfinished or of another version of '
      'muse_jax (this one writes it with predictions/); rerun its training, or '
      'retrain it in a new --workdir'
    ) from None
  except (OSError, ValueError) as e:
    raise MuseError(f'{path}: unreadable ({e}); evaluate the run again (--mode=evaluate)') from None
  missing = [k for k in WRITTEN_FIELDS if not isinstance(w, dict) or k not in w]
  if missing:
    raise MuseError(
      f'{path}: written by another version of muse_jax (no {missing[0]}); retrain '
      'the run in a new --workdir'
    )
  return w


MEMBER_PREDICTIONS = 'member_predictions.npz'


def write_member_predictions(workdir: str, per_split: dict, videos: dict) -> None:
  """Every member's devel and test predictions of the labelled videos, with their labels
  (`<split>/<Id>/pred` [S, T, K], `<split>/<Id>/label` [T, K]): a sweep's ensemble of its best
  members across groups is scored from these (muse_jax.sweep), without re-running any model."""
  arrays = {}
  for split in ('devel', 'test'):
    preds = per_split[split][0]
    for i, v in enumerate(videos[split]):
      if v.has_labels:
        arrays[f'{split}/{v.id}/pred'] = np.stack([p[i] for p in preds]).astype(np.float32)
        arrays[f'{split}/{v.id}/label'] = v.y
  with files.atomic_path(os.path.join(workdir, MEMBER_PREDICTIONS), '.npz') as tmp:
    np.savez(tmp, **arrays)


class MetricLog:
  """Per-epoch records as JSONL (`metrics.jsonl`) and TensorBoard scalars (`tb/`).

  On resume, records after the resumed epoch (written before the job was killed) are dropped so
  the log reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, resume_after: int = 0):
    import jax  # noqa: PLC0415  (only a training run needs JAX here)

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
    files.atomic_write(self.path, ''.join(json.dumps(r) + '\n' for r in self.records))
    from tensorboardX import SummaryWriter  # noqa: PLC0415  (costly: only a training run)

    self.tb = SummaryWriter(os.path.join(workdir, 'tb'), purge_step=resume_after + 1)

  def write(self, record: dict) -> None:
    if not self.active:
      return
    self.records.append(record)
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(record, default=float) + '\n')
    step = record['epoch']
    multi = len(record['seeds']) > 1
    shared = len({r['seed'] for r in record['seeds']}) < len(record['seeds'])  # sweep members
    for i, r in enumerate(record['seeds']):
      prefix = (f'm{i}_seed{r["seed"]}/' if shared else f'seed{r["seed"]}/') if multi else ''
      if r['train_loss'] is not None:  # None: the seed had stopped (nothing trained)
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


def write_predictions(
  folder: str, videos, preds, targets, columns=('timestamp', 'value', 'segment_id')
) -> None:
  """The release's own format: <folder>/<target>/<Id>.csv on the label grid, with the label
  files' columns in the layout's order (`layout.Layout.label_columns`: MuSe 2020
  timestamp,value,segment_id; 2021/2022 and plain timestamp,segment_id,value)."""
  for v, p in zip(videos, preds):
    for k, target in enumerate(targets):
      cells = {
        'timestamp': [str(int(t)) for t in v.timestamp.tolist()],
        'segment_id': [str(int(s)) for s in v.segment_id.tolist()],
        'value': [f'{val:.7g}' for val in p[:, k].tolist()],
      }
      lines = [','.join(columns)] + [','.join(row) for row in zip(*(cells[c] for c in columns))]
      files.atomic_write(os.path.join(folder, target, f'{v.id}.csv'), '\n'.join(lines) + '\n')


def plot_videos(workdir: str, videos, preds, targets, cccs=None) -> None:
  """PNG per video: prediction vs label over time, one panel per target (titled with the video's
  own CCC, `cccs`: {target: ccc} per video, when given)."""
  plt = pyplot()
  for j, (v, p) in enumerate(zip(videos, preds)):
    c = cccs[j] if cccs else None
    fig, axes = plt.subplots(len(targets), 1, figsize=(10, 2.6 * len(targets)), squeeze=False)
    t = (v.timestamp - v.timestamp[0]) / 1000.0
    for k, target in enumerate(targets):
      ax = axes[k, 0]
      ax.plot(t, v.y[:, k], label='label', color='black', lw=1)
      ax.plot(t, p[:, k], label='prediction', color='tab:red', lw=1)
      ax.set_ylabel(target)
      if c:
        ax.set_title(f'{target}: CCC {c[target]:.3f}', fontsize=9, loc='left')
      ax.legend(loc='upper right', fontsize=8)
    axes[-1, 0].set_xlabel('seconds')
    fig.suptitle(f'video {v.id}')
    fig.tight_layout()
    with files.atomic_path(os.path.join(workdir, 'plots', f'{v.id}.png'), '.png') as tmp:
      fig.savefig(tmp, dpi=80)
    plt.close(fig)


def plot_per_video_ccc(workdir: str, cccs: dict, targets, split: str, what: str) -> None:
  """plots/per_video_<split>_ccc.png: each video's CCC, sorted, one panel per target."""
  plt = pyplot()
  fig, axes = plt.subplots(
    len(targets), 1, figsize=(max(6, 0.25 * len(cccs) + 2), 2.6 * len(targets)), squeeze=False
  )
  for k, target in enumerate(targets):
    ids = sorted(cccs, key=lambda v: cccs[v][target])
    ax = axes[k, 0]
    ax.bar(range(len(ids)), [cccs[v][target] for v in ids], color='tab:blue')
    ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize=6)
    ax.set_ylabel(f'{target} CCC')
    ax.axhline(0, color='black', lw=0.5)
  fig.suptitle(f'{split}: CCC per video, sorted ({what})')
  fig.tight_layout()
  with files.atomic_path(
    os.path.join(workdir, 'plots', f'per_video_{split}_ccc.png'), '.png'
  ) as tmp:
    fig.savefig(tmp, dpi=80)
  plt.close(fig)


# What a run prints at its end (and logs): each CCC with its interval, the seeds side by side.


def interval(m: dict, key: str = 'ccc') -> str:
  """' [low, high]' of a metrics entry's 95% interval ('' when the bootstrap was off)."""
  ci = m.get(f'{key}_ci95')
  if not ci or ci[0] is None:
    return ''
  return f' [{ci[0]:.2f}, {ci[1]:.2f}]'


def seed_lines(results: dict) -> list:
  """With several seeds, per split: the best seed's mean CCC, the seeds' mean +- std and their
  ensemble's, side by side (the run's log and its last printed lines)."""
  if 'ensemble' not in results or 'devel_ccc_mean' not in results:
    return []
  best = (
    results['seeds'][results['best_member']]
    if 'best_member' in results
    else next(s for s in results['seeds'] if s['seed'] == results['best_seed'])
  )
  lines = []
  for split in ('devel', 'test'):
    if f'{split}_ccc_mean' in results:
      ens = results['ensemble'].get(split)
      lines.append(
        f'{split}: mean CCC of the best seed ({best["seed"]}) '
        f'{best[split]["mean_ccc"]:.4f}{interval(best[split], "mean_ccc")}, of '
        f'{len(results["seeds"])} seeds {results[f"{split}_ccc_mean"]:.4f} +- '
        f'{results[f"{split}_ccc_std"]:.4f} (sample std)'
        + (f', of their ensemble {ens["mean_ccc"]:.4f}{interval(ens, "mean_ccc")}' if ens else '')
      )
  return lines


def summary(results: dict) -> str:
  """The lines printed at the end: best epoch and CCC per target (predict: where it wrote)."""
  ens = results.get('ensemble') if results.get('seed') in ('ensemble', 'sweep_ensemble') else None
  written = (
    f'the ensemble of {ens["name"]}'
    if ens and 'name' in ens
    else f'the ensemble of seeds {", ".join(map(str, ens["seeds"]))} (best epochs '
    f'{", ".join(map(str, ens["best_epochs"]))})'
    if ens
    else f'seed {results["seed"]} (epoch {results["best_epoch"]})'
  )
  if 'predictions' in results and 'devel' not in results:
    return (
      f'predictions of {written} for {sum(results["videos"].values())} videos in '
      f'{results["predictions"]}'
    )
  lines = [f'predictions of {written}' if ens else f'best epoch {results["best_epoch"]}']
  for split in ('devel', 'test'):
    m = results.get(split)
    if m:
      lines.append(
        f'{split}: '
        + '  '.join(f'{t} CCC {m[t]["ccc"]:.4f}{interval(m[t])}' for t in results['targets'])
      )
    elif split == 'test':
      lines.append('test: no labels in this tree, no test CCC (predictions are written)')
  lines += seed_lines(results)  # several seeds: the best one, their spread, average
  return '\n'.join(lines)
