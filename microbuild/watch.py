"""Which files of a working tree changed since a moment: inotify watches on its directories, so
that `sync.tree_id` can restage just those paths instead of lstat-ing and scanning every file.

A `TreeWatcher` numbers what it sees. `token()` names a moment; `changes_since(token)` lists the
project-relative paths written, created, deleted, moved or chmod-ed after it, or None when it
cannot say (the token is from another watcher or from before this one started, the kernel's
queue overflowed, too many paths changed): then the caller scans everything, as without one.

Events are read only by `drain()`: the kernel queues them in the writing syscall, so a drain
after the writes gives a complete view. A process that forks workers (the CLI's command server)
drains before each fork and `freeze()`s the registry in the child, so only the parent ever reads
the inotify descriptors; a child asks for a new watch through `request()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
import subprocess
import uuid
from pathlib import Path

from microbuild import gitsafe

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

DIR_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
    | IN_EXCL_UNLINK
)
_EVENT = struct.Struct("iIII")

# More changed paths than this and a full scan is cheaper than a long pathspec.
MAX_CHANGES = 2000
# Directories never watched: git's own, and what no tree holds.
SKIPPED_NAMES = frozenset({".git"})
# More directories than this in a tree and it is not watched at all (the scan stays as it was).
MAX_WATCHES = 50_000


class WatchUnavailable(Exception):
    """inotify is missing or out of watches: the caller scans as without a watcher."""


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


class TreeWatcher:
    """inotify watches on every directory of a project but `.git` and the ignored ones it is
    told to skip, and the paths that changed, numbered."""

    def __init__(self, root: Path, skip: frozenset[str] = frozenset()) -> None:
        if _LIBC is None or not hasattr(_LIBC, "inotify_init1"):
            raise WatchUnavailable("inotify is not available on this system")
        self.root = root
        self.ident = uuid.uuid4().hex[:16]
        self.seq = 0
        self.valid_since = 0
        self.alive = True
        # An ignore file changed, or the repository itself: what this knows may be wrong now.
        self.stale = False
        # (git dir, the root's prefix in its repository), as `start` found them.
        self.repository: tuple[Path, str] | None = None
        self._skip = skip
        self._changed: dict[str, int] = {}
        self._paths: dict[int, str] = {}
        self._wds: dict[str, int] = {}
        fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise WatchUnavailable(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self.fd: int = int(fd)
        try:
            self._watch_tree("")
        except WatchUnavailable:
            self.close()
            raise
        # Whatever happened while the watches were being added is not known to be complete.
        self.drain()
        self.seq += 1
        self.valid_since = self.seq

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1
        self.alive = False

    def token(self) -> str:
        return f"{self.ident}:{self.seq}"

    def changes_since(self, token: str) -> list[str] | None:
        """Paths (relative to the root, `/`-separated) changed after `token`, or None: unknown."""
        ident, _, seq_text = token.partition(":")
        if not self.alive or ident != self.ident or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if seq < self.valid_since:
            return None
        changed = [path for path, at in self._changed.items() if at > seq]
        return None if len(changed) > MAX_CHANGES else sorted(changed)

    # -- events ------------------------------------------------------------------------------

    def drain(self) -> None:
        """Read every queued event (never blocks)."""
        while self.alive:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                self._lost()
                self.close()
                return
            if not data:
                return
            self.seq += 1
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            start = offset + _EVENT.size
            name = data[start : start + length].split(b"\0", 1)[0]
            offset = start + length
            self._event(wd, mask, os.fsdecode(name))

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self._lost()
            return
        parent = self._paths.get(wd)
        if parent is None:
            return
        if mask & IN_IGNORED:
            self._forget(parent, wd)
            if parent == "":
                self._lost()
                self.close()
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
            if parent == "":
                self._lost()
                self.close()
            return
        if not name:
            return
        path = f"{parent}/{name}" if parent else name
        if name == ".gitignore" or path == ".git":
            self.stale = True
            self._lost()
        if mask & IN_ISDIR:
            if name in SKIPPED_NAMES:
                return
            if mask & (IN_MOVED_FROM | IN_DELETE):
                self._unwatch_below(path)
            if mask & (IN_CREATE | IN_MOVED_TO):
                # Files made in it before its watch was added are caught by restaging it whole.
                try:
                    self._watch_tree(path)
                except WatchUnavailable:
                    self._lost()
        self._mark(path)

    def _mark(self, path: str) -> None:
        self._changed[path] = self.seq
        if len(self._changed) > 4 * MAX_CHANGES:
            # Bounded memory: forget the details, and so everything before now.
            self._changed.clear()
            self._lost()

    def _lost(self) -> None:
        self.valid_since = self.seq + 1

    # -- watches -----------------------------------------------------------------------------

    def _watch_tree(self, top: str) -> None:
        pending = [top]
        while pending:
            rel = pending.pop()
            if rel in self._skip:
                continue
            if not self._add_watch(rel):
                continue
            with (
                contextlib.suppress(OSError),
                os.scandir(self.root / rel if rel else self.root) as it,
            ):
                for entry in it:
                    if entry.name in SKIPPED_NAMES:
                        continue
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(f"{rel}/{entry.name}" if rel else entry.name)

    def _add_watch(self, rel: str) -> bool:
        assert _LIBC is not None
        if len(self._wds) >= MAX_WATCHES:
            raise WatchUnavailable(f"{self.root} has more than {MAX_WATCHES} directories")
        path = os.fsencode(self.root / rel if rel else self.root)
        wd = _LIBC.inotify_add_watch(self.fd, path, DIR_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return False  # gone already, or not ours to read: its parent's event covers it
            raise WatchUnavailable(
                f"inotify_add_watch {rel or '.'}: {os.strerror(err)}"
                + ("; raise fs.inotify.max_user_watches" if err == errno.ENOSPC else "")
            )
        old = self._paths.get(wd)
        if old is not None and old != rel:
            self._wds.pop(old, None)
        self._paths[wd] = rel
        self._wds[rel] = wd
        return True

    def _forget(self, rel: str, wd: int) -> None:
        self._paths.pop(wd, None)
        if self._wds.get(rel) == wd:
            del self._wds[rel]

    def _unwatch_below(self, top: str) -> None:
        assert _LIBC is not None
        prefix = top + "/"
        for rel in [r for r in self._wds if r == top or r.startswith(prefix)]:
            wd = self._wds.pop(rel)
            self._paths.pop(wd, None)
            _LIBC.inotify_rm_watch(self.fd, wd)


# -- the process's watchers --------------------------------------------------------------------

_WATCHERS: dict[str, TreeWatcher] = {}
_FROZEN = False
_REQUEST_FD: int | None = None


def register(watcher: TreeWatcher) -> None:
    _WATCHERS[str(watcher.root)] = watcher


def unregister(root: Path) -> None:
    watcher = _WATCHERS.pop(str(root), None)
    if watcher is not None:
        watcher.close()


def watchers() -> list[TreeWatcher]:
    return list(_WATCHERS.values())


def find(root: Path) -> TreeWatcher | None:
    """The live watcher of `root`, drained (unless this is a forked child of its owner). A
    `stale` one means the ignore rules changed: the caller restarts it."""
    watcher = _WATCHERS.get(str(root))
    if watcher is None or not watcher.alive:
        return None
    if not _FROZEN:
        watcher.drain()
    return watcher if watcher.alive else None


def restart(root: Path) -> None:
    """Watch `root` anew: here, or (in a forked child) by asking the owner."""
    if _FROZEN:
        request(root, force=True)
        return
    unregister(root)
    with contextlib.suppress(WatchUnavailable):
        register(start(root))


def ensure(root: Path) -> TreeWatcher | None:
    """The owner's side of a request: a live, current watcher of `root`, started if needed."""
    watcher = _WATCHERS.get(str(root))
    if watcher is not None and watcher.alive and not watcher.stale:
        return watcher
    unregister(root)
    try:
        watcher = start(root)
    except WatchUnavailable:
        return None
    register(watcher)
    return watcher


def start(root: Path) -> TreeWatcher:
    """A watcher of `root` that skips the directories git ignores there now, and knows where
    its repository is."""
    watcher = TreeWatcher(root, ignored_directories(root))
    watcher.repository = _repository(root)
    return watcher


# The git environment a command may set for itself: where the repository is then is its own.
GIT_LOCATION_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_INDEX_FILE")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in GIT_LOCATION_ENV}
    return {**env, "GIT_OPTIONAL_LOCKS": "0"}


def _repository(root: Path) -> tuple[Path, str] | None:
    proc = subprocess.run(
        gitsafe.argv(root, "rev-parse", "--absolute-git-dir", "--show-prefix"),
        capture_output=True,
        text=True,
        check=False,
        env=_clean_env(),
    )
    lines = proc.stdout.split("\n")
    if proc.returncode != 0 or not lines[0]:
        return None
    return Path(lines[0]), lines[1] if len(lines) > 1 else ""


def repository(root: Path) -> tuple[Path, str] | None:
    """Where `root`'s repository is, as its watcher knows it (no git call), or None."""
    if any(k in os.environ for k in GIT_LOCATION_ENV):
        return None
    watcher = find(root)
    if watcher is None or watcher.stale:
        return None
    return watcher.repository


def ignored_directories(root: Path) -> frozenset[str]:
    """The project-relative directories git ignores as a whole (`.venv`, `node_modules`…)."""
    try:
        proc = subprocess.run(
            [
                *gitsafe.argv(root, "ls-files", "-z", "--others", "--ignored"),
                *("--exclude-standard", "--directory"),
            ],
            capture_output=True,
            check=False,
            env=_clean_env(),
        )
    except OSError as exc:
        raise WatchUnavailable(f"git: {exc}") from exc
    if proc.returncode != 0:
        raise WatchUnavailable(proc.stderr.decode(errors="replace").strip() or "git ls-files")
    names = os.fsdecode(proc.stdout).split("\0")
    return frozenset(n.rstrip("/") for n in names if n.endswith("/"))


def freeze(request_fd: int | None) -> None:
    """In a forked child: never read the parent's inotify descriptors; ask it for new watches
    by writing the root to `request_fd`."""
    global _FROZEN, _REQUEST_FD
    _FROZEN = True
    _REQUEST_FD = request_fd


def request(root: Path, force: bool = False) -> None:
    """Ask the owner of the watchers to watch `root` (a no-op without one)."""
    if _REQUEST_FD is None or (str(root) in _WATCHERS and not force):
        return
    with contextlib.suppress(OSError):
        os.write(_REQUEST_FD, os.fsencode(root) + b"\0")
