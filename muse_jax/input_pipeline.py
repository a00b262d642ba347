"""Normalised videos -> fixed-shape, masked batches: train windows and whole-video buckets.

Every batch has a fixed shape so the jitted step compiles once: train batches are `batch_size`
windows (the last one padded only to the device multiple, see `train_batches`) and evaluation
batches come from a short ladder of bucket lengths. Nothing here reads files or configs beyond the
window fields: the videos come from `sources.prepare_data`.
"""

from collections.abc import Iterator
import dataclasses

import numpy as np


def train_windows(config, videos) -> 'Windows':
  """Train windows of config.win_len every hop_len, or whole videos (config.whole_videos, as the
  paper's late fusion trains): one window per video, as long as the longest."""
  if config.get('whole_videos', False):
    n = max(len(v.x) for v in videos)
    return make_windows(videos, n, n)
  return make_windows(videos, config.win_len, config.hop_len)


@dataclasses.dataclass
class Windows:
  """Train windows as spans of the videos, not copies: a batch's windows are gathered when it is
  drawn, so the train data is held once (windows with hop < win would otherwise duplicate it)."""

  videos: list
  spans: np.ndarray  # [N, 3]: video index, start, end
  win_len: int

  @property
  def lengths(self) -> np.ndarray:
    return (self.spans[:, 2] - self.spans[:, 1]).astype(np.int32)

  def gather(self, idx) -> tuple:
    """(x [n, win, D], y [n, win, K], lengths [n]) of windows idx, zero-padded to win_len."""
    v0 = self.videos[0]
    x = np.zeros((len(idx), self.win_len, v0.x.shape[1]), np.float32)
    y = np.zeros((len(idx), self.win_len, v0.y.shape[1]), np.float32)
    for j, (i, s, e) in enumerate(self.spans[idx]):
      x[j, : e - s] = self.videos[i].x[s:e]
      y[j, : e - s] = self.videos[i].y[s:e]
    return x, y, self.lengths[idx]


def make_windows(videos, win_len: int, hop_len: int) -> Windows:
  """Cuts each video into windows of win_len frames every hop_len (the last may be shorter)."""
  spans = []
  for i, v in enumerate(videos):
    n = len(v.x)
    for s in range(0, n, hop_len):
      e = min(s + win_len, n)
      spans.append((i, s, e))
      if e == n:
        break
  return Windows(videos, np.asarray(spans, np.int64).reshape(-1, 3), win_len)


def _mask(y, lengths):
  t = np.arange(y.shape[1])[None, :]
  return (t < lengths[:, None]) & np.all(np.isfinite(y), axis=-1)


def train_batches(
  w: Windows, batch_size: int, seed: int, epoch: int, multiple: int = 1
) -> Iterator[dict]:
  """One epoch of shuffled batches of `batch_size` windows, each padded with empty rows to a
  multiple of `multiple` (the device count x micro-batches). The last, partial batch is padded
  only to that multiple, not to a full batch: its size is the same every epoch, so a run
  compiles at most two step shapes, and no step computes a batch's worth of empty rows (on a
  small tree, whose windows fit in one batch, that was most of the work). The order depends only
  on (seed, epoch): a resumed run sees exactly the batches an uninterrupted one would, and the
  device count changes only the padding."""
  perm = np.random.default_rng([seed, epoch]).permutation(len(w.lengths))
  for b, rows in zip(range(0, len(perm), batch_size), step_rows(len(perm), batch_size, multiple)):
    yield pad_batch(*w.gather(perm[b : b + batch_size]), rows)


def step_rows(n_windows: int, batch_size: int, multiple: int = 1) -> list:
  """Rows of each step of an epoch (train_batches' padding): batch_size windows, the last step
  the rest, each rounded up to a multiple of `multiple`."""
  return [
    -(-min(batch_size, n_windows - b) // multiple) * multiple
    for b in range(0, n_windows, batch_size)
  ]


def pad_batch(x, y, lengths, rows: int) -> dict:
  """Pads the batch axis to `rows` with empty (length 0, fully masked) rows."""
  n = len(lengths)
  if n < rows:
    pad = rows - n
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
    lengths = np.concatenate([lengths, np.zeros((pad,), lengths.dtype)])
  return {
    'x': x,
    'y': np.nan_to_num(y),
    'lengths': lengths.astype(np.int32),
    'mask': _mask(y, lengths),
  }


def bucket_length(n: int, minimum: int = 64) -> int:
  """Smallest ladder length >= n. The ladder (64, 96, 128, 192, 256, ...: powers of two and their
  1.5x) wastes at most a third of a batch on padding and keeps compilations to O(log max_len)."""
  b = minimum
  while True:
    for c in (b, b * 3 // 2):
      if c >= n:
        return c
    b *= 2


def eval_batch_rows(length: int, multiple: int = 1) -> int:
  """Videos per evaluation batch for a bucket: attention memory grows with length^2, so long
  buckets hold fewer videos (2^22 score cells per head; at least one video)."""
  rows = max(1, min(64, (1 << 22) // (length * length)))
  return -(-rows // multiple) * multiple


def eval_batches(videos, multiple: int = 1) -> Iterator[tuple]:
  """Whole videos grouped by length bucket: yields (batch, [video index]) with fixed shapes per
  bucket; every batch of a bucket has the same rows (empty rows pad the last one)."""
  buckets = {}
  for i, v in enumerate(videos):
    buckets.setdefault(bucket_length(len(v.x)), []).append(i)
  for length in sorted(buckets):
    idxs = buckets[length]
    rows = eval_batch_rows(length, multiple)
    for b in range(0, len(idxs), rows):
      part = idxs[b : b + rows]
      d, k = videos[0].x.shape[1], videos[0].y.shape[1]
      x = np.zeros((len(part), length, d), np.float32)
      y = np.full((len(part), length, k), np.nan, np.float32)
      lengths = np.zeros((len(part),), np.int32)
      for j, i in enumerate(part):
        n = len(videos[i].x)
        x[j, :n], y[j, :n], lengths[j] = videos[i].x, videos[i].y, n
      yield pad_batch(x, y, lengths, rows), part


def num_eval_shapes(videos) -> int:
  """Distinct bucket lengths (compiled evaluation shapes) of these videos."""
  return len({bucket_length(len(v.x)) for v in videos})
