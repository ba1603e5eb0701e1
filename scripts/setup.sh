#!/usr/bin/env bash
# Creates (once) and locates the two environments, cached outside the clone:
#   $SPIKEDIFF_CACHE/envs/main-<hash>   Python 3.11: torch, norse, nir, ...
#   $SPIKEDIFF_CACHE/envs/lava-<hash>   Python 3.10: lava-dl, nir
# <hash> covers the requirement files and the interpreter version, so every
# clone with the same requirements reuses the same environment, and a changed
# requirement builds a new one beside it. Builds go to a temporary folder that
# is renamed into place when complete, so a killed build is never reused.
# Source this file: it exports SPIKEDIFF_PY (main) and SPIKEDIFF_LAVA_PY.
# Set SPIKEDIFF_SKIP_LAVA=1 to skip the Lava environment.
# This file is sourced: remember the caller's -e/-u/pipefail to restore them.
_saved_flags="$-"; _saved_pipefail="$(shopt -qo pipefail && echo -o || echo +o)"
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_cache="${SPIKEDIFF_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spikediff}"
mkdir -p "$_cache/envs"

_find_python() {  # $1 = version like 3.11
    local v="$1" var="SPIKEDIFF_PYTHON${1/./}" p
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    if command -v "python$v" >/dev/null 2>&1 && "python$v" -c 'pass' 2>/dev/null; then
        command -v "python$v"; return; fi
    local root; root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
    for p in "$root"/versions/"$v".*/bin/python"$v"; do
        [ -x "$p" ] && { echo "$p"; return; }; done
    echo "error: Python $v not found. Install it, or set $var to its interpreter." >&2
    return 1
}

_build_env() {  # $1 = name, $2 = python version, rest = requirement files
    local name="$1" pyver="$2"; shift 2
    local py; py="$(_find_python "$pyver")"
    local key; key="$( { "$py" -c 'import sys; print(sys.version)'; cat "$@"; } | sha256sum | cut -c1-12)"
    local dest="$_cache/envs/$name-$key"
    if [ ! -f "$dest/.complete" ]; then
        exec 9>"$_cache/envs/$name-$key.lock"
        flock 9
        if [ ! -f "$dest/.complete" ]; then
            echo "setup: building the $name environment in $dest (once; a few minutes)" >&2
            # Build beside the target, then rename: a killed build never looks
            # complete. Only `bin/python -m ...` is used, which survives renaming.
            local tmp="$dest.build"
            rm -rf "$tmp"
            "$py" -m venv "$tmp"
            "$tmp/bin/python" -m pip install -q --upgrade pip >&2
            local f
            for f in "$@"; do
                case "$f" in
                    *nodeps*) "$tmp/bin/python" -m pip install -q --no-deps -r "$f" >&2 ;;
                    *) "$tmp/bin/python" -m pip install -q -r "$f" >&2 ;;
                esac
            done
            rm -rf "$dest"; mv "$tmp" "$dest"
            touch "$dest/.complete"
        fi
        exec 9>&-
    fi
    echo "$dest/bin/python"
}

SPIKEDIFF_PY="$(_build_env main 3.11 "$_repo/requirements/main.txt" "$_repo/requirements/main-nodeps.txt")"
export SPIKEDIFF_PY
if [ "${SPIKEDIFF_SKIP_LAVA:-0}" != 1 ]; then
    SPIKEDIFF_LAVA_PY="$(_build_env lava 3.10 "$_repo/requirements/lava.txt")"
    export SPIKEDIFF_LAVA_PY
fi
# Third-party NIR consumers whose pins clash with ours (sinabs pins nir <= 1.0.4)
# get their own cached environments, built only when asked for:
#   SPIKEDIFF_CONSUMERS="sinabs spyx" source scripts/setup.sh
# exports SPIKEDIFF_SINABS_PY, SPIKEDIFF_SPYX_PY (requirements/consumer-NAME.txt).
for _c in ${SPIKEDIFF_CONSUMERS:-}; do
    _var="SPIKEDIFF_$(echo "$_c" | tr '[:lower:]-' '[:upper:]_')_PY"
    printf -v "$_var" '%s' "$(_build_env "consumer-$_c" 3.11 "$_repo/requirements/consumer-$_c.txt")"
    export "${_var?}"
done
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # see spikediff/cliutil.py: passive_openmp
export PYTHONPATH="$_repo${PYTHONPATH:+:$PYTHONPATH}"
set +eu; set $_saved_pipefail pipefail
case "$_saved_flags" in *e*) set -e ;; esac
case "$_saved_flags" in *u*) set -u ;; esac
