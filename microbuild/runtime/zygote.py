"""A small helper process that forks sidecar processes on the host's behalf.

Forking costs in proportion to the forking process: from a host with a web framework loaded and
worker threads, each sidecar create and each exec paid ~10 ms more than from a bare
interpreter. The zygote is a fresh interpreter without site-packages that imports only the
runtime; the host sends it requests (JSON plus file descriptors, over a SOCK_SEQPACKET pair)
and it does the forking: the sidecar's init, and commands, whose exit status comes back on a
pipe of their own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import IO, Any

from microbuild.runtime import linux
from microbuild.runtime.base import RuntimeError_

MAX_MESSAGE = 1 << 20


class ZygoteError(RuntimeError_):
    """The zygote died or refused a request."""


class ZygoteProcess:
    """What the host holds for a command the zygote started: enough of `subprocess.Popen`
    for `Execution` (pid, pipes, poll, wait)."""

    def __init__(
        self,
        pid: int,
        status_fd: int,
        stdin: IO[bytes] | None,
        stdout: IO[bytes] | None,
        stderr: IO[bytes] | None,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._status = os.fdopen(status_fd, "rb", buffering=0)
        self._buffer = b""

    def _collect(self, block: bool) -> int | None:
        if self.returncode is not None:
            return self.returncode
        os.set_blocking(self._status.fileno(), block)
        while True:
            try:
                data = self._status.read(64)
            except BlockingIOError:
                return None
            if data is None:
                return None
            if not data:
                break
            self._buffer += data
            if self._buffer.endswith(b"\n"):
                break  # the status is written whole, in one write, ending with a newline
        self._status.close()
        text = self._buffer.decode().strip()
        # No status at all: the middle process was killed with the command's tree.
        status = int(text) if text else signal.SIGKILL
        self.returncode = os.waitstatus_to_exitcode(status) if text else -signal.SIGKILL
        return self.returncode

    def poll(self) -> int | None:
        return self._collect(block=False)

    def wait(self, timeout: float | None = None) -> int:
        result = self._collect(block=True)
        assert result is not None
        return result


class Zygote:
    """The host side: starts the helper on first use, restarts it if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_root = str(Path(__file__).resolve().parents[2])
        boot = (
            f"import sys; sys.path.insert(0, {package_root!r}); "
            f"from microbuild.runtime.zygote import serve; serve({theirs.fileno()})"
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", boot],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )
        theirs.close()
        self._sock = ours
        return ours

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None

    def _call(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        payload = json.dumps(request).encode()
        with self._lock:
            for attempt in (1, 2):
                sock = self._sock or self._start()
                try:
                    socket.send_fds(sock, [payload], fds)
                    reply = sock.recv(MAX_MESSAGE)
                    if not reply:
                        raise ConnectionResetError("the zygote closed its socket")
                    break
                except OSError as exc:
                    self._sock = None
                    if self._proc is not None:
                        self._proc.kill()
                        self._proc.wait()
                        self._proc = None
                    if attempt == 2:
                        raise ZygoteError(f"the sidecar zygote failed: {exc}") from exc
        answer: dict[str, Any] = json.loads(reply)
        if "error" in answer:
            raise RuntimeError_(answer["error"])
        return answer

    def spawn_init(
        self,
        sidecar_id: str,
        root: str,
        overlay: str,
        binds: list[tuple[str, str]],
        procs_files: list[str],
        network: str,
        tmp_size: int,
    ) -> int:
        answer = self._call(
            {
                "op": "init",
                "args": [sidecar_id, root, overlay, binds, procs_files, network, tmp_size],
            },
            [],
        )
        return int(answer["pid"])

    def exec(
        self,
        *,
        init_pid: int,
        procs_files: list[str],
        workdir: str,
        last_cap: int,
        argv: list[str],
        env: dict[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
        tty: bool,
        namespaces: list[str],
    ) -> tuple[int, int]:
        """Start a command in the sidecar; returns (pid, fd that yields its wait status)."""
        status_r, status_w = os.pipe()
        try:
            answer = self._call(
                {
                    "op": "exec",
                    "init_pid": init_pid,
                    "procs_files": procs_files,
                    "workdir": workdir,
                    "last_cap": last_cap,
                    "argv": argv,
                    "env": env,
                    "tty": tty,
                    "namespaces": namespaces,
                },
                [stdin, stdout, stderr, status_w],
            )
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        return int(answer["pid"]), status_r


# -- the zygote process --------------------------------------------------------------------


def serve(fd: int) -> None:  # pragma: no cover - runs in the helper process
    """Serve until the host closes its end (or dies: the socket then reads as closed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    while True:
        _reap()
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 8)
        except OSError:
            return
        if not data:
            return
        for passed in fds:
            # Received descriptors are inheritable: the command must get only its 0, 1 and 2,
            # never the status pipe (whose end-of-file tells the host the command is done).
            os.set_inheritable(passed, False)
        try:
            request = json.loads(data)
            if request["op"] == "init":
                from microbuild.runtime.namespace import spawn_init

                reply: dict[str, Any] = {"pid": spawn_init(*request["args"])}
            elif request["op"] == "exec":
                reply = {"pid": _start_command(request, fds, sock)}
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
        except Exception as exc:  # every failure goes back to the host as a message
            reply = {"error": str(exc) or type(exc).__name__}
        finally:
            for passed in fds:
                with contextlib.suppress(OSError):
                    os.close(passed)
        sock.send(json.dumps(reply).encode())


def _reap() -> None:  # pragma: no cover - runs in the helper process
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _start_command(
    request: dict[str, Any], fds: list[int], sock: socket.socket
) -> int:  # pragma: no cover - runs in the helper process
    stdin, stdout, stderr, status_w = fds
    ns_fds = [
        os.open(f"/proc/{request['init_pid']}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        for ns in request["namespaces"]
    ]
    try:
        middle = os.fork()
    except BaseException:
        for ns_fd in ns_fds:
            os.close(ns_fd)
        raise
    if middle:
        for ns_fd in ns_fds:
            os.close(ns_fd)
        return middle
    # The middle process: joins the sidecar, forks the command into its pid namespace, and
    # reports the command's wait status on status_w.
    code = 1
    try:
        sock.close()
        for path in request["procs_files"]:
            cg_fd = os.open(path, os.O_WRONLY)
            os.write(cg_fd, b"0")
            os.close(cg_fd)
        for ns_fd in ns_fds:
            linux.setns(ns_fd, 0)
        if request["tty"]:
            command = os.fork()
            if command == 0:
                _become_command(request, stdin, stdout, stderr)
        else:
            command = _spawn_command(request, stdin, stdout, stderr)
        for fd in range(0, 1024):
            if fd != status_w:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if command < 0:
            status = -command << 8  # it never started: report its exit code as a wait status
        else:
            while True:
                try:
                    _, status = os.waitpid(command, 0)
                    break
                except InterruptedError:
                    continue
        os.write(status_w, f"{status}\n".encode())
        code = 0
    finally:
        os._exit(code)


def _spawn_command(
    request: dict[str, Any], stdin: int, stdout: int, stderr: int
) -> int:  # pragma: no cover - runs in the middle process
    """posix_spawn (vfork-fast) instead of forking this interpreter once more. What the command
    inherits is set up here first: working directory, capability bounding set, no_new_privs.
    Returns the pid, or minus the exit code when it could not start (message on stderr)."""
    try:
        os.chdir(request["workdir"])
    except OSError:
        os.chdir("/")
    linux.drop_capabilities(int(request["last_cap"]))
    argv = request["argv"]
    env = request["env"]
    path = _which(argv[0], env.get("PATH", ""))
    if path is None:
        os.write(stderr, f"microbuild: command not found: {argv[0]}\n".encode())
        return -127
    try:
        return os.posix_spawn(
            path,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_DUP2, stdout, 1),
                (os.POSIX_SPAWN_DUP2, stderr, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        os.write(stderr, f"microbuild: cannot run {argv[0]}: {exc.strerror}\n".encode())
        return -126


def _which(name: str, path: str) -> str | None:  # pragma: no cover - runs in the middle process
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _become_command(
    request: dict[str, Any], stdin: int, stdout: int, stderr: int
) -> None:  # pragma: no cover - runs in the command's process
    try:
        os.setsid()
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(fd, target)
        if request["tty"]:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        try:
            os.chdir(request["workdir"])
        except OSError:
            os.chdir("/")
        os.closerange(3, 65536)
        linux.drop_capabilities(int(request["last_cap"]))
        argv = request["argv"]
        env = request["env"]
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)
            what = "command not found" if missing else "permission denied"
            os.write(2, f"microbuild: {what}: {argv[0]}\n".encode())
            os._exit(127 if missing else 126)
    finally:
        os._exit(127)
