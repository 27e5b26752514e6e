"""The sidecar manager: runtimes + snapshots + the store, as one object the host serves.

It is the only place that turns a project into sidecars, and the only writer of sidecar state,
so that whatever fronts it (the CLI today, the HTTP host next) behaves the same.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from microbuild import snapshot
from microbuild.runtime import (
    Execution,
    Runtime,
    RuntimeError_,
    SidecarGone,
    SidecarHandle,
    SidecarStats,
    get_runtime,
    resolve_runtime_name,
)
from microbuild.store import SidecarRecord, SnapshotRecord, Store, default_state_dir

if TYPE_CHECKING:
    from microbuild.config import Project


class SidecarDead(RuntimeError_):
    """The sidecar's processes are gone; it was marked dead and must be reset or destroyed."""


class SidecarManager:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir or default_state_dir()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(self.state_dir / "state.db")
        self._runtimes: dict[str, Runtime] = {}

    def close(self) -> None:
        self.store.close()

    def runtime(self, name: str) -> Runtime:
        name = resolve_runtime_name(name)
        if name not in self._runtimes:
            self._runtimes[name] = get_runtime(name, self.state_dir)
        return self._runtimes[name]

    def runtime_for(self, project: Project, override: str | None = None) -> Runtime:
        return self.runtime(override or project.config.sidecar.runtime)

    # -- snapshots ---------------------------------------------------------------------------

    def build_snapshot(
        self,
        project: Project,
        *,
        runtime: str | None = None,
        rebuild: bool = False,
        progress: snapshot.Progress | None = None,
        output: snapshot.Output | None = None,
    ) -> SnapshotRecord:
        return snapshot.build(
            self.store,
            self.runtime_for(project, runtime),
            project,
            rebuild=rebuild,
            progress=progress,
            output=output,
        )

    def list_snapshots(self, project: Project | None = None) -> list[SnapshotRecord]:
        return self.store.list_snapshots(None if project is None else str(project.root))

    def prune_snapshots(self, *, keep_latest: bool = True) -> list[SnapshotRecord]:
        runtimes = {}
        for snap in self.store.list_snapshots():
            if snap.runtime not in runtimes:
                try:
                    runtimes[snap.runtime] = self.runtime(snap.runtime)
                except RuntimeError_:
                    continue
        return snapshot.prune(self.store, runtimes, keep_latest=keep_latest)

    # -- sidecars ----------------------------------------------------------------------------

    def create_sidecar(
        self,
        project: Project,
        *,
        runtime: str | None = None,
        progress: snapshot.Progress | None = None,
        output: snapshot.Output | None = None,
    ) -> SidecarRecord:
        """A new sidecar from the project's snapshot, building the snapshot first if needed."""
        snap = self.build_snapshot(project, runtime=runtime, progress=progress, output=output)
        rt = self.runtime(snap.runtime)
        spec = snapshot.spec_for(project, tuple(snap.layers), project.config.sidecar.network)
        sidecar_id = f"sc_{secrets.token_hex(5)}"
        record = SidecarRecord(
            id=sidecar_id,
            project=str(project.root),
            snapshot_id=snap.id,
            runtime=rt.name,
            state="creating",
            handle={},
            tree=snap.source_tree,
        )
        self.store.put_sidecar(record)
        try:
            handle = rt.create(sidecar_id, spec)
        except BaseException:
            self.store.delete_sidecar(sidecar_id)
            raise
        record.handle = handle.to_json()
        record.state = "running"
        self.store.put_sidecar(record)
        self.store.touch_snapshot(snap.id)
        return record

    def _handle(self, record: SidecarRecord) -> tuple[Runtime, SidecarHandle]:
        return self.runtime(record.runtime), SidecarHandle.from_json(record.handle)

    def _checked(self, record: SidecarRecord) -> SidecarRecord:
        """Mark a sidecar whose init died as dead instead of pretending it is still there."""
        if record.state in ("running", "suspended"):
            rt, handle = self._handle(record)
            if not rt.is_alive(handle):
                record.state = "dead"
                self.store.set_sidecar_state(record.id, "dead")
        return record

    def get(self, ident: str) -> SidecarRecord:
        return self._checked(self.store.get_sidecar(ident))

    def list_sidecars(self, project: Project | None = None) -> list[SidecarRecord]:
        records = self.store.list_sidecars(None if project is None else str(project.root))
        return [self._checked(r) for r in records]

    def _live(self, ident: str) -> tuple[SidecarRecord, Runtime, SidecarHandle]:
        record = self.get(ident)
        if record.state == "dead":
            raise SidecarDead(
                f"sidecar {record.id} is dead (its processes died); "
                f"run `microbuild sidecar reset {record.id}` or destroy it"
            )
        if record.state == "creating":
            raise SidecarDead(f"sidecar {record.id} is still being created; try again")
        rt, handle = self._handle(record)
        return record, rt, handle

    def exec(
        self,
        ident: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> Execution:
        """Run a command; a suspended sidecar is resumed first, transparently."""
        record, rt, handle = self._live(ident)
        if record.state == "suspended":
            rt.resume(handle)
        self.store.set_sidecar_state(record.id, "running")
        try:
            return rt.exec(handle, argv, env=env, cwd=cwd, timeout=timeout, stdin=stdin)
        except SidecarGone:
            self.store.set_sidecar_state(record.id, "dead")
            raise

    def suspend(self, ident: str) -> SidecarRecord:
        record, rt, handle = self._live(ident)
        rt.suspend(handle)
        self.store.set_sidecar_state(record.id, "suspended")
        return self.store.get_sidecar(record.id)

    def resume(self, ident: str) -> SidecarRecord:
        record, rt, handle = self._live(ident)
        rt.resume(handle)
        self.store.set_sidecar_state(record.id, "running")
        return self.store.get_sidecar(record.id)

    def reset(self, ident: str) -> SidecarRecord:
        """A fresh writable layer from the same snapshot; works on dead sidecars too."""
        record = self.store.get_sidecar(ident)
        if not record.handle:
            raise SidecarDead(f"sidecar {record.id} is still being created; try again")
        rt, handle = self._handle(record)
        snap = self.store.find_snapshot(record.snapshot_id)
        if snap is None or snap.state != "ready":
            raise RuntimeError_(
                f"snapshot {record.snapshot_id} of sidecar {record.id} is gone; destroy the "
                "sidecar and create a new one"
            )
        new_handle = rt.reset(handle)
        record.handle = new_handle.to_json()
        record.state = "running"
        record.tree = snap.source_tree
        record.last_used_at = time.time()
        self.store.put_sidecar(record)
        return record

    def destroy(self, ident: str) -> SidecarRecord:
        record = self.store.get_sidecar(ident)
        if record.handle:
            rt, handle = self._handle(record)
            rt.destroy(handle)
        self.store.delete_sidecar(record.id)
        return record

    def stats(self, ident: str) -> SidecarStats:
        _record, rt, handle = self._live(ident)
        return rt.stats(handle)
