#!/usr/bin/env bash
# muse_jax's one entry point: sets itself up on a fresh machine, then runs a job.
#   ./run.sh                 the main job: demo tree -> dataset -> train both targets -> results table
#   ./run.sh test [ARGS]     the whole test suite, 2 workers (ARGS go to pytest; MUSE_TEST_JOBS)
#   ./run.sh reproduce [ROOT] [ARGS]  the paper's pipeline (unimodal, early and late fusion runs per
#                            target) -> results table; on the demo tree, or on ROOT (a MuSe copy)
#   ./run.sh main ARGS       python -m muse_jax.main ARGS
#   ./run.sh demo ARGS       python -m muse_jax.data.demo ARGS   (write a demo MuSe-layout tree)
#   ./run.sh build ARGS      python -m muse_jax.data.build ARGS  (build the tfds dataset of a tree)
#   ./run.sh py ARGS         the project's python, e.g. ./run.sh py benchmarks/data_bench.py
# Environment: PYTHON picks the interpreter (>= 3.12); MUSE_OUT the output folder of the main job
# (reproduce writes to $MUSE_OUT/reproduce).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
venv="$here/.venv"

ok_python() {  # usable interpreter of version >= 3.12?
  "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

find_python() {
  local c root
  if [ -n "${PYTHON:-}" ]; then
    ok_python "$PYTHON" && { echo "$PYTHON"; return; }
    echo "run.sh: PYTHON=$PYTHON is not a working Python >= 3.12" >&2; return 1
  fi
  for c in python3.13 python3.12 python3; do
    command -v "$c" >/dev/null 2>&1 && ok_python "$c" && { command -v "$c"; return; }
  done
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  for c in $(ls -d "$root"/versions/3.* 2>/dev/null | sort -rV); do
    for exe in "$c"/bin/python3.*[0-9]; do
      [ -x "$exe" ] && ok_python "$exe" && { echo "$exe"; return; }
    done
  done
  echo "run.sh: no Python >= 3.12 found (tried \$PYTHON, python3.13, python3.12, python3, pyenv versions); install one or set PYTHON=/path/to/python3.12" >&2
  return 1
}

setup() {
  local stamp="$venv/.muse_jax_setup" want
  if [ ! -x "$venv/bin/python" ] || ! ok_python "$venv/bin/python"; then
    local py; py=$(find_python)
    echo "run.sh: creating .venv with $py ($("$py" --version 2>&1))" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >"$venv/pip.log" 2>&1 || true
  fi
  want=$(cat setup.py | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "run.sh: installing muse_jax and its dependencies into .venv (setup.py changed or first run)" >&2
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,features]" >"$venv/pip.log" 2>&1; then
      grep -v '^WARNING: Location' "$venv/pip.log" | tail -n 30 >&2
      echo "run.sh: pip install failed (full log: .venv/pip.log)" >&2; exit 1
    fi
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-job}
[ $# -gt 0 ] && shift
setup
py="$venv/bin/python"
export PYTHONUNBUFFERED=1
case "$cmd" in
  job)
    out=${MUSE_OUT:-$here/out}
    exec "$py" -m muse_jax.job --out "$out" "$@" ;;
  test)
    set +e
    # Two workers (pytest-xdist): most tests are short training runs bound by one Python thread.
    # MUSE_TEST_JOBS=0 runs everything in this process.
    "$py" -m pytest -q -n "${MUSE_TEST_JOBS:-2}" "$@" tests
    rc=$?
    set -e
    if [ $rc -eq 5 ]; then echo "run.sh: pytest collected no tests" >&2; exit 1; fi
    exit $rc ;;
  reproduce)
    out=${MUSE_OUT:-$here/out}/reproduce
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then  # ROOT, relative to where run.sh was called
      case "$1" in /*) root=$1 ;; *) root=$OLDPWD/$1 ;; esac
      shift
      set -- --root "$root" "$@"
    fi
    exec "$py" -m muse_jax.reproduce --out "$out" "$@" ;;
  main) exec "$py" -m muse_jax.main "$@" ;;
  demo) exec "$py" -m muse_jax.data.demo "$@" ;;
  build) exec "$py" -m muse_jax.data.build "$@" ;;
  py) exec "$py" "$@" ;;
  -h|--help|help) sed -n '2,12p' "$0" ;;
  *) echo "run.sh: unknown command '$cmd' (try ./run.sh help)" >&2; exit 2 ;;
esac
