#!/usr/bin/env bash
# muse_jax's one entry point: sets itself up on a fresh machine, then runs a job.
#   ./run.sh                 the main job: demo tree -> dataset -> train both targets -> results table
#   ./run.sh test [ARGS]     the whole test suite, 2 workers (ARGS go to pytest; MUSE_TEST_JOBS)
#   ./run.sh reproduce [ROOT] [ARGS]  the paper's pipeline (unimodal, early and late fusion runs per
#                            target) -> results table; on the demo tree, or on ROOT (a MuSe copy)
#   ./run.sh main ARGS       python -m muse_jax.main ARGS
#   ./run.sh demo ARGS       python -m muse_jax.data.demo ARGS   (write a demo MuSe-layout tree)
#   ./run.sh build ARGS      python -m muse_jax.data.build ARGS  (build the tfds dataset of a tree)
#   ./run.sh compare A B [ARGS]  python -m muse_jax.compare A B ARGS  (is run B better than run A?)
#   ./run.sh py ARGS         the project's python, e.g. ./run.sh py benchmarks/data_bench.py
#   ./run.sh accel           which JAX plugin setup installs here: cpu, cuda12, cuda13 (nvidia-smi's
#                            driver: R580+ -> cuda13) or tpu (/dev/accel<N>)
#   ./run.sh upgrade         newest versions of every dependency, the whole suite, and constraints.txt
#                            rewritten with them only if it passed
#   ./run.sh wheels DIR      (where a registry is reachable) the wheels a GPU slot's image lacks
#                            (tensorflow-datasets and what it needs; Python 3.12, x86-64) into DIR
#   ./run.sh device-check WHEELS [OUT]  (on that slot, offline) installs WHEELS over its python3,
#                            runs benchmarks/device_check.py and the accelerator tests; table, JSON
#                            and logs into OUT (default out/device_check)
# Environment: PYTHON picks the interpreter (>= 3.12); MUSE_OUT the output folder of the main job
# (reproduce writes to $MUSE_OUT/reproduce); MUSE_JAX_ACCEL=cpu|cuda12|cuda13|tpu overrides accel.
# Installs follow constraints.txt (the versions the suite passed with).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
venv="$here/.venv"
constraints="$here/constraints.txt"
# What a GPU slot's image (Python 3.12 with jax, flax, optax, orbax-checkpoint, absl-py, numpy,
# pandas, matplotlib, pytest, etils, protobuf, pyarrow, ...) lacks of muse_jax's dependencies.
device_wheels="tensorflow-datasets array-record ml-collections tensorboardX dm-tree immutabledict
  promise simple-parsing docstring-parser tensorflow-metadata googleapis-common-protos termcolor
  toml"

pin() {  # the constraints.txt line of a package, whatever its spelling (array_record, array-record)
  local want n line
  want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
  while IFS= read -r line; do
    n=$(echo "${line%%==*}" | tr 'A-Z_.' 'a-z--')
    [ "$n" = "$want" ] && { echo "$line"; return 0; }
  done < "$constraints"
  echo "run.sh: $1 is not pinned in constraints.txt" >&2; return 1
}

wheels() {  # the device_wheels at their pinned versions, for CPython 3.12 on x86-64 Linux
  local dir=${1:?usage: ./run.sh wheels DIR} py name spec plats=()
  py=$(find_python)
  mkdir -p "$dir"
  for n in $(seq 17 39); do plats+=(--platform "manylinux_2_${n}_x86_64"); done
  plats+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  for name in $device_wheels; do
    spec=$(pin "$name")
    # A binary wheel for that Python; a package published only as source is built here (all of
    # these are pure Python then).
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${plats[@]}" -d "$dir" "$spec" 2>/dev/null ||
      "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$dir" "$spec" 2> >(grep -v "^WARNING: Location" >&2) ||
      { echo "run.sh: no wheel of $spec" >&2; return 1; }
  done
  du -sh "$dir" >&2
  ls "$dir"
}

device_check() {  # offline: WHEELS over this machine's python3, then the device check and tests
  local whl=${1:?usage: ./run.sh device-check WHEELS [OUT]} out=${2:-$here/out/device_check}
  local py=${PYTHON:-python3} site="$here/.device-site" rc=0
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  "$py" -c 'import jax, flax, optax, orbax.checkpoint, numpy, pandas, matplotlib, pytest' ||
    { echo "run.sh: $py lacks what the image should hold (jax, flax, optax, orbax-checkpoint, numpy, pandas, matplotlib, pytest)" >&2; return 1; }
  rm -rf "$site"
  "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --target "$site" "$whl"/*.whl || return 1
  export PYTHONPATH="$here:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  "$py" -c 'import jax; print("device-check:", jax.__version__, jax.default_backend(), jax.devices())' 2>&1 | tee "$out/devices.log"
  # Sections that would start after 180 s are skipped, the check is stopped at 300 s (its JSON
  # keeps every finished section) and the tests at 120 s: the whole command stays under 8 min.
  timeout 300 "$py" benchmarks/device_check.py --budget 180 --out "$out/device_check.json" \
      --work "$out/work" ${MUSE_DEVICE_CHECK_ARGS:-} 2>&1 | tee "$out/device_check.log" || rc=1
  rm -rf "$out/work"
  timeout 120 "$py" -m pytest -q -p no:cacheprovider tests/test_accelerator.py 2>&1 |
    tee "$out/tests.log" || rc=1
  return $rc
}

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

accelerator() {  # the JAX plugin this machine needs: cpu, cuda12, cuda13 or tpu
  local driver
  if [ -n "${MUSE_JAX_ACCEL:-}" ]; then
    case "$MUSE_JAX_ACCEL" in cpu|cuda12|cuda13|tpu) echo "$MUSE_JAX_ACCEL"; return ;; esac
    echo "run.sh: MUSE_JAX_ACCEL=$MUSE_JAX_ACCEL: use cpu, cuda12, cuda13 or tpu" >&2; return 1
  fi
  # nvidia-smi without a working driver prints its failure on stdout: only a version counts.
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1) || driver=
  [[ "$driver" =~ ^[0-9]+\. ]] || driver=
  if [ -n "$driver" ]; then  # CUDA 13 wheels need an R580+ driver, CUDA 12 ones R525+
    if [ "${driver%%.*}" -ge 580 ] 2>/dev/null; then echo cuda13; else echo cuda12; fi
  elif compgen -G '/dev/accel[0-9]*' >/dev/null; then  # TPU VMs (v4, v5p); others: MUSE_JAX_ACCEL=tpu
    echo tpu
  else
    echo cpu
  fi
}

setup() {
  local stamp="$venv/.muse_jax_setup" want accel
  if [ ! -x "$venv/bin/python" ] || ! ok_python "$venv/bin/python"; then
    local py; py=$(find_python)
    echo "run.sh: creating .venv with $py ($("$py" --version 2>&1))" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >"$venv/pip.log" 2>&1 || true
  fi
  accel=$(accelerator)
  want="$(cat setup.py "$constraints" 2>/dev/null | sha256sum | cut -d' ' -f1) $accel"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "run.sh: installing muse_jax and its dependencies into .venv (setup.py or constraints.txt changed, or first run)" >&2
    local pins=(-c "$constraints")
    [ -n "${MUSE_JAX_UNPINNED:-}" ] && pins=(--upgrade --upgrade-strategy eager)
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" -e ".[test,features,search]" >"$venv/pip.log" 2>&1; then
      grep -v '^WARNING: Location' "$venv/pip.log" | tail -n 30 >&2
      echo "run.sh: pip install failed (full log: .venv/pip.log)" >&2; exit 1
    fi
    # Another machine's plugin (a venv set up for cuda12, now cpu or cuda13) goes first.
    local others keep="^jax-$accel-"
    [ "$accel" = tpu ] && keep='^libtpu$'
    others=$("$venv/bin/python" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 |
             grep -E '^(jax-cuda[0-9]+-(plugin|pjrt)|libtpu)$' | grep -v "$keep" || true)
    if [ -n "$others" ]; then
      echo "run.sh: removing $(echo $others) (not this machine's accelerator: $accel)" >&2
      "$venv/bin/python" -m pip uninstall -q -y $others >>"$venv/pip.log" 2>&1
    fi
    if [ "$accel" != cpu ]; then  # the plugin of the jax just installed (MUSE_JAX_ACCEL=cpu: none)
      local jax_version; jax_version=$("$venv/bin/python" -c 'import jax; print(jax.__version__)')
      echo "run.sh: this machine has a $accel accelerator: installing jax[$accel]==$jax_version" >&2
      if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "jax[$accel]==$jax_version" >>"$venv/pip.log" 2>&1; then
        grep -v '^WARNING: Location' "$venv/pip.log" | tail -n 30 >&2
        echo "run.sh: installing jax[$accel] failed (full log: .venv/pip.log; MUSE_JAX_ACCEL=cpu skips it)" >&2; exit 1
      fi
    fi
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-job}
[ $# -gt 0 ] && shift
case "$cmd" in  # commands that need no .venv (the device slot has no registry to make one)
  accel) accelerator; exit ;;  # what setup installs JAX for, nothing else
  wheels) wheels "$@"; exit ;;
  device-check) set -o pipefail; device_check "$@"; exit ;;
esac
if [ "$cmd" = upgrade ]; then  # newest versions, the suite, then the lock (only if it passed)
  export MUSE_JAX_UNPINNED=1
  rm -f "$venv/.muse_jax_setup"
  setup
  "$venv/bin/python" -m pytest -q -n "${MUSE_TEST_JOBS:-2}" tests || {
    echo "run.sh: the suite failed with the newest versions; constraints.txt left as it was (.venv now holds the new versions: rm -rf .venv to go back)" >&2; exit 1; }
  { sed -n '1,/^# it passed/p' "$constraints"
    "$venv/bin/python" -m pip freeze --exclude-editable 2>/dev/null |
      grep -ivE '^(muse.jax|jax-cuda|libtpu|nvidia-)'; } > "$constraints.new"
  mv "$constraints.new" "$constraints"
  setup  # the stamp of the new lock
  echo "run.sh: constraints.txt rewritten with the versions the suite just passed with; commit it" >&2
  exit 0
fi
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
  compare) cd "$OLDPWD"; exec "$py" -m muse_jax.compare "$@" ;;  # paths as the caller typed them
  py) exec "$py" "$@" ;;
  -h|--help|help) sed -n '2,23p' "$0" ;;
  *) echo "run.sh: unknown command '$cmd' (try ./run.sh help)" >&2; exit 2 ;;
esac
