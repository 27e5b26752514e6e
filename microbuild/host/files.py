"""Reading and writing files inside a sidecar's workspace without ever leaving it.

A sidecar's workspace is reached from the host through /proc/PID/root, where an absolute symlink
would resolve against the *host's* root. So every path is opened with openat2(RESOLVE_BENEATH)
relative to the workspace directory: `..`, absolute paths and symlinks leading out all fail.
Kernels without openat2 get a stricter walk that refuses every symlink.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from microbuild.runtime import linux

_SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
MAX_FILE_BYTES = 64 << 20


class PathRefused(Exception):
    """The path leaves the workspace, or is not a regular file / directory where one is needed."""


class PathInvalid(Exception):
    """The path cannot name a file at all (too long, too deep, not text)."""


MAX_PATH_PARTS = 256


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_openat2_works: bool | None = None


def _check_relative(path: str) -> str:
    if not path or path.startswith("/") or "\x00" in path:
        raise PathRefused(f"{path!r}: give a path relative to the workspace")
    try:
        path.encode()
    except UnicodeEncodeError:
        raise PathInvalid(f"{path!r} is not valid UTF-8") from None
    if len(path) > 4096 or path.count("/") >= MAX_PATH_PARTS:
        raise PathInvalid(f"path too long or too deep (at most {MAX_PATH_PARTS} parts)")
    if any(len(part.encode()) > 255 for part in path.split("/")):
        raise PathInvalid("a path component is longer than 255 bytes")
    return path


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    global _openat2_works
    if _openat2_works is not False:
        how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
        fd = linux._libc.syscall(
            _SYS_OPENAT2, dirfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how)
        )
        if fd >= 0:
            _openat2_works = True
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM) or _openat2_works:
            if err in (errno.EXDEV, errno.ELOOP):
                raise PathRefused(f"{path!r} leads outside the workspace")
            raise OSError(err, os.strerror(err), path)
        _openat2_works = False
    return _walk_open(dirfd, path, flags, mode)


def _walk_open(dirfd: int, path: str, flags: int, mode: int) -> int:
    """Component by component, refusing `..` and every symlink."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathRefused(f"{path!r} leads outside the workspace")
    current = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = nxt
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PathRefused(f"{path!r} is a symlink; not followed") from exc
            raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathRefused(f"{path!r} leads through a symlink; not followed") from exc
        raise
    finally:
        os.close(current)


def read_file(workspace: Path, path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    _check_relative(path)
    root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # O_NONBLOCK: a FIFO planted in the workspace must not hang the host.
        fd = _openat2(root, path, os.O_RDONLY | os.O_NONBLOCK)
    finally:
        os.close(root)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PathRefused(f"{path!r} is not a regular file")
        if info.st_size > limit:
            raise PathRefused(f"{path!r} is {info.st_size} bytes; the limit is {limit}")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_file(workspace: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    """Write (create or replace) a file, making missing parent directories inside the
    workspace."""
    _check_relative(path)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise PathRefused(f"{path!r} names no file")
    root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parent = os.dup(root)
        try:
            for part in parts[:-1]:
                try:
                    nxt = _openat2(parent, part, os.O_RDONLY | os.O_DIRECTORY)
                except FileNotFoundError:
                    os.mkdir(part, 0o755, dir_fd=parent)
                    nxt = _openat2(parent, part, os.O_RDONLY | os.O_DIRECTORY)
                os.close(parent)
                parent = nxt
            fd = _openat2(parent, parts[-1], os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, mode)
        finally:
            os.close(parent)
    finally:
        os.close(root)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathRefused(f"{path!r} is not a regular file")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
