"""The host as a real process: `microbuild serve` on TCP (token, optional TLS) or a Unix socket,
driven through `microbuild.client.Client`, raw HTTP and the CLI.

Every host is a subprocess that is stopped at teardown (SIGTERM, then SIGKILL); the sidecars it
leaves behind are destroyed in-process and its state directory removed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TINY_CONFIG, need_isolation, write_project

from microbuild.client import Client, HostError
from microbuild.transport import UnixTransport

pytestmark = pytest.mark.isolation

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SHORT = httpx.Timeout(30.0)


# -- helpers -----------------------------------------------------------------------------------


def new_state_dir() -> Path:
    # Short paths under /var/tmp: overlayfs option strings stay small.
    return Path(tempfile.mkdtemp(prefix="mbh-", dir="/var/tmp"))


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie may wait for a lazy PID 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("State:"):
            return "Z" not in line.split()[1]
    return True


def processes_with_argv(argv: list[str]) -> list[int]:
    """Host pids whose command line is exactly `argv` (we are root: we see the sidecars')."""
    wanted = b"\0".join(a.encode() for a in argv) + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline == wanted and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def wait_started(marker: list[str], lines: Iterator[str]) -> None:
    """`marker` runs (seen in /proc); if it never does, fail with what the exec stream said."""
    if wait_for(lambda: bool(processes_with_argv(marker)), 10):
        return
    rest: list[str] = []
    with contextlib.suppress(httpx.HTTPError):
        for line in lines:
            rest.append(line)
            if '"result"' in line:
                break
    pytest.fail(f"`{' '.join(marker)}` never showed up in /proc; the exec stream then said {rest}")


def frozen(pid: int) -> bool:
    """Whether the freezer has `pid` (a sidecar's init) frozen, read from the cgroup files."""
    groups = dict(
        line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    )
    if "freezer" in groups:  # cgroup v1
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        point = next(
            m.split()[1] for m in mounts if m.split()[2] == "cgroup" and "freezer" in m.split()[3]
        )
        state = Path(f"{point}{groups['freezer']}/freezer.state").read_text().strip()
        return state == "FROZEN"
    events = Path(f"/sys/fs/cgroup{groups['']}/cgroup.events").read_text()
    return "frozen 1" in events.splitlines()


def mounts_involving(path: Path) -> set[str]:
    """This process's mount table lines (== the host's mount namespace) that mention `path`."""
    needle = str(path.resolve())
    return {
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if needle in line
    }


def cleanup_state(state: Path) -> None:
    """Destroy what a (stopped) host left behind, then remove its state directory."""
    with contextlib.suppress(Exception):
        from microbuild.host.manager import SidecarManager

        if (state / "state.db").exists():
            manager = SidecarManager(state)
            try:
                for record in manager.store.list_sidecars():
                    with contextlib.suppress(Exception):
                        manager.destroy(record.id)
                # whatever no record owns: cgroups, sidecar directories
                manager.runtime("namespace").collect_garbage(keep=set())
            finally:
                manager.close()
    shutil.rmtree(state, ignore_errors=True)


@dataclass
class Ran:
    exit_code: int
    stdout: bytes
    stderr: bytes
    result: dict[str, Any]


def run(client: Client, ident: str, argv: list[str], **kwargs: Any) -> Ran:
    out: list[bytes] = []
    err: list[bytes] = []
    result: dict[str, Any] = {}
    for kind, payload in client.exec(ident, argv, **kwargs):
        if kind == "stdout":
            out.append(payload)
        elif kind == "stderr":
            err.append(payload)
        else:
            result = payload
    return Ran(int(result["exit_code"]), b"".join(out), b"".join(err), result)


@dataclass
class Host:
    """One `microbuild serve` subprocess."""

    state: Path
    listen: str  # tcp:127.0.0.1:0 (the kernel picks the port) or unix:PATH
    args: tuple[str, ...] = ()
    ca: str | None = None  # the TLS certificate, when serving https
    proc: subprocess.Popen[bytes] | None = None
    snapshot: str = ""
    starts: int = 0
    logs: list[Path] = field(default_factory=list)
    bound: str = ""  # where it listens, from STATE/host.json

    @property
    def is_tcp(self) -> bool:
        return self.listen.startswith("tcp:")

    @property
    def port(self) -> int:
        return int(self.bound.rsplit(":", 1)[1])

    @property
    def sock(self) -> str:
        return self.listen[len("unix:") :]

    @property
    def url(self) -> str:
        return self.bound

    @property
    def token(self) -> str | None:
        if not self.is_tcp:
            return None
        return (self.state / "host.token").read_text().strip()

    @property
    def stdout(self) -> str:
        return self.logs[-2].read_text(errors="replace") if self.logs else ""

    def client(self, token: str | None = None) -> Client:
        if not self.is_tcp:
            return Client("http://microbuild", uds=self.sock)
        return Client(self.url, token=token or self.token, verify=self.ca or True)

    def http(self, token: str | None = None) -> httpx.Client:
        """A bare httpx client; `token=""` sends no Authorization header at all."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if not self.is_tcp:
            return httpx.Client(
                base_url="http://microbuild",
                transport=httpx.HTTPTransport(uds=self.sock),
                timeout=SHORT,
            )
        return httpx.Client(base_url=self.url, headers=headers, timeout=SHORT)

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBUILD_")}
        env["MICROBUILD_HOST"] = self.url
        # Never a local host by accident: a state dir nobody serves.
        env["MICROBUILD_STATE_DIR"] = str(self.state / "cli-unused")
        if self.token:
            env["MICROBUILD_TOKEN"] = self.token
        if self.ca:
            env["MICROBUILD_CA"] = self.ca
        return env

    def start(self) -> None:
        self.starts += 1
        self.bound = ""
        out = self.state / f"test-host-{self.starts}.out"
        err = self.state / f"test-host-{self.starts}.err"
        self.logs += [out, err]
        cmd = [
            sys.executable,
            "-m",
            "microbuild",
            "--state-dir",
            str(self.state),
            "serve",
            "--listen",
            self.listen,
            *self.args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBUILD_")}
        with open(out, "wb") as o, open(err, "wb") as e:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env)
        if not wait_for(self._ready, START_TIMEOUT_S):
            self.stop()
            pytest.fail(f"the host did not start: {self.describe_logs()}")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the host exited with {self.proc.returncode}: {self.describe_logs()}")
        if self.is_tcp and not (self.state / "host.token").exists():
            return False
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((self.state / "host.json").read_text())
            if info.get("pid") == self.proc.pid:
                self.bound = str(info["listen"])
        if not self.bound:
            return False
        if not self.is_tcp:
            # A stale socket (after a crash) refuses connections until the new host binds it.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe_sock:
                try:
                    probe_sock.connect(self.sock)
                except OSError:
                    return False
        try:
            with self._probe() as probe:
                return probe.get("/v1/health", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def _probe(self) -> httpx.Client:
        if not self.is_tcp:
            return httpx.Client(
                base_url="http://microbuild", transport=httpx.HTTPTransport(uds=self.sock)
            )
        import ssl

        verify: Any = ssl.create_default_context(cafile=self.ca) if self.ca else True
        return httpx.Client(base_url=self.url, verify=verify)

    def describe_logs(self) -> str:
        return " | ".join(
            f"{p.name}: {p.read_text(errors='replace').strip()[-2000:]}"
            for p in self.logs
            if p.exists()
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)


def start_host(state: Path, kind: str = "tcp", *args: str, ca: str | None = None) -> Host:
    listen = "tcp:127.0.0.1:0" if kind == "tcp" else f"unix:{state / 'h.sock'}"
    host = Host(state=state, listen=listen, args=args, ca=ca)
    host.start()
    return host


def mb(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microbuild", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def build_snapshot(host: Host, project: Path) -> str:
    """The project's snapshot on `host`, resolved and built through the API."""
    from microbuild import sync
    from microbuild.config import find_project

    proj = find_project(project)
    request = sync.describe_snapshot(proj)
    with host.client() as client:
        snap, needed = client.resolve_snapshot(request.model_dump(mode="json"))
        if needed:
            with tempfile.TemporaryDirectory(prefix="mbh-src-") as tmp:
                tar = Path(tmp) / "source.tar"
                sync.export_source(proj, request, tar)
                events = list(client.upload_source(snap["id"], tar))
            assert events and events[-1]["event"] == "done", events
            snap = events[-1]["snapshot"]
    assert snap["state"] == "ready", snap
    return str(snap["id"])


def build_snapshot_cli(host: Host, project: Path) -> str:
    built = mb("snapshot", "build", "--json", cwd=project, env=host.cli_env())
    assert built.returncode == 0, built.stderr
    snap = json.loads(built.stdout)
    assert snap["state"] == "ready" and snap["id"].startswith("sn_")
    return str(snap["id"])


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(
        tmp_path_factory.mktemp("hostproj") / "proj",
        TINY_CONFIG,
        {"requirements.txt": "dep==1\n", "src/app.py": "print('app')\n"},
    )


@contextlib.contextmanager
def hosting(kind: str = "tcp", *args: str) -> Iterator[Host]:
    """A host on a fresh state dir, stopped and cleaned up at the end."""
    state = new_state_dir()
    host = None
    try:
        host = start_host(state, kind, *args)
        yield host
    finally:
        if host is not None:
            host.stop()
        cleanup_state(state)


@pytest.fixture(scope="module")
def tcp_host(project: Path) -> Iterator[Host]:
    need_isolation()
    with hosting("tcp") as host:
        host.snapshot = build_snapshot_cli(host, project)
        yield host


@pytest.fixture(scope="module")
def unix_host(project: Path) -> Iterator[Host]:
    need_isolation()
    with hosting("unix") as host:
        host.snapshot = build_snapshot(host, project)
        yield host


@pytest.fixture
def sidecar(tcp_host: Host) -> Iterator[str]:
    """A fresh sidecar on the module's TCP host, destroyed afterwards."""
    with tcp_host.client() as client:
        ident = str(client.create_sidecar(tcp_host.snapshot)["id"])
        yield ident
        with contextlib.suppress(HostError):
            client.sidecar_action(ident, "destroy")


@pytest.fixture
def spawn() -> Iterator[Callable[..., Host]]:
    """Start extra hosts, each on its own state dir; all stopped and cleaned at teardown."""
    started: list[Host] = []

    def start(kind: str = "tcp", *args: str, ca: str | None = None) -> Host:
        need_isolation()
        state = new_state_dir()
        try:
            host = start_host(state, kind, *args, ca=ca)
        except BaseException:
            cleanup_state(state)
            raise
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()
        cleanup_state(host.state)


# -- 1. every sidecar operation, over TCP and over a Unix socket ------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_sidecar_operations_end_to_end(transport: str, request: pytest.FixtureRequest) -> None:
    host: Host = request.getfixturevalue(f"{transport}_host")
    with host.client() as c:
        created = c.create_sidecar(host.snapshot)
        ident = created["id"]
        try:
            assert ident.startswith("sc_")
            assert created["state"] == "running"
            assert created["snapshot"] == host.snapshot
            assert created["runtime"] == "namespace"
            got = c.get_sidecar(ident)
            assert got["id"] == ident and got["state"] == "running"
            init_pid = got["init_pid"]
            assert init_pid and pid_alive(init_pid) and not frozen(init_pid)
            assert ident in [s["id"] for s in c.list_sidecars()]

            # exec: exit code passthrough, stdout and stderr apart, stdin
            ran = run(
                c,
                ident,
                ["sh", "-c", "cat; echo out; echo err >&2; exit 7"],
                stdin=b"from-stdin\n",
            )
            assert ran.exit_code == 7
            assert ran.stdout == b"from-stdin\nout\n"
            assert ran.stderr == b"err\n"
            assert b"built-once" in run(c, ident, ["cat", "installed.txt"]).stdout

            # suspend; an exec on the suspended sidecar resumes it
            assert c.sidecar_action(ident, "suspend")["state"] == "suspended"
            assert c.get_sidecar(ident)["state"] == "suspended"
            assert frozen(init_pid)
            woke = run(c, ident, ["echo", "awake"])
            assert (woke.exit_code, woke.stdout) == (0, b"awake\n")
            assert c.get_sidecar(ident)["state"] == "running"
            assert not frozen(init_pid)

            # suspend then resume explicitly
            assert c.sidecar_action(ident, "suspend")["state"] == "suspended"
            assert frozen(init_pid)
            assert c.sidecar_action(ident, "resume")["state"] == "running"
            assert c.get_sidecar(ident)["state"] == "running"
            assert not frozen(init_pid)
            assert run(c, ident, ["true"]).exit_code == 0

            # reset: a fresh writable layer (same id), the snapshot's content still there
            assert (
                run(c, ident, ["sh", "-c", "echo scratch > /workspace/scratch.txt"]).exit_code == 0
            )
            assert c.read_file(ident, "scratch.txt") == b"scratch\n"
            reset = c.sidecar_action(ident, "reset")
            assert reset["id"] == ident and reset["state"] == "running"
            assert run(c, ident, ["test", "-e", "/workspace/scratch.txt"]).exit_code == 1
            with pytest.raises(HostError) as missing:
                c.read_file(ident, "scratch.txt")
            assert missing.value.status == 404
            assert b"built-once" in run(c, ident, ["cat", "installed.txt"]).stdout
        finally:
            gone = c.sidecar_action(ident, "destroy")
        assert gone["id"] == ident and gone["state"] == "destroyed"
        assert not pid_alive(init_pid)
        with pytest.raises(HostError) as after:
            c.get_sidecar(ident)
        assert after.value.status == 404
        assert ident not in [s["id"] for s in c.list_sidecars()]
    assert not (host.state / "sidecars" / ident).exists()


# -- 2. exec output is streamed ----------------------------------------------------------------


def test_exec_streams_output_before_the_command_ends(tcp_host: Host, sidecar: str) -> None:
    with tcp_host.client() as c:
        started = time.monotonic()
        first_at = None
        out = b""
        result: dict[str, Any] = {}
        for kind, payload in c.exec(sidecar, ["sh", "-c", "echo first; sleep 3; echo second"]):
            if kind == "stdout":
                if first_at is None:
                    first_at = time.monotonic() - started
                    assert payload.startswith(b"first")
                out += payload
            elif kind == "result":
                result = payload
        total = time.monotonic() - started
    assert first_at is not None and first_at < 1.5, first_at
    assert total >= 3.0
    assert out == b"first\nsecond\n"
    assert result["exit_code"] == 0


# -- 3. the token ------------------------------------------------------------------------------


def test_tcp_requests_without_the_right_token_are_refused(tcp_host: Host, sidecar: str) -> None:
    token = tcp_host.token
    assert token
    token_file = tcp_host.state / "host.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The first start printed the token on stdout, on a line of its own.
    assert token in tcp_host.stdout.splitlines()

    with tcp_host.client() as c:
        count = len(c.list_sidecars())
        assert c.host_info()["sidecars"] == count

    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/sidecars", {}),
        ("POST", "/v1/sidecars", {"json": {"snapshot_id": tcp_host.snapshot}}),
        ("GET", f"/v1/sidecars/{sidecar}", {}),
        ("DELETE", f"/v1/sidecars/{sidecar}", {}),
        ("POST", f"/v1/sidecars/{sidecar}/suspend", {}),
        ("POST", f"/v1/sidecars/{sidecar}/reset", {}),
        (
            "POST",
            f"/v1/sidecars/{sidecar}/exec",
            {"json": {"argv": ["sh", "-c", "echo pwned > /workspace/pwned"]}},
        ),
        ("PUT", f"/v1/sidecars/{sidecar}/files/pwned2", {"content": b"pwned"}),
        ("GET", f"/v1/sidecars/{sidecar}/files/installed.txt", {}),
        ("GET", "/v1/host", {}),
        ("POST", "/v1/host/stop", {}),
        ("GET", "/v1/snapshots", {}),
    ]
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Bearer {token[:-1]}"},
        {"Authorization": token},
        {"Authorization": f"Basic {base64.b64encode(f'u:{token}'.encode()).decode()}"},
        {"Authorization": "Bearer"},
    ]
    with httpx.Client(base_url=tcp_host.url, timeout=SHORT) as raw:
        for headers in bad_headers:
            for method, path, kwargs in requests:
                response = raw.request(method, path, headers=headers, **kwargs)
                assert response.status_code == 401, (headers, method, path, response.text)
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers.get("www-authenticate") == "Bearer"
        health = raw.get("/v1/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}

    # The Client says what to do about it.
    with tcp_host.client(token="wrong") as wrong, pytest.raises(HostError) as refused:
        wrong.list_sidecars()
    assert refused.value.status == 401 and "MICROBUILD_TOKEN" in str(refused.value)

    # Nothing changed: same sidecars, this one still there and running, nothing written.
    with tcp_host.client() as c:
        assert len(c.list_sidecars()) == count
        assert c.get_sidecar(sidecar)["state"] == "running"
        ran = run(c, sidecar, ["sh", "-c", "ls /workspace; echo alive"])
        assert ran.exit_code == 0 and ran.stdout.endswith(b"alive\n")
        assert b"pwned" not in ran.stdout
        assert c.health()


# -- 4. files ----------------------------------------------------------------------------------


def _raw_get(host: Host, path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (httpx would normalize `..` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {host.token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _raw_put(host: Host, path: str, data: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
    try:
        conn.request("PUT", path, body=data, headers={"Authorization": f"Bearer {host.token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_files_stay_inside_the_workspace(tcp_host: Host, sidecar: str) -> None:
    passwd = Path("/etc/passwd").read_bytes()
    first_line = passwd.splitlines()[0]
    bait = Path(tempfile.mkdtemp(prefix="mbh-bait-", dir="/var/tmp"))
    try:
        (bait / "target.txt").write_bytes(b"host original\n")
        with tcp_host.client() as c:
            # write then read, parents made on the way; the sidecar sees the same file
            data = b"hello\x00world\n" * 3
            c.write_file(sidecar, "dir/sub/hello.bin", data)
            assert c.read_file(sidecar, "dir/sub/hello.bin") == data
            assert run(c, sidecar, ["cat", "/workspace/dir/sub/hello.bin"]).stdout == data
            c.write_file(sidecar, "dir/sub/hello.bin", b"short")
            assert c.read_file(sidecar, "dir/sub/hello.bin") == b"short"
            with pytest.raises(HostError) as nothing:
                c.read_file(sidecar, "no/such/file")
            assert nothing.value.status == 404

            links = run(
                c,
                sidecar,
                [
                    "sh",
                    "-ec",
                    "cd /workspace; ln -s /etc/passwd evil; ln -s / rootlink;"
                    " ln -s ../../../../../../../../etc/passwd relevil;"
                    f" ln -s {bait}/target.txt baitfile; ln -s {bait}/new.txt baitnew;"
                    f" ln -s {bait} baitdir; mkdir -p inner; ln -s ../../../../../.. inner/up",
                ],
            )
            assert links.exit_code == 0, links.stderr

        base = f"/v1/sidecars/{sidecar}/files/"
        for path in (
            "../../etc/passwd",
            "../../../../../../../../etc/passwd",
            "dir/../../../etc/passwd",
            "%2e%2e/%2e%2e/etc/passwd",
            "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            "/etc/passwd",
            "%2Fetc%2Fpasswd",
            "%2fetc/passwd",
            "evil",
            "relevil",
            "rootlink/etc/passwd",
            "rootlink",
            "inner/up/etc/passwd",
            f"rootlink{bait}/target.txt",
            "baitfile",
            "baitdir/target.txt",
            f"/{bait}/target.txt",
            "dir",
        ):
            status, body = _raw_get(tcp_host, base + path)
            assert status in (403, 404), (path, status, body[:200])
            assert first_line not in body and b"host original" not in body, path

        before = hashlib.sha256(passwd).hexdigest()
        for path in (
            "baitfile",
            "baitnew",
            "baitdir/created.txt",
            "baitdir/sub/created.txt",
            f"rootlink{bait}/target.txt",
            f"rootlink{bait}/created2.txt",
            f"inner/up{bait}/created3.txt",
            f"../../../../../../../..{bait}/created4.txt",
            f"%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e{bait}/created5.txt",
            f"/{bait}/created6.txt",
            f"%2F{bait.relative_to('/')}/created7.txt",
        ):
            status, body = _raw_put(tcp_host, base + path, b"pwned\n")
            assert status in (403, 404), (path, status, body[:200])
        assert sorted(p.name for p in bait.iterdir()) == ["target.txt"]
        assert (bait / "target.txt").read_bytes() == b"host original\n"
        assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == before

        # The links themselves are untouched, and the sidecar still works.
        with tcp_host.client() as c:
            check = run(c, sidecar, ["sh", "-c", "readlink /workspace/baitfile /workspace/evil"])
            assert check.stdout == f"{bait}/target.txt\n/etc/passwd\n".encode()
    finally:
        shutil.rmtree(bait, ignore_errors=True)


# -- 5. body limits ----------------------------------------------------------------------------


def _pad_body(snapshot: str) -> bytes:
    # Valid JSON, but with an unknown key: accepted by mistake it would be a 422, not a 413.
    body = json.dumps({"snapshot_id": snapshot, "pad": "x" * ((1 << 20) + 4096)}).encode()
    assert len(body) > 1 << 20
    return body


def _still_serving(host: Host, count: int) -> None:
    with host.client() as c:
        assert c.health()
        assert len(c.list_sidecars()) == count
        assert c.host_info()["sidecars"] == count


def test_oversized_json_body_with_content_length_is_413(tcp_host: Host) -> None:
    with tcp_host.client() as c:
        count = len(c.list_sidecars())
    with tcp_host.http() as raw:
        headers = {"Content-Type": "application/json"}
        announced = raw.post("/v1/sidecars", content=_pad_body(tcp_host.snapshot), headers=headers)
        assert announced.status_code == 413, announced.text
        assert announced.json()["error"]["code"] == "body_too_large"
    # A Content-Length that is no number is no way around the limit either (raw: httpx would
    # refuse to send it).
    with socket.create_connection(("127.0.0.1", tcp_host.port), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/sidecars HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            + f"\r\nAuthorization: Bearer {tcp_host.token}".encode()
            + b"\r\nContent-Length: x\r\nConnection: close\r\n\r\n{}"
        )
        status_line = conn.makefile("rb").readline()
    assert status_line.split()[1] in (b"400", b"413"), status_line
    _still_serving(tcp_host, count)


def test_oversized_chunked_json_body_is_413(tcp_host: Host) -> None:
    with tcp_host.client() as c:
        count = len(c.list_sidecars())
    body = _pad_body(tcp_host.snapshot)

    def chunked() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for at in range(0, len(body), 64 << 10):
            yield body[at : at + (64 << 10)]

    with tcp_host.http() as raw:
        streamed = raw.post(
            "/v1/sidecars", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413, streamed.text
        assert streamed.json()["error"]["code"] == "body_too_large"
    _still_serving(tcp_host, count)


# -- 6. a client that goes away ----------------------------------------------------------------


def test_client_disconnect_kills_the_command(tcp_host: Host, sidecar: str) -> None:
    marker = ["sleep", "3006"]
    with (
        tcp_host.http() as raw,
        raw.stream(
            "POST",
            f"/v1/sidecars/{sidecar}/exec",
            json={"argv": ["sh", "-c", f"echo started; exec {' '.join(marker)}"]},
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert first["stream"] == "stdout"
        assert base64.b64decode(first["data"]) == b"started\n"
        wait_started(marker, lines)
        # leaving the stream unread closes the connection
    gone = wait_for(lambda: not processes_with_argv(marker), 5)
    assert gone, f"`{' '.join(marker)}` still runs: pids {processes_with_argv(marker)}"
    with tcp_host.client() as c:
        inside = run(c, sidecar, ["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
        assert b"sleep 3006" not in inside.stdout
        assert c.get_sidecar(sidecar)["state"] == "running"


# -- 7. a host that crashes --------------------------------------------------------------------


def test_sigkilled_host_restarts_and_adopts_its_sidecars(
    spawn: Callable[..., Host], project: Path
) -> None:
    need_isolation()
    marker = ["sleep", "3007"]
    host = spawn("unix")
    # Sidecars mount in their own mount namespaces: the host's (ours) sees none of their mounts,
    # only each live sidecar's disk (its writable layer's filesystem, [sidecar] disk).
    assert mounts_involving(host.state) == set()
    host.snapshot = build_snapshot(host, project)
    with host.client() as c:
        ident = c.create_sidecar(host.snapshot)["id"]
        init_pid = c.get_sidecar(ident)["init_pid"]
    assert init_pid and pid_alive(init_pid)

    with (
        host.http() as raw,
        raw.stream(
            "POST",
            f"/v1/sidecars/{ident}/exec",
            json={"argv": ["sh", "-c", f"echo started; exec {' '.join(marker)}"]},
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert json.loads(next(lines))["stream"] == "stdout"
        wait_started(marker, lines)
        host.kill()

    host.start()  # same state dir, same socket path (stale after the crash)
    assert "adopted" in host.stdout, host.stdout
    assert wait_for(lambda: not processes_with_argv(marker), 5), processes_with_argv(marker)
    with host.client() as c:
        got = c.get_sidecar(ident)
        assert got["state"] == "running" and got["init_pid"] == init_pid
        ran = run(c, ident, ["sh", "-c", "cat installed.txt; echo ok"])
        assert ran.exit_code == 0 and ran.stdout.endswith(b"ok\n")
        assert b"built-once" in ran.stdout
    assert pid_alive(init_pid)

    listed = mb("--host", host.url, "sidecar", "list", "--all", "--json", env=host.cli_env())
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [(r["id"], r["state"]) for r in records] == [(ident, "running")]
    sidecars_dir = host.state / "sidecars"
    assert sorted(p.name for p in sidecars_dir.iterdir()) == [ident]
    (disk,) = mounts_involving(host.state)  # the adopted sidecar's disk, and nothing else
    assert disk.split()[4] == str((sidecars_dir / ident / "disk").resolve())
    assert {"nosuid", "nodev"} <= set(disk.split()[5].split(","))


# -- 8. two hosts, one client ------------------------------------------------------------------


def test_two_hosts_are_independent(
    tcp_host: Host, spawn: Callable[..., Host], project: Path
) -> None:
    other = spawn("tcp")
    assert other.token != tcp_host.token
    env = {**tcp_host.cli_env()}
    env.pop("MICROBUILD_HOST")

    def on(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
        return mb(
            "--host",
            host.url,
            *args,
            cwd=project,
            env={**env, "MICROBUILD_TOKEN": host.token or ""},
        )

    made_b = on(other, "sidecar", "create", "--json")  # builds the snapshot on the other host
    assert made_b.returncode == 0, made_b.stderr
    b = json.loads(made_b.stdout)["id"]
    made_a = on(tcp_host, "sidecar", "create", "--json")
    assert made_a.returncode == 0, made_a.stderr
    a = json.loads(made_a.stdout)["id"]

    def ids(host: Host) -> set[str]:
        listed = on(host, "sidecar", "list", "--all", "--json")
        assert listed.returncode == 0, listed.stderr
        return {r["id"] for r in json.loads(listed.stdout)}

    assert a in ids(tcp_host) and b not in ids(tcp_host)
    assert ids(other) == {b}
    crossed = on(tcp_host, "sidecar", "exec", b, "--", "true")
    assert crossed.returncode == 2 and "no sidecar" in crossed.stderr
    assert on(other, "sidecar", "destroy", a).returncode == 2

    # A's token is no good on B.
    wrong = mb(
        "--host", other.url, "sidecar", "list", "--all", cwd=project,
        env={**env, "MICROBUILD_TOKEN": tcp_host.token or ""},
    )  # fmt: skip
    assert wrong.returncode == 2 and "token" in wrong.stderr

    assert on(tcp_host, "sidecar", "destroy", a).returncode == 0
    assert a not in ids(tcp_host)
    ran = on(other, "sidecar", "exec", b, "--", "sh", "-c", "echo still-here")
    assert ran.returncode == 0 and ran.stdout == "still-here\n"
    assert ids(other) == {b}
    assert on(other, "sidecar", "destroy", b).returncode == 0


# -- 9. idle sidecars are suspended ------------------------------------------------------------


def test_idle_sidecars_are_suspended_and_wake_on_exec(
    spawn: Callable[..., Host], project: Path
) -> None:
    host = spawn("tcp", "--idle-check", "0.2")
    host.snapshot = build_snapshot(host, project)
    settings = {"memory": 256 << 20, "pids": 128, "idle_suspend_s": 1.0}
    with host.client() as c:
        made = c.create_sidecar(host.snapshot, settings)
        sleepy, sleepy_init = made["id"], made["init_pid"]
        awake = c.create_sidecar(host.snapshot, {**settings, "idle_suspend_s": 0.0})["id"]
        assert wait_for(lambda: c.get_sidecar(sleepy)["state"] == "suspended", 6, 0.1)
        assert frozen(sleepy_init)
        assert c.get_sidecar(awake)["state"] == "running"
        ran = run(c, sleepy, ["echo", "back"])
        assert (ran.exit_code, ran.stdout) == (0, b"back\n")
        assert c.get_sidecar(sleepy)["state"] == "running"
        assert not frozen(sleepy_init)
        # and it dozes off again
        assert wait_for(lambda: c.get_sidecar(sleepy)["state"] == "suspended", 6, 0.1)
        assert c.get_sidecar(awake)["state"] == "running"


# -- 10. admission -----------------------------------------------------------------------------


def test_admission_refuses_sidecars_over_the_limit(
    spawn: Callable[..., Host], project: Path
) -> None:
    host = spawn("tcp", "--max-sidecars", "1")
    first = mb("sidecar", "create", "--json", cwd=project, env=host.cli_env())
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["id"]
    snap = json.loads(first.stdout)["snapshot"]

    with host.client() as c, pytest.raises(HostError) as refused:
        c.create_sidecar(snap)
    assert refused.value.status == 503 and refused.value.code == "admission_refused"
    assert "max_sidecars = 1" in str(refused.value)

    second = mb("sidecar", "create", "--json", cwd=project, env=host.cli_env())
    assert second.returncode == 3, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "max_sidecars = 1" in lines[0]
    assert second.stdout == ""

    plain = mb("sidecar", "create", cwd=project, env=host.cli_env())
    assert plain.returncode == 3
    assert [line for line in plain.stderr.splitlines() if line.startswith("error:")] == lines

    with host.client() as c:
        assert [s["id"] for s in c.list_sidecars()] == [first_id]
        c.sidecar_action(first_id, "destroy")
        again = c.create_sidecar(snap)  # room again
        assert again["state"] == "running"


# -- 11. TLS -----------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "microbuild test host")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls(spawn: Callable[..., Host], tmp_path: Path) -> None:
    need_isolation()
    cert, key = _self_signed(tmp_path)
    host = spawn("tcp", "--tls-cert", str(cert), "--tls-key", str(key), ca=str(cert))
    assert host.url.startswith("https://127.0.0.1:")
    with Client(host.url, token=host.token, verify=str(cert)) as c:
        assert c.health()
        info = c.host_info()
        assert info["state_dir"] == str(host.state) and info["isolates"] is True
        assert c.list_sidecars() == []
    with Client(host.url, token="wrong", verify=str(cert)) as c, pytest.raises(HostError) as bad:
        c.list_sidecars()
    assert bad.value.status == 401

    status = mb("host", "status", "--json", env=host.cli_env())
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["url"] == host.url
    listed = mb("sidecar", "list", "--all", "--json", env=host.cli_env())
    assert listed.returncode == 0 and json.loads(listed.stdout) == []

    # Without the certificate the client does not trust the host...
    with Client(host.url, token=host.token) as c, pytest.raises(HostError) as untrusted:
        c.host_info()
    assert untrusted.value.code == "unreachable"
    no_ca = {k: v for k, v in host.cli_env().items() if k != "MICROBUILD_CA"}
    refused = mb("host", "status", "--json", env=no_ca)
    assert refused.returncode == 3 and refused.stderr.startswith("error: ")
    # ...and plain http gets no answer from a TLS port.
    with pytest.raises(httpx.TransportError):
        httpx.get(
            f"http://127.0.0.1:{host.port}/v1/health",
            headers={"Authorization": f"Bearer {host.token}"},
            timeout=10,
        )


# -- 12. the PTY shell -------------------------------------------------------------------------


def test_pty_shell_over_websocket(tcp_host: Host, sidecar: str) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{tcp_host.port}/v1/sidecars/{sidecar}/shell?rows=30&cols=100"
    headers = {"Authorization": f"Bearer {tcp_host.token}"}
    out = b""
    exit_message = None
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(b"echo hello-$((6*7))\n")
        ws.send(b"stty size\n")
        ws.send(b"exit 3\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = ws.recv(timeout=deadline - time.monotonic())
            if isinstance(message, bytes):
                out += message
            else:
                exit_message = json.loads(message)
                break
    assert exit_message == {"exit": 3}, out
    assert b"hello-42" in out
    assert b"30 100" in out

    for bad in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus), connect(url, additional_headers=bad, open_timeout=10):
            pass
    missing = url.replace(sidecar, "sc_nosuchthing")
    with pytest.raises(InvalidStatus), connect(missing, additional_headers=headers):
        pass
    with tcp_host.client() as c:
        assert c.get_sidecar(sidecar)["state"] == "running"


def test_closing_the_shell_websocket_ends_the_shell(tcp_host: Host, sidecar: str) -> None:
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{tcp_host.port}/v1/sidecars/{sidecar}/shell"
    headers = {"Authorization": f"Bearer {tcp_host.token}"}
    marker = ["sleep", "3012"]
    # An idle interactive shell, then one busy with a silent command: both end with the socket.
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(b"echo ready-$((1+1))\n")
        seen = b""
        while b"ready-2" not in seen:
            message = ws.recv(timeout=10)
            seen += message if isinstance(message, bytes) else b""
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(f"exec {' '.join(marker)}\n".encode())
        assert wait_for(lambda: bool(processes_with_argv(marker)), 10)
    gone = wait_for(lambda: not processes_with_argv(marker), 5)
    assert gone, f"`{' '.join(marker)}` still runs: pids {processes_with_argv(marker)}"
    with tcp_host.client() as c:
        inside = run(c, sidecar, ["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
    assert b"sh -i" not in inside.stdout, inside.stdout


# -- 13. the local host, started by the CLI on first use ---------------------------------------


def test_local_host_started_on_first_use_status_and_stop() -> None:
    need_isolation()
    state = new_state_dir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROBUILD_")}
    sock = state / "host.sock"
    pid = None
    try:
        listed = mb("--state-dir", str(state), "sidecar", "list", "--all", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        assert sock.is_socket()
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600

        status = mb("--state-dir", str(state), "host", "status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        pid = int(info["pid"])
        assert info["url"] == f"unix:{sock}"
        assert info["state_dir"] == str(state)
        assert info["runtime"] == "namespace" and info["isolates"] is True
        assert info["sidecars"] == 0 and info["snapshots"] == 0
        assert pid_alive(pid)
        assert json.loads((state / "host.json").read_text())["pid"] == pid
        assert not (state / "host.token").exists()  # a Unix socket needs no token

        human = mb("--state-dir", str(state), "host", "status", env=env)
        assert human.returncode == 0 and f"pid {pid}" in human.stdout

        stopped = mb("--state-dir", str(state), "host", "stop", "--json", env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert json.loads(stopped.stdout) == {"status": "stopping"}
        assert wait_for(lambda: not sock.exists(), 5), "the socket is still there"
        assert wait_for(lambda: not pid_alive(pid), 10), "the host process is still there"
        assert not (state / "host.json").exists()

        # Stopping again does not start a host just to stop it.
        again = mb("--state-dir", str(state), "host", "stop", "--json", env=env)
        assert again.returncode == 0 and json.loads(again.stdout) == {"status": "not running"}
        assert not sock.exists()
    finally:
        if pid is None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = int(json.loads((state / "host.json").read_text())["pid"])
        if pid is not None and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not wait_for(lambda: not pid_alive(pid), STOP_TIMEOUT_S):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not pid_alive(pid), STOP_TIMEOUT_S)
        cleanup_state(state)


# -- 9. the local (Unix socket) client: connections kept, and given up ------------------------


@pytest.fixture
def unix_sidecar(unix_host: Host) -> Iterator[str]:
    with unix_host.client() as client:
        ident = str(client.create_sidecar(unix_host.snapshot)["id"])
        yield ident
        with contextlib.suppress(HostError):
            client.sidecar_action(ident, "destroy")


def _kept(client: Client) -> object:
    """The connection the client's Unix transport keeps for its next request, if any."""
    transport = client._http
    assert isinstance(transport, UnixTransport)
    return transport._idle[0] if transport._idle else None


def test_unix_client_keeps_its_connection_for_the_next_request(
    unix_host: Host, unix_sidecar: str
) -> None:
    with unix_host.client() as c:
        c.get_sidecar(unix_sidecar)
        first = _kept(c)
        assert first is not None
        c.get_sidecar(unix_sidecar)
        assert _kept(c) is first
        # A stream read to its end keeps it too (its last bytes are read for it).
        assert run(c, unix_sidecar, ["echo", "hi"]).stdout == b"hi\n"
        assert _kept(c) is not None
        assert c.sync(unix_sidecar, to_tree="c" * 40, payload=b"")["tree"] == "c" * 40


def test_unix_client_retries_on_a_connection_the_host_closed(
    unix_host: Host, unix_sidecar: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept connection that broke (the host closed it, idle) costs a new one, not an error;
    for a POST too, since the request never went out; one kept too long is not used."""
    from microbuild import transport

    with unix_host.client() as c:
        for request in (
            lambda: c.get_sidecar(unix_sidecar),
            lambda: c.sync(unix_sidecar, to_tree="d" * 40, payload=b""),
        ):
            request()
            kept = _kept(c)
            assert isinstance(kept, http.client.HTTPConnection) and kept.sock is not None
            kept.sock.shutdown(socket.SHUT_RDWR)
            request()
            assert _kept(c) is not kept
        monkeypatch.setattr(transport, "KEEPALIVE_S", 0.0)
        before = _kept(c)
        c.get_sidecar(unix_sidecar)
        assert _kept(c) is not before


def test_unix_client_abandoning_a_stream_kills_the_command(
    unix_host: Host, unix_sidecar: str
) -> None:
    marker = ["sleep", "3007"]
    with unix_host.client() as c:
        events = c.exec(unix_sidecar, ["sh", "-c", f"echo started; exec {' '.join(marker)}"])
        assert next(events) == ("stdout", b"started\n")
        assert wait_for(lambda: bool(processes_with_argv(marker)), 10)
        events.close()  # the caller stops reading: the connection goes, and the command
        assert _kept(c) is None
        assert wait_for(lambda: not processes_with_argv(marker), 5), processes_with_argv(marker)
        assert run(c, unix_sidecar, ["true"]).exit_code == 0


def test_exec_of_a_command_that_closes_its_output_but_runs_on(
    unix_host: Host, unix_sidecar: str
) -> None:
    """Output over within the exec's first moments does not mean the command is: its result
    comes when it ends."""
    with unix_host.client() as c:
        started = time.monotonic()
        ran = run(c, unix_sidecar, ["sh", "-c", "echo early; exec >&- 2>&-; sleep 0.5; exit 3"])
        assert (ran.exit_code, ran.stdout) == (3, b"early\n")
        assert time.monotonic() - started >= 0.5
        slow = run(c, unix_sidecar, ["sh", "-c", "sleep 0.1; echo late; exit 4"])
        assert (slow.exit_code, slow.stdout) == (4, b"late\n")
