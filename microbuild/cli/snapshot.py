"""`microbuild snapshot build|list|prune`."""

from __future__ import annotations

from typing import Any

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import Progress, age, emit_json, show, size


def ensure_snapshot(
    app: AppContext, progress: Progress, *, rebuild: bool = False, runtime: str | None = None
) -> dict[str, Any]:
    """The project's snapshot on the host: found by its key, or built from an uploaded source."""
    from microbuild.validate import ensure_snapshot as ensure

    return ensure(app.client, app.project(), progress, rebuild=rebuild, runtime=runtime)


@click.group()
def snapshot() -> None:
    """Build, list and prune snapshots (dependencies installed once, frozen)."""


@snapshot.command()
@click.option("--rebuild", is_flag=True, help="Build again even if an up-to-date one exists.")
@click.option("--runtime", type=click.Choice(["auto", "namespace", "process"]), default=None)
@click.option("-v", "--verbose", is_flag=True, help="Stream the setup commands' output.")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.pass_obj
def build(
    app: AppContext, rebuild: bool, runtime: str | None, verbose: bool, as_json: bool
) -> None:
    """Build the project's snapshot from its microbuild.toml (or reuse an up-to-date one)."""
    progress = Progress(quiet=as_json, verbose=verbose)
    with progress.live():
        snap = ensure_snapshot(app, progress, rebuild=rebuild, runtime=runtime)
    if as_json:
        emit_json(snap)
    else:
        click.echo(snap["id"])


@snapshot.command("list")
@click.option("-a", "--all", "all_projects", is_flag=True, help="Snapshots of every project.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_(app: AppContext, all_projects: bool, as_json: bool) -> None:
    """List snapshots (of this project, or of all with --all)."""
    project = None if all_projects else str(app.project().root)
    records = app.client.list_snapshots(project)
    if as_json:
        emit_json(records)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATE", "RUNTIME", "SIZE", "BUILD", "BASE", "USED", "PROJECT"):
        table.add_column(col, no_wrap=col == "ID")
    for r in records:
        table.add_row(
            r["id"],
            r["state"],
            r["runtime"],
            size(r["size_bytes"]),
            f"{r['build_s']:.1f}s",
            (r["base_commit"] or "")[:10],
            f"{age(r['last_used_at'])} ago",
            r["project"],
        )
    show(table if records else "no snapshots")


@snapshot.command()
@click.option("--all", "prune_all", is_flag=True, help="Also remove each project's newest one.")
@click.option("--json", "as_json", is_flag=True, help="Print the removed snapshots as JSON.")
@click.pass_obj
def prune(app: AppContext, prune_all: bool, as_json: bool) -> None:
    """Delete snapshots no sidecar uses (keeping each project's newest unless --all)."""
    removed = app.client.prune_snapshots(prune_all=prune_all)
    if as_json:
        emit_json(removed)
        return
    for r in removed:
        click.echo(f"removed {r['id']} ({size(r['size_bytes'])})")
    if not removed:
        click.echo("nothing to prune")
