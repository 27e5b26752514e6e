"""Control groups for sidecars: limits, freezing, accounting and killing whole process trees.

Two drivers behind one interface: cgroup v1 (one hierarchy per controller, as on this project's
CI machine) and cgroup v2 (the unified hierarchy of most current distributions).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


class CgroupError(RuntimeError):
    """Cgroups are missing, not writable, or refused an operation."""


@dataclass(frozen=True)
class Limits:
    memory: int
    pids: int
    cpus: float | None


# Plain os calls, not open(): control files are read and written several times per command,
# and a text file object costs more than the kernel's side of it.
def _write(path: Path | str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path | str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def _wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise CgroupError(f"timed out waiting for cgroup to {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _rmdir_retrying(path: Path) -> None:
    """rmdir of a cgroup fails with EBUSY for a moment after its last process exits."""
    deadline = time.monotonic() + 5
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {exc.strerror}") from exc
            time.sleep(0.002)


def _remove_cgroup_tree(path: Path) -> None:
    """Child cgroups must go before their parent; files inside cannot be removed at all."""
    if not path.is_dir():
        return
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        _rmdir_retrying(Path(dirpath))


def _tree_pids(path: Path) -> list[int]:
    """Processes in a cgroup and all its descendants (cgroup.procs lists only its own)."""
    found: list[int] = []
    for dirpath, _dirs, _files in os.walk(path):
        try:
            found.extend(int(x) for x in _read(Path(dirpath) / "cgroup.procs").split())
        except FileNotFoundError:
            continue
    return found


class Cgroup(ABC):
    """One cgroup, spanning every hierarchy the driver uses."""

    version: int

    @abstractmethod
    def to_json(self) -> dict[str, object]: ...

    @abstractmethod
    def child(self, name: str, only: tuple[str, ...] | None = None) -> Cgroup:
        """A child cgroup; with `only`, just those (v1) controllers get a child of their own."""

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    def children(self) -> list[Cgroup]:
        """Child cgroups (one level), e.g. the sidecars under a root or the commands under a
        sidecar."""

    @abstractmethod
    def create(self) -> None: ...

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def set_limits(self, limits: Limits) -> None: ...

    @abstractmethod
    def join_files(self) -> list[str]:
        """Files a just-forked, single-threaded process writes "0" into to join this cgroup
        (safe between fork and exec). Not for a process with threads: on v1 they are the
        `tasks` files, which move only the calling thread."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Processes in this cgroup and its descendants."""

    @abstractmethod
    def freeze(self) -> None: ...

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def is_frozen(self) -> bool: ...

    @abstractmethod
    def cpu_usage_s(self) -> float: ...

    @abstractmethod
    def memory_usage(self) -> int: ...

    @abstractmethod
    def oom_kills(self) -> int: ...

    @abstractmethod
    def _remove_dirs(self) -> None: ...

    @abstractmethod
    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files: writing a pid into them moves its whole process."""

    def join(self) -> None:
        """Move this whole process (all its threads) into the cgroup."""
        for path in self.procs_files():
            _write(Path(path), "0")

    def kill_all(self, timeout: float = 10) -> None:
        """SIGKILL every process, freezing first so that a fork bomb cannot outrun the loop."""
        if not self.exists():
            return
        self.freeze()
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.thaw()
        _wait_until(lambda: not self.pids(), timeout, "empty")

    def prune_empty(self) -> None:  # noqa: B027 - optional: v2 keeps its root
        """Remove this cgroup's own directories if nothing lives in them (never raises)."""

    def remove(self) -> None:
        """Kill what is left, then remove the cgroup's directories, children first."""
        if self._remove_if_empty():
            return
        if self.exists() and self.pids():
            self.kill_all()
        self._remove_dirs()

    def _remove_if_empty(self) -> bool:
        """The common case in one rmdir per directory, without listing or reading anything:
        True if the cgroup had neither processes nor children and is gone. The kernel refuses
        (EBUSY) to remove a cgroup with either, and the freezer, which kills what is left,
        is always removed last."""
        for path in self._dirs_freezer_last():
            try:
                path.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    @abstractmethod
    def _dirs_freezer_last(self) -> list[Path]:
        """This cgroup's own directories, the one that freezes its processes last."""


class CgroupV1(Cgroup):
    version = 1

    def __init__(self, dirs: dict[str, str], owned: tuple[str, ...] | None = None) -> None:
        self.dirs = {name: Path(path) for name, path in dirs.items()}
        # Controllers whose directory belongs to this cgroup; the others are its parent's.
        self.owned = tuple(self.dirs) if owned is None else owned

    def to_json(self) -> dict[str, object]:
        return {
            "version": 1,
            "dirs": {k: str(v) for k, v in self.dirs.items()},
            "owned": list(self.owned),
        }

    def child(self, name: str, only: tuple[str, ...] | None = None) -> CgroupV1:
        if only is not None and "freezer" not in only:
            # Without a freezer of its own, freezing or killing it would hit its parent's.
            raise ValueError("a v1 child cgroup needs a freezer of its own")
        owned = tuple(self.dirs) if only is None else only
        dirs = {k: str(v / name if k in owned else v) for k, v in self.dirs.items()}
        return CgroupV1(dirs, owned)

    @property
    def name(self) -> str:
        return self.dirs["freezer"].name

    def children(self) -> list[Cgroup]:
        names: set[str] = set()
        for name in self.owned:
            if self.dirs[name].is_dir():
                names.update(p.name for p in self.dirs[name].iterdir() if p.is_dir())
        return [self.child(n, only=self.owned) for n in sorted(names)]

    def create(self) -> None:
        for name in self.owned:
            self.dirs[name].mkdir(parents=True, exist_ok=True)

    def prune_empty(self) -> None:
        """Remove this cgroup, and the `microbuild` parent above it, where nothing is left:
        an empty cgroup left in someone else's cgroup (a session's) can keep theirs alive."""
        for name in self.owned:
            path = self.dirs[name]
            for candidate in (path, path.parent):
                if candidate.name != "microbuild" and candidate != path:
                    continue
                with contextlib.suppress(OSError):
                    candidate.rmdir()

    def exists(self) -> bool:
        return self.dirs["freezer"].is_dir()

    def set_limits(self, limits: Limits) -> None:
        mem = self.dirs["memory"]
        _write(mem / "memory.limit_in_bytes", str(limits.memory))
        memsw = mem / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            _write(memsw, str(limits.memory))
        swappiness = mem / "memory.swappiness"
        if swappiness.exists():
            with contextlib.suppress(OSError):
                _write(swappiness, "0")
        _write(self.dirs["pids"] / "pids.max", str(limits.pids))
        cpu = self.dirs["cpu"]
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        quota = -1 if limits.cpus is None else max(1000, int(limits.cpus * CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))

    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs.values()]

    def join_files(self) -> list[str]:
        # `tasks`, not `cgroup.procs`: writing "0" there moves only the calling thread, which
        # the kernel does without taking its global threadgroup lock for writing; through
        # cgroup.procs each command waited for that lock's RCU grace period (~5 ms, up to 20).
        return [str(path / "tasks") for path in self.dirs.values()]

    def pids(self) -> list[int]:
        return _tree_pids(self.dirs["freezer"])

    def freeze(self) -> None:
        state = self.dirs["freezer"] / "freezer.state"
        _write(state, "FROZEN")
        _wait_until(lambda: _read(state).strip() == "FROZEN", 10, "freeze")

    def thaw(self) -> None:
        _write(self.dirs["freezer"] / "freezer.state", "THAWED")

    def is_frozen(self) -> bool:
        return _read(self.dirs["freezer"] / "freezer.state").strip() == "FROZEN"

    def cpu_usage_s(self) -> float:
        return int(_read(self.dirs["cpuacct"] / "cpuacct.usage")) / 1e9

    def memory_usage(self) -> int:
        return int(_read(self.dirs["memory"] / "memory.usage_in_bytes"))

    def oom_kills(self) -> int:
        try:
            text = _read(self.dirs["memory"] / "memory.oom_control")
        except FileNotFoundError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def _remove_dirs(self) -> None:
        for name in self.owned:
            _remove_cgroup_tree(self.dirs[name])

    def _dirs_freezer_last(self) -> list[Path]:
        return sorted((self.dirs[n] for n in self.owned), key=lambda p: p == self.dirs["freezer"])


class CgroupV2(Cgroup):
    version = 2

    def __init__(self, path: str, controllers: tuple[str, ...] = V2_CONTROLLERS) -> None:
        self.path = Path(path)
        self.controllers = controllers

    def to_json(self) -> dict[str, object]:
        return {"version": 2, "path": str(self.path), "controllers": list(self.controllers)}

    def child(self, name: str, only: tuple[str, ...] | None = None) -> CgroupV2:
        return CgroupV2(str(self.path / name), self.controllers)

    @property
    def name(self) -> str:
        return self.path.name

    def children(self) -> list[Cgroup]:
        if not self.path.is_dir():
            return []
        return [self.child(p.name) for p in sorted(self.path.iterdir()) if p.is_dir()]

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def exists(self) -> bool:
        return self.path.is_dir()

    def set_limits(self, limits: Limits) -> None:
        available = set(_read(self.path / "cgroup.controllers").split())
        missing = [c for c in V2_CONTROLLERS if c not in available]
        if missing:
            raise CgroupError(
                f"cgroup v2 controllers {', '.join(missing)} are not enabled for {self.path}; "
                "enable them in the parent's cgroup.subtree_control (or boot with a unified "
                "hierarchy)"
            )
        _write(self.path / "memory.max", str(limits.memory))
        swap = self.path / "memory.swap.max"
        if swap.exists():
            _write(swap, "0")
        _write(self.path / "pids.max", str(limits.pids))
        quota = "max" if limits.cpus is None else str(max(1000, int(limits.cpus * CPU_PERIOD_US)))
        _write(self.path / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def procs_files(self) -> list[str]:
        return [str(self.path / "cgroup.procs")]

    def join_files(self) -> list[str]:
        # cgroup.threads cannot cross resource domains; a process joins through cgroup.procs.
        return self.procs_files()

    def pids(self) -> list[int]:
        return _tree_pids(self.path)

    def _events(self) -> dict[str, str]:
        pairs = (line.split(" ", 1) for line in _read(self.path / "cgroup.events").splitlines())
        return {k: v for k, v in pairs}

    def freeze(self) -> None:
        _write(self.path / "cgroup.freeze", "1")
        _wait_until(lambda: self._events().get("frozen") == "1", 10, "freeze")

    def thaw(self) -> None:
        _write(self.path / "cgroup.freeze", "0")

    def is_frozen(self) -> bool:
        return self._events().get("frozen") == "1"

    def kill_all(self, timeout: float = 10) -> None:
        kill_file = self.path / "cgroup.kill"
        if not self.exists() or not kill_file.exists():
            super().kill_all(timeout)
            return
        _write(kill_file, "1")
        _wait_until(lambda: not self.pids(), timeout, "empty")

    def cpu_usage_s(self) -> float:
        for line in _read(self.path / "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return 0.0

    def memory_usage(self) -> int:
        current = self.path / "memory.current"
        return int(_read(current)) if current.exists() else 0

    def oom_kills(self) -> int:
        try:
            text = _read(self.path / "memory.events")
        except FileNotFoundError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def _remove_dirs(self) -> None:
        _remove_cgroup_tree(self.path)

    def _dirs_freezer_last(self) -> list[Path]:
        return [self.path]


def from_json(data: dict[str, object]) -> Cgroup:
    if data.get("version") == 2:
        controllers = data.get("controllers", V2_CONTROLLERS)
        return CgroupV2(str(data["path"]), tuple(controllers))  # type: ignore[arg-type]
    dirs = data["dirs"]
    assert isinstance(dirs, dict)
    owned = data.get("owned")
    return CgroupV1(
        {str(k): str(v) for k, v in dirs.items()},
        None if not isinstance(owned, list) else tuple(str(o) for o in owned),
    )


def _mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, fs type, super options) of every cgroup mount, from mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _source, superopts = right.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((fields[4], fstype, superopts.split(",")))
    return found


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under key "" its v2 path."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                own[""] = path
            for name in controllers.split(","):
                own[name] = path
    return own


def home_join_files(join_files: list[str]) -> list[str]:
    """For each of `join_files` (of any cgroup), the same file of the cgroup this process is
    in, in that file's hierarchy: where a process that visits other cgroups goes back to."""
    mounts = sorted(_mounts(), key=lambda m: len(m[0]), reverse=True)
    own = _own_cgroups()
    homes = []
    for path in join_files:
        for point, fstype, opts in mounts:
            if not path.startswith(point.rstrip("/") + "/"):
                continue
            if fstype == "cgroup2":
                key: str | None = ""
            else:
                key = next((o for o in opts if o in own), None)
            if key is None or key not in own:
                raise CgroupError(f"no cgroup of this process in the hierarchy of {path}")
            homes.append(os.path.join(point, own[key].lstrip("/"), os.path.basename(path)))
            break
        else:
            raise CgroupError(f"{path} is on no cgroup filesystem")
    return homes


def sidecar_root(prefer: str | None = None, scope: str | None = None) -> Cgroup:
    """The cgroup under which sidecars are made: `microbuild` below this process's own cgroup.

    Nesting under our own cgroup keeps sidecars inside whatever limits the caller already has.
    `prefer` ("v1"/"v2", or env MICROBUILD_CGROUP) picks a driver on hybrid machines.
    """
    prefer = prefer or os.environ.get("MICROBUILD_CGROUP") or None
    mounts = _mounts()
    own = _own_cgroups()
    v1 = {}
    for point, fstype, opts in mounts:
        if fstype == "cgroup":
            for name in V1_CONTROLLERS:
                if name in opts and name not in v1:
                    v1[name] = point
    v2 = next((point for point, fstype, _ in mounts if fstype == "cgroup2"), None)

    if prefer != "v2" and all(name in v1 for name in V1_CONTROLLERS):
        dirs = {
            name: os.path.join(v1[name], own.get(name, "/").lstrip("/"), "microbuild")
            for name in V1_CONTROLLERS
        }
        root = CgroupV1(dirs)
        return root.child(scope) if scope else root
    if prefer == "v1":
        raise CgroupError(
            "cgroup v1 was asked for, but the memory, pids, cpu, cpuacct and "
            "freezer hierarchies are not all mounted"
        )
    if v2 is None:
        raise CgroupError("no cgroup filesystem is mounted; mount cgroup2 on /sys/fs/cgroup")
    available = set(_read(Path(v2) / "cgroup.controllers").split())
    controllers = tuple(c for c in V2_CONTROLLERS if c in available)
    own_path = own.get("", "/")
    if own_path == "/" or os.geteuid() == 0:
        base = Path(v2) / "microbuild"
        parent = Path(v2)
    else:
        base = Path(v2) / own_path.lstrip("/") / "microbuild"
        parent = base.parent
    v2root = CgroupV2(str(base), controllers)
    if controllers:
        _enable_controllers(parent, controllers)
        v2root.create()
        _enable_controllers(base, controllers)
    if scope:
        v2root = v2root.child(scope)
        if controllers:
            v2root.create()
            _enable_controllers(v2root.path, controllers)
    return v2root


def _enable_controllers(path: Path, controllers: tuple[str, ...]) -> None:
    enabled = set(_read(path / "cgroup.subtree_control").split())
    wanted = [c for c in controllers if c not in enabled]
    if wanted:
        try:
            _write(path / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            raise CgroupError(
                f"cannot enable {', '.join(wanted)} in {path}/cgroup.subtree_control: "
                f"{exc.strerror}; run as root or delegate that cgroup to this user"
            ) from exc
