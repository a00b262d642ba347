"""Numeric CSVs as the MuSe releases write them: a header line, then one number per cell.

Fast path with pandas' C parser; on any doubt a slow path that names the exact line and column of
the problem. Every problem is a one-line MuseError naming the file: empty file, header only,
another separator, a written row index, a ragged row, a non-numeric cell.
"""

import csv
import dataclasses
import io
import re

import numpy as np
import pandas as pd

from muse_jax.errors import MuseError


@dataclasses.dataclass
class Table:
  """A numeric CSV: header names, float64 values [N, C], 1-based file line of each row."""

  path: str
  columns: list
  values: np.ndarray
  lines: np.ndarray

  def column(self, name: str) -> np.ndarray:
    return self.values[:, self.columns.index(name)]


def _fail(msg: str):
  raise MuseError(msg)


def _float_cell(cell: str) -> float:
  s = cell.strip()
  if s in pd._libs.parsers.STR_NA_VALUES:
    return np.nan
  return float(s)


def _slow_parse(path: str, columns: list, body: str) -> tuple:
  """Parses cell by cell; raises at the first ragged row or non-numeric cell."""
  rows, lines = [], []
  for i, fields in enumerate(csv.reader(io.StringIO(body))):
    line = i + 2
    if not fields or (len(fields) == 1 and not fields[0].strip()):
      continue  # blank line
    if len(fields) != len(columns):
      _fail(
        f'{path}: line {line} has {len(fields)} fields but the header has {len(columns)}; '
        'every row needs one value per column'
      )
    row = []
    for c, cell in enumerate(fields):
      try:
        row.append(_float_cell(cell))
      except ValueError:
        _fail(
          f'{path}: line {line}, column {c + 1} ({columns[c]!r}): non-numeric value '
          f'{cell.strip()[:40]!r}'
        )
    rows.append(row)
    lines.append(line)
  return np.asarray(rows, np.float64).reshape(len(rows), len(columns)), np.asarray(lines)


def read_table(path: str) -> Table:
  """Reads a numeric CSV with a header line; every problem is a one-line MuseError."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    _fail(f'{path}: file not found')
  except OSError as e:
    _fail(f'{path}: cannot read ({e.strerror})')
  if data.startswith(b'\xef\xbb\xbf'):
    data = data[3:]
  if not data or data.isspace():  # (not .strip(): that copies the whole file)
    _fail(f'{path}: empty file; expected a header line and data rows')
  nl = data.find(b'\n')
  header, body = (data, b'') if nl < 0 else (data[:nl], data[nl + 1 :])
  try:
    columns = [c.strip() for c in next(csv.reader([header.decode('utf-8').strip('\r')]))]
  except UnicodeDecodeError:
    _fail(f'{path}: the header line is not UTF-8 text; is this a CSV file?')
  check_header(path, columns)
  if not body or body.isspace():
    _fail(f'{path}: header only, no data rows')
  n_lines = body.count(b'\n') + (not body.endswith(b'\n'))
  # Fast path: every line holds exactly len(columns) - 1 separators (numeric cells never quote a
  # comma) and pandas parses every cell as a float. Any doubt -> the slow path says where.
  if body.count(b',') == (len(columns) - 1) * n_lines:
    try:
      values = pd.read_csv(
        io.BytesIO(body), header=None, dtype=np.float64, engine='c', skip_blank_lines=False
      ).to_numpy()
      if values.shape == (n_lines, len(columns)):
        return Table(path, columns, values, np.arange(2, n_lines + 2))
    except (ValueError, pd.errors.ParserError):
      pass
  values, lines = _slow_parse(path, columns, body.decode('utf-8', errors='replace'))
  if not len(values):
    _fail(f'{path}: header only, no data rows')
  return Table(path, columns, values, lines)


def read_header(path: str) -> list:
  try:
    with open(path, 'rb') as f:
      line = f.readline()
  except OSError as e:
    _fail(f'{path}: cannot read ({e.strerror})')
  line = line.removeprefix(b'\xef\xbb\xbf').decode('utf-8', errors='replace').strip()
  if not line:
    _fail(f'{path}: empty file; expected a header line and data rows')
  return check_header(path, [c.strip() for c in next(csv.reader([line]))])


_INDEX_COLUMN = re.compile(r'^(unnamed: *\d+|index|)$', re.IGNORECASE)


def check_header(path: str, columns: list, index_ok: bool = False) -> list:
  """One-line errors for headers that would be misread: another separator (a one-column header
  holding ';' or tabs), and a leading column without a name, which is what pandas' to_csv writes
  for the row index (it would become a feature). Returns columns."""
  if len(columns) == 1:
    for sep, name in ((';', 'semicolon'), ('\t', 'tab'), ('|', 'bar')):
      if sep in columns[0]:
        _fail(
          f'{path}: the header has no commas but {columns[0].count(sep)} {name}s: the '
          f'separator looks like {sep!r}; save the file comma-separated (e.g. pandas '
          "to_csv(path, index=False), or read_csv(path, sep=';') then write it back)"
        )
  if not index_ok and columns and _INDEX_COLUMN.match(columns[0]) and len(columns) > 1:
    _fail(
      f'{path}: the first column has no name ({columns[0]!r}): it looks like a written row '
      'index (pandas to_csv without index=False); remove that column'
    )
  return columns
