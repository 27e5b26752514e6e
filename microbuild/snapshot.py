"""Snapshots: a project's dependencies installed once, frozen, and shared by every sidecar.

A snapshot is built by running the project's `[snapshot] setup` commands in a sidecar that has
the network, on the repository at its base commit (HEAD, with the input files as they are in
the working tree). What the commands wrote becomes a read-only layer. The snapshot is addressed
by a hash of the setup commands, the input files' contents and the runtime, so an unchanged
lockfile finds the snapshot it built last time.
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
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from microbuild.config import Project
from microbuild.errors import SetupFailed, SnapshotError
from microbuild.runtime import Limits, Runtime, RuntimeError_, SidecarHandle, SidecarSpec
from microbuild.store import SnapshotRecord, Store

KEY_VERSION = 1
TAIL_LINES = 20

__all__ = ["SetupFailed", "SnapshotError", "build", "prune", "snapshot_key", "spec_for"]

Progress = Callable[[str], None]
Output = Callable[[bytes], None]


@dataclass(frozen=True)
class SnapshotKey:
    id: str
    digest: str
    inputs: list[list[str]]


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except FileNotFoundError as exc:
        raise SnapshotError("git is not installed; install git (apt-get install git)") from exc
    if proc.returncode != 0:
        raise SnapshotError(_git_failure(root, args[0], proc.stderr))
    return proc.stdout.strip()


def _git_failure(root: Path, command: str, stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    detail = (fatal or lines or ["(no message)"])[0]
    if "safe.directory" in stderr:
        detail += f"; if you trust it: git config --global --add safe.directory {root}"
    return f"git {command} failed in {root}: {detail}"


def input_files(project: Project) -> list[Path]:
    """The files matched by `[snapshot] inputs`, relative to the project root, sorted."""
    found: set[Path] = set()
    for pattern in project.config.snapshot.inputs:
        for path in project.root.glob(pattern):
            rel = path.relative_to(project.root)
            if path.is_file() and ".git" not in rel.parts:
                found.add(rel)
    return sorted(found)


def snapshot_key(project: Project, runtime: Runtime) -> SnapshotKey:
    inputs = []
    for rel in input_files(project):
        digest = hashlib.sha256((project.root / rel).read_bytes()).hexdigest()
        inputs.append([rel.as_posix(), digest])
    sidecar = project.config.sidecar
    material = {
        "version": KEY_VERSION,
        "setup": list(project.config.snapshot.setup),
        "inputs": inputs,
        "runtime": runtime.name,
        "rootfs": sidecar.rootfs,
        "expose": list(sidecar.expose),
        "env": dict(sorted(sidecar.env.items())),
        "python": [os.path.realpath(sys.base_prefix), platform.python_version()],
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return SnapshotKey(id=f"sn_{digest[:12]}", digest=digest, inputs=inputs)


def spec_for(project: Project, layers: tuple[str, ...], network: str) -> SidecarSpec:
    sidecar = project.config.sidecar
    return SidecarSpec(
        layers=layers,
        network="host" if network == "host" else "none",
        limits=Limits(memory=sidecar.memory, pids=sidecar.pids, cpus=sidecar.cpus),
        expose=tuple(sidecar.expose),
        rootfs=sidecar.rootfs,
        env=dict(sidecar.env),
        tmp_size=sidecar.tmp_size,
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


def _write_source(project: Project, dest: Path, inputs: list[Path]) -> tuple[str, str]:
    """Export HEAD plus the working tree's input files; return (base commit, its tree id)."""
    head = subprocess.run(
        ["git", "-C", str(project.root), "rev-parse", "--verify", "-q", "HEAD^{commit}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0 and not head.stderr.strip():
        raise SnapshotError(
            f"{project.root} has no commit yet; commit once so the snapshot has a base commit"
        )
    if head.returncode != 0:
        raise SnapshotError(_git_failure(project.root, "rev-parse", head.stderr))
    commit = head.stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(
        ["git", "-C", str(project.root), "archive", "--format=tar", commit],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert archive.stdout is not None
    with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(dest, filter="tar")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dest)
    if archive.wait() != 0:
        detail = archive.stderr.read().decode().strip() if archive.stderr else ""
        raise SnapshotError(f"git archive failed: {detail}")
    for rel in inputs:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project.root / rel, target)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(project.root, "read-tree", commit, env=env)
        if inputs:
            _git(project.root, "update-index", "--add", "--", *map(str, inputs), env=env)
        tree = _git(project.root, "write-tree", env=env)
    return commit, tree


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def build(
    store: Store,
    runtime: Runtime,
    project: Project,
    *,
    rebuild: bool = False,
    progress: Progress | None = None,
    output: Output | None = None,
) -> SnapshotRecord:
    """Return the ready snapshot for the project's current inputs, building it if needed."""
    say = progress or (lambda _msg: None)
    key = snapshot_key(project, runtime)
    snapshots_dir = runtime.state_dir / "snapshots"
    with _lock(snapshots_dir / f"{key.id}.lock"):
        existing = store.find_snapshot(key.id)
        if existing and existing.state == "ready" and not rebuild:
            if all(os.path.isdir(layer) for layer in existing.layers):
                store.touch_snapshot(key.id)
                say(f"snapshot {key.id} is up to date")
                return existing
            say(f"snapshot {key.id} lost its layers; rebuilding")
        in_use = [s for s in store.list_sidecars(snapshot_id=key.id)]
        if existing and in_use:
            raise SnapshotError(
                f"snapshot {key.id} is used by sidecar(s) "
                f"{', '.join(s.id for s in in_use)}; destroy them before rebuilding it"
            )
        return _build(store, runtime, project, key, snapshots_dir / key.id, say, output)


def _build(
    store: Store,
    runtime: Runtime,
    project: Project,
    key: SnapshotKey,
    sdir: Path,
    say: Progress,
    output: Output | None,
) -> SnapshotRecord:
    started = time.monotonic()
    setup = list(project.config.snapshot.setup)
    record = SnapshotRecord(
        id=key.id,
        key=key.digest,
        project=str(project.root),
        runtime=runtime.name,
        state="building",
        setup=setup,
        inputs=key.inputs,
    )
    store.put_snapshot(record)
    shutil.rmtree(sdir, ignore_errors=True)
    source = sdir / "source"
    try:
        say(f"exporting {project.root} at HEAD")
        commit, tree = _write_source(
            project, source / "workspace", [Path(p) for p, _ in key.inputs]
        )
        record.base_commit, record.source_tree = commit, tree
        spec = spec_for(project, (str(source),), "host")
        handle = runtime.create(f"sb_{key.id[3:]}_{secrets.token_hex(3)}", spec)
        try:
            deadline = time.monotonic() + project.config.snapshot.timeout_s
            for number, command in enumerate(setup, 1):
                say(f"[{number}/{len(setup)}] {command}")
                _run_setup(runtime, handle, command, deadline, output)
            say("freezing the snapshot layer")
            layers = runtime.freeze(handle, sdir / "layer")
        except BaseException:
            with contextlib.suppress(Exception):
                runtime.destroy(handle)
            raise
        for leftover in sdir.iterdir():
            if str(leftover) not in layers:
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
    say(f"snapshot {key.id} ready in {record.build_s:.1f} s")
    return record


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
