#!/usr/bin/env bash
# Install microbuild, then validate a real project nobody here wrote (pluggy, from PyPI) in a
# sidecar: build its snapshot (dependencies installed once, with network), create a sidecar
# (no network) and run the project's own tests there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
mb="$PWD/.venv/bin/microbuild"

work=$(mktemp -d "${TMPDIR:-/tmp}/microbuild-quickstart.XXXXXX")
project="$work/pluggy-1.5.0"
echo "microbuild: downloading the pluggy 1.5.0 sdist into $work" >&2
.venv/bin/python -m pip download -q --no-deps --no-binary :all: pluggy==1.5.0 -d "$work"
tar --no-same-owner -xzf "$work/pluggy-1.5.0.tar.gz" -C "$work"
cat > "$project/microbuild.toml" <<'TOML'
[snapshot]
setup = [
    "python3 -m venv .venv",
    ".venv/bin/pip install -q -e . pytest==8.3.3",
]
inputs = ["pyproject.toml", "setup.py"]

[sidecar]
memory = "2GiB"
network = "none"
# pluggy's version comes from git tags, which an sdist does not have.
env = { SETUPTOOLS_SCM_PRETEND_VERSION = "1.5.0" }

[[check]]
name = "tests"
command = "python -m pytest -x -q"
TOML
git -C "$project" init -q
git -C "$project" add -A
git -C "$project" -c user.name=quickstart -c user.email=quickstart@microbuild.invalid \
    commit -qm "pluggy 1.5.0 sdist"

cd "$project"
"$mb" snapshot build
sidecar=$("$mb" sidecar create)
trap '"$mb" sidecar destroy "$sidecar" >/dev/null; rm -rf "$work"' EXIT
echo "microbuild: running pluggy's tests in sidecar $sidecar (no network)" >&2
"$mb" sidecar exec "$sidecar" -- python -m pytest -x -q
