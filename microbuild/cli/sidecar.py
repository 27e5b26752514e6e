"""`microbuild sidecar create|list|exec|suspend|resume|reset|destroy`."""

from __future__ import annotations

import sys
from typing import Any

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import Progress, age, emit_json, show
from microbuild.runtime.process import WARNING as PROCESS_WARNING
from microbuild.store import SidecarRecord


def sidecar_json(record: SidecarRecord) -> dict[str, Any]:
    handle = record.handle or {}
    return {
        "id": record.id,
        "snapshot": record.snapshot_id,
        "runtime": record.runtime,
        "state": record.state,
        "project": record.project,
        "tree": record.tree,
        "network": handle.get("spec", {}).get("network"),
        "init_pid": handle.get("init_pid"),
        "created_at": record.created_at,
        "last_used_at": record.last_used_at,
    }


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
        record = app.manager.create_sidecar(
            project, runtime=runtime, progress=progress.step, output=progress.output
        )
    if record.runtime == "process":
        click.echo(f"warning: {PROCESS_WARNING}", err=True)
    if as_json:
        emit_json(sidecar_json(record))
    else:
        click.echo(record.id)


@sidecar.command("list")
@click.option("-a", "--all", "all_projects", is_flag=True, help="Sidecars of every project.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_obj
def list_(app: AppContext, all_projects: bool, as_json: bool) -> None:
    """List sidecars (of this project, or of all with --all)."""
    project = None if all_projects else app.project()
    records = app.manager.list_sidecars(project)
    if as_json:
        emit_json([sidecar_json(r) for r in records])
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("ID", "STATE", "RUNTIME", "SNAPSHOT", "CREATED", "USED", "PROJECT"):
        table.add_column(col, no_wrap=col in ("ID", "SNAPSHOT"))
    styles = {"running": "green", "suspended": "yellow", "dead": "red"}
    for r in records:
        table.add_row(
            r.id,
            f"[{styles.get(r.state, '')}]{r.state}[/]" if r.state in styles else r.state,
            r.runtime,
            r.snapshot_id,
            f"{age(r.created_at)} ago",
            f"{age(r.last_used_at)} ago",
            r.project,
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
    execution = app.manager.exec(
        sidecar_id, argv, env=_parse_env(env_pairs), cwd=cwd, timeout=timeout
    )
    out: list[bytes] = []
    err: list[bytes] = []
    for chunk in execution.chunks():
        if as_json:
            (out if chunk.stream == "stdout" else err).append(chunk.data)
        else:
            stream = sys.stdout.buffer if chunk.stream == "stdout" else sys.stderr.buffer
            stream.write(chunk.data)
            stream.flush()
    result = execution.result()
    code = result.exit_code
    note = None
    if result.timed_out:
        note = f"timed out after {timeout:g} s; killed the command and everything it started"
        code = 124
    elif result.oom_killed:
        note = "out of memory: the sidecar's memory limit killed a process; raise [sidecar] memory"
    if as_json:
        emit_json(
            {
                "exit_code": code,
                "signal": result.signal,
                "timed_out": result.timed_out,
                "oom_killed": result.oom_killed,
                "duration_s": round(result.duration_s, 4),
                "stdout": b"".join(out).decode(errors="replace"),
                "stderr": b"".join(err).decode(errors="replace"),
            }
        )
    elif note:
        click.echo(f"microbuild: {note}", err=True)
    sys.exit(code)


def _lifecycle(name: str, doc: str) -> None:
    @sidecar.command(name=name, help=doc)
    @click.argument("sidecar_ids", nargs=-1, required=True)
    @click.option("--json", "as_json", is_flag=True, help="Print the sidecars as JSON.")
    @click.pass_obj
    def command(app: AppContext, sidecar_ids: tuple[str, ...], as_json: bool) -> None:
        action = getattr(app.manager, name)
        records = [action(ident) for ident in sidecar_ids]
        if as_json:
            data = [sidecar_json(r) for r in records]
            if name == "destroy":
                for item in data:
                    item["state"] = "destroyed"
            emit_json(data[0] if len(data) == 1 else data)
        else:
            for r in records:
                click.echo(f"{r.id} {'destroyed' if name == 'destroy' else r.state}")


_lifecycle("suspend", "Freeze a sidecar's processes (cgroup freezer); it keeps its state.")
_lifecycle("resume", "Thaw a suspended sidecar.")
_lifecycle("reset", "Give a sidecar a fresh writable layer from its snapshot (same id).")
_lifecycle("destroy", "Remove sidecars: processes, mounts, cgroups and directories.")
