"""A small helper process that forks sidecar processes on the host's behalf.

Forking costs in proportion to the forking process: from a host with a web framework loaded and
worker threads, each sidecar create and each exec paid ~10 ms more than from a bare
interpreter. The zygote is a fresh interpreter without site-packages that imports only the
runtime; the host sends it requests (JSON plus file descriptors, over a SOCK_SEQPACKET pair)
and it does the forking: the sidecar's init, and commands, whose exit status comes back on a
pipe of their own.

Even a bare interpreter's fork is costly (on a small VM a fork of the zygote, its
copy-on-write faults and its exit took ~3.5 ms per command, posix_spawn of the command itself
0.8 ms), so most commands do not fork one: the zygote forks, once per sidecar, an *exec
helper* that joins the sidecar's namespaces
and shrinks its capability bounding set for good, and that starts each command with
posix_spawn (vfork, no copy). It lives in the host's cgroups and visits the command's cgroup
only while it starts it (on cgroup v1 through the `tasks` files, which need no global lock),
so the sidecar's accounting, limits and freezer never see it. It reaps its commands and writes
their wait status on their status pipes, as the per-command middle process does for commands
with a terminal or the host's network, which still fork one.
"""

from __future__ import annotations

import array  # noqa: F401 - socket.send_fds/recv_fds import it lazily; the helper may not
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

from microbuild.runtime import cgroup as cg
from microbuild.runtime import linux
from microbuild.runtime.base import RuntimeError_

MAX_MESSAGE = 1 << 20
# Signals this process ignores (SIGINT: the zygote's own; SIGPIPE, SIGXFSZ: Python's), which a
# command must get with their default action, as subprocess's restore_signals gives them.
RESTORED_SIGNALS = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ)
# How long the host waits, once a command's status is in, for the process that reported it to
# exit (it exits right after writing): past this, the cgroup's removal kills it like any other.
EXIT_WAIT_MS = 1000


class ZygoteError(RuntimeError_):
    """The zygote died or refused a request."""


class HelperGone(ZygoteError):
    """A sidecar's exec helper is gone. `retry`: it was gone before it got the request, so
    nothing was started and the request may go to a new helper."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


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
        exit_fd: int | None = None,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._status = os.fdopen(status_fd, "rb", buffering=0)
        self._buffer = b""
        self._exit_fd = exit_fd

    def _await_exit(self) -> None:
        """Wait (briefly: it has nothing left to do) for the middle process, which wrote the
        status just before exiting, to be gone: until then it still counts as a process of
        the command's cgroup, and removing that would have to kill and wait for it."""
        if self._exit_fd is None:
            return
        try:
            poller = select.poll()
            poller.register(self._exit_fd, select.POLLIN)
            poller.poll(EXIT_WAIT_MS)
        finally:
            os.close(self._exit_fd)
            self._exit_fd = None

    def __del__(self) -> None:
        # Normally closed by `wait`; this is for an execution dropped before its end.
        if getattr(self, "_exit_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._exit_fd)  # type: ignore[arg-type]

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
        self._await_exit()
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

    def _call(self, request: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        """Send a request; returns the answer and the descriptors that came with it (the
        caller's to close)."""
        payload = json.dumps(request).encode()
        with self._lock:
            for attempt in (1, 2):
                sock = self._sock or self._start()
                try:
                    socket.send_fds(sock, [payload], fds)
                    reply, got, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
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
            for fd in got:
                os.close(fd)
            raise RuntimeError_(answer["error"])
        return answer, got

    def spawn_init(
        self,
        sidecar_id: str,
        root: str,
        overlay: str,
        binds: list[tuple[str, str]],
        join_files: list[str],
        network: str,
        tmp_size: int,
    ) -> int:
        answer, got = self._call(
            {
                "op": "init",
                "args": [sidecar_id, root, overlay, binds, join_files, network, tmp_size],
            },
            [],
        )
        for fd in got:
            os.close(fd)
        return int(answer["pid"])

    def exec(
        self,
        *,
        init_pid: int,
        join_files: list[str],
        workdir: str,
        last_cap: int,
        seccomp: bytes,
        argv: list[str],
        env: dict[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
        tty: bool,
        namespaces: list[str],
    ) -> tuple[int, int, int | None]:
        """Start a command in the sidecar; returns (pid, fd that yields its wait status, pidfd
        of the process that reports it, or None on kernels without pidfds)."""
        status_r, status_w = os.pipe()
        try:
            answer, got = self._call(
                {
                    "op": "exec",
                    "init_pid": init_pid,
                    "join_files": join_files,
                    "workdir": workdir,
                    "last_cap": last_cap,
                    "seccomp": seccomp.hex(),
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
        return int(answer["pid"]), status_r, (got[0] if got else None)

    def helper(
        self,
        *,
        init_pid: int,
        init_start: int | None,
        join_files: list[str],
        last_cap: int,
        namespaces: list[str],
        seccomp: bytes,
    ) -> SidecarHelper:
        """Fork an exec helper for the sidecar whose init is `init_pid` (see the module doc).
        `join_files` are any of the sidecar's cgroup join files: the helper's way home, in
        the same hierarchies, is found from them."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            answer, got = self._call(
                {
                    "op": "helper",
                    "init_pid": init_pid,
                    "init_start": init_start,
                    "join_files": join_files,
                    "last_cap": last_cap,
                    "namespaces": namespaces,
                    "seccomp": seccomp.hex(),
                },
                [theirs.fileno()],
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if not got:
            ours.close()
            raise ZygoteError("the zygote sent no pidfd for the exec helper")
        return SidecarHelper(ours, int(answer["pid"]), got[0])


class SidecarHelper:
    """The host's end of one sidecar's exec helper. Thread-safe: one request at a time."""

    def __init__(self, sock: socket.socket, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._sock = sock
        self._pidfd: int | None = pidfd
        self._lock = threading.Lock()

    def spawn(
        self,
        *,
        join_files: list[str],
        workdir: str,
        argv: list[str],
        env: dict[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
    ) -> tuple[int, int]:
        """Start a command in the cgroup of `join_files`; returns (its pid, or 0 when it could
        not start, and the fd that yields its wait status)."""
        joins: list[int] = []
        status_r, status_w = os.pipe()
        try:
            for path in join_files:
                joins.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
            payload = json.dumps({"op": "exec", "workdir": workdir, "argv": argv, "env": env})
            with self._lock:
                try:
                    socket.send_fds(
                        self._sock, [payload.encode()], [stdin, stdout, stderr, status_w, *joins]
                    )
                except OSError as exc:
                    raise HelperGone(f"the sidecar's exec helper is gone: {exc}", True) from exc
                try:
                    reply = self._sock.recv(MAX_MESSAGE)
                except OSError as exc:
                    reply = b""
                    error = str(exc)
                else:
                    error = "it closed its socket"
            if not reply:
                raise HelperGone(f"the sidecar's exec helper died on a request: {error}", False)
            answer: dict[str, Any] = json.loads(reply)
            if "error" in answer:
                raise RuntimeError_(answer["error"])
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
            for fd in joins:
                os.close(fd)
        return int(answer["pid"]), status_r

    def alive(self) -> bool:
        if self._pidfd is None:
            return False
        return not select.select([self._pidfd], [], [], 0)[0]

    def close(self, timeout: float = 5.0) -> None:
        """End the helper and wait for it to be gone (it holds the sidecar's mount namespace,
        so the sidecar's mounts outlive it until then). A request waiting for it (on a helper
        frozen with its sidecar mid-request) gets an end-of-file now, not when it thaws."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            try:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
        with self._lock:
            self._sock.close()


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
        sent: list[int] = []
        try:
            request = json.loads(data)
            if request["op"] == "init":
                from microbuild.runtime.namespace import spawn_init

                reply: dict[str, Any] = {"pid": spawn_init(*request["args"])}
            elif request["op"] == "exec":
                middle = _start_command(request, fds, sock)
                reply = {"pid": middle}
                # A pidfd of the middle process, opened while it is our unreaped child (so
                # it cannot be another process): the host waits on it for the middle to be
                # gone from the command's cgroup before removing that.
                with contextlib.suppress(OSError, AttributeError):
                    sent.append(os.pidfd_open(middle))
            elif request["op"] == "helper":
                helper = _start_helper(request, fds, sock)
                reply = {"pid": helper}
                sent.append(os.pidfd_open(helper))
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
        except Exception as exc:  # every failure goes back to the host as a message
            reply = {"error": str(exc) or type(exc).__name__}
        finally:
            for passed in fds:
                with contextlib.suppress(OSError):
                    os.close(passed)
        try:
            socket.send_fds(sock, [json.dumps(reply).encode()], sent)
        finally:
            for fd in sent:
                os.close(fd)


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
        for path in request["join_files"]:
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
    inherits is set up here first: working directory and confinement (linux.confine).
    Returns the pid, or minus the exit code when it could not start (message on stderr)."""
    linux.confine(int(request["last_cap"]), bytes.fromhex(request["seccomp"]))
    return _posix_spawn(request, stdin, stdout, stderr)


def _posix_spawn(
    request: dict[str, Any], stdin: int, stdout: int, stderr: int
) -> int:  # pragma: no cover - runs in the middle process and in exec helpers
    """Start `argv` in `workdir` with posix_spawn: the pid, or minus the exit code when it
    could not start (the message on its stderr). The caller's confinement (capability
    bounding set, no_new_privs, session keyring, seccomp filter) is the command's."""
    try:
        os.chdir(request["workdir"])
    except OSError:
        os.chdir("/")
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
            # Ignored here, so ignored in the command unless reset (as subprocess does).
            setsigdef=RESTORED_SIGNALS,
        )
    except OSError as exc:
        os.write(stderr, f"microbuild: cannot run {argv[0]}: {exc.strerror}\n".encode())
        return -126


def _start_helper(
    request: dict[str, Any], fds: list[int], sock: socket.socket
) -> int:  # pragma: no cover - runs in the zygote, then in the helper
    """Fork an exec helper on the socket end in `fds`; returns its pid."""
    (helper_sock,) = fds
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        sock.close()
        code = _serve_helper(request, helper_sock, parent)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            os.write(2, f"microbuild exec helper: {exc}\n".encode())
    finally:
        os._exit(code)


def _serve_helper(
    request: dict[str, Any], fd: int, parent: int
) -> int:  # pragma: no cover - runs in the exec helper
    """Join the sidecar for good, then start commands until the host closes the socket, the
    zygote dies or the sidecar's init does."""
    linux.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:
        return 0  # the zygote died before the line above
    sock = socket.socket(fileno=fd)
    # Everything from /proc and the host's cgroup filesystem is opened now: after setns the
    # helper sees only the sidecar's files.
    homes = [
        os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        for path in cg.home_join_files(request["join_files"])
    ]
    init_pid = int(request["init_pid"])
    seccomp_program = bytes.fromhex(request["seccomp"])
    init_fd = os.pidfd_open(init_pid)
    if linux.process_start_time(init_pid) != request["init_start"]:
        return 1  # that pid is not (any more) the sidecar's init
    ns_fds = [
        os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        for ns in request["namespaces"]
    ]
    # No module may be imported from here on: the paths it would be found at are the
    # sidecar's, writable by its commands, and this process keeps its capabilities.
    sys.meta_path.clear()
    sys.path_hooks.clear()
    sys.path.clear()
    sys.path_importer_cache.clear()
    for ns_fd in ns_fds:
        linux.setns(ns_fd, 0)
        os.close(ns_fd)
    os.chdir("/")
    # Its commands inherit this (posix_spawn has no hook to run code between fork and exec):
    # one session keyring per sidecar; the filter keeps them from using it anyway.
    linux.confine(int(request["last_cap"]), seccomp_program)
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status fd)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(init_fd, select.POLLIN)
    while True:
        for ready, _events in poller.poll():
            if ready == init_fd:
                return 0  # the sidecar is gone, and its pid namespace's processes with it
            if ready == sock.fileno():
                try:
                    data, passed, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 16)
                except OSError:
                    return 0
                if not data:
                    return 0  # the host closed its end
                started = _helper_exec(data, passed, homes, sock)
                if started is not None:
                    pidfd, pid, status_w = started
                    children[pidfd] = (pid, status_w)
                    poller.register(pidfd, select.POLLIN)
            elif ready in children:
                pid, status_w = children.pop(ready)
                poller.unregister(ready)
                os.close(ready)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    os.write(status_w, f"{status}\n".encode())
                os.close(status_w)


def _helper_exec(
    data: bytes, passed: list[int], homes: list[int], sock: socket.socket
) -> tuple[int, int, int] | None:  # pragma: no cover - runs in the exec helper
    """One request: start the command, answer with its pid; (pidfd, pid, status fd) to wait
    on, or None when nothing was started."""
    for fd in passed:
        os.set_inheritable(fd, False)
    keep: int | None = None
    try:
        if len(passed) < 4:
            raise ZygoteError("an exec request needs stdin, stdout, stderr and a status pipe")
        stdin, stdout, stderr, status_w = passed[:4]
        joins = passed[4:]
        request = json.loads(data)
        try:
            for join in joins:
                os.write(join, b"0")
            pid = _posix_spawn(request, stdin, stdout, stderr)
        finally:
            try:
                for home in homes:
                    os.write(home, b"0")
            except OSError:
                # Stuck in the command's cgroup, the helper would die with it: rather now.
                os._exit(1)
            os.chdir("/")
        if pid < 0:
            os.write(status_w, f"{-pid << 8}\n".encode())  # exit code as a wait status
            reply: dict[str, Any] = {"pid": 0}
        else:
            try:
                pidfd = os.pidfd_open(pid)  # our unreaped child: it cannot be another process
            except OSError:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise
            keep = status_w
            reply = {"pid": pid}
    except Exception as exc:  # every failure goes back to the host as a message
        reply = {"error": str(exc) or type(exc).__name__}
    for fd in passed:
        if fd != keep:
            os.close(fd)
    with contextlib.suppress(OSError):  # a host gone away finds out from the status pipe
        sock.send(json.dumps(reply).encode())
    if keep is None:
        return None
    return pidfd, reply["pid"], keep


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
        for sig in RESTORED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        linux.confine(int(request["last_cap"]), bytes.fromhex(request["seccomp"]))
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
