"""`microbuild sidecar create|list|exec|shell|suspend|resume|reset|destroy`."""

from __future__ import annotations

import sys
from typing import Any

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import Progress, age, emit_json, show
from microbuild.cli.snapshot import ensure_snapshot
from microbuild.report.classify import disk_limit_cause

PROCESS_WARNING = (
    "process runtime: commands run unisolated, with your user's full access to files and network"
)


@click.group()
def sidecar() -> None:
    """Create and drive sidecars: isolated environments started from the project's snapshot."""


@sidecar.command()
@click.option("--runtime", type=click.Choice(["auto", "namespace", "process"]), default=None)
@click.option("-v", "--verbose", is_flag=True, help="Stream snapshot setup output if it builds.")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar as JSON.")
@click.pass_obj
def create(app: AppContext, runtime: str | None, verbose: bool, as_json: bool) -> None:
    """Create a sidecar for this project (building its snapshot first if needed)."""
    project = app.project()
    progress = Progress(quiet=as_json, verbose=verbose)
    with progress.live():
        snap = ensure_snapshot(app, progress, runtime=runtime)
        record = app.client.create_sidecar(
            snap["id"], project.config.sidecar.model_dump(mode="json"), str(project.root)
        )
    if record["runtime"] == "process":
        click.echo(f"warning: {PROCESS_WARNING}", err=True)
    if as_json:
        emit_json(record)
    else:
        click.echo(record["id"])


@sidecar.command("list")
@click.option("-a", "--all", "all_projects", is_flag=True, help="Sidecars of every project.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_(app: AppContext, all_projects: bool, as_json: bool) -> None:
    """List sidecars (of this project, or of all with --all)."""
    project = None if all_projects else str(app.project().root)
    records = app.client.list_sidecars(project)
    if as_json:
        emit_json(records)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATE", "RUNTIME", "SNAPSHOT", "CREATED", "USED", "PROJECT"):
        table.add_column(col, no_wrap=col in ("ID", "SNAPSHOT"))
    styles = {"running": "green", "suspended": "yellow", "dead": "red"}
    for r in records:
        state = r["state"]
        table.add_row(
            r["id"],
            f"[{styles[state]}]{state}[/]" if state in styles else state,
            r["runtime"],
            r["snapshot"],
            f"{age(r['created_at'])} ago",
            f"{age(r['last_used_at'])} ago",
            r["project"],
        )
    show(table if records else "no sidecars")


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


@sidecar.command(context_settings={"ignore_unknown_options": True})
@click.argument("sidecar_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-e", "--env", "env_pairs", multiple=True, help="KEY=VALUE (repeatable).")
@click.option("--cwd", help="Working directory, relative to the workspace or absolute.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result and output as JSON.")
@click.pass_obj
def exec(
    app: AppContext,
    sidecar_id: str,
    command: tuple[str, ...],
    env_pairs: tuple[str, ...],
    cwd: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Run COMMAND in a sidecar; exits with the command's own exit status.

    Example: microbuild sidecar exec sc_1a2b -- python -m pytest -x -q
    """
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise click.UsageError("give a command after --")
    out: list[bytes] = []
    err: list[bytes] = []
    result: dict[str, Any] = {}
    for kind, payload in app.client.exec(
        sidecar_id, argv, env=_parse_env(env_pairs), cwd=cwd, timeout_s=timeout
    ):
        if kind == "result":
            result = payload
        elif as_json:
            (out if kind == "stdout" else err).append(payload)
        else:
            stream = sys.stdout.buffer if kind == "stdout" else sys.stderr.buffer
            stream.write(payload)
            stream.flush()
    code = int(result["exit_code"])
    note = None
    if result["timed_out"]:
        note = f"timed out after {timeout:g} s; killed the command and everything it started"
        code = 124
    elif result["oom_killed"]:
        note = "out of memory: the sidecar's memory limit killed a process; raise [sidecar] memory"
    elif result.get("disk_limit_reached"):
        note = (
            f"{disk_limit_cause(int(result['disk_limit_reached']))}: the sidecar's disk is full; "
            "raise [sidecar] disk, or `microbuild sidecar reset`"
        )
    if as_json:
        emit_json(
            {
                **result,
                "exit_code": code,
                "stdout": b"".join(out).decode(errors="replace"),
                "stderr": b"".join(err).decode(errors="replace"),
            }
        )
    elif note:
        click.echo(f"microbuild: {note}", err=True)
    sys.exit(code)


@sidecar.command()
@click.argument("sidecar_id")
@click.pass_obj
def shell(app: AppContext, sidecar_id: str) -> None:
    """Open an interactive shell in a sidecar (a PTY over a WebSocket)."""
    from microbuild.cli._shell import run_shell

    sys.exit(run_shell(app.client, sidecar_id))


def _lifecycle(name: str, doc: str) -> None:
    @sidecar.command(name=name, help=doc)
    @click.argument("sidecar_ids", nargs=-1, required=True)
    @click.option("--json", "as_json", is_flag=True, help="Print the sidecars as JSON.")
    @click.pass_obj
    def command(app: AppContext, sidecar_ids: tuple[str, ...], as_json: bool) -> None:
        records = [app.client.sidecar_action(ident, name) for ident in sidecar_ids]
        if as_json:
            emit_json(records[0] if len(records) == 1 else records)
        else:
            for r in records:
                click.echo(f"{r['id']} {r['state']}")


_lifecycle("suspend", "Freeze a sidecar's processes (cgroup freezer); it keeps its state.")
_lifecycle("resume", "Thaw a suspended sidecar.")
_lifecycle("reset", "Give a sidecar a fresh writable layer from its snapshot (same id).")
_lifecycle("destroy", "Remove sidecars: processes, mounts, cgroups and directories.")
