"""The microbuild behind a stop hook, in its own process so that it outlives the hook.

An agent kills its hook at the hook timeout, and the host cancels a microbuild whose client goes
away. So the hook never runs the microbuild itself: it starts this worker (detached, in its own
session, holding none of the agent's pipes) and waits for its result file up to the hook's time
budget. When the budget runs out the hook lets the agent stop; the worker carries on, and the
next stop on the same tree reads its result instead of starting over.

Files, under ``STATE/hooks/<project key>/``: ``pending-<tree>.pid`` while a worker runs,
``result-<tree>.json`` when it is done, ``run.lock`` held by the worker running the project's
microbuild (one at a time: they share the project's sidecar).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLL_S = 0.05
WORKER_MODULE = "microbuild.hooks.worker"


def project_dir(state: Path, root: Path) -> Path:
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    path = state / "hooks" / key
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def result_path(state: Path, root: Path, tree: str) -> Path:
    return project_dir(state, root) / f"result-{tree}.json"


def pending_path(state: Path, root: Path, tree: str) -> Path:
    return project_dir(state, root) / f"pending-{tree}.pid"


@dataclass(frozen=True)
class Outcome:
    """`status`: passed / failed / error (the run's own), `pending` (still running when the
    budget ran out), or `unavailable` (no run: host unreachable, worker crashed, bad config)."""

    status: str
    report: str = ""
    message: str = ""
    run: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "report": self.report,
            "message": self.message,
            "run": self.run,
        }


def _worker_pid(path: Path) -> int | None:
    """The pid in a pending file, if that process is still one of our workers."""
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if WORKER_MODULE.encode() in cmdline else None


def _read_result(path: Path) -> Outcome | None:
    try:
        data = json.loads(path.read_text())
        return Outcome(
            str(data["status"]),
            str(data.get("report", "")),
            str(data.get("message", "")),
            str(data.get("run", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _spawn(state: Path, root: Path, tree: str, host: str | None, log: Path) -> int:
    argv = [sys.executable, "-m", WORKER_MODULE, str(state), str(root), tree]
    if host:
        argv += ["--host", host]
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            close_fds=True,
            cwd=root,
        )
    return proc.pid


def _retire_others(folder: Path, tree: str) -> None:
    """Workers and results for trees the agent has moved on from: stop them, drop them."""
    for pending in folder.glob("pending-*.pid"):
        if pending.name == f"pending-{tree}.pid":
            continue
        pid = _worker_pid(pending)
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        pending.unlink(missing_ok=True)
    for result in folder.glob("result-*.json"):
        if result.name != f"result-{tree}.json":
            result.unlink(missing_ok=True)


def run_within(
    state: Path, root: Path, tree: str, host: str | None, budget_s: float, log: Path
) -> Outcome:
    """The microbuild's outcome for `tree`, waiting at most `budget_s` for it: a finished
    result on file, else the worker already running for this tree, else a new worker."""
    deadline = time.monotonic() + max(budget_s, 0.0)
    folder = project_dir(state, root)
    result = result_path(state, root, tree)
    pending = pending_path(state, root, tree)
    with open(folder / "spawn.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = _read_result(result)
        if done is not None:
            result.unlink(missing_ok=True)
            return done
        pid = _worker_pid(pending)
        if pid is None:
            _retire_others(folder, tree)
            pid = _spawn(state, root, tree, host, log)
            pending.write_text(f"{pid}\n")
    while True:
        done = _read_result(result)
        if done is not None:
            result.unlink(missing_ok=True)
            return done
        if not _alive(pid):
            done = _read_result(result)
            if done is not None:
                result.unlink(missing_ok=True)
                return done
            return Outcome(
                "unavailable",
                message=f"the microbuild worker (pid {pid}) ended without a result; see {log}",
            )
        if time.monotonic() >= deadline:
            return Outcome("pending", message=f"worker pid {pid}")
        time.sleep(POLL_S)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        # Our own child: reap it, or it lingers as a zombie that still looks alive.
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def work(state: Path, root: Path, tree: str, host: str | None) -> Outcome:
    """Run the project's microbuild on `tree` (one worker per project at a time)."""
    from microbuild.client import HostError, connect
    from microbuild.config import find_project
    from microbuild.errors import ConfigError, SetupFailed, SnapshotError
    from microbuild.runtime.base import RuntimeError_
    from microbuild.store import StoreError
    from microbuild.validate import validate_project

    with open(project_dir(state, root) / "run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            project = find_project(root)
            with connect(host, state) as client:
                validation = validate_project(client, project, tree=tree)
        except SetupFailed as exc:
            return Outcome("error", report=exc.details(), message="the snapshot setup failed")
        except (SnapshotError, RuntimeError_) as exc:
            return Outcome("error", report=f"environment error: {exc}", message=str(exc))
        except (ConfigError, HostError, StoreError, OSError) as exc:
            return Outcome("unavailable", message=str(exc))
        return Outcome(validation.status, validation.report, run=str(validation.run.get("id", "")))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}")
    parser.add_argument("state", type=Path)
    parser.add_argument("root", type=Path)
    parser.add_argument("tree")
    parser.add_argument("--host")
    args = parser.parse_args(argv)
    state, root, tree = args.state, args.root, args.tree
    try:
        outcome = work(state, root, tree, args.host)
    except Exception as exc:  # the hook waiting on us must get an answer, whatever happened
        outcome = Outcome("unavailable", message=f"{type(exc).__name__}: {exc}")
    _write_atomically(result_path(state, root, tree), outcome.to_json())
    pending = pending_path(state, root, tree)
    if _worker_pid(pending) == os.getpid():
        pending.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
