"""`microbuild runs [show RUN_ID]`: past microbuilds, their reports and their full logs."""

from __future__ import annotations

import sys
from typing import Any

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import age, emit_json, show
from microbuild.client import Client, HostError


def _run_id(ident: str) -> str:
    """Run ids go into URL paths: refuse anything that could change the path."""
    if not ident or len(ident) > 64 or not all(c.isalnum() or c == "_" for c in ident):
        raise HostError(404, "not_found", f"no run with id {ident!r}")
    return ident


# -- the HTTP calls (microbuild.client.Client has the microbuild itself and the cache lookup) --


def list_runs(client: Client, project: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit}
    if project:
        params["project"] = project
    return client._request("GET", "/v1/runs", params=params)  # type: ignore[no-any-return]


def get_run(client: Client, run_id: str, report_tokens: int | None = None) -> dict[str, Any]:
    params = {} if report_tokens is None else {"report_tokens": report_tokens}
    return client._request(  # type: ignore[no-any-return]
        "GET", f"/v1/runs/{_run_id(run_id)}", params=params
    )


def _budget(app: AppContext) -> int | None:
    """The report budget of the project we are in; the host's default outside any project."""
    from microbuild.errors import ConfigError

    try:
        return app.project().config.report_tokens
    except ConfigError:
        return None


def get_log(client: Client, run_id: str, check: str) -> bytes:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}", check):
        raise HostError(404, "not_found", f"run {run_id} has no log of a check named {check!r}")
    path = f"/v1/runs/{_run_id(run_id)}/logs/{check}"
    with client._stream("GET", path) as response:
        return response.read()


# -- commands --------------------------------------------------------------------------------

_STYLES = {"passed": "green", "failed": "red", "error": "yellow", "running": "cyan"}


def _checks_cell(run: dict[str, Any]) -> str:
    checks = run["checks"]
    passed = sum(1 for c in checks if c["status"] == "passed")
    broken = next((c["name"] for c in checks if c["status"] not in ("passed", "skipped")), None)
    cell = f"{passed}/{len(checks)}"
    return f"{cell} ({broken})" if broken else cell


@click.group(invoke_without_command=True)
@click.option("-a", "--all", "all_projects", is_flag=True, help="Runs of every project.")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def runs(ctx: click.Context, all_projects: bool, limit: int, as_json: bool) -> None:
    """List microbuild runs (of this project, or of all with --all), newest first."""
    if ctx.invoked_subcommand is not None:
        return
    app: AppContext = ctx.obj
    project = None if all_projects else str(app.project().root)
    records = list_runs(app.client, project, limit)
    if as_json:
        emit_json(records)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATUS", "CHECKS", "WALL", "CORE-S", "TREE", "WHEN"):
        table.add_column(col, no_wrap=col in ("ID", "TREE"))
    if all_projects:
        table.add_column("PROJECT")
    for r in records:
        status = r["status"] + (" (cached)" if r.get("cached") else "")
        style = _STYLES.get(r["status"])
        row = [
            r["id"],
            f"[{style}]{escape(status)}[/]" if style else escape(status),
            escape(_checks_cell(r)),
            f"{r['wall_s']:.1f} s",
            f"{r['cpu_s']:.1f}",
            r["tree"][:10],
            f"{age(r['started_at'])} ago",
        ]
        if all_projects:
            row.append(escape(r["project"]))
        table.add_row(*row)
    show(table if records else "no runs")


@runs.command("show")
@click.argument("run_id")
@click.option("--log", "check", metavar="CHECK", help="Print the full log of this check.")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.pass_obj
def show_(app: AppContext, run_id: str, check: str | None, as_json: bool) -> None:
    """Print a run's report, or with --log CHECK the full log of one of its checks."""
    if check is not None:
        data = get_log(app.client, run_id, check)
        if as_json:
            emit_json({"run": run_id, "check": check, "log": data.decode(errors="replace")})
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return
    record = get_run(app.client, run_id, _budget(app))
    if as_json:
        emit_json(record)
    else:
        click.echo(record["report"].rstrip("\n"))
