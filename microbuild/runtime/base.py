"""The runtime interface: how sidecars are made, run commands, sleep, wake and go away.

Like an httpx transport, every runtime implements the same small surface, so everything above it
(snapshots, the host, microbuilds) never asks which one it is talking to.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import shutil
import stat
import struct
import subprocess
import termios
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from microbuild.runtime.cgroup import Limits

Network = Literal["none", "host"]
Stream = Literal["stdout", "stderr"]
WORKSPACE = "/workspace"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


SYNC_STAMP = "synced"


def _changed_files(root: Path, since_ns: int, limit: int) -> list[str] | None:
    """Files (and overlay whiteouts, i.e. deletions) under `root` whose ctime is after
    `since_ns`; a directory that was deleted and made again (overlay-opaque) counts as a whole."""
    found: list[str] = []
    pending = [("", str(root))]
    while pending:
        rel_dir, path = pending.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            rel = f"{rel_dir}{entry.name}"
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if info.st_ctime_ns > since_ns and _is_opaque(entry.path):
                    found.append(rel)
                pending.append((rel + "/", entry.path))
            elif info.st_ctime_ns > since_ns:
                found.append(rel)
            if len(found) > limit:
                return None
    return sorted(found)


def _is_opaque(path: str) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


class RuntimeError_(Exception):
    """Base class of runtime failures; the message is one line and says what to do."""


class RuntimeUnavailable(RuntimeError_):
    """This runtime cannot work on this machine (not Linux, no root, no overlayfs...)."""


class SidecarGone(RuntimeError_):
    """The sidecar's processes died or its directories vanished."""


@dataclass(frozen=True)
class SidecarSpec:
    """Everything a runtime needs to make a sidecar; stored so that reset can make it again."""

    layers: tuple[str, ...]
    network: Network = "none"
    limits: Limits = field(default_factory=lambda: Limits(4 << 30, 1024, 2.0))
    expose: tuple[str, ...] = ()
    rootfs: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    tmp_size: int = 1 << 30
    disk: int | None = None
    """Size of the writable layer's own filesystem in bytes (runtimes that can limit it);
    None: the writable layer shares the state dir's filesystem, unlimited."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["env"] = dict(self.env)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SidecarSpec:
        limits = data["limits"]
        return cls(
            layers=tuple(data["layers"]),
            network=data["network"],
            limits=Limits(limits["memory"], limits["pids"], limits["cpus"]),
            expose=tuple(data.get("expose", ())),
            rootfs=data.get("rootfs"),
            env=dict(data.get("env", {})),
            tmp_size=data.get("tmp_size", 1 << 30),
            disk=data.get("disk"),
        )


@dataclass
class SidecarHandle:
    """What a runtime knows about one live sidecar; plain data, kept in the store."""

    id: str
    runtime: str
    dir: str
    spec: SidecarSpec
    init_pid: int | None = None
    init_start: int | None = None
    cgroup: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "runtime": self.runtime,
            "dir": self.dir,
            "spec": self.spec.to_json(),
            "init_pid": self.init_pid,
            "init_start": self.init_start,
            "cgroup": self.cgroup,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SidecarHandle:
        return cls(
            id=data["id"],
            runtime=data["runtime"],
            dir=data["dir"],
            spec=SidecarSpec.from_json(data["spec"]),
            init_pid=data.get("init_pid"),
            init_start=data.get("init_start"),
            cgroup=data.get("cgroup"),
        )


@dataclass(frozen=True)
class OutputChunk:
    stream: Stream
    data: bytes


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    signal: int | None
    timed_out: bool
    oom_killed: bool
    duration_s: float
    cpu_s: float | None = None
    disk_limit_reached: int | None = None
    """The sidecar's disk limit in bytes, when the command failed with its disk full."""


@dataclass(frozen=True)
class SidecarStats:
    memory_bytes: int
    rss_bytes: int
    cpu_s: float
    processes: int


class ProcessLike(Protocol):
    """What `Execution` needs of a started command: `subprocess.Popen`, or the zygote's."""

    pid: int
    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Execution:
    """A running command: iterate `chunks()` for its output as it comes, then `result()`.

    The runtime supplies how to kill the whole tree (`kill_tree`) and what to do once the main
    process is gone (`finish`), e.g. reap leftovers and read accounting.
    """

    def __init__(
        self,
        proc: ProcessLike,
        timeout: float | None,
        kill_tree: Callable[[], None],
        finish: Callable[[int, bool], ExecResult],
        pty_master: int | None = None,
    ) -> None:
        self.proc = proc
        self.pty_master = pty_master
        self.started = time.monotonic()
        self.deadline = None if timeout is None else self.started + timeout
        self._kill_tree = kill_tree
        self._finish = finish
        self._result: ExecResult | None = None
        self._result_lock = threading.Lock()
        self.timed_out = False
        self.output_done = False

    def kill(self) -> None:
        """Kill the command and everything it started (e.g. when the client went away)."""
        self._kill_tree()

    def write(self, data: bytes) -> None:
        """Type into a terminal (`pty=True` executions)."""
        if self.pty_master is None:
            raise RuntimeError_("this command has no terminal to write to")
        view = memoryview(data)
        while view:
            written = os.write(self.pty_master, view)
            view = view[written:]

    def resize(self, rows: int, cols: int) -> None:
        if self.pty_master is not None:
            size = struct.pack("HHHH", max(1, rows), max(1, cols), 0, 0)
            fcntl.ioctl(self.pty_master, termios.TIOCSWINSZ, size)

    def _sources(self) -> list[tuple[int, Stream]]:
        if self.pty_master is not None:
            return [(self.pty_master, "stdout")]
        return [
            (pipe.fileno(), stream)  # type: ignore[misc]
            for stream, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
            if pipe is not None
        ]

    def chunks(self, until: float | None = None) -> Iterator[OutputChunk]:
        """The output as it comes, to its end; with `until` (a time.monotonic()), no later
        than then (`output_done` says whether that was the end)."""
        sel = selectors.DefaultSelector()
        for fd, stream in self._sources():
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, stream)
        leftovers_killed = False
        try:
            while sel.get_map():
                wait = 0.05
                if self.deadline is not None:
                    wait = max(0.0, min(wait, self.deadline - time.monotonic()))
                if until is not None:
                    left = until - time.monotonic()
                    if left <= 0:
                        return
                    wait = min(wait, left)
                for key, _ in sel.select(wait):
                    try:
                        data = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError:  # EIO: the terminal's last writer is gone
                        data = b""
                    if not data:
                        sel.unregister(key.fd)
                        continue
                    yield OutputChunk(key.data, data)
                if (
                    not self.timed_out
                    and self.deadline is not None
                    and time.monotonic() >= self.deadline
                    and self.proc.poll() is None
                ):
                    self.timed_out = True
                    self._kill_tree()
                elif self.proc.poll() is not None and not leftovers_killed and sel.get_map():
                    # The main process is gone but something it started still holds the pipes.
                    leftovers_killed = True
                    self._kill_tree()
            self.output_done = True
        finally:
            sel.close()

    def result(self) -> ExecResult:
        """Wait for the end (draining output nobody read) and clean up, once: a second
        caller, from any thread, gets the same result."""
        with self._result_lock:
            if self._result is None:
                for _ in self.chunks():
                    pass
                status = self.proc.wait()
                for pipe in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
                    if pipe is not None:
                        pipe.close()
                if self.pty_master is not None:
                    os.close(self.pty_master)
                    self.pty_master = None
                self._result = self._finish(status, self.timed_out)
            return self._result

    def collect(self) -> tuple[ExecResult, bytes, bytes]:
        """Run to the end and return the result with the whole stdout and stderr."""
        out: list[bytes] = []
        err: list[bytes] = []
        for chunk in self.chunks():
            (out if chunk.stream == "stdout" else err).append(chunk.data)
        return self.result(), b"".join(out), b"".join(err)


def remove_tree(path: Path | str) -> None:
    """rm -rf without recursion limits (a sidecar may leave a tree thousands deep) and
    without crossing into other filesystems."""
    if not os.path.lexists(path):
        return
    try:
        subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(path)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        shutil.rmtree(path, ignore_errors=True)


def exit_code_of(status: int) -> tuple[int, int | None]:
    """(shell-style exit code, signal) from a Popen returncode."""
    if status < 0:
        return 128 - status, -status
    return status, None


class Runtime(ABC):
    """Makes sidecars from snapshot layers. One instance per state directory."""

    name: str
    isolates: bool

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.sidecars_dir = state_dir / "sidecars"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the runtime holds itself (not the sidecars: they outlive it)."""

    @abstractmethod
    def create(self, sidecar_id: str, spec: SidecarSpec) -> SidecarHandle: ...

    @abstractmethod
    def exec(
        self,
        handle: SidecarHandle,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
        pty: bool = False,
        host_network: bool = False,
    ) -> Execution:
        """Start a command. With `pty`, it gets a terminal (stdin, stdout and stderr) that the
        caller drives with `Execution.write` / `resize`; output arrives as stdout. With
        `host_network`, it uses the host's network even in a sidecar that has none (a check
        that says `network = "host"`)."""

    @abstractmethod
    def suspend(self, handle: SidecarHandle) -> None: ...

    @abstractmethod
    def resume(self, handle: SidecarHandle) -> None: ...

    @abstractmethod
    def destroy(self, handle: SidecarHandle) -> None:
        """Remove every trace: processes, mounts, cgroups and directories. Idempotent."""

    @abstractmethod
    def is_alive(self, handle: SidecarHandle) -> bool: ...

    @abstractmethod
    def is_suspended(self, handle: SidecarHandle) -> bool: ...

    def adopt(self, handle: SidecarHandle) -> None:  # noqa: B027 - optional hook
        """Take over a live sidecar after a host restart: end commands nobody waits for."""

    @abstractmethod
    def collect_garbage(self, keep: set[str]) -> list[str]:
        """Remove sidecars (directories, cgroups, processes) whose id is not in `keep`."""

    @abstractmethod
    def stats(self, handle: SidecarHandle) -> SidecarStats: ...

    @abstractmethod
    def workspace(self, handle: SidecarHandle) -> Path:
        """The sidecar's workspace as a path the host can read and write."""

    @abstractmethod
    def freeze(self, handle: SidecarHandle, dest: Path) -> tuple[str, ...]:
        """Stop the sidecar and turn what it wrote into a read-only snapshot layer at `dest`.

        Returns the layers (top first) a sidecar of the resulting snapshot is made from.
        """

    def reset(self, handle: SidecarHandle) -> SidecarHandle:
        """A fresh writable layer from the same snapshot, under the same id."""
        self.destroy(handle)
        return self.create(handle.id, handle.spec)

    def mark_synced(self, handle: SidecarHandle) -> None:
        """Remember this moment as the one at which the workspace held exactly a synced tree."""
        stamp = Path(handle.dir) / SYNC_STAMP
        stamp.touch()
        os.utime(stamp)

    def changed_since_sync(self, handle: SidecarHandle, limit: int = 10_000) -> list[str] | None:
        """Workspace paths (relative, sorted) that commands in the sidecar wrote or deleted
        since the last sync; `["."]` (all of it) when there are more than `limit`; None when
        no sync is recorded.

        The client compares them with the files of the tree the sidecar holds: a tracked file
        changed in the sidecar means it no longer holds that tree. Change times (ctime) are
        used because no process can set them back."""
        try:
            since = (Path(handle.dir) / SYNC_STAMP).stat().st_mtime_ns
        except OSError:
            return None
        found = _changed_files(self._changes_root(handle), since, limit)
        return ["."] if found is None else found

    def written_since(
        self, handle: SidecarHandle, since_ns: int, limit: int = 10_000
    ) -> list[str] | None:
        """Workspace paths (relative, sorted) written or deleted after `since_ns` (a ctime,
        which no process can set back); None when there are more than `limit`."""
        return _changed_files(self._changes_root(handle), since_ns, limit)

    def _changes_root(self, handle: SidecarHandle) -> Path:
        """Where to look for changes: the whole workspace, unless a runtime knows better."""
        return self.workspace(handle)

    def sidecar_env(self, handle: SidecarHandle, extra: Mapping[str, str] | None) -> dict[str, str]:
        """The environment of a command: clean, never the caller's own. No TERM, as on a CI
        runner: `TERM=dumb` turns colour off in tools whose tests expect a CI's default."""
        workspace = str(self.workspace_in_sidecar(handle))
        path = f"{workspace}/.venv/bin:{workspace}/node_modules/.bin:{self.base_path()}"
        env = {
            "PATH": path,
            "HOME": self.home_in_sidecar(handle),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "MICROBUILD_SIDECAR": handle.id,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        env.update(handle.spec.env)
        if extra:
            env.update(extra)
        return env

    def base_path(self) -> str:
        return DEFAULT_PATH

    @abstractmethod
    def workspace_in_sidecar(self, handle: SidecarHandle) -> str: ...

    @abstractmethod
    def home_in_sidecar(self, handle: SidecarHandle) -> str: ...
