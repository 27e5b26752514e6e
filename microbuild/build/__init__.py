"""Microbuilds: the project's checks run in a sidecar, sequentially and fail-fast, recorded
with their logs, cached by (tree, config hash, snapshot), and reported in plain text.

`runner` runs and records them; `microbuild.report.render` turns a run into the report an agent
reads.
"""

from __future__ import annotations

from microbuild.build.runner import (
    EXIT_CODES,
    Cancellation,
    exit_code_for,
    find_cached,
    run_checks,
    run_json,
    run_microbuild,
)
from microbuild.report.render import plain_report

__all__ = [
    "EXIT_CODES",
    "Cancellation",
    "exit_code_for",
    "find_cached",
    "plain_report",
    "run_checks",
    "run_json",
    "run_microbuild",
]
