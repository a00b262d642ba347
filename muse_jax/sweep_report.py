"""`python -m muse_jax.sweep_report W`: the report of a sweep run in shards (--sweep_shard=I/N).

Each shard trains its share of the groups into the same workdir; the last to finish writes
W/sweep.json, sweep.md and sweep.png itself. This merges them by hand (after a shard was run
again, or to check a sweep in progress: a group still running is one error line naming it).
"""
import sys

from muse_jax import cli


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog='python -m muse_jax.sweep_report', description=__doc__.split('\n')[0])
  p.add_argument('workdir', type=cli.path, help='the --workdir of the sweep')
  args = p.parse_args(argv)
  from muse_jax import sweep  # pylint: disable=import-outside-toplevel  (after argument errors)
  rc, report = cli.call(sweep.write_report, args.workdir)
  if rc:
    return rc
  print(sweep.markdown(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
