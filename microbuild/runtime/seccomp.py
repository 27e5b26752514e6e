"""The seccomp filter of every sidecar command: Docker's default profile, as a deny list.

Docker's profile allows a list of system calls and refuses the rest; what it refuses a
container without CAP_SYS_ADMIN (which no sidecar command has) is listed here and answered
with EPERM, everything else is allowed: the kernel's attack surface that build and test tools
never need (keyrings, BPF, perf, io_uring, userfaultfd, new user namespaces, mounts, modules,
kexec, clocks, handles to host files). A deny list keeps unknown new system calls usable
(glibc starts using them before container profiles list them); the capability bounding set
and no_new_privs already refuse most of what it names, the filter also covers what needs no
capability at all (add_key, bpf, io_uring_setup, userfaultfd, unshare(CLONE_NEWUSER)).

The filter is built in the host with libseccomp (through `pyseccomp`, a ctypes binding of the
library's own Python API) and exported as raw BPF once per process; the processes that start
commands (the zygote runs without site-packages, the exec helper imports nothing at all) only
install those bytes with one prctl (linux.install_seccomp).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from typing import Any

from microbuild.runtime.base import RuntimeUnavailable

EPERM = 1
ENOSYS = 38
OPT_OUT_ENV = "MICROBUILD_SECCOMP"

CLONE_NEWUSER = 0x10000000
# personality(2) bits that weaken the address space layout; bit 31 is clear in every real
# persona, set in the 0xffffffff query (which must keep working).
PERSONALITY_QUERY_BIT = 0x80000000
PERSONALITY_DENIED_BITS = (
    0x0040000,  # ADDR_NO_RANDOMIZE
    0x0100000,  # MMAP_PAGE_ZERO
    0x0200000,  # ADDR_COMPAT_LAYOUT
    0x0400000,  # READ_IMPLIES_EXEC
    0x0800000,  # ADDR_LIMIT_32BIT
    0x8000000,  # ADDR_LIMIT_3GB
)

DENIED_SYSCALLS = (
    # Kernel keyrings: not namespaced, a sidecar's keys would land in the host root's.
    "add_key",
    "request_key",
    "keyctl",
    # Kernel attack surface no build needs.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    "fanotify_init",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
    "vm86",
    "vm86old",
    "iopl",
    "ioperm",
    "get_mempolicy",
    "set_mempolicy",
    "mbind",
    "move_pages",
    "migrate_pages",
    "syslog",
    "acct",
    "quotactl",
    "quotactl_fd",
    # Namespaces: joining or making any (a new user namespace gives back every capability).
    "unshare",
    "setns",
    # Mounts, old and new API.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "swapon",
    "swapoff",
    # Handles to host files, past every mount.
    "open_by_handle_at",
    "name_to_handle_at",
    # The machine itself.
    "reboot",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    # adjtimex and clock_adjtime stay allowed, as in Docker's profile: reading the clock's
    # state is harmless, setting it needs CAP_SYS_TIME. So do ptrace, kcmp and
    # process_vm_readv/writev (kernel >= 4.8 checks them against the tracee's capabilities).
)


class SeccompUnavailable(RuntimeUnavailable):
    """libseccomp (or its binding) is missing: sidecars would run without their filter."""


def enabled() -> bool:
    """False only when the user opted out explicitly (MICROBUILD_SECCOMP=off)."""
    return os.environ.get(OPT_OUT_ENV, "").lower() not in ("off", "0", "no")


def program() -> bytes:
    """The filter as raw BPF (struct sock_filter[]) for linux.install_seccomp; b"" when the
    user opted out. Raises SeccompUnavailable, with what to do, when it cannot be built."""
    if not enabled():
        return b""
    return _exported(os.uname().machine)


@functools.cache
def _exported(machine: str) -> bytes:
    """Built once per architecture and process: libseccomp takes ~1 ms to compile it."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as exc:
        raise SeccompUnavailable(
            f"cannot build the sidecars' seccomp filter ({exc}): install libseccomp2 "
            f"(apt-get install libseccomp2) and pyseccomp (scripts/install.sh), or set "
            f"{OPT_OUT_ENV}=off to run sidecars without it"
        ) from exc
    flt: Any = sc.SyscallFilter(sc.ALLOW)
    # A binary tree of system call numbers, not a linear scan of ~70 (libseccomp >= 2.5).
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    # 32-bit and x32 entry points reach the same kernel: without them, int 0x80 would get
    # past every rule (and, left to libseccomp's default, a 32-bit binary would be killed).
    if machine == "x86_64":
        for arch in (sc.Arch.X86, sc.Arch.X32):
            flt.add_arch(arch)
    elif machine == "aarch64":
        flt.add_arch(sc.Arch.ARM)
    deny = sc.ERRNO(EPERM)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(deny, name)
        except (OSError, RuntimeError, ValueError):
            continue  # not a system call on this architecture or libseccomp version
    # clone's flags are its first argument everywhere but s390 (there the second).
    flags_arg = 1 if machine.startswith("s390") else 0
    flt.add_rule(deny, "clone", sc.Arg(flags_arg, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    # clone3's flags are in memory, out of a filter's reach: ENOSYS makes libc fall back to
    # clone, whose flags are checked (Docker does the same).
    flt.add_rule(sc.ERRNO(ENOSYS), "clone3")
    for bit in PERSONALITY_DENIED_BITS:
        flt.add_rule(deny, "personality", sc.Arg(0, sc.MASKED_EQ, PERSONALITY_QUERY_BIT | bit, bit))
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        raw: bytes = out.read()
    if not raw or len(raw) % 8:
        raise SeccompUnavailable(f"libseccomp exported a malformed filter ({len(raw)} bytes)")
    return raw
