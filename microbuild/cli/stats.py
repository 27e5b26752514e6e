"""`microbuild stats`: per project, what the microbuilds cost and what they saved an agent.

Read straight from the state database (no host needed): runs, pass rate, median wall time of
the runs that ran (cache answers take none), core-seconds, and the token ratio — the tokens of
every full log over the tokens of the reports the agent read instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import emit_json, show
from microbuild.store import RunRecord, Store, default_state_dir

# Enough for any real history; the store answers newest first.
MAX_RUNS = 1_000_000


@dataclass
class ProjectStats:
    project: str
    runs: int
    cached: int
    passed: int
    failed: int
    errors: int
    pass_rate: float | None
    """Passed over finished runs (cache answers included: the agent got that answer)."""
    median_wall_s: float | None
    """Over the runs that ran their checks (not cache answers)."""
    core_s: float
    report_tokens: int
    raw_tokens: int
    token_ratio: float | None
    """raw_tokens / report_tokens over the runs that have both counted."""


def project_stats(project: str, runs: Sequence[RunRecord]) -> ProjectStats:
    finished = [r for r in runs if r.status != "running"]
    passed = sum(1 for r in finished if r.status == "passed")
    walls = [r.wall_s for r in finished if not r.cached]
    counted = [r for r in runs if r.report_tokens and r.raw_tokens is not None]
    report = sum(r.report_tokens or 0 for r in counted)
    raw = sum(r.raw_tokens or 0 for r in counted)
    return ProjectStats(
        project=project,
        runs=len(runs),
        cached=sum(1 for r in runs if r.cached),
        passed=passed,
        failed=sum(1 for r in finished if r.status == "failed"),
        errors=sum(1 for r in finished if r.status == "error"),
        pass_rate=passed / len(finished) if finished else None,
        median_wall_s=statistics.median(walls) if walls else None,
        core_s=sum(r.cpu_s for r in runs),
        report_tokens=report,
        raw_tokens=raw,
        token_ratio=raw / report if report else None,
    )


def collect(store: Store, project: str | None = None) -> list[ProjectStats]:
    by_project: dict[str, list[RunRecord]] = {}
    for run in store.list_runs(project, MAX_RUNS):
        by_project.setdefault(run.project, []).append(run)
    return [project_stats(name, runs) for name, runs in sorted(by_project.items())]


def _project_key(path: Path) -> str:
    """The project a path names, as runs record it (its root); a path outside any project is
    taken as given, so the stats of a project that is gone can still be asked for."""
    from microbuild.config import find_project
    from microbuild.errors import ConfigError

    try:
        return str(find_project(path.absolute()).root)
    except ConfigError:
        return str(path.absolute())


def _cell(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


@click.command("stats")
@click.option(
    "--project",
    "project_path",
    type=click.Path(file_okay=False, path_type=Path),
    help="Only this project (a directory in it). Default: every project.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object a project.")
@click.pass_obj
def stats(app: AppContext, project_path: Path | None, as_json: bool) -> None:
    """Per project: runs, pass rate, median wall, core-seconds and token ratio (raw / report)."""
    state = app.state_dir or default_state_dir()
    project = _project_key(project_path) if project_path is not None else None
    rows: list[ProjectStats] = []
    if (state / "state.db").is_file():
        store = Store(state / "state.db")
        try:
            rows = collect(store, project)
        finally:
            store.close()
    if as_json:
        emit_json([_json(r) for r in rows])
        return
    if not rows:
        show("no runs" + (f" of {project}" if project else ""))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("PROJECT", "RUNS", "CACHED", "PASS", "MEDIAN WALL", "CORE-S", "TOKENS", "RATIO"):
        table.add_column(col, justify="left" if col == "PROJECT" else "right")
    for r in rows:
        table.add_row(
            escape(r.project),
            str(r.runs),
            str(r.cached),
            _cell(None if r.pass_rate is None else r.pass_rate * 100, ".0f", "%"),
            _cell(r.median_wall_s, ".1f", " s"),
            f"{r.core_s:.1f}",
            f"{r.report_tokens} / {r.raw_tokens}",
            _cell(r.token_ratio, ".1f", "\N{MULTIPLICATION SIGN}"),
        )
    show(table)


def _json(row: ProjectStats) -> dict[str, Any]:
    data = asdict(row)
    for key in ("pass_rate", "median_wall_s", "core_s", "token_ratio"):
        if data[key] is not None:
            data[key] = round(data[key], 3)
    return data
