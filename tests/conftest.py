"""Shared fixtures. Isolation tests need root, namespaces and cgroups: elsewhere they skip,
but with MICROBUILD_REQUIRE_ISOLATION=1 (as .ci/run sets) a skip of theirs is a failure."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from microbuild.runtime import Limits, SidecarHandle, SidecarSpec

REQUIRE_ISOLATION = os.environ.get("MICROBUILD_REQUIRE_ISOLATION") == "1"
# Hosts the CLI starts for itself during tests quit soon after their last request.
os.environ.setdefault("MICROBUILD_HOST_IDLE_EXIT", "3")
# The CLI runs in the test's own processes; tests/test_cmdserver.py turns the command server on.
os.environ.setdefault("MICROBUILD_COMMAND_SERVER", "0")


def isolation_unavailable() -> str | None:
    from microbuild.runtime import cgroup
    from microbuild.runtime.namespace import unavailable_reason

    reason = unavailable_reason()
    if reason:
        return reason
    try:
        cgroup.sidecar_root()
    except (cgroup.CgroupError, OSError) as exc:
        return f"cgroups unavailable: {exc}"
    return None


def need_isolation() -> None:
    reason = isolation_unavailable()
    if reason:
        if REQUIRE_ISOLATION:
            pytest.fail(f"MICROBUILD_REQUIRE_ISOLATION=1 but isolation is unavailable: {reason}")
        pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    expected_failure = hasattr(report, "wasxfail")
    if (
        REQUIRE_ISOLATION
        and report.skipped
        and not expected_failure
        and item.get_closest_marker("isolation")
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"isolation test skipped under MICROBUILD_REQUIRE_ISOLATION=1: {report.longrepr}"
        )


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its long names are fine, but keep overlay option strings short.
    path = Path(tempfile.mkdtemp(prefix="mbt-", dir="/var/tmp"))
    yield path
    stop_command_servers(path)
    stop_local_host(path)
    destroy_sidecars(path)
    shutil.rmtree(path, ignore_errors=True)


def destroy_sidecars(state: Path) -> None:
    """Destroy what sidecars the store of `state` still has (a host leaves its sidecars
    running for the next one; with the state dir gone there is no next one)."""
    if not (state / "state.db").exists():
        return
    from microbuild.host.manager import SidecarManager

    manager = SidecarManager(state)
    try:
        for ident, exc in manager.destroy_all():
            if exc is not None:
                print(f"destroying {ident} in {state} failed: {exc}")
    finally:
        manager.close()


def stop_command_servers(state: Path) -> None:
    """Stop the command servers the CLI started for itself in `state` (see STATE/cli-*.json);
    they would exit by themselves once the state dir is gone, within seconds."""
    import json
    import signal

    for info in state.glob("cli-*.json"):
        try:
            os.kill(int(json.loads(info.read_text())["pid"]), signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            continue


def stop_local_host(state: Path, timeout: float = 10) -> None:
    """Stop a host the CLI started for itself in `state` (tests must not leave one behind)."""
    import json
    import signal
    import time

    try:
        pid = int(json.loads((state / "host.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # A host started from this process is our child: reap it, or it lingers as a zombie.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def layer(state_dir: Path) -> Path:
    """A hand-made snapshot layer: what a sidecar sees at its root."""
    path = state_dir / "layer"
    (path / "workspace" / "pkg").mkdir(parents=True)
    (path / "workspace" / "hello.txt").write_text("hello from the snapshot\n")
    (path / "workspace" / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    return path


@pytest.fixture(params=[False, True], ids=["fork", "zygote"])
def namespace_runtime(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[object]:
    """Both ways of starting sidecar processes: forking the caller, or the zygote helper."""
    need_isolation()
    from microbuild.runtime.namespace import NamespaceRuntime

    runtime = NamespaceRuntime(state_dir, zygote=request.param)
    yield runtime
    runtime.close()


SidecarFactory = Callable[..., SidecarHandle]


@pytest.fixture
def make_sidecar(namespace_runtime: object, layer: Path) -> Iterator[SidecarFactory]:
    """Create namespace sidecars from `layer`; every one is destroyed at teardown."""
    from microbuild.runtime.namespace import NamespaceRuntime

    assert isinstance(namespace_runtime, NamespaceRuntime)
    made: list[SidecarHandle] = []
    counter = iter(range(1000))

    def make(
        network: str = "none",
        memory: int = 512 << 20,
        pids: int = 256,
        cpus: float | None = 1.0,
        **kwargs: object,
    ) -> SidecarHandle:
        spec = SidecarSpec(
            layers=(str(layer),),
            network=network,  # type: ignore[arg-type]
            limits=Limits(memory=memory, pids=pids, cpus=cpus),
            **kwargs,  # type: ignore[arg-type]
        )
        handle = namespace_runtime.create(f"sc_t{os.getpid()}x{next(counter)}", spec)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        namespace_runtime.destroy(handle)


def git(root: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def write_project(root: Path, config: str, files: dict[str, str] | None = None) -> Path:
    """A small committed git repository with a microbuild.toml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "microbuild.toml").write_text(config)
    for name, text in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "initial")
    return root


TINY_CONFIG = """
[snapshot]
setup = ["cat requirements.txt > installed.txt", "echo built-once >> installed.txt"]
inputs = ["requirements.txt"]

[sidecar]
memory = "256MiB"
pids = 128
"""


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return write_project(
        tmp_path / "proj",
        TINY_CONFIG,
        {"requirements.txt": "dep==1\n", "src/app.py": "print('app')\n"},
    )
