"""The `microbuild` executable: hands `validate` and `hook` to the warm command server when one
runs for this state dir, else runs the command in this process (and starts a server for next
time).

An agent calls these after every stop; importing click, pydantic and the rest costs more than
the work itself. So, like Mercurial's chg, this module imports only C modules of the standard
library and `signal` (`_socket`, as `socket` imports selectors and more; the console script
imports `re`, and so enum, anyway), passes its argv, cwd, environment and stdin/stdout/stderr
descriptors to the server (SCM_RIGHTS), forwards signals to the worker the server forks for
it, and exits with that worker's status. MICROBUILD_COMMAND_SERVER=0 turns it off.

The request is NUL-separated (no NUL can be in an argument, a path or the environment):
`argv0, cwd, umask (octal), len(argv), *argv, *KEY=VALUE`, after its length as 4 bytes.
"""

from __future__ import annotations

import _socket
import os
import signal
import sys
import zlib

FORWARDED = frozenset({"validate", "hook"})
# Options of the `microbuild` group that take a value (see microbuild.cli.main).
VALUE_OPTIONS = frozenset({"--state-dir", "-C", "--project", "--host"})
EXIT_ENVIRONMENT = 3
ANSWER_TIMEOUT_S = 30.0
RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def server_name() -> str:
    """One server per state dir and Python (two installs sharing a state dir get one each)."""
    return f"cli-{zlib.crc32(os.fsencode(sys.executable)):08x}"


def encode_request(argv0: str, cwd: str, umask: int, argv: list[str], env: dict[str, str]) -> bytes:
    fields = [argv0, cwd, f"{umask:o}", str(len(argv)), *argv]
    fields += [f"{k}={v}" for k, v in env.items()]
    body = b"\0".join(os.fsencode(f) for f in fields)
    return len(body).to_bytes(4, "big") + body


def decode_request(body: bytes) -> tuple[str, str, int, list[str], dict[str, str]]:
    """The fields of a request body (ValueError when it is not one)."""
    fields = [os.fsdecode(f) for f in body.split(b"\0")]
    if len(fields) < 4 or not fields[3].isdigit():
        raise ValueError("a malformed request")
    count = int(fields[3])
    if len(fields) < 4 + count:
        raise ValueError("a truncated request")
    env = dict(f.split("=", 1) for f in fields[4 + count :] if "=" in f)
    return fields[0], fields[1], int(fields[2], 8), fields[4 : 4 + count], env


def main() -> None:
    argv = sys.argv[1:]
    state = forwardable(argv, os.environ)
    if state is not None:
        code = forward(state, argv)
        if code is not None:
            sys.exit(code)
    from microbuild.cli.main import main as run

    run()


def forwardable(argv: list[str], env: os._Environ[str] | dict[str, str]) -> str | None:
    """The state dir whose server should run this command, or None: run it here."""
    if env.get("MICROBUILD_COMMAND_SERVER", "1") == "0" or sys.platform != "linux":
        return None
    state = env.get("MICROBUILD_STATE_DIR") or None
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in VALUE_OPTIONS:
            if not eq:
                i += 1
                if i >= len(argv):
                    return None
                value = argv[i]
            if name == "--state-dir":
                state = value
            i += 1
            continue
        if arg.startswith("-"):
            return None  # --help, --version, or a mistake: click says what it means
        if arg not in FORWARDED:
            return None
        break
    else:
        return None
    if state:
        return os.path.abspath(state)
    if os.geteuid() == 0:
        return "/var/lib/microbuild"
    xdg = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "microbuild")


def forward(state: str, argv: list[str]) -> int | None:
    """Run the command in the server: its exit status, or None when no server took it."""
    path = os.path.join(state, server_name() + ".sock")
    if len(os.fsencode(path)) >= 108:
        return None  # longer than a Unix socket's address may be: run it here
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            start_server(state)
            return None
        payload = encode_request(sys.argv[0], os.getcwd(), _umask(), argv, dict(os.environ))
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        try:
            sent = sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            while sent < len(payload):
                sent += sock.send(payload[sent:])
        except OSError:
            return None  # a closed stdin/stdout/stderr, say: run it here
        return _await(sock, state)
    finally:
        sock.close()


def _await(sock: _socket.socket, state: str) -> int | None:
    buffer = b""
    worker = 0

    def relay(signum: int, _frame: object) -> None:
        if worker:
            try:  # noqa: SIM105 - contextlib is one import more on every call
                os.kill(worker, signum)
            except OSError:
                pass  # it ended already

    sock.settimeout(ANSWER_TIMEOUT_S)  # until the server says it forked a worker
    while True:
        try:
            chunk = sock.recv(4096)
        except InterruptedError:
            continue
        except TimeoutError:
            # Not run here instead: the server may still start it, and it would run twice.
            sys.stderr.write(
                f"error: the microbuild command server did not answer in {ANSWER_TIMEOUT_S:.0f} "
                "s; set MICROBUILD_COMMAND_SERVER=0 to bypass it (its log is in the state dir)\n"
            )
            return EXIT_ENVIRONMENT
        except OSError:
            chunk = b""
        if not chunk:
            if worker:
                sys.stderr.write(
                    "error: the microbuild command server stopped before the command ended; "
                    "run it again, or set MICROBUILD_COMMAND_SERVER=0 to bypass the server\n"
                )
                return EXIT_ENVIRONMENT
            return None
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            word, _, value = line.decode().partition(" ")
            if word == "pid":
                worker = int(value)
                sock.settimeout(None)
                for signum in RELAYED:
                    signal.signal(signum, relay)
            elif word == "exit":
                return int(value)
            elif word == "stale":
                start_server(state)
                return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def start_server(state: str) -> None:
    """Start a command server for `state` in the background; it is ready for the next call."""
    if not os.path.isdir(state):
        return  # the command itself makes the state dir; the next call starts a server
    import subprocess

    log = os.path.join(state, server_name() + ".log")
    try:
        with open(log, "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "microbuild.cli.cmdserver", state],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
    except OSError:
        pass
