"""Attacks a sidecar command might try on the host, one test each, asserting containment.

The fork bomb, the memory hog, a timeout's process tree and a killed init are proved in
tests/test_runtime_namespace.py, on both exec paths."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from microbuild.runtime import SidecarHandle
from microbuild.runtime.namespace import NamespaceRuntime

from .conftest import py, sh

pytestmark = pytest.mark.isolation
Make = Callable[..., SidecarHandle]


def test_host_files_are_not_readable(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar()
    # The interpreter's prefix is exposed read-only (commands run python): where it lives
    # under a home, only the directories leading to it appear there, empty but for it.
    prefix = os.path.realpath(sys.base_prefix)
    leading = {prefix.split("/")[2]} if prefix.startswith(("/root/", "/home/")) else set()
    marker = Path.home() / f".mbsec-{os.getpid()}"
    marker.write_text("host secret\n")
    try:
        _code, out = sh(
            runtime,
            h,
            f"test -s /etc/shadow && echo shadow; test -e {marker} && echo marker; "
            f"test -e {runtime.state_dir} && echo state-dir; test -e {os.getcwd()} && echo cwd; "
            "ls -A /root /home",
        )
    finally:
        marker.unlink()
    for leak in ("shadow", "marker", "state-dir", "cwd"):
        assert leak not in out.split(), out
    listed = {line for line in out.split() if line and not line.endswith(":")}
    assert listed <= leading, f"host home entries visible: {listed - leading}"


def test_host_processes_are_invisible(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar()
    _code, out = sh(
        runtime,
        h,
        f"ls /proc | grep -c '^[0-9]'; test -e /proc/{os.getpid()}/cmdline && echo visible; "
        f"kill -0 {os.getpid()} 2>/dev/null && echo signalled",
    )
    assert "visible" not in out and "signalled" not in out
    assert int(out.split()[0]) <= 6  # init, its sleep, this shell and its children


def test_network_egress_and_dns_are_blocked(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar(network="none")
    _code, out = py(
        runtime,
        h,
        "import socket\n"
        "for addr in [('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=2); print('connected', addr)\n"
        "    except OSError as e:\n"
        "        print('blocked', e.errno)\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443); print('resolved')\n"
        "except OSError:\n"
        "    print('no-dns')\n",
    )
    assert "connected" not in out and "resolved" not in out, out
    assert out.count("blocked") == 2 and "no-dns" in out


def test_mount_and_remount_fail(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar()
    _code, out = sh(
        runtime,
        h,
        "mount -t tmpfs none /mnt 2>/dev/null && echo mounted; "
        "mount -o remount,rw /usr 2>/dev/null && echo remounted; "
        "umount -l /etc 2>/dev/null && echo unmounted; "
        "touch /usr/mb-probe 2>/dev/null && echo wrote-usr; echo done",
    )
    assert out.strip() == "done", out


def test_ptrace_of_init_and_host_processes_fails(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar()
    code, out = py(
        runtime,
        h,
        "import ctypes, errno\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"for pid in (1, {os.getpid()}, {h.init_pid}):\n"
        "    r = libc.ptrace(16, pid, None, None)\n"  # PTRACE_ATTACH
        "    print(pid, 'attached' if r == 0 else errno.errorcode[ctypes.get_errno()])\n",
    )
    assert code == 0, out
    assert "attached" not in out, out
    assert "1 EPERM" in out  # the sidecar's init keeps capabilities its commands lack


def test_nested_user_namespace_fails(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar()
    _code, out = sh(runtime, h, "unshare -U -r id -u 2>&1; echo exit=$?")
    assert "exit=0" not in out, out


def test_io_uring_setup_fails(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar()
    _code, out = py(
        runtime,
        h,
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "params = ctypes.create_string_buffer(120)\n"
        "fd = libc.syscall(425, 4, params)\n"
        "print('ring' if fd >= 0 else f'errno={ctypes.get_errno()}')\n",
    )
    assert out.strip() == "errno=1", out


def test_bpf_fails(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar()
    _code, out = py(
        runtime,
        h,
        "import ctypes, struct\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        # BPF_MAP_CREATE of a 4-entry array map: allowed to root with CAP_BPF/SYS_ADMIN.
        "attr = ctypes.create_string_buffer(struct.pack('<IIII', 2, 4, 4, 4), 64)\n"
        "fd = libc.syscall(321, 0, attr, 64)\n"
        "print('map' if fd >= 0 else f'errno={ctypes.get_errno()}')\n",
    )
    assert out.strip() == "errno=1", out


def test_cpu_spin_is_bounded_by_the_cpus_quota(runtime: NamespaceRuntime, sidecar: Make) -> None:
    h = sidecar(cpus=0.25)
    spin = (
        "import os, time\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        end = time.time() + 1.5\n"
        "        while time.time() < end: pass\n"
        "        os._exit(0)\n"
        "os.wait(); os.wait()\n"
    )
    started = time.monotonic()
    result, _, _ = runtime.exec(h, ["python3", "-c", spin], timeout=30).collect()
    wall = time.monotonic() - started
    assert result.exit_code == 0
    assert result.cpu_s is not None
    # Two spinning processes would use 2 x 1.5 s unbounded; a quarter core allows ~0.4 s.
    assert result.cpu_s < 0.25 * wall + 0.35, (result.cpu_s, wall)
