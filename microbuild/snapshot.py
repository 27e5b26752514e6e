"""Snapshots: a project's dependencies installed once, frozen, and shared by every sidecar.

A client describes the snapshot it needs (`SnapshotRequest`: setup commands, the input files'
digests, the sidecar settings) and, when the host has none, uploads the source: the repository
at its base commit plus the input files as they are in the working tree. The host runs the
setup commands in a sidecar that has the network, and what they wrote becomes a read-only
layer. A snapshot is addressed by a hash of the setup commands, the inputs' digests and the
runtime, so an unchanged lockfile finds the snapshot it built last time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import secrets
import shutil
import sys
import tarfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field, model_validator

from microbuild.config import SidecarConfig, _require_plain
from microbuild.errors import SetupFailed, SnapshotError
from microbuild.report.classify import disk_limit_cause
from microbuild.runtime import Limits, Runtime, RuntimeError_, SidecarHandle, SidecarSpec
from microbuild.store import SnapshotRecord, Store

KEY_VERSION = 2
TAIL_LINES = 20
MANIFEST = "manifest.json"
SETUP_LOG = "setup.log"
"""What the setup commands printed: the part of a CI-style log a snapshot saves every run."""
SETUP_LOG_MAX_BYTES = 64 << 20

__all__ = [
    "SetupFailed",
    "SnapshotError",
    "SnapshotRequest",
    "build",
    "prune",
    "resolve",
    "snapshot_key",
    "spec_for",
]

Progress = Callable[[str], None]
Output = Callable[[bytes], None]


class SnapshotRequest(BaseModel):
    """What a client asks of a host: enough to address the snapshot and to build it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(max_length=4096)
    setup: tuple[str, ...] = Field(default=(), max_length=256)
    inputs: tuple[tuple[str, str], ...] = Field(default=(), max_length=10_000)
    timeout_s: float = Field(default=1800, gt=0)
    sidecar: SidecarConfig = Field(default_factory=SidecarConfig)
    base_commit: str = Field(pattern=r"^[0-9a-f]{40,64}$")
    source_tree: str = Field(pattern=r"^[0-9a-f]{40,64}$")

    @model_validator(mode="after")
    def _plain_text(self) -> SnapshotRequest:
        for text in (self.project, *self.setup, *(p for pair in self.inputs for p in pair)):
            _require_plain(text)
        return self


def snapshot_key(request: SnapshotRequest, runtime: Runtime) -> tuple[str, str]:
    """(id, digest). The host's own Python is part of the key: venvs point at it."""
    sidecar = request.sidecar
    material = {
        "version": KEY_VERSION,
        "setup": list(request.setup),
        "inputs": [list(pair) for pair in request.inputs],
        "runtime": runtime.name,
        "rootfs": sidecar.rootfs,
        "expose": list(sidecar.expose),
        "env": dict(sorted(sidecar.env.items())),
        "python": [os.path.realpath(sys.base_prefix), platform.python_version()],
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return f"sn_{digest[:12]}", digest


def spec_for(sidecar: SidecarConfig, layers: tuple[str, ...], network: str) -> SidecarSpec:
    return SidecarSpec(
        layers=layers,
        network="host" if network == "host" else "none",
        limits=Limits(memory=sidecar.memory, pids=sidecar.pids, cpus=sidecar.cpus),
        expose=tuple(sidecar.expose),
        rootfs=sidecar.rootfs,
        env=dict(sidecar.env),
        tmp_size=sidecar.tmp_size,
        disk=sidecar.disk,
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ready(record: SnapshotRecord | None) -> bool:
    return (
        record is not None
        and record.state == "ready"
        and all(os.path.isdir(layer) for layer in record.layers)
    )


def resolve(
    store: Store, runtime: Runtime, request: SnapshotRequest, *, rebuild: bool = False
) -> tuple[SnapshotRecord, bool]:
    """The snapshot for a request, and whether it still needs building (its source uploaded)."""
    snapshot_id, digest = snapshot_key(request, runtime)
    existing = store.find_snapshot(snapshot_id)
    if _ready(existing) and not rebuild:
        assert existing is not None
        store.touch_snapshot(snapshot_id)
        return existing, False
    if existing is not None and existing.state == "ready":
        in_use = store.list_sidecars(snapshot_id=snapshot_id)
        if in_use:
            raise SnapshotError(
                f"snapshot {snapshot_id} is used by sidecar(s) "
                f"{', '.join(s.id for s in in_use)}; destroy them before rebuilding it"
            )
    if (
        existing is not None
        and existing.state == "building"
        and _lock_held(runtime.state_dir / "snapshots" / f"{snapshot_id}.lock")
    ):
        return existing, True
    record = SnapshotRecord(
        id=snapshot_id,
        key=digest,
        project=request.project,
        runtime=runtime.name,
        state="pending",
        setup=list(request.setup),
        inputs=[list(pair) for pair in request.inputs],
        base_commit=request.base_commit,
        source_tree=request.source_tree,
        request=request.model_dump(mode="json"),
    )
    store.put_snapshot(record)
    return record, True


def build(
    store: Store,
    runtime: Runtime,
    snapshot_id: str,
    source_tar: Path,
    *,
    progress: Progress | None = None,
    output: Output | None = None,
) -> SnapshotRecord:
    """Build a resolved snapshot from its uploaded source; one build per snapshot at a time."""
    say = progress or (lambda _msg: None)
    sdir = runtime.state_dir / "snapshots" / snapshot_id
    with _lock(runtime.state_dir / "snapshots" / f"{snapshot_id}.lock"):
        record = store.find_snapshot(snapshot_id)
        if record is None or record.request is None:
            raise SnapshotError(f"no snapshot {snapshot_id} was requested; describe it first")
        if record.state == "ready" and _ready(record):
            say(f"snapshot {snapshot_id} is up to date")
            return record
        request = SnapshotRequest.model_validate(record.request)
        return _build(store, runtime, record, request, source_tar, sdir, say, output)


def _unpack(source_tar: Path, dest: Path) -> None:
    """Sources may come from a remote client: refuse members that would land outside `dest`."""
    if not hasattr(tarfile, "tar_filter"):
        raise SnapshotError("Python >= 3.11.4 is needed to unpack sources safely; upgrade it")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(source_tar, mode="r:") as tar:
            tar.extractall(dest, filter="tar")
    except (tarfile.TarError, OSError) as exc:
        raise SnapshotError(f"the uploaded source is not a usable tar archive: {exc}") from exc


def _build(
    store: Store,
    runtime: Runtime,
    record: SnapshotRecord,
    request: SnapshotRequest,
    source_tar: Path,
    sdir: Path,
    say: Progress,
    output: Output | None,
) -> SnapshotRecord:
    started = time.monotonic()
    record.state = "building"
    record.error = None
    store.put_snapshot(record)
    shutil.rmtree(sdir, ignore_errors=True)
    source = sdir / "source"
    try:
        say(f"unpacking {request.project} at {request.base_commit[:10]}")
        _unpack(source_tar, source / "workspace")
        _write_manifest(source / "workspace", sdir / MANIFEST)
        _empty_repository(source / "workspace")
        spec = spec_for(request.sidecar, (str(source),), "host")
        handle = runtime.create(f"sb_{record.id[3:]}_{secrets.token_hex(3)}", spec)
        try:
            deadline = time.monotonic() + request.timeout_s
            with open(sdir / SETUP_LOG, "wb") as log:
                keep = _logging(log, output)
                for number, command in enumerate(request.setup, 1):
                    say(f"[{number}/{len(request.setup)}] {command}")
                    keep(f"$ {command}\n".encode())
                    _run_setup(runtime, handle, command, deadline, keep)
            say("freezing the snapshot layer")
            layers = runtime.freeze(handle, sdir / "layer")
        except BaseException:
            with contextlib.suppress(Exception):
                runtime.destroy(handle)
            raise
        for leftover in sdir.iterdir():
            if str(leftover) not in layers and leftover.name not in (MANIFEST, SETUP_LOG):
                shutil.rmtree(leftover, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(sdir, ignore_errors=True)
        record.state = "failed"
        record.error = str(exc) or type(exc).__name__
        store.put_snapshot(record)
        if isinstance(exc, RuntimeError_):
            raise SnapshotError(f"snapshot build failed: {exc}") from exc
        raise
    record.layers = list(layers)
    record.state = "ready"
    record.error = None
    record.size_bytes = sum(_du(Path(layer)) for layer in layers)
    record.build_s = time.monotonic() - started
    record.created_at = record.last_used_at = time.time()
    store.put_snapshot(record)
    say(f"snapshot {record.id} ready in {record.build_s:.1f} s")
    return record


def _logging(log: BinaryIO, output: Output | None) -> Output:
    """`output`, and the setup log (up to SETUP_LOG_MAX_BYTES) too."""
    written = 0

    def keep(data: bytes) -> None:
        nonlocal written
        if written < SETUP_LOG_MAX_BYTES:
            log.write(data[: SETUP_LOG_MAX_BYTES - written])
            written += len(data)
        if output is not None:
            output(data)

    return keep


def _empty_repository(workspace: Path) -> None:
    """An empty git repository at the workspace's root, written by hand (no git runs on the
    host for it): tools that honour `.gitignore` only inside a repository (ruff, black, the
    ignore crate's walkers) then skip the files the project ignores and its setup generated, as
    in the checkout CI runs them in. A `.git` the source brought is not the user's: it goes."""
    git = workspace / ".git"
    if git.is_symlink() or git.is_file():
        git.unlink()
    elif git.exists():
        shutil.rmtree(git)
    for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "info"):
        (git / sub).mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "config").write_text(
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
    )


def _write_manifest(workspace: Path, dest: Path) -> None:
    """The files of the snapshot's source tree: what a full resync must delete first."""
    paths = []
    for dirpath, dirs, files in os.walk(workspace):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            paths.append(os.path.relpath(os.path.join(dirpath, name), workspace))
    dest.write_text(json.dumps(sorted(paths)))


def manifest(snapshot_dir: Path) -> list[str]:
    try:
        data = json.loads((snapshot_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    return [p for p in data if isinstance(p, str)]


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _run_setup(
    runtime: Runtime,
    handle: SidecarHandle,
    command: str,
    deadline: float,
    output: Output | None,
) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise SetupFailed(command, 124, ["(snapshot timeout_s reached before this command)"], True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    partial = b""
    execution = runtime.exec(handle, ["/bin/sh", "-c", command], timeout=remaining)
    for chunk in execution.chunks():
        if output is not None:
            output(chunk.data)
        partial += chunk.data
        *complete, partial = partial.split(b"\n")
        tail.extend(line.decode(errors="replace").rstrip() for line in complete)
    if partial:
        tail.append(partial.decode(errors="replace").rstrip())
    result = execution.result()
    if result.exit_code != 0 or result.timed_out:
        shown = [line for line in tail if line.strip()]
        if result.oom_killed:
            shown.append("(killed: out of memory; raise [sidecar] memory in microbuild.toml)")
        elif result.disk_limit_reached is not None:
            cause = disk_limit_cause(result.disk_limit_reached)
            shown.append(f"({cause}; raise [sidecar] disk in microbuild.toml)")
        raise SetupFailed(command, result.exit_code, shown, result.timed_out)


def prune(
    store: Store, runtimes: dict[str, Runtime], *, keep_latest: bool = True
) -> list[SnapshotRecord]:
    """Delete snapshots no sidecar uses. By default each project keeps its newest ready one."""
    used = {s.snapshot_id for s in store.list_sidecars()}
    snapshots = store.list_snapshots()
    newest: dict[tuple[str, str], SnapshotRecord] = {}
    for snap in snapshots:
        if snap.state == "ready":
            k = (snap.project, snap.runtime)
            if k not in newest or snap.last_used_at > newest[k].last_used_at:
                newest[k] = snap
    keep = {s.id for s in newest.values()} if keep_latest else set()
    removed = []
    for snap in snapshots:
        if snap.id in used or snap.id in keep:
            continue
        runtime = runtimes.get(snap.runtime)
        if runtime is None:
            continue
        snapshots_dir = runtime.state_dir / "snapshots"
        lock = snapshots_dir / f"{snap.id}.lock"
        if snap.state == "building" and _lock_held(lock):
            continue  # a build is running; a "building" record whose lock is free is stale
        shutil.rmtree(snapshots_dir / snap.id, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        store.delete_snapshot(snap.id)
        removed.append(snap)
    return removed


def _lock_held(path: Path) -> bool:
    try:
        with open(path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except OSError:
        return False
