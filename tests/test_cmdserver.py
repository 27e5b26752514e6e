"""The command server: `validate` and `hook` handed by the launcher to a warm, real server
process that forks a worker per command (real sockets, fd passing, inotify, a real host)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git, write_project
from realproject import run_microbuild

from microbuild.cli import launcher

CONFIG = """
[snapshot]
setup = ["true"]

[sidecar]
runtime = "process"

[[check]]
name = "tests"
command = "sh -c 'if grep -q bad *.txt; then echo FAIL: bad in $(grep -l bad *.txt); exit 1; fi'"
"""


SERVED = {"MICROBUILD_COMMAND_SERVER": "1", "MICROBUILD_COMMAND_SERVER_IDLE_EXIT": "60"}


def cli(state: Path, cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_microbuild(state, cwd, *args, timeout=120, env=SERVED, stdin=stdin)


NAME = launcher.server_name()


def server_pid(state: Path) -> int | None:
    """The pid of the server answering at STATE/cli-HASH.sock, from its log's last start."""
    try:
        lines = (state / f"{NAME}.log").read_text().splitlines()
    except OSError:
        return None
    started = [line for line in lines if "listening on" in line]
    if not started:
        return None
    return int(started[-1].split("cmdserver[", 1)[1].split("]", 1)[0])


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone as far as we care.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def served(state_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    root = write_project(tmp_path / "proj", CONFIG, {"a.txt": "good\n"})
    first = cli(state_dir, root, "validate")  # in this process; starts a server for next time
    assert first.returncode == 0, first.stderr
    wait_for(lambda: (state_dir / f"{NAME}.sock").exists() and server_pid(state_dir))
    yield state_dir, root
    pid = server_pid(state_dir)
    if pid and alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 10)


def test_forwardable_reads_the_global_options() -> None:
    env = {"MICROBUILD_STATE_DIR": "/s"}
    assert launcher.forwardable(["validate"], env) == "/s"
    assert launcher.forwardable(["--state-dir", "/x", "validate", "--json"], env) == "/x"
    assert launcher.forwardable(["--state-dir=/y", "-C", "p", "hook", "claude"], env) == "/y"
    assert launcher.forwardable(["--host", "unix:/h", "validate"], env) == "/s"
    for argv in (["runs"], ["serve"], ["--version"], ["--help"], [], ["--state-dir"]):
        assert launcher.forwardable(argv, env) is None
    assert launcher.forwardable(["validate"], {**env, "MICROBUILD_COMMAND_SERVER": "0"}) is None


def test_validate_through_the_server_gives_what_a_fresh_process_gives(
    served: tuple[Path, Path],
) -> None:
    state, root = served
    pid = server_pid(state)
    assert pid and alive(pid)
    (root / "a.txt").write_text("bad\n")
    failed = cli(state, root, "validate", "--json")
    assert failed.returncode == 1, failed.stderr
    result = json.loads(failed.stdout)
    assert result["status"] == "failed" and "FAIL: bad in a.txt" in result["report"]
    (root / "b.txt").write_text("fine\n")
    (root / "a.txt").write_text("good again\n")
    passed = cli(state, root, "validate")
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith("PASSED")
    again = cli(state, root, "validate", "--json")
    assert json.loads(again.stdout)["cached"] is True
    # The same tree a process without the server computes: the watcher missed nothing.
    fresh = run_microbuild(
        state, root, "validate", "--json", timeout=120, env={"MICROBUILD_COMMAND_SERVER": "0"}
    )
    assert json.loads(fresh.stdout)["tree"] == json.loads(again.stdout)["tree"]
    assert server_pid(state) == pid and alive(pid)  # all of it went through one server
    log = (state / f"{NAME}.log").read_text()
    assert f"watching {root}" in log


def test_usage_errors_and_stdin_reach_the_worker(served: tuple[Path, Path]) -> None:
    state, root = served
    (root / "microbuild.toml").write_text(CONFIG + "\n[sidecar.nope]\n")
    broken = cli(state, root, "validate")
    assert broken.returncode == 2
    assert broken.stderr.startswith("error: microbuild.toml")
    (root / "microbuild.toml").write_text(CONFIG)
    # A hook answers from what it reads on stdin: garbage never blocks the agent.
    answered = cli(state, root, "hook", "claude", stdin="{not json")
    assert answered.returncode == 0 and answered.stdout == ""
    assert "stdin is not JSON" in (state / "hooks.log").read_text()


def test_a_bad_request_is_refused_and_the_server_goes_on(served: tuple[Path, Path]) -> None:
    state, root = served
    pid = server_pid(state)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(state / f"{NAME}.sock"))
        sock.sendall(b"\x00\x00\x00\x05hello")  # no descriptors, not JSON
        assert sock.recv(100) == b""
    assert "refused a request" in (state / f"{NAME}.log").read_text()
    assert cli(state, root, "validate").returncode == 0
    assert server_pid(state) == pid and pid is not None and alive(pid)


def test_a_stale_server_hands_over_to_a_new_one(served: tuple[Path, Path]) -> None:
    """microbuild's files changed since the server started: the request runs in the caller's
    process, the old server exits and a new one takes the socket."""
    state, root = served
    old = server_pid(state)
    assert old is not None
    module = Path(launcher.__file__)
    stat = module.stat()
    try:
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        (root / "a.txt").write_text("bad\n")
        out = cli(state, root, "validate")
        assert out.returncode == 1 and "FAIL: bad in a.txt" in out.stdout
    finally:
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    wait_for(lambda: not alive(old))
    wait_for(lambda: server_pid(state) not in (None, old))
    (root / "a.txt").write_text("good\n")
    assert cli(state, root, "validate").returncode == 0


def test_the_server_exits_when_its_state_dir_goes(served: tuple[Path, Path]) -> None:
    state, _root = served
    pid = server_pid(state)
    assert pid is not None
    (state / f"{NAME}.sock").unlink()
    wait_for(lambda: not alive(pid), 15)


def test_ctrl_c_reaches_the_worker(state_dir: Path, tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "slow",
        CONFIG.replace("sh -c 'if grep", "sh -c 'sleep 60; if grep"),
        {"a.txt": "good\n"},
    )
    (root / "a.txt").write_text("good, changed\n")
    git(root, "add", "-A")
    cli(state_dir, root, "hook", "claude", stdin="")  # starts a server, validates nothing
    wait_for(lambda: (state_dir / f"{NAME}.sock").exists() and server_pid(state_dir))
    env = {k: v for k, v in os.environ.items() if k != "MICROBUILD_STATE_DIR"} | SERVED
    proc = subprocess.Popen(
        [sys.executable, "-m", "microbuild", "--state-dir", str(state_dir), "validate"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
    finally:
        proc.kill()
        pid = server_pid(state_dir)
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)


def test_requests_survive_any_argument_and_environment() -> None:
    env = {"A": "1", "WEIRD": "x=y\n\tz", "EMPTY": "", "ÜNÏ": "ç"}
    argv = ["validate", "--json", "", "a b", "é"]
    body = launcher.encode_request("/bin/mb", "/w d", 0o027, argv, env)
    assert int.from_bytes(body[:4], "big") == len(body) - 4
    assert launcher.decode_request(body[4:]) == ("/bin/mb", "/w d", 0o027, argv, env)
    for bad in (b"", b"a\0b\0c", b"a\0b\x0022\0x\0nine", b"a\0b\x0022\0" + b"9"):
        with pytest.raises(ValueError):
            launcher.decode_request(bad)


def _fake_server(state: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(state / f"{NAME}.sock"))
    sock.listen(4)
    return sock


def test_a_server_that_never_answers_is_an_environment_error(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command is not run here instead: the server could still start it (twice)."""
    monkeypatch.setattr(launcher, "ANSWER_TIMEOUT_S", 0.5)
    with _fake_server(state_dir):
        assert launcher.forward(str(state_dir), ["validate"]) == launcher.EXIT_ENVIRONMENT
    assert "did not answer in 0 s" in capsys.readouterr().err


def test_a_server_that_hangs_up_runs_the_command_here_or_fails_once_it_started(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    def serve(sock: socket.socket, answer: bytes) -> None:
        conn, _ = sock.accept()
        with conn:
            for fd in socket.recv_fds(conn, 65536, 3)[1]:
                os.close(fd)
            conn.sendall(answer)

    with _fake_server(state_dir) as sock:
        thread = threading.Thread(target=serve, args=(sock, b""))
        thread.start()
        assert launcher.forward(str(state_dir), ["validate"]) is None  # nothing started
        thread.join()
        thread = threading.Thread(target=serve, args=(sock, b"pid 4194304\n"))
        thread.start()
        assert launcher.forward(str(state_dir), ["validate"]) == launcher.EXIT_ENVIRONMENT
        thread.join()
    assert "stopped before the command ended" in capsys.readouterr().err
