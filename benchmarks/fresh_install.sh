#!/usr/bin/env bash
# The README's two commands, one after the other in ONE fresh virtual environment, as a newcomer runs them:
#   1. pip install . && vitzoo demo --blueprint smoke       (a wheel install; the demo compiles the numba kernels)
#   2. pip install -e ".[dev]" && collect the test suite    (every test module must import, e.g. test_lineage)
# It fails if anything is left inside the installed package (numba's *.nbi/*.nbc used to be, and the folder they
# kept after the editable install shadowed the package: "No module named 'vitzoo_hf.analysis.backbone'").
#
# Not a test (pip install takes minutes): run it by hand before a release, from the repository root:
#   bash benchmarks/fresh_install.sh
# The dependencies (torch & co., several GB) are taken from an existing environment through a .pth file
# (DEPS_FROM, default: the active venv or /work/venv), so only vitzoo_hf itself is installed; FULL=1 downloads
# everything from PyPI instead, exactly as a newcomer would.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export XDG_CACHE_HOME="$WORK/cache" PIP_DISABLE_PIP_VERSION_CHECK=1  # numba's cache and pip's: in here
unset NUMBA_CACHE_DIR PYTHONPATH

python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -z "${FULL:-}" ]; then
  DEPS_FROM=${DEPS_FROM:-${VIRTUAL_ENV:-/work/venv}}
  "$DEPS_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$SITE/_deps.pth"
  echo "dependencies from $DEPS_FROM (FULL=1 to download them)"
fi
leftovers() { find "$SITE/vitzoo_hf" -name '*.nb[ic]' 2>/dev/null | head -5; }

echo "+ pip install . && vitzoo demo --blueprint smoke"
"$PY" -m pip install -q "$REPO"
(cd "$WORK" && "$WORK/venv/bin/vitzoo" demo --blueprint smoke --out "$WORK/demo" --no-progress > "$WORK/demo.log" 2>&1) \
  || { tail -20 "$WORK/demo.log"; echo "FAIL: the demo failed"; exit 1; }
tail -3 "$WORK/demo.log"
[ -n "$(find "$XDG_CACHE_HOME/vitzoo_hf/numba" -name '*.nbi' 2>/dev/null)" ] || { echo "FAIL: no numba cache"; exit 1; }
[ -z "$(leftovers)" ] || { echo "FAIL: compiled caches inside the installed package:"; leftovers; exit 1; }
echo "ok: numba cached under $XDG_CACHE_HOME/vitzoo_hf/numba, nothing written into $SITE/vitzoo_hf"

echo "+ pip install -e \".[dev]\" && collect the tests"
"$PY" -m pip install -q -e "$REPO[dev]"
[ ! -e "$SITE/vitzoo_hf" ] || { echo "FAIL: $SITE/vitzoo_hf survived the editable install:"; ls -R "$SITE/vitzoo_hf" | head; exit 1; }
(cd "$REPO" && "$PY" -m pytest --collect-only -q tests > "$WORK/collect.log" 2>&1) \
  || { tail -20 "$WORK/collect.log"; echo "FAIL: collection errors"; exit 1; }
tail -1 "$WORK/collect.log"
(cd "$WORK" && "$PY" -c 'import vitzoo_hf.analysis.backbone as b, vitzoo_hf; print("vitzoo_hf from", vitzoo_hf.__file__)')
echo "ok: both commands in one environment"
