#!/usr/bin/env bash
# Creates or refreshes the project's virtual environment (used by `make demo`, `make test`, `make wheel-check`).
#
#   tools/setup-env.sh          torch + segdiff (editable)
#   tools/setup-env.sh dev      the same plus the dev extra (pytest, ruff, build, test oracles)
#
# Safe to run again: a second run only checks stamp files in $VENV/.segdiff/ (about a second) and reinstalls
# segdiff only when pyproject.toml changed, torch only when TORCH_* changed.
#
# Settings (environment; the Makefile passes its variables of the same names):
#   PYTHON                interpreter that creates the venv (default python3; needs 3.10 or newer)
#   VENV                  where the venv lives (default .venv)
#   TORCH_SPEC            torch requirement (default torch==2.13.0)
#   TORCH_DEVICE          auto | cpu | cuda (default auto: cuda where `nvidia-smi -L` lists a GPU)
#   TORCH_INDEX_URL       package index for torch on cpu (default: pip's configured index)
#   TORCH_CUDA_INDEX_URL  package index for torch on cuda (default: pip's configured index, a CUDA build on Linux)
#   V=1                   show pip's output (default: it goes to $VENV/.segdiff/pip.log)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_DEVICE=${TORCH_DEVICE:-auto}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
TORCH_CUDA_INDEX_URL=${TORCH_CUDA_INDEX_URL:-}
EXTRA=${1:-}

say() { echo "segdiff setup: $*"; }
die() {
    echo "segdiff setup: error: $*" >&2
    exit 1
}

case "$EXTRA" in "" | dev) ;; *) die "unknown extra '$EXTRA' (expected nothing or 'dev')" ;; esac
case "$TORCH_DEVICE" in auto | cpu | cuda) ;; *) die "TORCH_DEVICE=$TORCH_DEVICE: expected auto, cpu or cuda" ;; esac

VERSION_OK='import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'
VERSION_OF='import sys; print("%d.%d" % sys.version_info[:2])'

# --- 1. the virtual environment -------------------------------------------------------------------------------
py="$VENV/bin/python"
if [ -e "$py" ] && ! "$py" -c 'import sys' >/dev/null 2>&1; then
    say "$VENV is broken (its python does not start, e.g. the Python it was made from is gone): recreating it"
    rm -rf "$VENV"
fi
if [ -e "$py" ]; then
    "$py" -c "$VERSION_OK" ||
        die "$VENV has Python $("$py" -c "$VERSION_OF"); segdiff needs 3.10 or newer: remove it (make clean-env) and rerun with PYTHON=python3.X (3.10 or newer)"
else
    command -v "$PYTHON" >/dev/null 2>&1 ||
        die "no '$PYTHON' found: install Python 3.10 or newer (e.g. sudo apt-get install python3 python3-venv), or name one with PYTHON=/path/to/python3.X"
    ver=$("$PYTHON" -c "$VERSION_OF" 2>/dev/null) ||
        die "'$PYTHON' does not run: install Python 3.10 or newer (e.g. sudo apt-get install python3 python3-venv), or name one with PYTHON=/path/to/python3.X"
    "$PYTHON" -c "$VERSION_OK" ||
        die "'$PYTHON' is Python $ver; segdiff needs 3.10 or newer: install one (e.g. sudo apt-get install python3.11 python3.11-venv) and rerun with PYTHON=python3.11"
    say "creating $VENV with $PYTHON (Python $ver)"
    venv_log=$(mktemp)
    if ! "$PYTHON" -m venv "$VENV" >"$venv_log" 2>&1 || ! "$py" -m pip --version >>"$venv_log" 2>&1; then
        rm -rf "$VENV"
        [ "${V:-}" = 1 ] && cat "$venv_log" >&2
        rm -f "$venv_log"
        die "'$PYTHON' (Python $ver) cannot create a virtual environment with pip (no venv/ensurepip module): install it, e.g. sudo apt-get install python$ver-venv (or python3-venv), then rerun"
    fi
    rm -f "$venv_log"
fi

state="$VENV/.segdiff"
mkdir -p "$state"
log="$state/pip.log"

# Runs pip; on failure prints one line: no network to the index, or pip's own error and where its log is.
pip_install() {
    local what=$1
    shift
    echo "=== $(date -u +%FT%TZ) pip install $*" >>"$log"
    local rc=0
    if [ "${V:-}" = 1 ]; then
        "$py" -m pip install --progress-bar off "$@" 2>&1 | tee -a "$log" || rc=$?
    else
        "$py" -m pip install --progress-bar off "$@" >>"$log" 2>&1 || rc=$?
    fi
    [ "$rc" = 0 ] && return 0
    local tail_log
    # shellcheck disable=SC2016  # a sed script, not shell
    tail_log=$(sed -n '/^=== /h; /^=== /!H; ${x; p}' "$log") # this attempt's lines only
    if grep -q -i -E 'NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|Network is unreachable|Connection refused|ConnectTimeoutError|ReadTimeoutError|timed out|ProxyError|Could not fetch URL|ConnectionError|Connection reset|SSLError' <<<"$tail_log"; then
        die "cannot reach the package index while installing $what (no network, proxy or index down): check the connection (or HTTPS_PROXY / PIP_INDEX_URL) and rerun; pip's log: $log"
    fi
    local err
    err=$(grep -E '^ERROR:' <<<"$tail_log" | head -n 1 || true)
    err=${err#ERROR: }
    die "pip could not install $what${err:+: ${err%.}}; pip's log: $log"
}

has_dist() { "$py" -c "import importlib.metadata as m, sys; [m.version(d) for d in sys.argv[1:]]" "$@" >/dev/null 2>&1; }

# --- 2. torch ---------------------------------------------------------------------------------------------------
device=$TORCH_DEVICE
torch_key="$TORCH_SPEC|$TORCH_DEVICE|$TORCH_INDEX_URL|$TORCH_CUDA_INDEX_URL"
if [ "$(cat "$state/torch" 2>/dev/null || true)" != "$torch_key" ] || ! has_dist torch; then
    if [ "$device" = auto ]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
            device=cuda
        else
            device=cpu
        fi
    fi
    args=()
    if [ "$device" = cuda ]; then
        [ -n "$TORCH_CUDA_INDEX_URL" ] && args+=(--index-url "$TORCH_CUDA_INDEX_URL")
        say "NVIDIA GPU found: installing $TORCH_SPEC (CUDA build) into $VENV; a few minutes the first time"
    else
        [ -n "$TORCH_INDEX_URL" ] && args+=(--index-url "$TORCH_INDEX_URL")
        say "no NVIDIA GPU found: installing $TORCH_SPEC (CPU) into $VENV; a few minutes the first time"
    fi
    # a torch of the same version but another build (CPU vs CUDA) would count as already installed
    if [ -f "$state/torch" ]; then
        "$py" -m pip uninstall -y torch >>"$log" 2>&1 || true
    fi
    rm -f "$state/torch"
    pip_install "$TORCH_SPEC" ${args[@]+"${args[@]}"} "$TORCH_SPEC"
    cuda=$("$py" -c 'import torch; print(torch.version.cuda or "")' 2>>"$log") || die "torch was installed but does not import; pip's log: $log"
    if [ "$device" = cpu ] && [ -n "$cuda" ]; then
        say "note: this torch is a CUDA $cuda build (it runs on the CPU too, but is a large download); for the CPU-only wheel, set TORCH_INDEX_URL to PyTorch's CPU wheel index (torch is then reinstalled)"
    elif [ "$device" = cuda ] && [ -z "$cuda" ]; then
        say "note: this torch is a CPU-only build although an NVIDIA GPU is present; set TORCH_CUDA_INDEX_URL to a CUDA wheel index (torch is then reinstalled)"
    fi
    echo "$torch_key" >"$state/torch"
fi

# --- 3. segdiff itself (editable), with the extra -------------------------------------------------------------
pkg_key="$("$py" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' pyproject.toml)|$PWD"
stamp="$state/segdiff${EXTRA:+-$EXTRA}"
need=(segdiff)
[ "$EXTRA" = dev ] && need+=(pytest build)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$pkg_key" ] || ! has_dist "${need[@]}"; then
    target=.${EXTRA:+[$EXTRA]}
    say "installing segdiff ($target, editable) and its dependencies into $VENV"
    pip_install "segdiff ($target)" -e "$target"
    echo "$pkg_key" >"$stamp"
    if [ "$EXTRA" = dev ]; then
        echo "$pkg_key" >"$state/segdiff" # the dev install holds the plain one
    fi
fi
say "$VENV is ready (torch $("$py" -c 'import importlib.metadata as m; print(m.version("torch"))'))"
