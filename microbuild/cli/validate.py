"""`microbuild validate`: the project's checks, on exactly the files in its working tree, in a
sidecar — synced incrementally, answered from the cache when the tree did not change."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from microbuild.cli._context import AppContext
from microbuild.cli._ui import Progress, emit_json
from microbuild.cli.snapshot import ensure_snapshot
from microbuild.client import Client, HostError
from microbuild.errors import ConfigError

EXIT_BY_STATUS = {"passed": 0, "failed": 1, "error": 3}


def _sidecar_for(
    app: AppContext, project: str, snapshot_id: str, settings: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """The project's sidecar on this snapshot: reused across runs, created on first use."""
    for record in app.client.list_sidecars(project):
        if record["snapshot"] == snapshot_id and record["state"] in ("running", "suspended"):
            return record
    progress.step("creating a sidecar")
    return app.client.create_sidecar(snapshot_id, settings)


def sync_tree(
    client: Client,
    root: Path,
    sidecar: dict[str, Any],
    snapshot: dict[str, Any],
    tree: str,
    progress: Progress,
) -> dict[str, Any]:
    """Patch from the tree the sidecar holds; if that fails, from the snapshot's source tree on
    a fresh layer; if the objects for that are missing too, the whole tree as an archive."""
    from microbuild import sync

    held = sidecar.get("tree")
    if held == tree:
        return sidecar
    if held and sync.has_object(root, held):
        patch = sync.tree_diff(root, held, tree)
        try:
            progress.step(f"syncing {len(patch)} bytes of changes")
            return client.sync(sidecar["id"], to_tree=tree, payload=patch, from_tree=held)
        except HostError as exc:
            if exc.code not in ("tree_mismatch", "apply_failed"):
                raise
            progress.step(f"incremental sync failed ({exc}); resyncing")
    source = snapshot.get("source_tree")
    if source and sync.has_object(root, source):
        patch = sync.tree_diff(root, source, tree)
        try:
            return client.sync(
                sidecar["id"], to_tree=tree, payload=patch, from_tree=None, reset=True
            )
        except HostError as exc:
            if exc.code != "apply_failed":
                raise
            progress.step(f"resync from the snapshot failed ({exc}); sending the whole tree")
    archive = sync.tree_archive(root, tree)
    return client.sync(sidecar["id"], to_tree=tree, payload=archive, kind="tar", reset=True)


@click.command()
@click.argument(
    "path", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path)
)
@click.option("--no-fail-fast", is_flag=True, help="Run every check even after one fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--plain", is_flag=True, help="Plain text for agents: no live display.")
@click.option("-v", "--verbose", is_flag=True, help="Stream snapshot setup output if it builds.")
@click.pass_obj
def validate(
    app: AppContext,
    path: Path | None,
    no_fail_fast: bool,
    as_json: bool,
    plain: bool,
    verbose: bool,
) -> None:
    """Validate the working tree: sync it to the project's sidecar and run its checks.

    Exit status: 0 passed, 1 a check failed, 3 environment failure, 2 usage or config error.
    """
    from microbuild import sync
    from microbuild.config import config_hash

    started = time.monotonic()
    if path is not None:
        app.project_dir = path.absolute()
    project = app.project()
    if not project.config.checks:
        raise ConfigError(
            f"{project.config_path.name}: no [[check]] to run; add one or run `microbuild init`"
        )
    agent = plain or not sys.stderr.isatty()
    progress = Progress(quiet=as_json or agent, verbose=verbose and not as_json)
    with progress.live():
        snap = ensure_snapshot(app, progress)
        tree = sync.tree_id(project.root)
        chash = config_hash(project.config)
        run = app.client.cached_run(tree, chash, snap["id"], complete=no_fail_fast)
        if run is None:
            settings = project.config.sidecar.model_dump(mode="json")
            sidecar = _sidecar_for(app, str(project.root), snap["id"], settings, progress)
            sidecar = sync_tree(app.client, project.root, sidecar, snap, tree, progress)
            checks = [c.model_dump(mode="json") for c in project.config.checks]
            for event in app.client.microbuild(
                sidecar["id"],
                checks=checks,
                tree=tree,
                config_hash=chash,
                project=str(project.root),
                fail_fast=not no_fail_fast,
            ):
                kind = event.get("event")
                if kind == "check_started":
                    progress.step(f"{event['check']} …")
                elif kind == "check_finished":
                    check = event["check"]
                    progress.step(
                        f"{check['name']} {check['status']} in {check['duration_s']:.1f} s"
                    )
                elif kind == "done":
                    run = event["run"]
                elif kind == "error":
                    raise HostError(409, event.get("code", "run_failed"), event.get("message", ""))
    if run is None:
        raise HostError(0, "no_result", "the host ended the microbuild without a result")
    status = str(run["status"])
    if as_json:
        emit_json(
            {
                "status": status,
                "tree": tree,
                "snapshot": snap["id"],
                "run": run["id"],
                "cached": bool(run.get("cached")),
                "checks": [
                    {k: c.get(k) for k in ("name", "status", "exit_code", "duration_s", "log")}
                    for c in run["checks"]
                ],
                "report": run["report"],
                "duration_s": round(time.monotonic() - started, 3),
            }
        )
    else:
        click.echo(run["report"].rstrip("\n"))
    sys.exit(EXIT_BY_STATUS.get(status, 3))
