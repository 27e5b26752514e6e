"""The `namespace` runtime: Linux namespaces + overlayfs + cgroups, no daemon in between.

A sidecar is an overlayfs writable layer over its snapshot's layers and a skeleton root into
which the host's system directories are bind-mounted read-only. Its init process (a tiny shell
loop that reaps orphans) holds the mount, pid, ipc, uts and (unless the network is shared) net
namespaces alive between commands; commands join them with setns and a fork, or, through the
zygote, are started by the sidecar's exec helper, which joined them once (see zygote.py).
Each command runs in a child cgroup of the sidecar's (freezer and memory), which kills its
whole tree at its end; those are kept empty between commands and reused.

A sidecar's root is the host's uid 0, with a reduced capability bounding set, no_new_privs, a
session keyring of its own and a seccomp filter (linux.confine, seccomp.py), on a nosuid,nodev
root, masked host secrets and a 0700 state dir (layers.py). There is no user namespace (root
mapped to an unprivileged host uid), though it would be stronger, because: the host's system
directories, bind-mounted read-only, and every existing snapshot layer (written by real root)
would appear owned by the overflow uid inside unless each is an idmapped mount, and overlayfs
over idmapped layers needs Linux >= 5.19 (microbuild supports older kernels and cgroup v1);
layers written from then on would be owned by the mapped uid, so snapshots of both kinds would
need telling apart or rebuilding; /dev nodes cannot be made inside one (bind-mounted instead),
and cgroups would have to be delegated to the mapped uid. The filter refuses the attacks a
user namespace would contain that capabilities do not (keyrings, bpf, io_uring, new user
namespaces), and the state dir and frozen layers keep setuid files from the host's users.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from microbuild.runtime import cgroup as cg
from microbuild.runtime import disk as disks
from microbuild.runtime import linux, seccomp
from microbuild.runtime.base import (
    DEFAULT_PATH,
    WORKSPACE,
    ExecResult,
    Execution,
    ProcessLike,
    Runtime,
    RuntimeError_,
    RuntimeUnavailable,
    SidecarGone,
    SidecarHandle,
    SidecarSpec,
    SidecarStats,
    exit_code_of,
    remove_tree,
)
from microbuild.runtime.layers import secure_state_dir, strip_privileged_bits
from microbuild.runtime.zygote import HelperGone, SidecarHelper, Zygote, ZygoteProcess

HOST_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt")
SKELETON_DIRS = ("proc", "sys", "dev", "tmp", "root", "home", "run", "mnt", "var/tmp", "workspace")
MASKED_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")
MASKED_DIRS = ("/etc/ssh", "/etc/sudoers.d")
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
PROC_MASKED = ("kcore", "keys", "timer_list", "sched_debug")
DEV_NODES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
NAMESPACES = ("ipc", "uts", "net", "pid", "mnt")
# pid 1 of a sidecar: the shell's `wait` reaps every child, orphans included.
INIT_SCRIPT = "while :; do sleep 2147483647 & wait; done"
OVERLAY_OPTIONS = "index=off,xino=off,redirect_dir=off,metacopy=off"
# Empty per-command cgroups kept per sidecar for its next commands (more only when that many
# commands ran at once).
IDLE_EXEC_GROUPS = 4


@functools.cache
def _python_prefix() -> str:
    return os.path.realpath(sys.base_prefix)


class NamespaceRuntime(Runtime):
    name = "namespace"
    isolates = True

    def __init__(
        self, state_dir: Path, cgroup_root: cg.Cgroup | None = None, zygote: bool = False
    ) -> None:
        super().__init__(state_dir)
        self._zygote = Zygote() if zygote else None
        problem = unavailable_reason()
        if problem:
            raise RuntimeUnavailable(problem)
        if any(c in str(state_dir) for c in ",:"):
            raise RuntimeUnavailable(
                f"state dir {state_dir} contains ',' or ':', which overlayfs cannot take; "
                "set MICROBUILD_STATE_DIR to another path"
            )
        secure_state_dir(state_dir)
        # Raw BPF, built once: every command gets it (see seccomp.py, linux.confine).
        self._seccomp = seccomp.program()
        # Each state dir gets its own cgroup subtree, so that two hosts never touch each other's.
        scope = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
        try:
            self.cgroup_root = cgroup_root or cg.sidecar_root(scope=scope)
        except (cg.CgroupError, OSError) as exc:
            raise RuntimeUnavailable(f"cgroups unavailable: {exc}") from exc
        self._last_cap = linux.last_capability()
        self._exec_seq = 0
        self._layouts: dict[tuple[object, ...], tuple[str, list[tuple[str, str]]]] = {}
        # Exec helpers (see zygote.py), per sidecar id, with the (pid, start) of the init
        # they were made for: a reset sidecar keeps its id but not its init.
        self._helpers: dict[str, tuple[tuple[int, int], SidecarHelper]] = {}
        self._helpers_lock = threading.Lock()
        # Empty per-command cgroups for the next commands, per sidecar (id, init pid, start).
        self._exec_groups: dict[tuple[str, int | None, int | None], list[cg.Cgroup]] = {}
        self._exec_groups_lock = threading.Lock()
        self._disks = disks.DiskPool(state_dir)
        self._disks_checked = False

    def close(self) -> None:
        with self._helpers_lock:
            helpers = [helper for _key, helper in self._helpers.values()]
            self._helpers.clear()
        for helper in helpers:
            helper.close()
        if self._zygote is not None:
            self._zygote.close()

    def _helper(self, handle: SidecarHandle) -> SidecarHelper | None:
        """The sidecar's exec helper, made on first use; None where there can be none."""
        if self._zygote is None or handle.init_pid is None or handle.init_start is None:
            return None
        if not hasattr(os, "pidfd_open"):
            return None
        key = (handle.init_pid, handle.init_start)
        stale = None
        with self._helpers_lock:
            entry = self._helpers.get(handle.id)
            if entry is not None and entry[0] == key and entry[1].alive():
                return entry[1]
            if entry is not None:
                stale = self._helpers.pop(handle.id)[1]
            helper = self._zygote.helper(
                init_pid=handle.init_pid,
                init_start=handle.init_start,
                join_files=self._group(handle).join_files(),
                last_cap=self._last_cap,
                namespaces=list(NAMESPACES),
                seccomp=self._seccomp,
            )
            self._helpers[handle.id] = (key, helper)
        if stale is not None:
            stale.close()
        return helper

    def _take_exec_group(self, handle: SidecarHandle, group: cg.Cgroup) -> cg.Cgroup:
        """An empty cgroup for one command under the sidecar's: from the pool, or made now.

        Only the freezer (to kill the tree) and memory (to attribute OOM kills) need one per
        command; limits and accounting stay on the sidecar's own cgroup. Reusing them saves
        two mkdirs and two rmdirs per command, and each removed memory cgroup that had
        charged pages (files a command wrote) lingered in the kernel as a dying one."""
        key = (handle.id, handle.init_pid, handle.init_start)
        while True:
            with self._exec_groups_lock:
                idle = self._exec_groups.get(key)
                exec_group = idle.pop() if idle else None
            if exec_group is None:
                break
            if exec_group.exists():
                return exec_group
        self._exec_seq += 1
        exec_group = group.child(
            f"x{os.getpid()}-{self._exec_seq}-{time.monotonic_ns()}", only=("freezer", "memory")
        )
        exec_group.create()
        return exec_group

    def _give_back_exec_group(self, handle: SidecarHandle, exec_group: cg.Cgroup) -> None:
        """Once its command is over: kill whatever it left behind (the whole tree ends with
        the command), then keep the empty cgroup for the next one, or remove it."""
        with contextlib.suppress(cg.CgroupError, OSError):
            if exec_group.pids():
                exec_group.kill_all()
            if not exec_group.pids() and not exec_group.is_frozen():
                key = (handle.id, handle.init_pid, handle.init_start)
                with self._exec_groups_lock:
                    idle = self._exec_groups.setdefault(key, [])
                    if len(idle) < IDLE_EXEC_GROUPS:
                        idle.append(exec_group)
                        return
        with contextlib.suppress(cg.CgroupError, OSError):
            exec_group.remove()

    def _forget_exec_groups(self, sidecar_id: str) -> None:
        """The pool's cgroups of a sidecar about to go: removed with the sidecar's cgroup."""
        with self._exec_groups_lock:
            for key in [k for k in self._exec_groups if k[0] == sidecar_id]:
                del self._exec_groups[key]

    def _drop_helper(self, sidecar_id: str) -> None:
        with self._helpers_lock:
            entry = self._helpers.pop(sidecar_id, None)
        if entry is not None:
            entry[1].close()

    # -- layout ------------------------------------------------------------------------------

    def _exposed(self, spec: SidecarSpec) -> list[tuple[str, str]]:
        """(host path, path in sidecar) pairs bind-mounted read-only, in mount order."""
        binds: list[tuple[str, str]] = []
        if spec.rootfs is None:
            for name in HOST_SYSTEM_DIRS:
                host = f"/{name}"
                if os.path.isdir(host) and not os.path.islink(host):
                    binds.append((host, host))
            prefix = _python_prefix()
            if not any(prefix == h or prefix.startswith(h + "/") for h, _ in binds):
                binds.append((prefix, prefix))
        for path in spec.expose:
            real = os.path.realpath(path)
            if os.path.exists(real):
                binds.append((real, path))
        if spec.network == "host":
            resolv = os.path.realpath("/etc/resolv.conf")
            if not resolv.startswith("/etc/") and os.path.exists(resolv):
                binds.append((os.path.dirname(resolv), os.path.dirname(resolv)))
        return binds

    def _skeleton(self, spec: SidecarSpec) -> str:
        """The bottom layer: empty mount points and the host's top-level symlinks.

        Built once per set of mount points; content-addressed so it is never edited in place.
        """
        if spec.rootfs is not None:
            return spec.rootfs
        binds = self._exposed(spec)
        links = {
            name: os.readlink(f"/{name}") for name in HOST_SYSTEM_DIRS if os.path.islink(f"/{name}")
        }
        key = repr((sorted(links.items()), [b[1] for b in binds], SKELETON_DIRS))
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = self.state_dir / "skeletons" / digest
        if path.is_dir():
            return str(path)
        tmp = path.with_name(f"{digest}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in SKELETON_DIRS:
            (tmp / name).mkdir(parents=True, exist_ok=True)
        (tmp / "tmp").chmod(0o1777)
        (tmp / "var/tmp").chmod(0o1777)
        for name, target in links.items():
            (tmp / name).symlink_to(target)
        for _, inside in binds:
            (tmp / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        return str(path)

    # -- lifecycle ---------------------------------------------------------------------------

    def _layout(self, spec: SidecarSpec) -> tuple[str, list[tuple[str, str]]]:
        """(bottom layer, bind mounts) for a spec; computed once per distinct layout."""
        key = (spec.rootfs, spec.expose, spec.network)
        if key not in self._layouts:
            binds = self._exposed(spec)
            self._layouts[key] = (self._skeleton(spec), binds)
        bottom, binds = self._layouts[key]
        if not os.path.isdir(bottom):
            del self._layouts[key]
            if spec.rootfs is not None:
                raise RuntimeError_(f"rootfs {spec.rootfs} is not a directory on this host")
            return self._layout(spec)
        return bottom, binds

    def create(self, sidecar_id: str, spec: SidecarSpec) -> SidecarHandle:
        sdir = self.sidecars_dir / sidecar_id
        for layer in spec.layers:
            if not os.path.isdir(layer):
                raise RuntimeError_(f"snapshot layer {layer} is missing; rebuild the snapshot")
        bottom, binds = self._layout(spec)
        lower = ":".join([*spec.layers, bottom])
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / "root").mkdir(exist_ok=True)
        upper_fs = sdir
        try:
            if spec.disk is not None:
                if not self._disks_checked:
                    problem = disks.unavailable_reason()
                    if problem:
                        raise disks.DiskError(
                            f"cannot limit the sidecar's disk: {problem}; set [sidecar] disk "
                            '= "none" in microbuild.toml to run without a disk limit'
                        )
                    self._disks_checked = True
                upper_fs = disks.mount(sdir, spec.disk, self._disks)
            for sub in ("upper", "work"):
                (upper_fs / sub).mkdir(exist_ok=True)
        except BaseException:
            self._remove_dir(sdir)
            raise
        group = self.cgroup_root.child(sidecar_id)
        try:
            try:
                group.create()
            except FileNotFoundError:  # a concurrent destroy pruned the empty root just now
                group.create()
            group.set_limits(spec.limits)
        except Exception as exc:
            with contextlib.suppress(Exception):
                group.remove()
            self._remove_dir(sdir)
            raise RuntimeError_(f"cannot set up the sidecar's cgroup: {exc}") from exc
        handle = SidecarHandle(
            id=sidecar_id, runtime=self.name, dir=str(sdir), spec=spec, cgroup=group.to_json()
        )
        overlay = (
            f"lowerdir={lower},upperdir={upper_fs / 'upper'},workdir={upper_fs / 'work'},"
            f"{OVERLAY_OPTIONS}"
        )
        try:
            args = (
                sidecar_id,
                str(sdir / "root"),
                overlay,
                binds,
                group.join_files(),
                spec.network,
                spec.tmp_size,
            )
            pid = self._zygote.spawn_init(*args) if self._zygote else spawn_init(*args)
        except BaseException:
            with contextlib.suppress(Exception):
                group.remove()
            self._remove_dir(sdir)
            raise
        handle.init_pid = pid
        handle.init_start = linux.process_start_time(pid)
        return handle

    def _remove_dir(self, sdir: Path) -> None:
        """A sidecar's directory gone, its disk (if any) unmounted and detached first."""
        with contextlib.suppress(Exception):
            self._release_disk(sdir)
        shutil.rmtree(sdir, ignore_errors=True)

    def _release_disk(self, sdir: Path) -> None:
        """Unmount and detach the sidecar's disk; its image is deleted in the background."""
        disks.release(sdir)
        image = sdir / disks.IMAGE
        if image.exists():
            self._disks.discard(image)

    @staticmethod
    def _upper(handle: SidecarHandle) -> Path:
        """The writable layer: in the sidecar's disk when it has one."""
        sdir = Path(handle.dir)
        if handle.spec.disk is not None:
            return sdir / disks.MOUNT_DIR / "upper"
        return sdir / "upper"

    def _group(self, handle: SidecarHandle) -> cg.Cgroup:
        if handle.cgroup is None:
            raise SidecarGone(f"sidecar {handle.id} has no cgroup")
        return cg.from_json(handle.cgroup)

    def is_alive(self, handle: SidecarHandle) -> bool:
        if handle.init_pid is None:
            return False
        start = linux.process_start_time(handle.init_pid)
        return start is not None and start == handle.init_start

    def _require_alive(self, handle: SidecarHandle) -> None:
        if not self.is_alive(handle):
            raise SidecarGone(
                f"sidecar {handle.id} is dead (its init process is gone); "
                f"run `microbuild sidecar reset {handle.id}`"
            )

    def suspend(self, handle: SidecarHandle) -> None:
        self._require_alive(handle)
        self._group(handle).freeze()

    def resume(self, handle: SidecarHandle) -> None:
        self._require_alive(handle)
        self._group(handle).thaw()

    def destroy(self, handle: SidecarHandle) -> None:
        self._forget_exec_groups(handle.id)
        group = self._group(handle) if handle.cgroup else None
        if group is not None and group.exists():
            with contextlib.suppress(OSError):
                group.thaw()
        self._drop_helper(handle.id)  # thawed first: it may be inside, mid-request
        if self.is_alive(handle):
            assert handle.init_pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.init_pid, signal.SIGKILL)
        if group is not None:
            group.remove()
            self.cgroup_root.prune_empty()
        if handle.init_pid is not None:
            _wait_gone(handle.init_pid, handle.init_start)
        self._release_disk(Path(handle.dir))
        _remove_tree(Path(handle.dir))

    def stats(self, handle: SidecarHandle) -> SidecarStats:
        group = self._group(handle)
        pids = group.pids()
        rss = 0
        for pid in pids:
            rss += _rss_bytes(pid)
        return SidecarStats(
            memory_bytes=group.memory_usage(),
            rss_bytes=rss,
            cpu_s=group.cpu_usage_s(),
            processes=len(pids),
        )

    def workspace(self, handle: SidecarHandle) -> Path:
        self._require_alive(handle)
        return Path(f"/proc/{handle.init_pid}/root{WORKSPACE}")

    def workspace_in_sidecar(self, handle: SidecarHandle) -> str:
        return WORKSPACE

    def _changes_root(self, handle: SidecarHandle) -> Path:
        """Only the writable layer: what the sidecar wrote, never the snapshot's files."""
        return self._upper(handle) / WORKSPACE.lstrip("/")

    def home_in_sidecar(self, handle: SidecarHandle) -> str:
        return "/root"

    def base_path(self) -> str:
        return f"{_python_prefix()}/bin:{DEFAULT_PATH}"

    def freeze(self, handle: SidecarHandle, dest: Path) -> tuple[str, ...]:
        upper = self._upper(handle)
        self._kill_processes(handle)
        _wait_gone(handle.init_pid, handle.init_start)
        strip_privileged_bits(upper)
        for scratch in ("tmp", "var/tmp", "run", "dev", "proc", "sys", "root/.cache/pip"):
            path = upper / scratch
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if handle.spec.disk is None:
            upper.rename(dest)
        else:
            _copy_layer(upper, dest)  # out of the sidecar's own filesystem, which goes away
        self.destroy(handle)
        return (str(dest), *handle.spec.layers)

    def _kill_processes(self, handle: SidecarHandle) -> None:
        group = self._group(handle)
        with contextlib.suppress(OSError):
            group.thaw()
        self._drop_helper(handle.id)
        group.kill_all()

    # -- exec --------------------------------------------------------------------------------

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
        self._require_alive(handle)
        group = self._group(handle)
        if group.is_frozen():
            group.thaw()
        pid = handle.init_pid
        workdir = cwd or WORKSPACE
        if not workdir.startswith("/"):
            workdir = f"{WORKSPACE}/{workdir}"
        if not os.path.isdir(f"/proc/{pid}/root{workdir}"):
            raise RuntimeError_(f"no directory {workdir} in sidecar {handle.id}")
        exec_group = self._take_exec_group(handle, group)
        full_env = self.sidecar_env(handle, env)
        exec_oom_before = exec_group.oom_kills()
        oom_before = group.oom_kills()
        cpu_before = group.cpu_usage_s()
        master, slave = os.openpty() if pty else (None, None)
        if pty:
            full_env["TERM"] = (env or {}).get("TERM", "xterm-256color")
        assert pid is not None
        start = self._start_via_zygote if self._zygote is not None else self._start_via_fork
        namespaces = [ns for ns in NAMESPACES if not (host_network and ns == "net")]
        try:
            proc = start(handle, pid, exec_group, workdir, argv, full_env, stdin, slave, namespaces)
        except BaseException as exc:
            self._give_back_exec_group(handle, exec_group)
            if master is not None:
                os.close(master)
            if isinstance(exc, (subprocess.SubprocessError, OSError)):
                raise SidecarGone(f"cannot enter sidecar {handle.id}: {exc}") from exc
            raise
        finally:
            if slave is not None:
                os.close(slave)
        if master is not None and stdin is not None:
            with contextlib.suppress(OSError):
                os.write(master, stdin)
        if stdin is not None and proc.stdin is not None:
            # A command may exit without reading its input: that is its business.
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        started = time.monotonic()
        # The command's cgroup goes back to the pool at the end, for another command: from
        # then on, killing "this command's tree" must not touch it.
        owned = threading.Lock()
        released = False

        def kill_tree() -> None:
            with owned:
                if not released:
                    with contextlib.suppress(cg.CgroupError, OSError):
                        exec_group.kill_all()

        def finish(status: int, timed_out: bool) -> ExecResult:
            nonlocal released
            oom = False
            cpu = None
            with contextlib.suppress(OSError, ValueError):
                # v1 counts an OOM kill in the victim's own cgroup, v2 also in its ancestors.
                oom = exec_group.oom_kills() > exec_oom_before or group.oom_kills() > oom_before
            with owned:
                released = True
                self._give_back_exec_group(handle, exec_group)
            code, sig = exit_code_of(status)
            with contextlib.suppress(OSError, ValueError):
                cpu = group.cpu_usage_s() - cpu_before
            full = None
            if code != 0 and handle.spec.disk is not None and disks.is_full(Path(handle.dir)):
                full = handle.spec.disk
            return ExecResult(
                exit_code=code,
                signal=sig,
                timed_out=timed_out,
                oom_killed=oom,
                duration_s=time.monotonic() - started,
                cpu_s=cpu,
                disk_limit_reached=full,
            )

        return Execution(proc, timeout, kill_tree, finish, pty_master=master)

    def _start_via_fork(
        self,
        handle: SidecarHandle,
        pid: int,
        exec_group: cg.Cgroup,
        workdir: str,
        argv: list[str],
        full_env: dict[str, str],
        stdin: bytes | None,
        slave: int | None,
        namespaces: list[str],
    ) -> ProcessLike:
        ns_fds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in namespaces]
        preexec = _enter_sidecar(
            exec_group.join_files(),
            ns_fds,
            workdir,
            self._last_cap,
            self._seccomp,
            controlling_tty=slave is not None,
        )

        def popen(args: list[str], stdin_mode: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                args,
                env=full_env,
                stdin=slave if slave is not None else stdin_mode,
                stdout=slave if slave is not None else subprocess.PIPE,
                stderr=slave if slave is not None else subprocess.PIPE,
                preexec_fn=preexec,
                close_fds=True,
            )

        try:
            return popen(
                argv, subprocess.PIPE if stdin is not None and slave is None else subprocess.DEVNULL
            )
        except (FileNotFoundError, PermissionError) as exc:
            code, message = (
                (127, "command not found")
                if isinstance(exc, FileNotFoundError)
                else (126, "permission denied")
            )
            script = f'echo "microbuild: {message}: $0" >&2; exit {code}'
            return popen(["/bin/sh", "-c", script, argv[0]], subprocess.DEVNULL)
        finally:
            for fd in ns_fds:
                os.close(fd)

    def _start_via_zygote(
        self,
        handle: SidecarHandle,
        pid: int,
        exec_group: cg.Cgroup,
        workdir: str,
        argv: list[str],
        full_env: dict[str, str],
        stdin: bytes | None,
        slave: int | None,
        namespaces: list[str],
    ) -> ProcessLike:
        assert self._zygote is not None
        theirs: list[int] = []
        ours: list[int] = []
        stdin_w: int | None = None
        out_r: int | None = None
        err_r: int | None = None
        try:
            if slave is not None:
                child_fds = (slave, slave, slave)
            else:
                if stdin is not None:
                    stdin_r, stdin_w = os.pipe()
                    ours.append(stdin_w)
                else:
                    stdin_r = os.open(os.devnull, os.O_RDONLY)
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                theirs.extend((stdin_r, out_w, err_w))
                ours.extend((out_r, err_r))
                child_fds = (stdin_r, out_w, err_w)
            started = None
            if slave is None and tuple(namespaces) == NAMESPACES:
                started = self._spawn_via_helper(
                    handle, exec_group, workdir, argv, full_env, child_fds
                )
            if started is not None:
                (middle, status_fd), exit_fd = started, None
            else:
                # A terminal or the host's network: a middle process of its own.
                middle, status_fd, exit_fd = self._zygote.exec(
                    init_pid=pid,
                    join_files=exec_group.join_files(),
                    workdir=workdir,
                    last_cap=self._last_cap,
                    seccomp=self._seccomp,
                    argv=argv,
                    env=full_env,
                    stdin=child_fds[0],
                    stdout=child_fds[1],
                    stderr=child_fds[2],
                    tty=slave is not None,
                    namespaces=namespaces,
                )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return ZygoteProcess(
            middle,
            status_fd,
            stdin=os.fdopen(stdin_w, "wb") if stdin_w is not None else None,
            stdout=os.fdopen(out_r, "rb") if out_r is not None else None,
            stderr=os.fdopen(err_r, "rb") if err_r is not None else None,
            exit_fd=exit_fd,
        )

    def _spawn_via_helper(
        self,
        handle: SidecarHandle,
        exec_group: cg.Cgroup,
        workdir: str,
        argv: list[str],
        full_env: dict[str, str],
        child_fds: tuple[int, int, int],
    ) -> tuple[int, int] | None:
        """(pid, status fd) of the command started by the sidecar's exec helper; None when
        there is no helper to be had (the caller then forks a middle process)."""
        for _attempt in (1, 2):
            try:
                helper = self._helper(handle)
            except RuntimeError_:
                return None
            if helper is None:
                return None
            try:
                return helper.spawn(
                    join_files=exec_group.join_files(),
                    workdir=workdir,
                    argv=argv,
                    env=full_env,
                    stdin=child_fds[0],
                    stdout=child_fds[1],
                    stderr=child_fds[2],
                )
            except HelperGone as exc:
                self._drop_helper(handle.id)
                if not exc.retry:
                    raise  # it may have started the command: never run that twice
        return None

    # -- recovery ----------------------------------------------------------------------------

    def is_suspended(self, handle: SidecarHandle) -> bool:
        return self._group(handle).is_frozen()

    def adopt(self, handle: SidecarHandle) -> None:
        """Commands started by a host that died have nobody to report to: end them."""
        if handle.spec.disk is not None:
            disks.remount(Path(handle.dir))
        group = self._group(handle)
        frozen = group.is_frozen()
        for child in group.children():
            child.remove()
        if frozen:
            group.freeze()

    def collect_garbage(self, keep: set[str]) -> list[str]:
        removed = []
        for child in self.cgroup_root.children():
            if child.name not in keep:
                with contextlib.suppress(cg.CgroupError, OSError):
                    child.thaw()
                    child.remove()
                    removed.append(child.name)
        if self.sidecars_dir.is_dir():
            for path in self.sidecars_dir.iterdir():
                if path.name not in keep:
                    self._release_disk(path)
                    _remove_tree(path)
                    if path.name not in removed:
                        removed.append(path.name)
        self.cgroup_root.prune_empty()
        return removed


def spawn_init(
    sidecar_id: str,
    root: str,
    overlay: str,
    binds: list[tuple[str, str]],
    join_files: list[str],
    network: str,
    tmp_size: int,
) -> int:
    """Fork the sidecar's pid 1 into new namespaces and the cgroup; return its host pid."""
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS
    if network == "none":
        flags |= linux.CLONE_NEWNET
    hostname = f"sidecar-{sidecar_id[-8:]}"
    tmp_opts = f"size={tmp_size},mode=1777"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        code = 1
        try:
            os.close(read_end)
            for path in join_files:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            linux.unshare(flags)
            init = os.fork()
            if init:
                os.write(write_end, f"pid {init}\n".encode())
                code = 0
            else:
                _become_init(root, overlay, binds, tmp_opts, hostname, network, write_end)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                os.write(write_end, f"error {_describe(exc)}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as pipe:
        while True:
            data = pipe.read(4096)
            if not data:
                break
            chunks.append(data)
    os.waitpid(pid, 0)
    init_pid = None
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        word, _, rest = line.partition(" ")
        if word == "pid":
            init_pid = int(rest)
        elif word == "error":
            if init_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init_pid, signal.SIGKILL)
            raise RuntimeError_(f"sidecar setup failed: {rest}")
    if init_pid is None:
        raise RuntimeError_("sidecar setup failed: the init process did not start")
    return init_pid


def _enter_sidecar(
    join_files: list[str],
    ns_fds: list[int],
    workdir: str,
    last_cap: int,
    seccomp_program: bytes,
    controlling_tty: bool = False,
) -> Callable[[], None]:
    """The code run between fork and exec: join the cgroup and namespaces, then fork once more
    so that the command is born inside the sidecar's pid namespace, confined (linux.confine)."""

    def preexec() -> None:
        for path in join_files:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
        for fd in ns_fds:
            linux.setns(fd, 0)
        child = os.fork()
        if child:
            # The middle process: holds no pipe so that EOF means the command's tree is done.
            os.closerange(0, 65536)
            while True:
                try:
                    _, status = os.waitpid(child, 0)
                    break
                except ChildProcessError:
                    os._exit(1)
                except InterruptedError:
                    continue
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(sig, signal.SIG_DFL)
                os.kill(os.getpid(), sig)
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
        os.setsid()
        if controlling_tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        try:
            os.chdir(workdir)
        except OSError:
            os.chdir("/")
        linux.confine(last_cap, seccomp_program)

    return preexec


def _become_init(
    root: str,
    overlay: str,
    binds: list[tuple[str, str]],
    tmp_opts: str,
    hostname: str,
    network: str,
    report_fd: int,
) -> None:  # pragma: no cover - runs as pid 1 of the new namespaces
    os.setsid()
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    # nosuid: a setuid file or file capability written in a layer grants nothing inside.
    linux.mount("overlay", root, "overlay", linux.MS_NOSUID | linux.MS_NODEV, overlay)
    for host, inside in binds:
        linux.bind_readonly(host, root + inside)
    for path in MASKED_FILES:
        if os.path.isfile(root + path):
            linux.bind_readonly("/dev/null", root + path)
    for path in MASKED_DIRS:
        if os.path.isdir(root + path):
            linux.mount("tmpfs", root + path, "tmpfs", linux.MS_RDONLY, "size=4k,mode=755")
    nosuid_nodev = linux.MS_NOSUID | linux.MS_NODEV
    linux.mount("tmpfs", root + "/tmp", "tmpfs", nosuid_nodev, tmp_opts)
    linux.mount("tmpfs", root + "/run", "tmpfs", nosuid_nodev, "size=16m,mode=755")
    _make_dev(root + "/dev")
    linux.mount("proc", root + "/proc", "proc", nosuid_nodev | linux.MS_NOEXEC)
    for name in PROC_READONLY:
        path = f"{root}/proc/{name}"
        if os.path.exists(path):
            linux.bind_readonly(path, path, recursive=os.path.isdir(path))
    for name in PROC_MASKED:
        path = f"{root}/proc/{name}"
        if os.path.exists(path):
            linux.bind_readonly("/dev/null", path)
    linux.mount("sysfs", root + "/sys", "sysfs", nosuid_nodev | linux.MS_NOEXEC | linux.MS_RDONLY)
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount(".", linux.MNT_DETACH)
    os.chdir("/")
    linux.sethostname(hostname)
    if network == "none":
        linux.loopback_up()
    os.write(report_fd, b"ready\n")
    os.closerange(3, 65536)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.execve("/bin/sh", ["microbuild-init", "-c", INIT_SCRIPT], {"PATH": DEFAULT_PATH})


def _make_dev(dev: str) -> None:  # pragma: no cover - runs as pid 1 of the new namespaces
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "size=64k,mode=755")
    for name, (major, minor) in DEV_NODES.items():
        os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)
    os.mkdir(f"{dev}/pts")
    linux.mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        linux.MS_NOSUID | linux.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm")
    linux.mount("tmpfs", f"{dev}/shm", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=64m")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")


def _describe(exc: BaseException) -> str:
    return str(exc).replace("\n", " ") or type(exc).__name__


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _wait_gone(pid: int | None, start: int | None, timeout: float = 10) -> None:
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while linux.process_start_time(pid) == start and start is not None:
        if time.monotonic() > deadline:
            raise RuntimeError_(f"process {pid} did not exit after SIGKILL")
        time.sleep(0.001)


def _copy_layer(upper: Path, dest: Path) -> None:
    """Copy a writable layer to `dest` as it is: owners, modes, times, hard links, xattrs
    (overlayfs's opaque markers) and device nodes (its whiteouts)."""
    tmp = dest.with_name(f"{dest.name}.copy{os.getpid()}")
    _remove_tree(tmp)
    proc = subprocess.run(
        ["cp", "-a", "--no-target-directory", "--", str(upper), str(tmp)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        _remove_tree(tmp)
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError_(
            f"cannot copy the sidecar's writable layer into the snapshot: "
            f"{detail[-1] if detail else f'cp exited {proc.returncode}'}"
        )
    tmp.rename(dest)


def _remove_tree(path: Path) -> None:
    remove_tree(path)
    if path.exists():
        raise RuntimeError_(f"could not remove {path}; remove it by hand")


def unavailable_reason() -> str | None:
    """Why this machine cannot run namespace sidecars, or None when it can."""
    if sys.platform != "linux":
        return 'the namespace runtime needs Linux; use runtime = "process"'
    if os.geteuid() != 0:
        return (
            "the namespace runtime needs root (mounts, cgroups); run as root, or use "
            'runtime = "process" (no isolation)'
        )
    try:
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read():
                return "the kernel has no overlayfs; run `modprobe overlay`"
    except OSError:
        return "/proc is not mounted"
    return None
