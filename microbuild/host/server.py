"""Running a host: listen on a Unix socket or TCP (token required, TLS optional), reconcile the
store with reality first, and record where we listen for `microbuild host status|stop`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from microbuild.host.manager import Admission, SidecarManager
from microbuild.host.policy import HostPolicy, user_policy


class ListenError(ValueError):
    """A --listen address that cannot be used."""


@dataclass(frozen=True)
class Listen:
    kind: str  # "unix" | "tcp"
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Listen:
        kind, sep, rest = text.partition(":")
        if kind == "unix" and sep and rest:
            return cls("unix", path=str(Path(rest).absolute()))
        if kind == "tcp" and sep:
            host, sep2, port = rest.rpartition(":")
            if sep2 and port.isdigit() and 0 <= int(port) < 65536:
                return cls("tcp", host=host.strip("[]") or "127.0.0.1", port=int(port))
        raise ListenError(f"--listen {text!r}: use tcp:HOST:PORT or unix:PATH")

    def url(self, tls: bool = False) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port}"


HOST_LOCK = "host.lock"


def hold_state_dir(state_dir: Path) -> int:
    """An exclusive lock on the state dir for this host's lifetime (serve closes it when it
    ends; a killed host's goes with its process): a second host on the same state dir would
    adopt and reset the first's sidecars and overwrite its host.json. ListenError names the
    one holding it."""
    path = state_dir / HOST_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ListenError(
            f"another host (pid {holder}) is serving {state_dir}: stop it with `microbuild "
            "host stop`, or give this one another --state-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def token_path(state_dir: Path) -> Path:
    return state_dir / "host.token"


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The host's token, generated on first use and kept 0600; (token, created)."""
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{path} is readable by others; chmod 600 {path}")
        token = path.read_text().strip()
        if token:
            return token, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def pidfile(state_dir: Path) -> Path:
    return state_dir / "host.json"


def read_pidfile(state_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads(pidfile(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _bind(listen: Listen) -> socket.socket:
    if listen.kind == "unix":
        assert listen.path is not None
        path = Path(listen.path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # a stale socket from a host that died
            else:
                raise ListenError(f"another host already listens on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
    else:
        family = socket.AF_INET6 if listen.host and ":" in listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host or "127.0.0.1", listen.port or 0))
        except OSError as exc:
            sock.close()
            raise ListenError(f"cannot listen on {listen.url()}: {exc.strerror}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    listen: Listen,
    state_dir: Path,
    *,
    token: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    admission: Admission | None = None,
    idle_check_s: float = 5.0,
    exit_when_idle_s: float | None = None,
    announce: bool = True,
    policy: HostPolicy | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or POST /v1/host/stop. What sidecars may reach of the host
    is `policy` (serve's flags) and the user's own configuration, never a repository's."""
    import uvicorn

    from microbuild.host.app import create_app

    if listen.kind == "tcp" and token is None:
        raise ListenError("a TCP listener needs a token")
    held = hold_state_dir(state_dir)
    base = HostPolicy.for_host(state_dir, token_file=token_path(state_dir))
    policy = base.merged(user_policy()).merged(policy or HostPolicy())
    manager = SidecarManager(state_dir, admission=admission, zygote=True)
    report = manager.reconcile()
    sock = _bind(listen)
    if listen.kind == "tcp" and listen.port == 0:
        listen = Listen("tcp", host=listen.host, port=sock.getsockname()[1])
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    if exit_when_idle_s is not None:
        idle_check_s = min(idle_check_s, max(0.1, exit_when_idle_s / 4))
    app = create_app(
        manager,
        policy=policy,
        grants=listen.kind == "unix",
        token=token,
        on_stop=stop,
        idle_check_s=idle_check_s,
        exit_when_idle_s=exit_when_idle_s,
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        timeout_graceful_shutdown=5,
        ws_max_size=1 << 20,
    )
    server = uvicorn.Server(config)
    info = {
        "pid": os.getpid(),
        "listen": listen.url(tls=tls_cert is not None),
        "started_at": time.time(),
        "state_dir": str(state_dir),
    }
    pidfile(state_dir).write_text(json.dumps(info))
    if announce:
        recovered = ", ".join(f"{len(v)} {k}" for k, v in report.items() if v)
        print(
            f"microbuild host {info['listen']} (pid {os.getpid()}, state {state_dir})"
            + (f"; recovered: {recovered}" if recovered else ""),
            flush=True,
        )
    try:
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError):
            current = read_pidfile(state_dir)
            if current and current.get("pid") == os.getpid():
                pidfile(state_dir).unlink()
        if listen.kind == "unix" and listen.path:
            with contextlib.suppress(OSError):
                os.unlink(listen.path)
        manager.close()
        os.close(held)
