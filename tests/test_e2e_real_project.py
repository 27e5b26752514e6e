"""Acceptance test of snapshots and sidecars on real projects downloaded from PyPI.

Each project's snapshot is built once per module (it needs the network: `pip install`), then
every test drives the real `microbuild` CLI in subprocesses against sidecars made from it,
which have no network. The setup-failure test at the end needs no download and is fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if __package__:  # tests/ became a package
    from . import realproject
else:
    import realproject

CGROUP_ROOT = Path("/sys/fs/cgroup")
BUILD_TIMEOUT_S = 900
CALL_TIMEOUT_S = 300


def microbuild(
    state: Path, project: Path, *args: str, timeout: float = CALL_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a separate process, in the project directory."""
    return realproject.run_microbuild(state, project, *args, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, (
        f"{' '.join(map(str, proc.args[2:]))} exited {proc.returncode}, expected {code}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(proc).stdout)


def cgroup_dirs(prefix: str) -> list[str]:
    """Every cgroup directory, in any hierarchy and at any depth, whose name starts so."""
    found = []
    for dirpath, dirnames, _files in os.walk(CGROUP_ROOT):
        found += [os.path.join(dirpath, d) for d in dirnames if d.startswith(prefix)]
    return found


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file of the checkout (outside .git), by relative path."""
    digests = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] != ".git" and path.is_file() and not path.is_symlink():
            digests[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def pytest_summary(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def passed_count(output: str) -> int:
    match = re.search(r"\b(\d+) passed\b", pytest_summary(output))
    return int(match.group(1)) if match else 0


# -- the real project, its state dir and its snapshot, once per module ----------------------


@dataclass
class Built:
    name: str
    spec: realproject.RealProject
    project: Path
    state: Path
    snapshot: dict[str, Any]
    build_s: float

    def cli(self, *args: str, timeout: float = CALL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return microbuild(self.state, self.project, *args, timeout=timeout)

    def exec(self, sidecar_id: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.cli("sidecar", "exec", sidecar_id, "--", *argv)

    def pytest(self, sidecar_id: str) -> subprocess.CompletedProcess[str]:
        return self.exec(sidecar_id, "python", "-m", "pytest", "-x", "-q")


@pytest.fixture(scope="module", params=sorted(realproject.PROJECTS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    realproject.require(
        os.geteuid() == 0, "isolated sidecars (namespace runtime) need root; run as root"
    )
    name = request.param
    base = tmp_path_factory.mktemp(f"e2e-{name}")
    project = realproject.real_project(name, base / "src")
    state = base / "state"
    started = time.monotonic()
    snap = as_json(
        microbuild(state, project, "snapshot", "build", "--json", timeout=BUILD_TIMEOUT_S)
    )
    build_s = time.monotonic() - started
    return Built(name, realproject.PROJECTS[name], project, state, snap, build_s)


@pytest.fixture
def sidecar(built: Built) -> Iterator[dict[str, Any]]:
    record = as_json(built.cli("sidecar", "create", "--json"))
    yield record
    if any(s["id"] == record["id"] for s in as_json(built.cli("sidecar", "list", "--json"))):
        ok(built.cli("sidecar", "destroy", record["id"]))


# -- the acceptance test ------------------------------------------------------------------


@pytest.mark.slow
def test_snapshot_builds_from_the_real_project(built: Built) -> None:
    snap = built.snapshot
    assert re.fullmatch(r"sn_[0-9a-f]{12}", snap["id"])
    assert snap["state"] == "ready"
    assert snap["runtime"] == "namespace"
    assert snap["error"] is None
    assert snap["project"] == str(built.project)
    assert snap["base_commit"] == realproject.git(built.project, "rev-parse", "HEAD").strip()
    assert {path for path, _digest in snap["inputs"]} >= {"setup.py"}
    assert snap["size_bytes"] > 0
    listed = as_json(built.cli("snapshot", "list", "--json"))
    assert [(s["id"], s["state"]) for s in listed] == [(snap["id"], "ready")]


@pytest.mark.slow
def test_project_tests_pass_in_a_sidecar_without_network(
    built: Built, sidecar: dict[str, Any]
) -> None:
    assert re.fullmatch(r"sc_[0-9a-f]+", sidecar["id"])
    assert sidecar["runtime"] == "namespace"
    assert sidecar["state"] == "running"
    assert sidecar["snapshot"] == built.snapshot["id"]
    assert sidecar["network"] == "none"

    run = ok(built.pytest(sidecar["id"]))
    assert passed_count(run.stdout) > 0, run.stdout[-2000:]
    assert "failed" not in pytest_summary(run.stdout)
    # It is the snapshot's .venv (with the project installed in it) that ran the tests.
    where = ok(built.exec(sidecar["id"], "python", "-c", "import sys; print(sys.prefix)"))
    assert where.stdout.strip() == "/workspace/.venv"
    imported = ok(
        built.exec(
            sidecar["id"],
            "python",
            "-c",
            f"import {built.name}, importlib.metadata as m; "
            f"print({built.name}.__file__, m.version({built.name!r}))",
        )
    )
    assert imported.stdout.split() == [
        f"/workspace/src/{built.name}/__init__.py",
        built.spec.version,
    ]

    # Same sidecar: no way out. Only the loopback interface exists, and PyPI is unreachable.
    ifaces = ok(
        built.exec(
            sidecar["id"],
            "python",
            "-c",
            "import socket; print(' '.join(sorted(n for _, n in socket.if_nameindex())))",
        )
    )
    assert ifaces.stdout.split() == ["lo"]
    fetch = built.exec(
        sidecar["id"],
        "python",
        "-c",
        "import urllib.request; urllib.request.urlopen('https://pypi.org', timeout=5)",
    )
    assert fetch.returncode != 0, fetch.stdout
    assert "URLError" in fetch.stderr, fetch.stderr[-2000:]


@pytest.mark.slow
def test_bug_is_caught_in_the_sidecar_and_reset_brings_a_fresh_layer(
    built: Built, sidecar: dict[str, Any]
) -> None:
    host_before = tree_digest(built.project)
    bug_file = built.spec.bug_file
    original = (built.project / bug_file).read_bytes()

    ok(built.exec(sidecar["id"], "sed", "-i", built.spec.bug_sed, bug_file))
    changed = ok(built.exec(sidecar["id"], "cat", bug_file))
    assert changed.stdout.encode() != original, "the sed script did not inject the bug"

    broken = built.pytest(sidecar["id"])
    assert broken.returncode == 1, broken.stdout[-3000:] + broken.stderr[-2000:]
    summary = pytest_summary(broken.stdout)
    assert "1 failed" in summary, broken.stdout[-3000:]
    assert f"FAILED {bug_file}::" in broken.stdout

    # The host's checkout never saw any of it.
    assert realproject.git(built.project, "status", "--porcelain") == ""
    assert (built.project / bug_file).read_bytes() == original
    assert tree_digest(built.project) == host_before

    reset = ok(built.cli("sidecar", "reset", "--json", sidecar["id"]))
    record = json.loads(reset.stdout)
    assert (record["id"], record["state"]) == (sidecar["id"], "running")
    assert ok(built.exec(sidecar["id"], "cat", bug_file)).stdout.encode() == original
    fixed = ok(built.pytest(sidecar["id"]))
    assert passed_count(fixed.stdout) > 0
    assert "failed" not in pytest_summary(fixed.stdout)


@pytest.mark.slow
def test_second_build_reuses_the_snapshot(built: Built) -> None:
    started = time.monotonic()
    again = ok(built.cli("snapshot", "build"))
    took = time.monotonic() - started
    assert again.stdout.strip() == built.snapshot["id"]
    assert f"snapshot {built.snapshot['id']} is up to date" in again.stderr
    assert took < min(10.0, built.build_s), (took, built.build_s)
    same = as_json(built.cli("snapshot", "build", "--json"))
    assert same["id"] == built.snapshot["id"]
    assert same["created_at"] == built.snapshot["created_at"]
    assert len(as_json(built.cli("snapshot", "list", "--json"))) == 1


@pytest.mark.slow
def test_destroy_leaves_no_directory_nor_cgroup(built: Built) -> None:
    record = as_json(built.cli("sidecar", "create", "--json"))
    sid = record["id"]
    sidecar_dir = built.state / "sidecars" / sid
    assert sidecar_dir.is_dir()
    assert cgroup_dirs(sid), "expected the running sidecar to have cgroups"
    # A process left running in the background, which destroy must kill.
    ok(built.exec(sid, "sh", "-c", "sleep 600 >/dev/null 2>&1 & echo started"))

    ok(built.cli("sidecar", "destroy", sid))

    assert not sidecar_dir.exists()
    assert [p.name for p in (built.state / "sidecars").iterdir()] == []
    assert cgroup_dirs(sid) == []
    assert sid not in {s["id"] for s in as_json(built.cli("sidecar", "list", "--json"))}
    gone = built.exec(sid, "true")
    assert gone.returncode == 2, gone.stderr
    assert sid in gone.stderr


# -- the setup-failure path (fast: no download) --------------------------------------------

FAILING_SETUP = "echo first-line; echo the-real-problem >&2; exit 7"


def test_failing_setup_command_is_reported_and_leaves_nothing(tmp_path: Path) -> None:
    project = tmp_path / "tiny"
    project.mkdir()
    (project / "microbuild.toml").write_text(f"[snapshot]\nsetup = [{json.dumps(FAILING_SETUP)}]\n")
    (project / "README").write_text("a project whose setup fails\n")
    realproject.init_repo(project)
    state = tmp_path / "state"

    proc = microbuild(state, project, "snapshot", "build")

    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert FAILING_SETUP in proc.stderr
    assert "exited 7" in proc.stderr
    assert "the-real-problem" in proc.stderr
    assert "first-line" in proc.stderr  # the tail of the output, stdout included
    assert proc.stdout == ""

    snapshots = as_json(microbuild(state, project, "snapshot", "list", "--json"))
    assert all(s["state"] == "failed" for s in snapshots), snapshots
    for snap in snapshots:
        assert "exited 7" in (snap["error"] or "")
    assert as_json(microbuild(state, project, "sidecar", "list", "--json")) == []
    for sub in ("snapshots", "sidecars"):
        leftovers = [p.name for p in (state / sub).iterdir() if p.is_dir()]
        assert leftovers == [], f"left over in {sub}: {leftovers}"
    if snapshots and CGROUP_ROOT.is_dir():
        # The build sidecar is named sb_<snapshot id without sn_>_<random>.
        assert cgroup_dirs(f"sb_{snapshots[0]['id'][3:]}_") == []

    # A failed snapshot is not reused: the next build runs the command again.
    again = microbuild(state, project, "snapshot", "build")
    assert again.returncode == 3
    assert "the-real-problem" in again.stderr
