"""The command server: a warm `microbuild` process that forks a worker per command.

Started in the background by the launcher (microbuild.cli.launcher) for one state dir, it
imports the CLI once and listens on STATE/cli-HASH.sock (HASH names the Python it runs on; the
state dir is the user's own, 0700; its pid is in STATE/cli-HASH.json, its log beside them).
Each connection brings argv, cwd, environment, umask and the caller's stdin/stdout/stderr; the
server drains its file watchers, forks, and the worker runs the command exactly as a fresh
process would, writing straight to the caller's descriptors (a terminal keeps its live
display). The server sends the worker's pid, then its exit status.

It also owns the working trees' watchers (microbuild.watch): a worker that computes a tree id
asks for one through a pipe, and the next workers restage only what changed. The server is
single-threaded (a selector loop), so a fork never copies a lock held by another thread.

It exits when idle for MICROBUILD_COMMAND_SERVER_IDLE_EXIT seconds (default 1800), when its
socket is no longer the one at STATE/cli-HASH.sock (the state dir was removed, or a newer server
took over), or, at the next request, when microbuild's own files or the installed packages
changed since it started (that request then runs in the caller's process).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

from microbuild import watch
from microbuild.cli.launcher import decode_request, server_name

IDLE_EXIT_S = 1800.0
TICK_S = 2.0
MAX_REQUEST = 4 * 1024 * 1024
MAX_WATCHED = 16
# What a `validate` or a `hook` run needs, imported once here rather than in every worker.
PRELOAD = (
    "microbuild.cli.main",
    "microbuild.cli.validate",
    "microbuild.cli.hook",
    "microbuild.cli._ui",
    "microbuild.validate",
    "microbuild.hooks.decide",
    "microbuild.sync",
    "microbuild.client",
    "microbuild.config",
    "microbuild.store",
    "microbuild.errors",
    "microbuild.runtime.base",
)


class Request(NamedTuple):
    argv0: str
    cwd: str
    umask: int
    argv: list[str]
    env: dict[str, str]


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp} cmdserver[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


class CodeSignature:
    """The modification times of microbuild's loaded modules and of the import path's
    directories (a pip install changes site-packages): a change means this server is stale."""

    def __init__(self) -> None:
        self.files = self._read()

    @staticmethod
    def _paths() -> list[str]:
        paths = [
            str(module.__file__)
            for name, module in list(sys.modules.items())
            if (name == "microbuild" or name.startswith("microbuild."))
            and getattr(module, "__file__", None)
        ]
        packages = [
            p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")
        ]
        return paths + [p for p in packages if os.path.isdir(p)]

    def _read(self) -> dict[str, int]:
        stamps = {}
        for path in self._paths():
            try:
                stamps[path] = os.stat(path).st_mtime_ns
            except OSError:
                stamps[path] = -1
        return stamps

    def changed(self) -> bool:
        for path, stamp in self.files.items():
            try:
                now = os.stat(path).st_mtime_ns
            except OSError:
                now = -1
            if now != stamp:
                return True
        return False


class CommandServer:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.path = state / f"{server_name()}.sock"
        self.idle_exit_s = float(os.environ.get("MICROBUILD_COMMAND_SERVER_IDLE_EXIT", IDLE_EXIT_S))
        self.selector = selectors.DefaultSelector()
        self.workers: dict[int, socket.socket] = {}
        self.last_active = time.monotonic()
        self.stopping = False
        self.listener = self._listen()
        self.inode = os.stat(self.path).st_ino
        self.requests_r, self.requests_w = os.pipe()
        os.set_blocking(self.requests_r, False)
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(self.wakeup_w, False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.requests_r, selectors.EVENT_READ, "watch")
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, "signal")
        self.signature = CodeSignature()
        self.info = state / f"{server_name()}.json"
        temp = state / f".cli-{os.getpid()}.json"
        temp.write_text(json.dumps({"pid": os.getpid(), "socket": str(self.path)}) + "\n")
        temp.replace(self.info)

    def _listen(self) -> socket.socket:
        """Bound under a temporary name and renamed into place: one atomic switch, even over
        a stale server's socket."""
        temp = self.state / f".cli-{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_mask = os.umask(0o077)
        try:
            sock.bind(str(temp))
        finally:
            os.umask(old_mask)
        sock.listen(64)
        os.rename(temp, self.path)
        sock.setblocking(False)
        return sock

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        signal.set_wakeup_fd(self.wakeup_w)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        _log(f"listening on {self.path}")
        try:
            while not (self.stopping and not self.workers):
                for key, _events in self.selector.select(TICK_S):
                    self._ready(key)
                self._reap()
                self._housekeeping()
        finally:
            self._close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGCHLD:
            self.stopping = True

    def _ready(self, key: selectors.SelectorKey) -> None:
        what = key.data
        if what == "accept":
            with contextlib.suppress(BlockingIOError, InterruptedError):
                conn, _ = self.listener.accept()
                self._handle(conn)
        elif what == "watch":
            self._watch_requests()
        elif what == "signal":
            with contextlib.suppress(BlockingIOError, InterruptedError):
                os.read(self.wakeup_r, 512)
        elif isinstance(what, watch.TreeWatcher):
            what.drain()
            if not what.alive or what.stale:
                self._unwatch(what)
                if what.stale:
                    self._watch(what.root)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.workers:
            self.last_active = now
        elif now - self.last_active > self.idle_exit_s:
            _log("idle; exiting")
            self.stopping = True
        if self.stopping:
            return
        try:
            if os.stat(self.path).st_ino != self.inode:
                raise FileNotFoundError
        except OSError:
            _log(f"{self.path} is no longer this server's socket; exiting")
            self.stopping = True

    def _stop_listening(self) -> None:
        """No new requests: the socket's path is freed for a newer server at once."""
        self.stopping = True
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        self.listener.close()

    def _close(self) -> None:
        self._stop_listening()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.info.read_text()).get("pid") == os.getpid():
                self.info.unlink()
        for watcher in watch.watchers():
            watch.unregister(watcher.root)
        _log("stopped")

    # -- watchers ----------------------------------------------------------------------------

    def _watch_requests(self) -> None:
        data = b""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := os.read(self.requests_r, 65536):
                data += chunk
        for raw in data.split(b"\0"):
            if raw:
                self._watch(Path(os.fsdecode(raw)))

    def _watch(self, root: Path) -> None:
        current = watch.watchers()
        old = next((w for w in current if w.root == root), None)
        if old is not None and old.alive and not old.stale:
            return
        if old is not None:
            self._unwatch(old)
        elif len(current) >= MAX_WATCHED:
            self._unwatch(current[0])
        watcher = watch.ensure(root)
        if watcher is None:
            _log(f"cannot watch {root}; its tree ids scan every file")
            return
        self.selector.register(watcher, selectors.EVENT_READ, watcher)
        _log(f"watching {root}")

    def _unwatch(self, watcher: watch.TreeWatcher) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(watcher)
        watch.unregister(watcher.root)

    # -- requests ----------------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        self.last_active = time.monotonic()
        conn.setblocking(True)
        conn.settimeout(5.0)
        fds: list[int] = []
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != os.getuid():
                raise PermissionError(f"a request from uid {uid}")
            request, fds = self._receive(conn)
            if self.signature.changed():
                _log("microbuild's files changed since this server started; exiting")
                self._stop_listening()
                conn.sendall(b"stale\n")
                return
            for watcher in watch.watchers():
                watcher.drain()
            conn.settimeout(None)
            # What the workers share with the server stays shared: the collector never walks
            # (and so never copies) the objects that were there before the fork.
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                self._worker(conn, request, fds)  # never returns
            conn.sendall(f"pid {pid}\n".encode())
            self.workers[pid] = conn
            conn = None  # type: ignore[assignment]
        except (OSError, ValueError, PermissionError) as exc:
            _log(f"refused a request: {exc}")
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if conn is not None:
                conn.close()

    @staticmethod
    def _receive(conn: socket.socket) -> tuple[Request, list[int]]:
        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise ValueError("a request without stdin, stdout and stderr")
        try:
            if len(data) < 4:
                raise ValueError("a truncated request")
            size = int.from_bytes(data[:4], "big")
            if size > MAX_REQUEST:
                raise ValueError(f"a request of {size} bytes")
            body = data[4:]
            while len(body) < size:
                chunk = conn.recv(size - len(body))
                if not chunk:
                    raise ValueError("a truncated request")
                body += chunk
            request = Request(*decode_request(body))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return request, fds

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.workers.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            with contextlib.suppress(OSError):
                conn.sendall(f"exit {code}\n".encode())
            conn.close()

    # -- the worker --------------------------------------------------------------------------

    def _worker(self, conn: socket.socket, request: Request, fds: list[int]) -> None:
        code = 1
        try:
            gc.disable()  # a worker lives for one command: collecting costs more than it saves
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for fd in (self.listener.fileno(), self.requests_r, self.wakeup_r, self.wakeup_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            _rebind_stdio()
            os.chdir(request.cwd or "/")
            os.environ.clear()
            os.environ.update(request.env)
            os.umask(request.umask)
            os.setpgid(0, 0)
            watch.freeze(self.requests_w)
            sys.argv = [request.argv0 or "microbuild", *request.argv]
            from microbuild.cli.main import main

            main()
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{value}\n")
    return 1


def _rebind_stdio() -> None:
    """New text streams over descriptors 0-2 (now the caller's): line buffering and encoding
    chosen for them, not for the server's /dev/null."""
    encoding = os.environ.get("PYTHONIOENCODING", "utf-8").split(":")[0] or "utf-8"
    sys.stdin = open(0, encoding=encoding, closefd=False)  # noqa: SIM115
    sys.stdout = open(  # noqa: SIM115
        1, "w", buffering=1 if os.isatty(1) else -1, encoding=encoding, closefd=False
    )
    sys.stderr = open(  # noqa: SIM115
        2, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=False
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m microbuild.cli.cmdserver STATE_DIR\n")
        return 2
    state = Path(args[0]).absolute()
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with probe:
            probe.connect(str(state / f"{server_name()}.sock"))
        _log("another command server answers here; not starting")
        return 0
    except OSError:
        pass
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    try:
        server = CommandServer(state)
    except OSError as exc:
        _log(f"cannot listen in {state}: {exc}")
        return 1
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
