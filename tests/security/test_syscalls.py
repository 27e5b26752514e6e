"""The seccomp filter and the session keyring, on every path a sidecar command starts by:
the fork path (with and without a terminal), the zygote's exec helper, its middle process
(the host's network) and its command fork (a terminal)."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need_isolation

from microbuild.runtime import SidecarHandle
from microbuild.runtime.namespace import NamespaceRuntime

pytestmark = pytest.mark.isolation

EPERM, ENOSYS = 1, 38

# x86_64 numbers; each probe's arguments are valid enough that only a refusal gives EPERM.
PROBE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buf = ctypes.create_string_buffer(256)
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *args)
    if r == 0 and nr == 56:
        os._exit(0)  # clone's child, had it been allowed
    if r > 0 and nr == 56:
        os.waitpid(r, 0)
    return ctypes.get_errno() if r < 0 else 0
NULL = ctypes.c_void_p(0)
L = ctypes.c_long
res = {
    "add_key": call(248, b"user", DESC, b"secret", L(6), L(-4)),
    "request_key": call(249, b"user", DESC, NULL, L(0)),
    "keyctl": call(250, L(0), L(-3), L(0)),
    "bpf": call(321, L(0), buf, L(64)),
    "perf_event_open": call(298, buf, L(0), L(-1), L(-1), L(0)),
    "userfaultfd": call(323, L(0)),
    "io_uring_setup": call(425, L(1), buf),
    "unshare": call(272, L(0x10000000)),
    "setns": call(308, L(-1), L(0)),
    "clone_newuser": call(56, L(0x10000000 | 17), NULL, NULL, NULL, NULL),
    "clone3": call(435, NULL, L(0)),
    "mount": call(165, b"none", b"/mnt", b"tmpfs", L(0), NULL),
    "umount2": call(166, b"/usr", L(2)),
    "pivot_root": call(155, b"/", b"/"),
    "swapon": call(167, b"/workspace/nothing", L(0)),
    "reboot": call(169, L(0), L(0), L(0), NULL),
    "kexec_load": call(246, L(0), L(0), NULL, L(0)),
    "init_module": call(175, buf, L(0), b""),
    "finit_module": call(313, L(0), b"", L(0)),
    "delete_module": call(176, b"nothing", L(0)),
    "open_by_handle_at": call(304, L(-100), buf, L(0)),
    "name_to_handle_at": call(303, L(-100), b"/", buf, buf, L(0)),
    "personality_no_aslr": call(135, L(0x0040000)),
    "syslog": call(103, L(3), buf, L(16)),
    "acct": call(163, NULL),
    "settimeofday": call(164, NULL, NULL),
    "clock_settime": call(227, L(0), buf),
    "fanotify_init": call(300, L(0), L(0)),
    "quotactl": call(179, L(0), b"/", L(0), NULL),
    "lookup_dcookie": call(212, L(0), buf, L(16)),
    "iopl": call(172, L(3)),
    "ioperm": call(173, L(0), L(8), L(1)),
    "personality_query": call(135, L(0xFFFFFFFF)),
    "getpid": call(39),
}
with open(OUT, "w") as f:
    json.dump(res, f)
"""
ALLOWED = {"personality_query", "getpid"}
NOSYS = {"clone3"}


@pytest.mark.parametrize("path", ["plain", "pty", "host_network"])
def test_denied_syscalls_on_every_exec_path(
    namespace_runtime: NamespaceRuntime,
    make_sidecar: Callable[..., SidecarHandle],
    path: str,
) -> None:
    if platform.machine() != "x86_64":
        pytest.skip("the probe uses x86_64 system call numbers")
    h = make_sidecar()
    desc = f"mbsec-{uuid.uuid4().hex[:12]}"
    code = f"DESC = {desc.encode()!r}\nOUT = '/workspace/probe.json'\n{PROBE}"
    result = namespace_runtime.exec(
        h, ["python3", "-c", code], pty=path == "pty", host_network=path == "host_network"
    ).result()
    assert result.exit_code == 0
    got = json.loads((namespace_runtime.workspace(h) / "probe.json").read_text())
    wrong = {
        name: err
        for name, err in got.items()
        if err != (0 if name in ALLOWED else ENOSYS if name in NOSYS else EPERM)
    }
    assert not wrong, f"{path}: errno per syscall not as the filter says: {wrong}"
    with open("/proc/keys") as f:
        assert desc not in f.read(), "a sidecar's key landed in the host's keyring"


def test_commands_still_fork_threads_and_exec_under_the_filter(
    namespace_runtime: NamespaceRuntime, make_sidecar: Callable[..., SidecarHandle]
) -> None:
    """clone3 gets ENOSYS: libc falls back to clone for fork, threads and posix_spawn."""
    h = make_sidecar()
    code = (
        "import os, subprocess, threading\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "pid = os.fork()\n"
        "if pid == 0: os._exit(3)\n"
        "assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3\n"
        "print(subprocess.run(['/bin/sh', '-c', 'echo spawned'], capture_output=True,"
        " text=True).stdout.strip())\n"
    )
    result, out, err = namespace_runtime.exec(h, ["python3", "-c", code]).collect()
    assert result.exit_code == 0, err
    assert out.decode().strip() == "spawned"


def test_a_command_gets_a_session_keyring_of_its_own() -> None:
    """linux.join_session_keyring, as linux.confine runs it before the filter goes on."""
    from microbuild.runtime import linux

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    keyctl = {"x86_64": 250, "aarch64": 219}[platform.machine()]

    def session() -> int:
        return int(libc.syscall(ctypes.c_long(keyctl), ctypes.c_long(0), ctypes.c_long(-3), 0))

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            before = session()
            linux.join_session_keyring()
            os.write(write_end, f"{before} {session()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        before, after = pipe.read().split()
    os.waitpid(pid, 0)
    assert int(after) > 0 and after != before


def test_without_libseccomp_the_runtime_refuses_unless_opted_out(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_isolation()
    from microbuild.runtime import RuntimeUnavailable, seccomp

    seccomp._exported.cache_clear()
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # import now raises ImportError
    try:
        with pytest.raises(RuntimeUnavailable, match="seccomp filter") as refused:
            NamespaceRuntime(state_dir)
        assert "\n" not in str(refused.value) and "MICROBUILD_SECCOMP=off" in str(refused.value)
        monkeypatch.setenv("MICROBUILD_SECCOMP", "off")
        assert seccomp.program() == b""
        NamespaceRuntime(state_dir).close()
    finally:
        seccomp._exported.cache_clear()
