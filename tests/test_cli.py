"""The CLI as users and scripts call it: real subprocesses, JSON shapes and exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_isolation, write_project


def mb(
    state_dir: Path, cwd: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MICROBUILD_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "microbuild", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )


@pytest.mark.isolation
def test_sidecar_lifecycle_json(state_dir: Path, tiny_project: Path) -> None:
    need_isolation()
    built = mb(state_dir, tiny_project, "snapshot", "build", "--json")
    assert built.returncode == 0, built.stderr
    snap = json.loads(built.stdout)
    assert snap["state"] == "ready" and snap["id"].startswith("sn_")

    created = mb(state_dir, tiny_project, "sidecar", "create", "--json")
    assert created.returncode == 0, created.stderr
    sidecar = json.loads(created.stdout)
    assert sidecar["runtime"] == "namespace"
    assert sidecar["state"] == "running"
    assert sidecar["snapshot"] == snap["id"]
    ident = sidecar["id"]

    listed = json.loads(mb(state_dir, tiny_project, "sidecar", "list", "--json").stdout)
    assert [s["id"] for s in listed] == [ident]

    ran = mb(
        state_dir,
        tiny_project,
        "sidecar",
        "exec",
        ident,
        "--",
        "sh",
        "-c",
        "cat installed.txt; echo to-stderr >&2; exit 5",
    )
    assert ran.returncode == 5
    assert "built-once" in ran.stdout and "to-stderr" in ran.stderr

    as_json = mb(
        state_dir, tiny_project, "sidecar", "exec", "--json", ident[:6], "--", "sh", "-c", "echo hi"
    )
    assert json.loads(as_json.stdout)["stdout"] == "hi\n"

    timed = mb(
        state_dir, tiny_project, "sidecar", "exec", "--timeout", "0.5", ident, "--", "sleep", "60"
    )
    assert timed.returncode == 124
    assert "timed out" in timed.stderr

    for action, state in (("suspend", "suspended"), ("resume", "running"), ("reset", "running")):
        out = mb(state_dir, tiny_project, "sidecar", action, ident, "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["state"] == state

    gone = mb(state_dir, tiny_project, "sidecar", "destroy", ident, "--json")
    assert json.loads(gone.stdout)["state"] == "destroyed"
    assert not (state_dir / "sidecars" / ident).exists()
    snaps = json.loads(mb(state_dir, tiny_project, "snapshot", "list", "--json").stdout)
    assert [s["id"] for s in snaps] == [snap["id"]]


def test_unknown_sidecar_is_one_line_and_exit_2(state_dir: Path, tmp_path: Path) -> None:
    for args in (
        ["sidecar", "exec", "sc_nope", "--", "true"],
        ["sidecar", "destroy", "sc_nope"],
        ["sidecar", "suspend", "sc_nope"],
    ):
        out = mb(state_dir, tmp_path, *args)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert lines == [
            "error: no sidecar with id 'sc_nope'; `microbuild sidecar list` shows them"
        ]


def test_bad_config_names_file_line_and_key(state_dir: Path, tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", '[snapshot]\nsetup = []\n\n[sidecar]\nmemroy = "1G"\n')
    out = mb(state_dir, root, "snapshot", "build")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: microbuild.toml:5: [sidecar] unknown key 'memroy' (did you mean 'memory'?)"
    )
    root2 = write_project(tmp_path / "q", "[sidecar]\npids = 'lots'\n")
    out = mb(state_dir, root2, "sidecar", "create")
    assert out.returncode == 2
    assert "microbuild.toml:2" in out.stderr and "pids" in out.stderr and "'lots'" in out.stderr


def test_no_project_is_exit_2(state_dir: Path, tmp_path: Path) -> None:
    out = mb(state_dir, tmp_path, "sidecar", "create")
    assert out.returncode == 2
    assert "microbuild init" in out.stderr


def test_failing_setup_is_exit_3_with_tail(state_dir: Path, tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p",
        '[snapshot]\nsetup = ["echo working; echo no-such-package-zz >&2; exit 9"]\n'
        '[sidecar]\nruntime = "process"\n',
    )
    out = mb(state_dir, root, "snapshot", "build")
    assert out.returncode == 3
    assert "`echo working; echo no-such-package-zz >&2; exit 9` exited 9" in out.stderr
    assert "| no-such-package-zz" in out.stderr


def test_process_runtime_warns_it_does_not_isolate(state_dir: Path, tiny_project: Path) -> None:
    created = mb(state_dir, tiny_project, "sidecar", "create", "--runtime", "process", "--json")
    assert created.returncode == 0, created.stderr
    assert "unisolated" in created.stderr
    data = json.loads(created.stdout)
    assert data["runtime"] == "process"
    ran = mb(state_dir, tiny_project, "sidecar", "exec", data["id"], "--", "cat", "installed.txt")
    assert ran.returncode == 0 and "built-once" in ran.stdout
    assert mb(state_dir, tiny_project, "sidecar", "destroy", data["id"]).returncode == 0


def test_exec_needs_a_command(state_dir: Path, tmp_path: Path) -> None:
    out = mb(state_dir, tmp_path, "sidecar", "exec", "sc_x")
    assert out.returncode == 2


@pytest.mark.isolation
def test_two_projects_on_one_snapshot_each_own_their_sidecar(
    state_dir: Path, tmp_path: Path
) -> None:
    """Same setup, same inputs: one snapshot serves both repositories, but each validate finds
    and reuses its own project's sidecar (none leaks) and `sidecar list` shows it there."""
    need_isolation()
    config = '[sidecar]\nmemory = "256MiB"\n\n[[check]]\nname = "t"\ncommand = "test -f own.txt"\n'
    roots = [
        write_project(tmp_path / name, config, {"own.txt": name, "requirements.txt": "x==1\n"})
        for name in ("alpha", "beta")
    ]
    for _ in range(2):
        for root in roots:
            done = mb(state_dir, root, "validate", "--json")
            assert done.returncode == 0, done.stdout + done.stderr
    everyone = json.loads(mb(state_dir, roots[0], "sidecar", "list", "--all", "--json").stdout)
    assert len({s["snapshot"] for s in everyone}) == 1
    assert sorted(s["project"] for s in everyone) == sorted(str(r) for r in roots)
    for root in roots:
        own = json.loads(mb(state_dir, root, "sidecar", "list", "--json").stdout)
        assert [s["project"] for s in own] == [str(root)]
    mb(state_dir, roots[0], "host", "stop")
