"""The `process` runtime: the same interface with no isolation, for macOS and locked-down CI.

A sidecar is a plain copy of its snapshot's layers in a directory; commands run as ordinary
child processes in their own session so that a timeout can kill the whole process group.
It says so loudly: nothing stops a command from reading or writing anything the user can.
Nor are there limits: `[sidecar] memory`, `pids`, `cpus` and `disk` are not enforced, so a
command can fill the host's disk (the state dir's filesystem) and its memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import termios
import time
from collections.abc import Mapping
from pathlib import Path

from microbuild.runtime.base import (
    WORKSPACE,
    ExecResult,
    Execution,
    Runtime,
    RuntimeError_,
    SidecarGone,
    SidecarHandle,
    SidecarSpec,
    SidecarStats,
    exit_code_of,
    remove_tree,
)

WARNING = (
    "process runtime: commands run unisolated, with your user's full access to files and network"
)


class ProcessRuntime(Runtime):
    name = "process"
    isolates = False

    def create(self, sidecar_id: str, spec: SidecarSpec) -> SidecarHandle:
        sdir = self.sidecars_dir / sidecar_id
        root = sdir / "root"
        if sdir.exists():
            shutil.rmtree(sdir)
        root.mkdir(parents=True)
        try:
            for layer in reversed(spec.layers):
                if not os.path.isdir(layer):
                    raise RuntimeError_(f"snapshot layer {layer} is missing; rebuild the snapshot")
                shutil.copytree(layer, root, symlinks=True, dirs_exist_ok=True)
            for sub in ("workspace", "home", "tmp"):
                (root / sub).mkdir(exist_ok=True)
        except BaseException:
            shutil.rmtree(sdir, ignore_errors=True)
            raise
        return SidecarHandle(id=sidecar_id, runtime=self.name, dir=str(sdir), spec=spec)

    def _root(self, handle: SidecarHandle) -> Path:
        root = Path(handle.dir) / "root"
        if not root.is_dir():
            raise SidecarGone(
                f"sidecar {handle.id} is gone (its directory vanished); "
                f"run `microbuild sidecar reset {handle.id}`"
            )
        return root

    def is_alive(self, handle: SidecarHandle) -> bool:
        return (Path(handle.dir) / "root").is_dir()

    def _suspended_flag(self, handle: SidecarHandle) -> Path:
        return Path(handle.dir) / "suspended"

    def suspend(self, handle: SidecarHandle) -> None:
        """Nothing runs between commands here, so suspending only records the state."""
        self._root(handle)
        self._suspended_flag(handle).touch()

    def resume(self, handle: SidecarHandle) -> None:
        self._root(handle)
        self._suspended_flag(handle).unlink(missing_ok=True)

    def destroy(self, handle: SidecarHandle) -> None:
        remove_tree(handle.dir)

    def stats(self, handle: SidecarHandle) -> SidecarStats:
        self._root(handle)
        return SidecarStats(memory_bytes=0, rss_bytes=0, cpu_s=0.0, processes=0)

    def workspace(self, handle: SidecarHandle) -> Path:
        return self._root(handle) / "workspace"

    def workspace_in_sidecar(self, handle: SidecarHandle) -> str:
        return str(Path(handle.dir) / "root" / "workspace")

    def home_in_sidecar(self, handle: SidecarHandle) -> str:
        return str(Path(handle.dir) / "root" / "home")

    def sidecar_env(self, handle: SidecarHandle, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = super().sidecar_env(handle, extra)
        env["TMPDIR"] = str(Path(handle.dir) / "root" / "tmp")
        return env

    def base_path(self) -> str:
        return os.environ.get("PATH", super().base_path())

    def freeze(self, handle: SidecarHandle, dest: Path) -> tuple[str, ...]:
        root = self._root(handle)
        for scratch in ("tmp", "home/.cache/pip"):
            shutil.rmtree(root / scratch, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        root.rename(dest)
        self.destroy(handle)
        return (str(dest),)

    def _workdir(self, handle: SidecarHandle, workspace: Path, cwd: str | None) -> Path:
        """Paths are the sidecar's: /workspace/... or relative to it; nothing else exists here."""
        if cwd is None:
            return workspace
        if cwd.startswith("/"):
            rel = os.path.relpath(cwd, WORKSPACE)
            if rel.startswith(".."):
                raise RuntimeError_(
                    f"cwd {cwd} is outside /workspace; the process runtime has no other paths"
                )
        else:
            rel = cwd
        workdir = (workspace / rel).resolve()
        if not workdir.is_relative_to(workspace.resolve()) or not workdir.is_dir():
            raise RuntimeError_(f"no directory {cwd} in sidecar {handle.id}")
        return workdir

    def exec(
        self,
        handle: SidecarHandle,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
        pty: bool = False,
        host_network: bool = False,
    ) -> Execution:
        if not argv:
            raise RuntimeError_("nothing to run: give a command")
        workspace = self.workspace(handle)
        self.resume(handle)
        workdir = self._workdir(handle, workspace, cwd)
        full_env = self.sidecar_env(handle, env)
        master, slave = os.openpty() if pty else (None, None)
        kwargs: dict[str, object] = {
            "env": full_env,
            "cwd": workdir,
            "stdout": slave if slave is not None else subprocess.PIPE,
            "stderr": slave if slave is not None else subprocess.PIPE,
            "start_new_session": True,
        }
        if slave is not None:
            stdin = None
            kwargs["preexec_fn"] = _take_terminal
        try:
            proc = subprocess.Popen(
                argv,
                stdin=slave
                if slave is not None
                else (subprocess.PIPE if stdin is not None else subprocess.DEVNULL),
                **kwargs,  # type: ignore[call-overload]
            )
        except (FileNotFoundError, PermissionError) as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            message = "command not found" if code == 127 else "permission denied"
            proc = subprocess.Popen(
                ["/bin/sh", "-c", f'echo "microbuild: {message}: $0" >&2; exit {code}', argv[0]],
                stdin=subprocess.DEVNULL,
                **kwargs,  # type: ignore[call-overload]
            )
        if stdin is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        started = time.monotonic()

        def kill_tree() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        def finish(status: int, timed_out: bool) -> ExecResult:
            kill_tree()
            code, sig = exit_code_of(status)
            return ExecResult(
                exit_code=code,
                signal=sig,
                timed_out=timed_out,
                oom_killed=False,
                duration_s=time.monotonic() - started,
            )

        if slave is not None:
            os.close(slave)
        return Execution(proc, timeout, kill_tree, finish, pty_master=master)

    def is_suspended(self, handle: SidecarHandle) -> bool:
        return self._suspended_flag(handle).exists()

    def collect_garbage(self, keep: set[str]) -> list[str]:
        removed = []
        if self.sidecars_dir.is_dir():
            for path in self.sidecars_dir.iterdir():
                if path.name not in keep and (path / "root").is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.name)
        return removed


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
