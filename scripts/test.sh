#!/usr/bin/env bash
# Install (if needed), lint, type-check and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the fast path.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
.venv/bin/ruff check microbuild tests benchmarks
.venv/bin/ruff format --check microbuild tests benchmarks
.venv/bin/mypy
exec .venv/bin/pytest "$@"
