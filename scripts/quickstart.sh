#!/usr/bin/env bash
# Install microbuild, then validate a real project nobody here wrote (pluggy, from PyPI):
# `microbuild validate` builds its snapshot (dependencies installed once, with network), creates
# its sidecar (no network), syncs the working tree and runs the project's own tests there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
mb="$PWD/.venv/bin/microbuild"
py="$PWD/.venv/bin/python"

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
cleanup() {
    ids=$("$mb" sidecar list --json | "$py" -c 'import json, sys; print(" ".join(s["id"] for s in json.load(sys.stdin)))')
    [ -z "$ids" ] || "$mb" sidecar destroy $ids >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
echo "microbuild: validating pluggy (its snapshot is built on first use; its tests run in a sidecar with no network)" >&2
"$mb" validate
echo "microbuild: validating again: the tree did not change, so the answer comes from the cache" >&2
"$mb" validate
