"""Bad input, through the user-facing path: each case ends in one line or in a logged policy.

Every case copies a pristine tiny demo tree, breaks it one way, and runs what a user runs
(`train.train_and_evaluate`, and for a few cases `python -m muse_jax.main`). Errors must be one
line naming the file (line/column where it applies) and saying what to do; the quirks that real
releases have are policies with a log line instead. `tests/test_dataset.py` checks the same
messages at the reader level; here we check that nothing between the reader and the user
rewraps, truncates or turns them into tracebacks.
"""

import logging
import os

import numpy as np
import pytest

from muse_jax import config_util
from muse_jax import train
from muse_jax.data import layout
from muse_jax.data import reader
from muse_jax.errors import MuseError

import helpers
import scripted


@pytest.fixture
def case(pristine, tmp_path, monkeypatch):
  """A fresh copy of the pristine tree (conftest), with helpers to break it and to run on it; its
  video: a train video whose file does not define a set's dimension, not one of the tree's
  quirks. Its in-process runs' schedules see scripted devel scores (tests/scripted.py): one epoch
  beats the untrained model, which a run must to end, on any CPU."""
  scripted.script_devel(monkeypatch)
  root, summary = pristine
  quirky = {
    summary['quirks']['longer_feature_file']['id'],
    summary['quirks']['shorter_feature_file']['id'],
  }
  first = next(iter(reader.read_partition(root)))  # its file defines a set's dimension
  train_ids = [v for v in summary['splits']['train'] if v not in quirky and v != first]
  return Case(root, str(tmp_path), train_ids[0], train_ids[1], summary)


class Case(helpers.TreeCopy):
  """One broken copy of the tree: paths of its files and the ways to run on it."""

  def __init__(self, pristine_root, tmp, vid, other, summary):
    super().__init__(pristine_root, tmp)
    self.vid, self.other, self.summary = vid, other, summary

  # Paths (of video `vid` by default).
  def feat(self, vid=None, name='egemaps'):
    return super().feat(vid or self.vid, name)

  def label(self, target='arousal', vid=None):
    return super().label(vid or self.vid, target)

  # Edits.
  def edit_cell(self, path, line, column, value):
    """Sets the cell at 1-based `line` and `column` of a CSV to `value`."""
    lines = self.lines(path)
    cells = lines[line - 1].split(',')
    cells[column - 1] = value
    lines[line - 1] = ','.join(cells)
    self.write(path, lines)

  # Runs.
  def config(self, **overrides):
    return helpers.tiny_config(self.root, self.data_dir, **{'num_epochs': 1, **overrides})

  def error(self, **overrides) -> str:
    """The one-line message `train_and_evaluate` stops with."""
    with pytest.raises(MuseError) as e:
      train.train_and_evaluate(self.config(**overrides), self.workdir)
    msg = str(e.value)
    print(msg)  # shown when a test fails
    assert msg and '\n' not in msg, msg
    return msg

  def cli(self, *args):
    return helpers.run_main(
      f'--workdir={self.workdir}',
      f'--data_root={self.root}',
      f'--data_dir={self.data_dir}',
      '--config.num_epochs=1',
      *args,
      cwd=self.tmp,
    )


# ------------------------------------------------------------------------------------------------
# Errors: one line naming the file, the line/column where it applies, and what to do.


def test_missing_partition_csv(case):
  os.remove(case.partition)
  msg = case.error()
  assert (
    case.partition in msg and 'not found' in msg and 'looks like a MuSe 2020 release root' in msg
  )


def test_unknown_partition_name(case):
  lines = case.lines(case.partition)
  case.write(case.partition, lines + ['999,validation'])
  msg = case.error()
  assert f'{case.partition}: line {len(lines) + 1}' in msg
  assert "unknown partition 'validation'" in msg and 'use one of train, devel, test' in msg


def test_listed_video_without_feature_file(case):
  os.remove(case.feat())
  msg = case.error()
  assert msg.startswith(case.feat() + ':') and f'video {case.vid}' in msg
  assert 'add it or remove the video from the partition file' in msg


def test_train_video_without_label_file(case):
  os.remove(case.label('valence'))
  msg = case.error()
  assert msg.startswith(case.label('valence') + ':') and f'train video {case.vid}' in msg
  assert 'train and devel videos need labels of every target' in msg
  os.remove(case.label('arousal'))  # no label file at all: refused by the build itself
  msg = case.error()
  assert msg.startswith(case.label('arousal') + ':') and 'only test videos may come' in msg


@pytest.mark.parametrize('which', ['feature', 'label'])
def test_empty_csv(case, which):
  path = case.feat() if which == 'feature' else case.label()
  case.write(path, [])
  msg = case.error()
  assert msg.startswith(path + ':') and 'empty file' in msg and 'header line' in msg


@pytest.mark.parametrize('which', ['feature', 'label'])
def test_header_only_csv(case, which):
  path = case.feat() if which == 'feature' else case.label('valence')
  case.write(path, case.lines(path)[:1])
  msg = case.error()
  assert msg.startswith(path + ':') and 'header only, no data rows' in msg


def test_ragged_row(case):
  lines = case.lines(case.feat())
  lines[4] = lines[4].rsplit(',', 1)[0]  # line 5 loses its last cell
  case.write(case.feat(), lines)
  msg = case.error()
  assert msg.startswith(case.feat() + ': line 5 has 89 fields but the header has 90')
  assert 'one value per column' in msg


def test_non_numeric_cell(case):
  case.edit_cell(case.feat(), 4, 3, 'abc')
  msg = case.error()
  assert msg.startswith(case.feat() + ': line 4, column 3 (')
  assert "non-numeric value 'abc'" in msg


def test_non_finite_cells_with_nan_policy_error(case):
  case.edit_cell(case.feat(), 6, 5, 'nan')
  timestamp = case.lines(case.feat())[5].split(',')[0]
  msg = case.error(nan_policy='error')
  header = case.lines(case.feat())[0].split(',')
  assert msg.startswith(
    f'{case.feat()}: line 6, column 5 ({header[4]!r}), video {case.vid} '
    f'(train), timestamp {timestamp}: NaN or Inf (config.nan_policy is error)'
  )
  assert '--config.nan_policy=zero' in msg


def test_duplicated_timestamp(case):
  lines = case.lines(case.label())
  case.write(case.label(), lines[:3] + lines[2:])
  msg = case.error()
  assert msg.startswith(case.label() + ': line 4: timestamp')
  assert 'repeats line 3' in msg and 'strictly increasing time order' in msg


def test_timestamps_out_of_order(case):
  lines = case.lines(case.feat())
  case.write(case.feat(), lines[:2] + [lines[3], lines[2]] + lines[4:])
  msg = case.error()
  assert msg.startswith(case.feat() + ': line 4: timestamp')
  assert 'goes back in time after line 3' in msg


def test_feature_file_much_shorter_than_labels(case):
  case.write(case.feat(), case.lines(case.feat())[:-20])
  msg = case.error()
  assert msg.startswith(case.feat() + ': video') and 'egemaps' in msg
  assert '20 label rows before the labels do' in msg and 'truncated' in msg


def test_dimension_differs_between_videos(case):
  path = case.feat(case.other)
  case.write(path, [l.rsplit(',', 1)[0] for l in case.lines(path)])  # one column fewer
  msg = case.error()
  assert msg.startswith(path + ': 87 feature columns')
  assert 'this feature set has 88' in msg and 'need the same columns' in msg


def test_empty_feature_folder_named_by_the_config(case):
  os.makedirs(os.path.join(case.root, layout.KINDS['muse2020'].feature_dir, 'vggish'))
  msg = case.error(feature_sets=('egemaps', 'vggish'))
  assert (
    os.path.join(layout.KINDS['muse2020'].feature_dir, 'vggish') in msg
    and 'feature folder is empty' in msg
  )


def test_wrong_label_columns(case):
  lines = case.lines(case.label('valence'))
  case.write(case.label('valence'), ['time,value,segment_id'] + lines[1:])
  msg = case.error()
  assert msg.startswith(case.label('valence') + ': label columns are time,value,segment_id')
  assert 'expected timestamp, value and segment_id' in msg


def test_config_names_a_feature_set_not_in_the_tree(case):
  msg = case.error(feature_sets=('egemaps', 'vggish'))
  assert "unknown feature set 'vggish'" in msg
  assert 'egemaps (88), fasttext (300); choose from these (config.feature_sets' in msg
  assert not os.path.exists(case.data_dir)  # nothing built


def test_workdir_of_another_model_config(case):
  train.train_and_evaluate(case.config(), case.workdir)
  config = case.config()
  config.model.d_rnn = 32
  msg = case.error(model=config.model)
  assert msg == (
    f'{case.workdir}: resuming with model.d_rnn=32, but this workdir was trained with '
    'model.d_rnn=16; model.d_rnn cannot change in a run in progress: rerun with the '
    'config it was started with (its config.json), or use a new --workdir'
  )
  # A workdir without config.json (an older version's) is still checked by the checkpoint.
  os.remove(os.path.join(case.workdir, 'config.json'))
  msg = case.error(model=config.model)
  assert msg == (
    f'{case.workdir}: its checkpoint was written for a different model config '
    '(model.d_rnn 16 in the checkpoint, 32 now); use another workdir or the config '
    'it was trained with'
  )


def test_workdir_of_other_inputs(case):
  train.train_and_evaluate(case.config(), case.workdir)
  msg = case.error(feature_sets=('egemaps',))
  assert msg.startswith(
    f'{case.workdir}: resuming with feature_sets=["egemaps"], but this workdir '
    'was trained with feature_sets=["egemaps", "fasttext"]'
  )
  os.remove(os.path.join(case.workdir, 'config.json'))  # an older version's workdir
  msg = case.error(feature_sets=('egemaps',))
  assert os.path.join(case.workdir, 'norm_stats.npz') in msg and 'fresh workdir' in msg


# ------------------------------------------------------------------------------------------------
# Through the CLI: exit status 2, one `error:` line, no traceback.


def test_cli_missing_partition(case):
  os.remove(case.partition)
  helpers.one_error(case.cli(), case.partition, 'not found')


def test_cli_ragged_row(case):
  lines = case.lines(case.label())
  lines[6] += ',0'
  case.write(case.label(), lines)
  helpers.one_error(case.cli(), f'{case.label()}: line 7 has 4 fields')


def test_cli_workdir_of_another_model_config(case):
  train.train_and_evaluate(case.config(), case.workdir)
  helpers.one_error(
    case.cli('--config.model.d_rnn=32'),
    case.workdir,
    'resuming with model.d_rnn=32',
    'trained with model.d_rnn=16',
  )


# ------------------------------------------------------------------------------------------------
# Policies: the run goes on, and a log line says what was done to which file.


@pytest.fixture
def absl_logs(caplog):
  caplog.set_level(logging.INFO)
  caplog.set_level(logging.INFO, logger='absl')
  return caplog


def messages(caplog):
  return [r.getMessage() for r in caplog.records]


def test_nan_and_inf_cells_policy(case, absl_logs):
  case.edit_cell(case.feat(), 6, 5, 'nan')
  case.edit_cell(case.feat(), 7, 9, 'inf')
  case.edit_cell(case.feat(), 8, 9, '-inf')
  results = train.train_and_evaluate(case.config(), case.workdir)
  logs = messages(absl_logs)
  assert f'{case.feat()}: 2 Inf cells set to NaN' in logs
  # Counted per set, one line, not one per file (a release has hundreds of files).
  assert 'egemaps: 1 NaN cells kept as NaN (config.nan_policy decides), in 1 files' in logs, logs
  assert (
    f'{case.feat()}: video {case.vid} (train): 3 cells NaN or Inf set to the train mean '
    '(nan_policy zero)'
  ) in logs, logs
  assert results['skipped_steps'] == 0


def test_feature_files_longer_or_slightly_shorter_than_labels_policy(case, absl_logs):
  case.write(case.feat(), case.lines(case.feat())[:-3])  # 3 rows short: padded
  q = case.summary['quirks']['longer_feature_file']  # 3 rows long (demo quirk): cut
  train.train_and_evaluate(case.config(), case.workdir)
  logs = messages(absl_logs)
  assert f'{case.feat()}: ends 3 rows before the labels; last row repeated to fill' in logs
  longer = layout.feature_path(case.root, q['feature_set'], q['id'])
  assert any(
    l.startswith(f'{longer}: {q["extra_rows"]} feature rows outside the label grid') for l in logs
  ), logs


def test_column_without_any_usable_train_value_is_ignored_not_blown_up(tmp_path, absl_logs):
  """All train cells of a column NaN or 1e30: no scale exists. Dividing by the bare EPS would make
  every devel value ~1e6; instead the column is ignored everywhere (set to the fill value) with a
  warning naming it. Unnormalised inputs are filled with their raw train mean, not 0."""
  from muse_jax import normalization
  from muse_jax.data.video import Video

  spec = config_util.parse(
    helpers.tiny_config(
      '', str(tmp_path), feature_sets=('egemaps', 'fasttext'), normalize='egemaps'
    )
  )
  rng = np.random.default_rng(0)

  def video(vid, x):
    n = len(x)
    return Video(
      vid,
      np.arange(n) * 250,
      np.ones(n, np.int32),
      x.astype(np.float32),
      np.zeros((n, 2), np.float32),
      ('arousal', 'valence'),
      (True, True),
    )

  train = [
    video(
      str(i),
      np.c_[rng.normal(5, 2, (40, 2)), np.full((40, 1), np.nan), rng.normal(100, 1, (40, 1))],
    )
    for i in range(3)
  ]
  train[1].x[:5, 2] = 1e30
  stats = normalization.compute_stats(spec, train, [3, 1])
  assert any(
    '1 column(s) with no usable value in the train partition (egemaps[2])' in m
    for m in messages(absl_logs)
  )
  devel = video('d', np.array([[5.0, 5.0, 3.0, np.nan], [7.0, 3.0, -2.0, 100.0]]))
  normalization.normalize(spec, {'train': train, 'devel': [devel]}, stats)
  assert np.isfinite(devel.x).all() and np.abs(devel.x[:, :3]).max() < 10
  np.testing.assert_array_equal(devel.x[:, 2], [0.0, 0.0])  # ignored, not 3e6 / -2e6
  raw_mean = np.mean([v for t in train for v in t.x[:, 3]])  # fasttext is not normalised here
  assert devel.x[0, 3] == pytest.approx(raw_mean, rel=1e-5) and devel.x[1, 3] == 100.0
