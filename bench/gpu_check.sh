#!/usr/bin/env bash
# One GPU check of the real Wan2.2 A14B shapes, in under 8 minutes: bench/gpu_check.sh WHEELS_DIR [options]
#
# WHEELS_DIR holds Python 3.12 manylinux wheels (bench/README.md gives the `pip download` line).
# Only the pinned packages this Python lacks (or has in a version the check cannot use) are
# installed, with --no-index --no-deps, into .gpu_check_site/ next to the repository (put
# first on PYTHONPATH; the machine's own packages are left as they are). Then
# `python -m bench.gpu_check` runs with the time left; options (--quick, --layers N, --out F,
# ...) are passed on. The JSON goes to $OUT/gpu_check.json when OUT is set, else bench/results/.
set -u
started=$(date +%s)
total_s=${GPU_CHECK_TOTAL_S:-470}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 2
python=${PYTHON:-python3}
wheels=${1:-}
if [ -z "$wheels" ] || [ "${wheels#-}" != "$wheels" ]; then
  echo "usage: bench/gpu_check.sh WHEELS_DIR [--quick] [--out FILE] [--layers N]" >&2
  exit 2
fi
shift
site="$here/.gpu_check_site"
export PYTHONPATH="$site:$here${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$python" -m bench.gpu_deps)
if [ -n "$missing" ]; then
  if [ ! -d "$wheels" ]; then
    echo "gpu_check: needs $missing but $wheels is not a folder of wheels" >&2
    exit 2
  fi
  echo "gpu_check: installing $missing from $wheels into $site" >&2
  # shellcheck disable=SC2086
  "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
    --find-links "$wheels" --target "$site" --upgrade $missing || exit 2
  still=$("$python" -m bench.gpu_deps)
  if [ -n "$still" ]; then
    echo "gpu_check: still missing after the install: $still" >&2
    exit 2
  fi
fi
elapsed=$(( $(date +%s) - started ))
left=$(( total_s - elapsed - 20 ))
echo "gpu_check: ${elapsed} s to set up; ${left} s for the check" >&2
exec timeout --kill-after=5 $(( left + 15 )) "$python" -m bench.gpu_check --deadline "$left" "$@"
