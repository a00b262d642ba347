"""How the demo tree looks like a release on disk: each set's column names and scales, and fast,
deterministic CSV writing (a full-scale tree is gigabytes of text; `format_rows` fills fixed-width
byte slots with numpy instead of formatting cell by cell).
"""

import numpy as np

# ------------------------------------------------------------------------------------------------
# Column names.

_GEMAPS_10 = (
  'amean',
  'stddevNorm',
  'percentile20.0',
  'percentile50.0',
  'percentile80.0',
  'pctlrange0-2',
  'meanRisingSlope',
  'stddevRisingSlope',
  'meanFallingSlope',
  'stddevFallingSlope',
)
AUS = (
  '01',
  '02',
  '04',
  '05',
  '06',
  '07',
  '09',
  '10',
  '12',
  '14',
  '15',
  '17',
  '20',
  '23',
  '25',
  '26',
  '45',
)


def _egemaps_names() -> list:
  names = [f'F0semitoneFrom27.5Hz_sma3nz_{f}' for f in _GEMAPS_10]
  names += [f'loudness_sma3_{f}' for f in _GEMAPS_10]
  two = ['spectralFlux_sma3'] + [f'mfcc{i}_sma3' for i in range(1, 5)]
  two += [
    f'{x}_sma3nz'
    for x in ('jitterLocal', 'shimmerLocaldB', 'HNRdBACF', 'logRelF0-H1-H2', 'logRelF0-H1-A3')
  ]
  for f in (1, 2, 3):
    two += [f'F{f}frequency_sma3nz', f'F{f}bandwidth_sma3nz', f'F{f}amplitudeLogRelF0_sma3nz']
  two += [f'{x}V_sma3nz' for x in ('alphaRatio', 'hammarbergIndex', 'slope', 'spectralFlux')]
  two[-2:-1] = ['slopeV0-500_sma3nz', 'slopeV500-1500_sma3nz']
  two += [f'mfcc{i}V_sma3nz' for i in range(1, 5)]
  for x in two:
    names += [f'{x}_amean', f'{x}_stddevNorm']
  names += [
    f'{x}_sma3nz_amean'
    for x in (
      'alphaRatioUV',
      'hammarbergIndexUV',
      'slopeUV0-500',
      'slopeUV500-1500',
      'spectralFluxUV',
    )
  ]
  names += [
    'loudnessPeaksPerSec',
    'VoicedSegmentsPerSec',
    'MeanVoicedSegmentLengthSec',
    'StddevVoicedSegmentLengthSec',
    'MeanUnvoicedSegmentLength',
    'StddevUnvoicedSegmentLength',
    'equivalentSoundLevel_dBp',
  ]
  return names


def column_names(name: str, dim: int) -> list:
  """Realistic header names for the released sets, `<name>_<i>` for the others."""
  names = None
  if name == 'egemaps':
    names = _egemaps_names()
  elif name == 'au':
    names = [f'AU{a}_r' for a in AUS] + [f'AU{a}_c' for a in sorted(AUS + ('28',))]
  elif name == 'pose':
    names = ['pose_Tx', 'pose_Ty', 'pose_Tz', 'pose_Rx', 'pose_Ry', 'pose_Rz']
  elif name == 'landmarks_2d':
    names = [f'x_{i}' for i in range(68)] + [f'y_{i}' for i in range(68)]
  elif name == 'landmarks_3d':
    names = [f'{a}_{i}' for a in 'XYZ' for i in range(68)]
  elif name == 'pdm':
    names = ['p_scale', 'p_rx', 'p_ry', 'p_rz', 'p_tx', 'p_ty'] + [f'p_{i}' for i in range(34)]
  elif name == 'openpose':
    names = [f'{k}_{i}' for i in range(18) for k in ('x', 'y', 'c')]
  if names is None or len(names) != dim:
    names = [f'{name}_{i}' for i in range(dim)]
  return names


# ------------------------------------------------------------------------------------------------
# Fast, deterministic CSV writing: fixed-width byte slots filled by numpy, spaces squeezed out.


def _format_block(values: np.ndarray, d: int, n_digits: int) -> np.ndarray:
  n, c = values.shape
  nan = np.isnan(values)
  q = np.rint(np.abs(np.where(nan, 0.0, values)) * 10.0**d).astype(np.int64)
  neg = (values < 0) & (q > 0)
  width = n_digits + (d > 0) + 2
  buf = np.full((n, c, width), 32, np.uint8)
  size = np.ones(q.shape, np.int64)  # digits of q (at least d + 1 are written: 0.05)
  for k in range(1, n_digits):
    size += q >= 10**k
  size = np.maximum(size, d + 1)
  rest, slot = q.copy(), width - 2
  for k in range(n_digits):
    if k == d and d > 0:
      buf[:, :, slot] = 46  # '.'
      slot -= 1
    digit = (rest % 10).astype(np.uint8) + 48
    rest //= 10
    buf[:, :, slot] = digit if k <= d else np.where(k < size, digit, np.uint8(32))
    slot -= 1
  if neg.any():
    ii, jj = np.nonzero(neg)
    buf[ii, jj, width - 2 - size[ii, jj] - (d > 0)] = 45  # '-'
  if nan.any():
    buf[nan, :-1] = 32  # NaN -> empty cell, as pandas writes it
  return buf


def format_rows(values: np.ndarray, decimals) -> bytes:
  """CSV body of a float matrix with fixed decimals per column (NaN -> empty cell)."""
  values = np.asarray(values, np.float64)
  n, c = values.shape
  decimals = np.broadcast_to(np.asarray(decimals, np.int64), (c,))
  top = np.nanmax(np.abs(values) * 10.0**decimals, initial=0.0)
  n_digits = max(len(str(int(np.rint(top)))), int(decimals.max()) + 1)
  width = n_digits + 3
  buf = np.empty((n, c, width), np.uint8)
  for d in np.unique(decimals):
    cols = np.flatnonzero(decimals == d)
    block = _format_block(values[:, cols], int(d), n_digits)
    if block.shape[2] < width:
      block = np.concatenate(
        [np.full(block.shape[:2] + (width - block.shape[2],), 32, np.uint8), block], axis=2
      )
    if len(cols) == c:
      buf = block
    else:
      buf[:, cols] = block
  buf[:, :, -1] = 44
  buf[:, -1, -1] = 10
  flat = buf.ravel()
  return flat[flat != 32].tobytes()


def write_csv(path: str, header: list, columns: list, decimals: list) -> None:
  values = np.column_stack(columns)
  with open(path, 'wb') as f:
    f.write((','.join(header) + '\n').encode())
    step = max(1, 4_000_000 // max(1, values.shape[1]))  # bounded memory for wide sets
    for s in range(0, len(values), step):
      f.write(format_rows(values[s : s + step], decimals))
