"""Code or environment: whose fault a failure is, and what an agent can do about it.

A failure is the *code's* (an assertion, a type error, a lint finding, an import of the project's
own module that is not there) unless its text or the way its check ended says the *environment*
broke: a missing command, a missing third-party module (the snapshot should have installed it),
an OOM kill, a full disk, a network the sidecar does not have, a timeout, a dead sidecar. An
environment failure always comes with its remedy, because an agent cannot fix it by editing code.

The cause is a short phrase that starts with a fixed prefix (`missing module`, `disk full`, ...):
the runner stores it as the check's `reason`, and `remedy()` maps it back to the fix later, so
the renderer needs nothing but the stored run.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from microbuild.report.model import Failure, FailureKind

__all__ = [
    "CODE",
    "REBUILD",
    "RESET",
    "Diagnosis",
    "classify_check",
    "classify_failure",
    "diagnose_text",
    "disk_limit_cause",
    "project_packages",
    "remedy",
]

REBUILD = "microbuild snapshot build --rebuild"
RESET = "microbuild sidecar reset"

# (cause prefix, remedy); the first prefix that starts a cause wins.
_REMEDIES: tuple[tuple[str, str], ...] = (
    (
        "command not found",
        f"install the command in [snapshot] setup in microbuild.toml, then `{REBUILD}`",
    ),
    (
        "missing module",
        f"declare it in the project's dependencies (or [snapshot] setup), then `{REBUILD}`",
    ),
    (
        "check misconfigured",
        "the check's command cannot run as written: fix it in microbuild.toml "
        "(or `microbuild init` again)",
    ),
    (
        "no tests ran",
        "the check's command selects no tests: fix its paths or selection in microbuild.toml",
    ),
    ("pids limit", "raise [sidecar] pids in microbuild.toml (or start fewer processes)"),
    ("out of memory", "raise [sidecar] memory in microbuild.toml (or use less memory)"),
    (
        "disk limit",
        f"raise [sidecar] disk in microbuild.toml (or write less), or `{RESET}` for a fresh "
        "writable layer",
    ),
    (
        "disk full",
        f"`{RESET}` for a fresh writable layer, or raise [sidecar] disk (the writable layer) "
        "or tmp_size (/tmp) in microbuild.toml",
    ),
    (
        "network blocked",
        'set network = "host" on the check in microbuild.toml (or stop needing the network)',
    ),
    ("timed out", "raise the check's timeout_s in microbuild.toml (or find what hangs)"),
    ("the sidecar", f"`{RESET}` (a fresh layer from the snapshot), then run again"),
    ("cancelled", "run it again"),
)


@dataclass(frozen=True)
class Diagnosis:
    kind: FailureKind
    cause: str = ""
    """For the environment: a short phrase starting with a known prefix; empty for code."""

    @property
    def fix(self) -> str | None:
        return remedy(self.cause) if self.kind == "environment" else None


CODE = Diagnosis("code")


def disk_limit_cause(limit: int) -> str:
    """The cause of a check that ended with its sidecar's disk full: `disk limit 10GiB
    reached` (the limit spelled as in microbuild.toml)."""
    size = f"{limit} bytes"
    for name, unit in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if limit >= unit and limit % unit == 0:
            size = f"{limit // unit}{name}"
            break
    return f"disk limit {size} reached"


def remedy(cause: str | None) -> str | None:
    """The fix for an environment cause, or None when none is known."""
    if not cause:
        return None
    for prefix, fix in _REMEDIES:
        if cause.startswith(prefix):
            return fix
    return None


_SHELL_NOT_FOUND = re.compile(
    r"^(?:\S*/)?(?:ba|da|z)?sh: (?:\d+: |line \d+: )?(?P<cmd>[^\s:]+): (?:command )?not found\s*$",
    re.M,
)
# A command that cannot run as written: a directory to `cd` to that is not there, a path the
# test runner cannot find (a config template left unexpanded, `{posargs:tests}`), an option the
# tool does not know (a plugin the snapshot lacks). Editing code fixes none of them.
_CANT_CD = re.compile(
    r"^(?:\S*/)?(?:ba|da|z)?sh: (?:\d+: |line \d+: )?cd: "
    r"(?:can't cd to (?P<a>\S+)|(?P<b>[^:\n]+): No such file or directory)",
    re.M,
)
_NO_SUCH_ARG = re.compile(r"^ERROR: file or directory not found: (?P<path>\S.*)$", re.M)
_BAD_USAGE = re.compile(
    r"^(?P<tool>[\w.-]+): error: (?P<msg>(?:unrecognized arguments|unrecognized option|"
    r"no such option|the following arguments are required)\b.*)$",
    re.M,
)
_NO_TESTS = re.compile(
    r"^(?:=+ )?(?:no tests ran|\d+ deselected) in [\d.]+s\b|^NO TESTS RAN\b|^Ran 0 tests in ", re.M
)
# fork() failing with EAGAIN: the sidecar's pids cgroup is full (a fork bomb, a huge pool).
_NO_FORK = re.compile(
    r"(?:fork|clone|spawn)\w*[^\n]{0,40}(?:Resource temporarily unavailable|EAGAIN)"
    r"|can't fork|Cannot fork|BlockingIOError: \[Errno 11\]",
    re.I,
)
_MISSING_PY = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?(?P<mod>[\w.]+)")
_MISSING_NODE = re.compile(r"Cannot find module '(?P<mod>[^'./][^']*)'")
_DISK_FULL = re.compile(r"No space left on device|\bENOSPC\b|Disk quota exceeded")
_MEMORY = re.compile(r"^(?:E\s+)?MemoryError\b|JavaScript heap out of memory", re.M)
_DNS = re.compile(
    r"Temporary failure in name resolution|Name or service not known|getaddrinfo (?:failed|"
    r"EAI_AGAIN|ENOTFOUND)|Could not resolve host|nodename nor servname|\bEAI_AGAIN\b|"
    r"no such host|Failed to resolve|NameResolutionError"
)
_UNREACHABLE = re.compile(r"Network is unreachable|\bENETUNREACH\b|No route to host")
_REFUSED = re.compile(r"Connection refused|ECONNREFUSED")
_HOSTS = re.compile(r"(?:host=['\"]?|://|\bconnect(?:ing)? to )(?P<host>[\w.-]+|\[[\w:]+\])")
_LOCAL_HOSTS = ("localhost", "127.", "::1", "[::1]", "0.0.0.0")


def _non_local_host(text: str) -> str | None:
    for match in _HOSTS.finditer(text):
        host = match.group("host")
        if not host.startswith(_LOCAL_HOSTS):
            return host
    return None


def diagnose_text(
    text: str, *, own_packages: Collection[str] = (), network: str = "none"
) -> Diagnosis | None:
    """The environment cause this output shows, or None when it shows none."""
    if (m := _SHELL_NOT_FOUND.search(text)) is not None:
        return Diagnosis("environment", f"command not found: {m.group('cmd')}")
    if (m := _CANT_CD.search(text)) is not None:
        where = (m.group("a") or m.group("b")).strip()
        return Diagnosis("environment", f"check misconfigured: cannot cd to {where}")
    if (m := _NO_SUCH_ARG.search(text)) is not None:
        path = m.group("path").strip()
        hint = " (an unexpanded template)" if "{" in path else ""
        return Diagnosis("environment", f"check misconfigured: no file or directory {path}{hint}")
    if (m := _BAD_USAGE.search(text)) is not None:
        return Diagnosis("environment", f"check misconfigured: {m.group('tool')}: {m.group('msg')}")
    if _NO_TESTS.search(text):
        return Diagnosis("environment", "no tests ran")
    for pattern in (_MISSING_PY, _MISSING_NODE):
        for m in pattern.finditer(text):
            module = m.group("mod")
            if module.split(".")[0].split("/")[0] not in own_packages:
                return Diagnosis("environment", f"missing module '{module}'")
    if _NO_FORK.search(text):
        return Diagnosis("environment", "pids limit reached: a process could not be started")
    if _DISK_FULL.search(text):
        return Diagnosis("environment", "disk full (No space left on device)")
    if _MEMORY.search(text):
        return Diagnosis("environment", "out of memory")
    if network == "none":
        if (m := _DNS.search(text)) is not None:
            return Diagnosis("environment", f"network blocked: {m.group(0)}")
        if (m := _UNREACHABLE.search(text)) is not None:
            return Diagnosis("environment", f"network blocked: {m.group(0)}")
        if _REFUSED.search(text) and (host := _non_local_host(text)) is not None:
            return Diagnosis("environment", f"network blocked: connection refused by {host}")
    return None


def classify_failure(
    failure: Failure, *, own_packages: Collection[str] = (), network: str = "none"
) -> Diagnosis:
    """Code unless the failure's message or excerpt names an environment cause."""
    text = f"{failure.message}\n{failure.excerpt}"
    found = diagnose_text(text, own_packages=own_packages, network=network)
    return found or CODE


def _error_cause(reason: str | None, exit_code: int | None) -> str:
    if reason:
        return reason
    if exit_code == 127:
        return "command not found (exit 127)"
    return "the sidecar failed to run the check"


def classify_check(
    status: str,
    reason: str | None,
    exit_code: int | None,
    failures: Iterable[Failure],
    log_text: str = "",
    *,
    own_packages: Collection[str] = (),
    network: str = "none",
) -> Diagnosis:
    """A check's verdict. `timed_out` and `error` are the environment by definition; a `failed`
    check is the environment's fault only when every failure it has is (or, with no parsed
    failures, when its log shows an environment cause); one code failure makes it the code's."""
    if status == "timed_out":
        return Diagnosis("environment", reason or "timed out")
    if status == "error":
        cause = _error_cause(reason, exit_code)
        if cause.startswith("command not found") and (
            (m := _SHELL_NOT_FOUND.search(log_text)) is not None
        ):
            cause = f"command not found: {m.group('cmd')} (exit {exit_code})"
        return Diagnosis("environment", cause)
    if status != "failed":
        return CODE
    found = list(failures)
    if found:
        kinds = [
            f.kind
            if f.kind == "environment"
            else classify_failure(f, own_packages=own_packages, network=network).kind
            for f in found
        ]
        if all(k == "environment" for k in kinds):
            for failure in found:
                diagnosis = classify_failure(failure, own_packages=own_packages, network=network)
                if diagnosis.kind == "environment":
                    return diagnosis
            return Diagnosis("environment", found[0].message)
        return CODE
    return diagnose_text(log_text, own_packages=own_packages, network=network) or CODE


_NOT_PACKAGES = frozenset({"node_modules", "site-packages", "build", "dist", "venv", "env"})


def project_packages(workspace: Path) -> frozenset[str]:
    """The project's own top-level modules: directories and `*.py` files at the root of the
    workspace and of `src/` (an import of one of these that fails is the code's fault)."""
    names: set[str] = set()
    for base in (workspace, workspace / "src"):
        try:
            if base != workspace and (base.is_symlink() or not base.is_dir()):
                continue
            entries = list(base.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name.startswith((".", "_")) or name in _NOT_PACKAGES:
                continue
            if name.endswith(".py"):
                names.add(name[:-3])
            elif name.isidentifier():
                with contextlib.suppress(OSError):
                    if not entry.is_symlink() and entry.is_dir():
                        names.add(name)
    return frozenset(names)
