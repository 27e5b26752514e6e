"""The sidecar manager: runtimes + snapshots + the store, as one object the host serves.

It is the only writer of sidecar state, so whatever fronts it (the HTTP host, or tests calling
it in-process) behaves the same. It is safe to call from the host's worker threads.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from microbuild import snapshot
from microbuild.config import SidecarConfig
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
from microbuild.runtime import cgroup as cg
from microbuild.runtime.layers import secure_state_dir
from microbuild.store import SidecarRecord, SnapshotRecord, Store, default_state_dir

if TYPE_CHECKING:
    from microbuild.config import Project


class SidecarDead(RuntimeError_):
    """The sidecar's processes are gone; it was marked dead and must be reset or destroyed."""


class TreeMismatch(RuntimeError_):
    """The sidecar does not hold the tree a patch starts from: the client must resync."""


class ApplyFailed(RuntimeError_):
    """A patch or archive did not apply; the sidecar's tree is unchanged (git apply is atomic)."""


class AdmissionRefused(RuntimeError_):
    """A new sidecar would exceed `max_sidecars` or leave the machine without memory."""


@dataclass(frozen=True)
class Admission:
    max_sidecars: int = 64
    # Refuse new sidecars when less than this much memory is available: better a clear error
    # than a machine swapping itself to death.
    min_available_memory: int = 1 << 30


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


class SidecarManager:
    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        default_runtime: str = "auto",
        admission: Admission | None = None,
        zygote: bool = False,
    ) -> None:
        self.state_dir = state_dir or default_state_dir()
        secure_state_dir(self.state_dir)
        self.store = Store(self.state_dir / "state.db")
        self.default_runtime = default_runtime
        self.admission = admission or Admission()
        self.zygote = zygote
        self._runtimes: dict[str, Runtime] = {}
        self._lock = threading.RLock()
        self._busy: Counter[str] = Counter()
        self._microbuild_locks: dict[str, threading.RLock] = {}
        self._running: dict[str, str] = {}

    def close(self) -> None:
        for rt in self._runtimes.values():
            rt.close()
        self.store.close()

    def runtime(self, name: str | None = None) -> Runtime:
        resolved = resolve_runtime_name(name or self.default_runtime)
        with self._lock:
            if resolved not in self._runtimes:
                self._runtimes[resolved] = get_runtime(resolved, self.state_dir, zygote=self.zygote)
            return self._runtimes[resolved]

    # -- snapshots ---------------------------------------------------------------------------

    def resolve_snapshot(
        self,
        request: snapshot.SnapshotRequest,
        *,
        runtime: str | None = None,
        rebuild: bool = False,
    ) -> tuple[SnapshotRecord, bool]:
        rt = self.runtime(runtime or request.sidecar.runtime)
        return snapshot.resolve(self.store, rt, request, rebuild=rebuild)

    def build_snapshot_from(
        self,
        snapshot_id: str,
        source_tar: Path,
        *,
        progress: snapshot.Progress | None = None,
        output: snapshot.Output | None = None,
    ) -> SnapshotRecord:
        record = self.store.get_snapshot(snapshot_id)
        return snapshot.build(
            self.store,
            self.runtime(record.runtime),
            record.id,
            source_tar,
            progress=progress,
            output=output,
        )

    def build_snapshot(
        self,
        project: Project,
        *,
        runtime: str | None = None,
        rebuild: bool = False,
        progress: snapshot.Progress | None = None,
        output: snapshot.Output | None = None,
    ) -> SnapshotRecord:
        """Resolve and, if needed, build a local project's snapshot in-process."""
        from microbuild import sync

        request = sync.describe_snapshot(project)
        record, needed = self.resolve_snapshot(request, runtime=runtime, rebuild=rebuild)
        if not needed:
            if progress:
                progress(f"snapshot {record.id} is up to date")
            return record
        with tempfile.TemporaryDirectory() as tmp:
            tar = Path(tmp) / "source.tar"
            sync.export_source(project, request, tar)
            return self.build_snapshot_from(record.id, tar, progress=progress, output=output)

    def list_snapshots(self, project: str | None = None) -> list[SnapshotRecord]:
        return self.store.list_snapshots(project)

    def delete_snapshot(self, ident: str) -> SnapshotRecord:
        record = self.store.get_snapshot(ident)
        users = self.store.list_sidecars(snapshot_id=record.id)
        if users:
            raise snapshot.SnapshotError(
                f"snapshot {record.id} is used by sidecar(s) "
                f"{', '.join(s.id for s in users)}; destroy them first"
            )
        with contextlib.suppress(RuntimeError_):
            base = self.runtime(record.runtime).state_dir / "snapshots"
            shutil.rmtree(base / record.id, ignore_errors=True)
        self.store.delete_snapshot(record.id)
        return record

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

    def _admit(self, settings: SidecarConfig) -> None:
        live = [r for r in self.store.list_sidecars() if r.state in ("running", "suspended")]
        if len(live) >= self.admission.max_sidecars:
            raise AdmissionRefused(
                f"this host already runs {len(live)} sidecars (max_sidecars = "
                f"{self.admission.max_sidecars}); destroy some or raise the limit"
            )
        free = available_memory()
        if free < self.admission.min_available_memory:
            raise AdmissionRefused(
                f"only {free >> 20} MiB of memory is available (the host keeps "
                f"{self.admission.min_available_memory >> 20} MiB free); destroy or suspend "
                "sidecars first"
            )

    def create_sidecar_from(
        self,
        snapshot_id: str,
        settings: SidecarConfig | None = None,
        project: str | None = None,
    ) -> SidecarRecord:
        """A new sidecar from a ready snapshot, with the project's sidecar settings. It belongs
        to `project`, the one that asked (a snapshot may serve several projects with the same
        setup); the snapshot's own project when none is given."""
        snap = self.store.get_snapshot(snapshot_id)
        if snap.state != "ready":
            raise snapshot.SnapshotError(
                f"snapshot {snap.id} is {snap.state}, not ready; build it first"
            )
        if settings is None:
            request = snapshot.SnapshotRequest.model_validate(snap.request)
            settings = request.sidecar
        rt = self.runtime(snap.runtime)
        spec = snapshot.spec_for(settings, tuple(snap.layers), settings.network)
        sidecar_id = f"sc_{secrets.token_hex(5)}"
        with self._lock:
            self._admit(settings)
            record = SidecarRecord(
                id=sidecar_id,
                project=project or snap.project,
                snapshot_id=snap.id,
                runtime=rt.name,
                state="creating",
                handle={},
                settings=settings.model_dump(mode="json"),
                tree=snap.source_tree,
            )
            self.store.put_sidecar(record)
        try:
            handle = rt.create(sidecar_id, spec)
        except BaseException:
            self.store.delete_sidecar(sidecar_id)
            raise
        rt.mark_synced(handle)
        record.handle = handle.to_json()
        record.state = "running"
        self.store.put_sidecar(record)
        self.store.touch_snapshot(snap.id)
        return record

    def create_sidecar(
        self,
        project: Project,
        *,
        runtime: str | None = None,
        progress: snapshot.Progress | None = None,
        output: snapshot.Output | None = None,
    ) -> SidecarRecord:
        """In-process convenience: the local project's snapshot (built if needed), then a
        sidecar from it."""
        snap = self.build_snapshot(project, runtime=runtime, progress=progress, output=output)
        return self.create_sidecar_from(snap.id, project.config.sidecar, str(project.root))

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

    def changed_since_sync(self, record: SidecarRecord) -> list[str] | None:
        """What commands in a live sidecar wrote or deleted in its workspace since it last held
        exactly `record.tree`; None when unknown."""
        if record.state not in ("running", "suspended") or not record.handle:
            return None
        try:
            rt, handle = self._handle(record)
            return rt.changed_since_sync(handle)
        except (RuntimeError_, OSError):
            return None

    def written_since(self, ident: str, since_ns: int, limit: int = 10_000) -> list[str] | None:
        """Workspace paths commands in the sidecar wrote or deleted after `since_ns`; None
        when unknown or more than `limit`."""
        try:
            rt, handle = self._live(ident)[1:]
            return rt.written_since(handle, since_ns, limit)
        except (RuntimeError_, OSError):
            return None

    def setup_log(self, ident: str) -> Path:
        """Where what the setup commands of a sidecar's snapshot printed is kept."""
        record = self.store.get_sidecar(ident)
        base = self.runtime(record.runtime).state_dir / "snapshots" / record.snapshot_id
        return base / snapshot.SETUP_LOG

    def source_paths(self, ident: str) -> frozenset[str]:
        """The paths of the files the sidecar's workspace got from its snapshot's source tree and
        from syncs since: the project's tracked files, as far as the sidecar knows them."""
        record = self.store.get_sidecar(ident)
        base = self.runtime(record.runtime).state_dir / "snapshots" / record.snapshot_id
        paths = set(snapshot.manifest(base))
        synced = self.written_since(ident, 0)
        paths.update(synced or ())
        return frozenset(paths)

    def list_sidecars(self, project: str | None = None) -> list[SidecarRecord]:
        return [self._checked(r) for r in self.store.list_sidecars(project)]

    def _live(self, ident: str) -> tuple[SidecarRecord, Runtime, SidecarHandle]:
        return self._live_record(self.get(ident))

    def _live_record(self, record: SidecarRecord) -> tuple[SidecarRecord, Runtime, SidecarHandle]:
        if record.state == "dead":
            raise SidecarDead(
                f"sidecar {record.id} is dead (its processes died); "
                f"run `microbuild sidecar reset {record.id}` or destroy it"
            )
        if record.state == "creating" or not record.handle:
            raise SidecarDead(f"sidecar {record.id} is still being created; try again")
        rt, handle = self._handle(record)
        return record, rt, handle

    def microbuild_lock(self, sidecar_id: str) -> threading.RLock:
        """Held by a microbuild for its whole run and by a sync for its apply: two in one
        workspace would see each other's files, and a sync under a running check would make its
        result belong to no tree."""
        with self._lock:
            return self._microbuild_locks.setdefault(sidecar_id, threading.RLock())

    @contextlib.contextmanager
    def running(self, sidecar_id: str, run_id: str) -> Iterator[None]:
        """Records `run_id` as the microbuild a sidecar is busy with (`running_run`)."""
        with self._lock:
            self._running[sidecar_id] = run_id
        try:
            yield
        finally:
            with self._lock:
                if self._running.get(sidecar_id) == run_id:
                    del self._running[sidecar_id]

    def running_run(self, sidecar_id: str) -> str | None:
        """The microbuild the sidecar is busy with, if any: what a sync or a run waits for."""
        with self._lock:
            return self._running.get(sidecar_id)

    @contextlib.contextmanager
    def using(self, sidecar_id: str, *, touch: bool = True) -> Iterator[None]:
        """Marks a sidecar busy (an exec, a file transfer, a shell) so idle suspension leaves
        it alone; its last use is recorded at the end (unless the caller records it itself)."""
        with self._lock:
            self._busy[sidecar_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[sidecar_id] -= 1
                if self._busy[sidecar_id] <= 0:
                    del self._busy[sidecar_id]
            if touch:
                self.store.touch_sidecar(sidecar_id)

    def wake(self, ident: str) -> tuple[SidecarRecord, Runtime, SidecarHandle]:
        """The live sidecar, resumed if it was suspended: any request to it does this.

        A running sidecar's record is left alone: whoever uses it holds `using`, which keeps
        idle suspension away and records the use when it ends (one write per use, not two)."""
        return self._wake(self._live(ident))

    def _wake(
        self, live: tuple[SidecarRecord, Runtime, SidecarHandle]
    ) -> tuple[SidecarRecord, Runtime, SidecarHandle]:
        record, rt, handle = live
        if record.state == "suspended":
            rt.resume(handle)
            record.state = "running"
            self.store.set_sidecar_state(record.id, "running")
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
        pty: bool = False,
        host_network: bool = False,
    ) -> Execution:
        """Run a command; a suspended sidecar is resumed first, transparently."""
        return self._exec_in(
            self.wake(ident),
            argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            stdin=stdin,
            pty=pty,
            host_network=host_network,
        )

    def _exec_in(
        self,
        live: tuple[SidecarRecord, Runtime, SidecarHandle],
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
        pty: bool = False,
        host_network: bool = False,
    ) -> Execution:
        record, rt, handle = live
        try:
            return rt.exec(
                handle,
                argv,
                env=env,
                cwd=cwd,
                timeout=timeout,
                stdin=stdin,
                pty=pty,
                host_network=host_network,
            )
        except SidecarGone:
            self.store.set_sidecar_state(record.id, "dead")
            raise

    def workspace(self, ident: str) -> Path:
        _record, rt, handle = self.wake(ident)
        return rt.workspace(handle)

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
        rt.mark_synced(new_handle)
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

    def destroy_all(self) -> list[tuple[str, Exception | None]]:
        """Destroy every sidecar the store still has (what a host leaves for the next one,
        when there will be no next one): each id with the error that kept it, if any."""
        outcome: list[tuple[str, Exception | None]] = []
        for record in self.store.list_sidecars():
            try:
                self.destroy(record.id)
                outcome.append((record.id, None))
            except Exception as exc:  # the others still need destroying
                outcome.append((record.id, exc))
        return outcome

    def sync(
        self,
        ident: str,
        *,
        to_tree: str,
        payload: bytes,
        kind: str = "patch",
        from_tree: str | None = None,
        reset: bool = False,
    ) -> SidecarRecord:
        """Bring a sidecar's workspace to `to_tree`: apply a `git diff --binary` patch from the
        tree it holds (or, with `reset`, from its snapshot's source tree after a fresh layer),
        or unpack a whole archive of the tree after a reset. All of it runs inside the sidecar,
        so no path in a patch can reach the host; nothing is half-applied. It waits for a
        microbuild running in the sidecar to end."""
        if kind not in ("patch", "tar"):
            raise ApplyFailed(f"unknown sync payload {kind!r}; use patch or tar")
        record = self.store.get_sidecar(ident)
        with self.microbuild_lock(record.id):
            return self._sync(record.id, to_tree, payload, kind, from_tree, reset)

    def _sync(
        self,
        ident: str,
        to_tree: str,
        payload: bytes,
        kind: str,
        from_tree: str | None,
        reset: bool,
    ) -> SidecarRecord:
        record = self.store.get_sidecar(ident)
        if reset or kind == "tar":
            record = self.reset(record.id)
        elif record.state == "dead":
            raise SidecarDead(f"sidecar {record.id} is dead; reset it")
        if kind == "patch" and from_tree is not None and record.tree != from_tree:
            raise TreeMismatch(
                f"sidecar {record.id} holds tree {record.tree}, not {from_tree}; resync"
            )
        # The record is read once (above) and written once (below, with the new tree and the
        # time of this use); it is checked once, here, for the commands that apply the payload.
        work = kind == "tar" or bool(payload.strip())
        live = self._live_record(self._checked(record)) if work else None
        with self.using(record.id, touch=False):
            try:
                if live is not None and kind == "patch":
                    self._run_in(
                        live,
                        ["git", "apply", "--binary", "--whitespace=nowarn", "-"],
                        payload,
                        "the patch did not apply",
                    )
                elif live is not None:
                    self._unpack(live, payload)
            except BaseException:
                self.store.touch_sidecar(record.id)
                raise
            rt, handle = self._handle(record)
            rt.mark_synced(handle)
            record.tree = to_tree
            record.last_used_at = time.time()
            self.store.set_sidecar_tree(record.id, record.tree, record.last_used_at)
        return record

    def _unpack(self, live: tuple[SidecarRecord, Runtime, SidecarHandle], archive: bytes) -> None:
        """Replace the snapshot's source files (in a fresh layer) with an archive's."""
        record = live[0]
        snap = self.store.find_snapshot(record.snapshot_id)
        base = self.runtime(record.runtime).state_dir / "snapshots" / record.snapshot_id
        old = snapshot.manifest(base) if snap else []
        if old:
            listing = "\0".join(old).encode() + b"\0"
            self._run_in(live, ["xargs", "-0", "-r", "rm", "-f", "--"], listing, "cleanup failed")
        self._run_in(
            live, ["tar", "-x", "--no-same-owner", "-f", "-"], archive, "the archive did not unpack"
        )

    def _run_in(
        self,
        live: tuple[SidecarRecord, Runtime, SidecarHandle],
        argv: list[str],
        stdin: bytes,
        what: str,
    ) -> None:
        execution = self._exec_in(self._wake(live), argv, stdin=stdin, timeout=600)
        result, out, err = execution.collect()
        if result.exit_code != 0:
            detail = (err or out).decode(errors="replace").strip().splitlines()
            raise ApplyFailed(f"{what}: {detail[-1] if detail else f'exit {result.exit_code}'}")

    def stats(self, ident: str) -> SidecarStats:
        _record, rt, handle = self._live(ident)
        return rt.stats(handle)

    # -- housekeeping ------------------------------------------------------------------------

    def suspend_idle(self, now: float | None = None) -> list[str]:
        """Suspend running sidecars idle for longer than their `idle_suspend_s`."""
        now = time.time() if now is None else now
        suspended = []
        for record in self.store.list_sidecars():
            idle_after = float(record.settings.get("idle_suspend_s", 300) or 0)
            if record.state != "running" or idle_after <= 0 or record.id in self._busy:
                continue
            if now - record.last_used_at < idle_after:
                continue
            with contextlib.suppress(RuntimeError_, OSError, cg.CgroupError):
                self.suspend(record.id)
                suspended.append(record.id)
        return suspended

    def reconcile(self) -> dict[str, list[str]]:
        """After a crash or reboot: adopt live sidecars, clean up and mark dead ones, and remove
        whatever no record owns (build sidecars, leftover directories and cgroups)."""
        report: dict[str, list[str]] = {"adopted": [], "dead": [], "removed": [], "failed": []}
        known = set()
        for record in self.store.list_sidecars():
            known.add(record.id)
            if not record.handle:
                self.store.delete_sidecar(record.id)
                report["removed"].append(record.id)
                continue
            try:
                rt, handle = self._handle(record)
            except RuntimeError_:
                continue
            if rt.is_alive(handle):
                rt.adopt(handle)
                state = "suspended" if rt.is_suspended(handle) else "running"
                self.store.set_sidecar_state(record.id, state)
                report["adopted"].append(record.id)
            else:
                with contextlib.suppress(Exception):
                    rt.destroy(handle)
                if record.state != "dead":
                    self.store.set_sidecar_state(record.id, "dead")
                report["dead"].append(record.id)
        for rt in self._all_runtimes():
            report["removed"].extend(rt.collect_garbage(keep=known))
        report["failed"].extend(
            self.store.fail_unfinished_runs("the host stopped during the microbuild")
        )
        for snap in self.store.list_snapshots():
            if snap.state in ("building", "pending"):
                lock = self.state_dir / "snapshots" / f"{snap.id}.lock"
                if not snapshot._lock_held(lock):
                    snap.state = "failed"
                    snap.error = snap.error or "the host stopped during the build"
                    self.store.put_snapshot(snap)
                    shutil.rmtree(self.state_dir / "snapshots" / snap.id, ignore_errors=True)
                    report["failed"].append(snap.id)
        return report

    def _all_runtimes(self) -> list[Runtime]:
        found = []
        for name in ("namespace", "process"):
            with contextlib.suppress(RuntimeError_):
                found.append(self.runtime(name))
        return found
