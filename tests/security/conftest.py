"""Fixtures for the attack tests: the runtime as a host runs it (zygote and exec helpers), on
a state dir that starts out readable by everyone, as one made by hand or an old version is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import need_isolation

from microbuild.runtime import SidecarHandle
from microbuild.runtime.namespace import NamespaceRuntime

Run = Callable[..., tuple[int, str]]


@pytest.fixture
def open_state_dir(state_dir: Path) -> Path:
    """The state dir and its usual subdirectories, 0755 before the runtime starts."""
    for sub in ("snapshots", "sidecars", "runs", "skeletons"):
        (state_dir / sub).mkdir(mode=0o755)
        (state_dir / sub).chmod(0o755)
    state_dir.chmod(0o755)
    return state_dir


@pytest.fixture
def namespace_runtime(open_state_dir: Path) -> Iterator[NamespaceRuntime]:
    """The root conftest's runtime, as a host runs it, on the open state dir: tests/conftest.py's
    `make_sidecar` makes the sidecars on it."""
    need_isolation()
    rt = NamespaceRuntime(open_state_dir, zygote=True)
    yield rt
    rt.close()


@pytest.fixture
def runtime(namespace_runtime: NamespaceRuntime) -> NamespaceRuntime:
    return namespace_runtime


@pytest.fixture
def sidecar(make_sidecar: Callable[..., SidecarHandle]) -> Callable[..., SidecarHandle]:
    return make_sidecar


def sh(rt: NamespaceRuntime, h: SidecarHandle, script: str, timeout: float = 30) -> tuple[int, str]:
    result, out, err = rt.exec(h, ["/bin/sh", "-c", script], timeout=timeout).collect()
    return result.exit_code, (out + err).decode()


def py(rt: NamespaceRuntime, h: SidecarHandle, code: str, timeout: float = 30) -> tuple[int, str]:
    result, out, err = rt.exec(h, ["python3", "-c", code], timeout=timeout).collect()
    return result.exit_code, (out + err).decode()
