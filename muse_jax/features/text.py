"""Transcript -> `bert` set: one sentence embedding per span, held over the frames it covers.

As the challenge's fasttext set does for words, a span's embedding is repeated on every grid
frame it overlaps and frames where nobody speaks are zero vectors. Frame k stands for the 250 ms
around its timestamp, [250 k - 125, 250 k + 125) ms; a frame that two spans overlap takes the one
that covers more of it (the earlier one on a tie), so short words between grid points still land
somewhere. Alignment is plain numpy and needs none of the extra's packages.
"""

import numpy as np
import pandas as pd

from muse_jax.errors import MuseError
from muse_jax.features import writer

BERT = 'bert'
COLUMNS = ('start_ms', 'end_ms', 'text')


def read_transcript(path: str) -> tuple:
  """A CSV with columns start_ms,end_ms,text (a word or a sentence per row) -> arrays."""
  try:
    frame = pd.read_csv(path, dtype={'text': str}, keep_default_na=False, skipinitialspace=True)
  except FileNotFoundError:
    raise MuseError(
      f'{path}: no such transcript; give a CSV with the header start_ms,end_ms,text'
    ) from None
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise MuseError(
      f'{path}: not a readable CSV ({reason}); expected the header start_ms,end_ms,text'
    ) from None
  frame.columns = [str(c).strip() for c in frame.columns]
  missing = [c for c in COLUMNS if c not in frame.columns]
  if missing:
    raise MuseError(
      f'{path}: missing column(s) {missing}; the header must name {",".join(COLUMNS)} (times in ms)'
    )
  times = {}
  for col in ('start_ms', 'end_ms'):
    values = pd.to_numeric(frame[col], errors='coerce').to_numpy(np.float64)
    bad = np.nonzero(~np.isfinite(values))[0]
    if len(bad):
      raise MuseError(
        f'{path}: line {bad[0] + 2}: {col} {frame[col].iloc[bad[0]]!r} is not a '
        'number of milliseconds'
      )
    times[col] = values
  start, end = times['start_ms'], times['end_ms']
  bad = np.nonzero((end < start) | (start < 0))[0]
  if len(bad):
    raise MuseError(
      f'{path}: line {bad[0] + 2}: span {start[bad[0]]:g}-{end[bad[0]]:g} ms is '
      'negative or ends before it starts'
    )
  return start, end, frame['text'].astype(str).str.strip().tolist()


def align(start_ms, end_ms, n_frames: int, step_ms: int = writer.STEP_MS) -> np.ndarray:
  """Index of the span held on each frame ([n_frames] int, -1 where nobody speaks)."""
  start_ms = np.asarray(start_ms, np.float64)
  end_ms = np.asarray(end_ms, np.float64)
  out = np.full(n_frames, -1, np.int64)
  best = np.zeros(n_frames)
  half = step_ms / 2
  for i in range(len(start_ms)):
    if not end_ms[i] > start_ms[i]:
      continue
    # frames k whose [step k - step / 2, step k + step / 2) overlaps [start, end)
    k0 = max(int(np.floor((start_ms[i] + half) / step_ms)), 0)
    k1 = min(int(np.ceil((end_ms[i] + half) / step_ms)), n_frames)
    if k1 <= k0:
      continue
    centre = writer.grid(n_frames, step_ms)[k0:k1]
    overlap = np.minimum(end_ms[i], centre + half) - np.maximum(start_ms[i], centre - half)
    take = overlap > best[k0:k1]
    out[k0:k1][take] = i
    best[k0:k1][take] = overlap[take]
  return out


def frames_from_spans(
  embeddings: np.ndarray, start_ms, end_ms, n_frames: int, step_ms: int = writer.STEP_MS
) -> np.ndarray:
  """[N, D] span embeddings -> [n_frames, D], zeros where no span is held."""
  index = align(start_ms, end_ms, n_frames, step_ms)
  out = np.zeros((n_frames, embeddings.shape[1]), np.float32)
  out[index >= 0] = embeddings[index[index >= 0]]
  return out


def text_features(
  transcript: str, encoder, n_frames: int | None = None, step_ms: int = writer.STEP_MS
) -> np.ndarray:
  """Transcript -> [T, hidden]; T from n_frames or else from the last span's end."""
  start, end, texts = read_transcript(transcript)
  if n_frames is None:
    n_frames = writer.num_frames(end.max() if len(end) else 0.0, step_ms)
  keep = [i for i, t in enumerate(texts) if t and end[i] > start[i]]
  emb = encoder.encode([texts[i] for i in keep])
  return frames_from_spans(emb, start[keep], end[keep], n_frames, step_ms)


def extract(
  transcript: str,
  root: str,
  vid: str,
  model_dir: str | None = None,
  duration_ms: float | None = None,
  segment_id: int = 1,
  step_ms: int | None = None,
) -> str:
  """Writes the `bert` set of one transcript into ROOT, on `step_ms` (default: the grid of
  ROOT's labels, else 250 ms); returns the path."""
  from muse_jax.features import bert  # noqa: PLC0415  (JAX: only here)

  vid = writer.check_id(vid)
  step_ms = writer.tree_step(root) if step_ms is None else writer.check_step(step_ms)
  n = None if duration_ms is None else writer.num_frames(duration_ms, step_ms)
  encoder = bert.Encoder(model_dir)
  values = text_features(transcript, encoder, n, step_ms)
  names = [f'{BERT}_{i}' for i in range(values.shape[1])]
  return writer.write_features(root, BERT, vid, values, names, segment_id, step_ms)
