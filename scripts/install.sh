#!/usr/bin/env bash
# Install microbuild into ./.venv, with the system packages it needs (Debian/Ubuntu).
# Idempotent: a second run only checks. Usage: scripts/install.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

need_apt=()
command -v git >/dev/null 2>&1 || need_apt+=(git)
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
    echo "error: microbuild needs Python >= 3.11 as python3 (found: $(python3 --version 2>&1))" >&2
    exit 2
}
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=("python3-venv")
# util-linux gives nsenter/unshare for debugging sidecars; procps gives ps inside them.
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v ps >/dev/null 2>&1 || need_apt+=(procps)
# libseccomp builds the sidecars' seccomp filter (through the pyseccomp binding).
ldconfig -p 2>/dev/null | grep 'libseccomp\.so\.2' >/dev/null || need_apt+=(libseccomp2)
# mkfs.ext4 formats the template of the sidecars' size-limited disk images.
command -v mkfs.ext4 >/dev/null 2>&1 || need_apt+=(e2fsprogs)
# Developers' benchmarks compare sync against rsync.
if [ -n "$extras" ]; then command -v rsync >/dev/null 2>&1 || need_apt+=(rsync); fi

if [ ${#need_apt[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: please install: ${need_apt[*]} (no apt-get on this machine)" >&2
        exit 2
    fi
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "microbuild: installing system packages: ${need_apt[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=".venv/.microbuild-installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check \
        --config-settings editable_mode=compat -e ".${extras}"
    touch "$stamp"
fi
# Bytecode for microbuild's own modules, also where PYTHONDONTWRITEBYTECODE keeps Python from
# writing it: without it every CLI call compiles what it imports (~150 ms for validate).
.venv/bin/python -m compileall -q -j 0 microbuild >/dev/null
