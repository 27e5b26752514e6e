"""Runtimes make sidecars; pick one by name with `get_runtime`."""

from __future__ import annotations

from pathlib import Path

from microbuild.runtime.base import (
    ExecResult,
    Execution,
    OutputChunk,
    Runtime,
    RuntimeError_,
    RuntimeUnavailable,
    SidecarGone,
    SidecarHandle,
    SidecarSpec,
    SidecarStats,
)
from microbuild.runtime.cgroup import Limits

RUNTIMES = ("namespace", "process")

__all__ = [
    "RUNTIMES",
    "ExecResult",
    "Execution",
    "Limits",
    "OutputChunk",
    "Runtime",
    "RuntimeError_",
    "RuntimeUnavailable",
    "SidecarGone",
    "SidecarHandle",
    "SidecarSpec",
    "SidecarStats",
    "get_runtime",
    "resolve_runtime_name",
]


def resolve_runtime_name(name: str) -> str:
    """`auto` means namespace where this machine can run it, else process."""
    if name != "auto":
        return name
    from microbuild.runtime.namespace import unavailable_reason

    return "namespace" if unavailable_reason() is None else "process"


def get_runtime(name: str, state_dir: Path, *, zygote: bool = False) -> Runtime:
    """`zygote`: fork sidecar processes from a small helper process (for long-lived hosts)."""
    name = resolve_runtime_name(name)
    if name == "namespace":
        from microbuild.runtime.namespace import NamespaceRuntime

        return NamespaceRuntime(state_dir, zygote=zygote)
    if name == "process":
        from microbuild.runtime.process import ProcessRuntime

        return ProcessRuntime(state_dir)
    raise RuntimeUnavailable(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
