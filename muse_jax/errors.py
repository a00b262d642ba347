"""One error type for everything a user can fix: bad data, bad config, bad workdir.

Raised with a single-line message naming the file (and row/column) and what to do; the CLI entry
points print it as `error: <message>` and exit with status 2 instead of a traceback.
"""


class MuseError(Exception):
  """A user-fixable problem; str(e) is a complete one-line message."""
