#!/usr/bin/env bash
# `make wheel-check`: builds the wheel as `python -m build --wheel` does for a release, installs it into a clean
# temporary venv and runs the installed `segdiff --help`; also checks the wheel holds every module of src/segdiff.
# To stay fast and offline-capable, the temporary venv borrows the dependencies (torch, ...) already installed in
# $VENV through a .pth line (searched after its own site-packages); segdiff itself comes only from the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
py="$VENV/bin/python"
die() {
    echo "wheel-check: error: $*" >&2
    exit 1
}
[ -x "$py" ] || die "$VENV is missing: run make env-dev first"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# from a clean copy of what the wheel is made of: an in-place build would pick up stale files from build/lib
mkdir "$tmp/tree"
cp -r pyproject.toml README.md src "$tmp/tree/"
find "$tmp/tree" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
echo "wheel-check: python -m build --wheel"
"$py" -m build --wheel --outdir "$tmp/dist" "$tmp/tree" >"$tmp/build.log" 2>&1 || {
    tail -n 20 "$tmp/build.log" >&2
    die "python -m build --wheel failed (log above)"
}
whl=$(ls "$tmp"/dist/segdiff-*.whl)
echo "wheel-check: built $(basename "$whl")"

# every module of the source tree is in the wheel
"$py" - "$whl" <<'PY'
import sys, zipfile
from pathlib import Path

src = {p.relative_to("src").as_posix() for p in Path("src/segdiff").rglob("*.py")}
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = sorted(src - names)
if missing:
    sys.exit(f"wheel-check: error: the wheel lacks {len(missing)} module(s): {', '.join(missing[:5])}")
print(f"wheel-check: the wheel holds all {len(src)} modules of src/segdiff")
PY

# --without-pip: the venv's own pip and setuptools would shadow $VENV's; pip itself is borrowed from $VENV too
"$py" -m venv --without-pip "$tmp/venv"
tpy="$tmp/venv/bin/python"
deps=$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$tpy" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' | {
    read -r site
    echo "$deps" >"$site/zz_wheel_check_deps.pth"
}
"$tpy" -m pip install --quiet --no-deps --no-index "$whl" || die "pip could not install $(basename "$whl")"
"$tpy" -m pip check >"$tmp/check.log" 2>&1 || {
    cat "$tmp/check.log" >&2
    die "the installed wheel's dependencies are not satisfied (pip check above)"
}
origin=$("$tpy" -c 'import segdiff; print(segdiff.__file__)')
case "$origin" in "$tmp/venv/"*) ;; *) die "segdiff was imported from $origin, not from the installed wheel" ;; esac
"$tmp/venv/bin/segdiff" --help >"$tmp/help.txt" || die "the installed 'segdiff --help' failed"
head -n 1 "$tmp/help.txt"
echo "wheel-check: ok ($(basename "$whl") installs into a clean venv; segdiff --help runs)"
