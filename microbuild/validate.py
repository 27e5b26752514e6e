"""The validate flow, shared by `microbuild validate` and the agent hooks: resolve (or build) the
project's snapshot, compute the working tree's id, answer from the cache or sync the tree to the
project's sidecar and run the checks there.

It knows the client and sync layers, never the CLI: progress goes to a `Progress`-like object
with `step(message)` and `output(data)`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from microbuild.client import Client, HostError
from microbuild.config import Project
from microbuild.errors import SetupFailed, SnapshotError

__all__ = [
    "EXIT_BY_STATUS",
    "Progress",
    "Validation",
    "ensure_snapshot",
    "sync_tree",
    "validate_project",
]

EXIT_BY_STATUS = {"passed": 0, "failed": 1, "error": 3}


class Progress(Protocol):
    def step(self, message: str) -> None: ...

    def output(self, data: bytes) -> None: ...


class _Silent:
    def step(self, message: str) -> None:
        pass

    def output(self, data: bytes) -> None:
        pass


def ensure_snapshot(
    client: Client,
    project: Project,
    progress: Progress,
    *,
    rebuild: bool = False,
    runtime: str | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The project's snapshot on the host: found by its key, or built from an uploaded source.
    `cache_dir` keeps the source tree's id between calls (see sync.describe_snapshot)."""
    from microbuild import sync

    request = sync.describe_snapshot(project, cache_dir)
    snap, needed = client.resolve_snapshot(
        request.model_dump(mode="json"), rebuild=rebuild, runtime=runtime
    )
    if not needed:
        progress.step(f"snapshot {snap['id']} is up to date")
        return snap
    with tempfile.TemporaryDirectory(prefix="microbuild-source-") as tmp:
        tar = Path(tmp) / "source.tar"
        progress.step(f"exporting {project.root} at {request.base_commit[:10]}")
        sync.export_source(project, request, tar)
        for event in client.upload_source(snap["id"], tar):
            kind = event.get("event")
            if kind == "step":
                progress.step(event["message"])
            elif kind == "output":
                progress.output(event["data"].encode())
            elif kind == "done":
                return event["snapshot"]  # type: ignore[no-any-return]
            elif kind == "error":
                if event.get("code") == "setup_failed":
                    raise SetupFailed(
                        event["command"],
                        event["exit_code"],
                        list(event.get("tail", [])),
                        bool(event.get("timed_out")),
                    )
                raise SnapshotError(event.get("message", "the snapshot build failed"))
    raise SnapshotError("the host ended the build without a result; see its log")


SYNC_ATTEMPTS = 3


def _run_checks(
    client: Client,
    sidecar: dict[str, Any],
    checks: list[dict[str, Any]],
    tree: str,
    chash: str,
    project: Project,
    fail_fast: bool,
    progress: Progress,
) -> dict[str, Any] | None:
    run: dict[str, Any] | None = None
    for event in client.microbuild(
        sidecar["id"],
        checks=checks,
        tree=tree,
        config_hash=chash,
        project=str(project.root),
        fail_fast=fail_fast,
        report_tokens=project.config.report_tokens,
    ):
        kind = event.get("event")
        if kind == "waiting":
            progress.step(f"{event.get('message') or 'waiting'} (another microbuild here)")
        elif kind == "check_started":
            progress.step(f"{event['check']} …")
        elif kind == "check_finished":
            check = event["check"]
            progress.step(f"{check['name']} {check['status']} in {check['duration_s']:.1f} s")
        elif kind == "done":
            run = event["run"]
        elif kind == "error":
            raise HostError(409, event.get("code", "run_failed"), event.get("message", ""))
    return run


def _sidecar_for(
    client: Client, project: str, snapshot_id: str, settings: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """The project's sidecar on this snapshot: reused across runs, created on first use."""
    for record in client.list_sidecars(project):
        if record["snapshot"] == snapshot_id and record["state"] in ("running", "suspended"):
            return record
    progress.step("creating a sidecar")
    return client.create_sidecar(snapshot_id, settings, project)


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

    held = str(sidecar.get("tree") or "")
    have_held = bool(held) and sync.has_object(root, held)
    diverged = _diverged(root, sidecar, have_held)
    if diverged:
        shown = ", ".join(diverged[:3]) + (" …" if len(diverged) > 3 else "")
        progress.step(f"commands in the sidecar changed tracked files ({shown}); resyncing")
    elif held == tree:
        return sidecar
    if have_held and not diverged:
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


def _diverged(root: Path, sidecar: dict[str, Any], have_held: bool) -> list[str]:
    """The files of the tree the sidecar holds that commands in it changed since the sync
    (a check that rewrites a source file): then it no longer holds that tree. `have_held`:
    whether this repository has that tree's objects to compare with."""
    from microbuild import sync

    held = sidecar.get("tree")
    changed = sidecar.get("changed")
    if not held or not changed:
        return []
    if not have_held:
        return ["."] if "." in changed else []
    return sync.tracked_among(root, str(held), list(changed))


@dataclass
class Validation:
    """The outcome of one validate: the run as the host reported it, and what it ran against."""

    tree: str
    snapshot: str
    run: dict[str, Any]
    duration_s: float

    @property
    def status(self) -> str:
        return str(self.run["status"])

    @property
    def exit_code(self) -> int:
        return EXIT_BY_STATUS.get(self.status, 3)

    @property
    def report(self) -> str:
        return str(self.run.get("report", ""))

    def to_json(self) -> dict[str, Any]:
        """The `validate --json` document."""
        return {
            "status": self.status,
            "tree": self.tree,
            "snapshot": self.snapshot,
            "run": self.run["id"],
            "cached": bool(self.run.get("cached")),
            "checks": [
                {k: c.get(k) for k in ("name", "status", "exit_code", "duration_s", "log")}
                for c in self.run["checks"]
            ],
            "failures": self.run.get("failures", []),
            "tokens": self.run.get("tokens"),
            "report": self.report,
            "duration_s": round(self.duration_s, 3),
        }


def validate_project(
    client: Client,
    project: Project,
    *,
    fail_fast: bool = True,
    progress: Progress | None = None,
    tree: str | None = None,
    index_dir: Path | None = None,
) -> Validation:
    """Validate the project's working tree (or `tree`, already computed by the caller).
    `index_dir` keeps the tree id's index between calls (default: under the state dir)."""
    from microbuild import sync
    from microbuild.config import config_hash

    started = time.monotonic()
    progress = progress or _Silent()
    if not project.config.checks:
        from microbuild.errors import ConfigError

        raise ConfigError(
            f"{project.config_path.name}: no [[check]] to run; add one or run `microbuild init`"
        )
    if index_dir is None:
        from microbuild.store import default_state_dir

        index_dir = default_state_dir() / "indexes"
    snap = ensure_snapshot(client, project, progress, cache_dir=index_dir)
    tree = tree or sync.tree_id(project.root, index_dir)
    chash = config_hash(project.config)
    budget = project.config.report_tokens
    run = client.cached_run(tree, chash, snap["id"], complete=not fail_fast, report_tokens=budget)
    if run is None:
        settings = project.config.sidecar.model_dump(mode="json")
        sidecar = _sidecar_for(client, str(project.root), snap["id"], settings, progress)
        checks = [c.model_dump(mode="json") for c in project.config.checks]
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            if sidecar.get("run"):
                progress.step(f"waiting for run {sidecar['run']} (another microbuild here)")
            sidecar = sync_tree(client, project.root, sidecar, snap, tree, progress)
            try:
                run = _run_checks(
                    client, sidecar, checks, tree, chash, project, fail_fast, progress
                )
                break
            except HostError as exc:
                # Another validate synced its tree between this one's sync and its run.
                if exc.code != "tree_mismatch" or attempt == SYNC_ATTEMPTS:
                    raise
                progress.step("another microbuild synced this sidecar first; syncing again")
                sidecar = client.get_sidecar(sidecar["id"])
    if run is None:
        raise HostError(0, "no_result", "the host ended the microbuild without a result")
    return Validation(
        tree=tree, snapshot=snap["id"], run=run, duration_s=time.monotonic() - started
    )
