"""Snapshots and sidecars end to end through the manager, on both runtimes: build once, reuse,
rebuild on input change, detect dead sidecars, survive a restart, prune."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git, need_isolation

from microbuild.config import find_project
from microbuild.host.manager import ApplyFailed, SidecarDead, SidecarManager, TreeMismatch
from microbuild.runtime import SidecarHandle
from microbuild.snapshot import SetupFailed, SnapshotError


@pytest.fixture(params=["namespace", "process"])
def manager(request: pytest.FixtureRequest, state_dir: Path) -> Iterator[SidecarManager]:
    if request.param == "namespace":
        need_isolation()
        request.applymarker(pytest.mark.isolation)
    mgr = SidecarManager(state_dir)
    mgr.default_runtime = request.param  # type: ignore[attr-defined]
    yield mgr
    for record in mgr.list_sidecars():
        mgr.destroy(record.id)
    mgr.close()


def _rt(manager: SidecarManager) -> str:
    return manager.default_runtime  # type: ignore[attr-defined,no-any-return]


def _out(manager: SidecarManager, ident: str, script: str) -> tuple[int, str]:
    result, out, err = manager.exec(ident, ["/bin/sh", "-c", script]).collect()
    return result.exit_code, (out + err).decode()


def test_snapshot_built_once_and_reused(manager: SidecarManager, tiny_project: Path) -> None:
    project = find_project(tiny_project)
    first = manager.build_snapshot(project, runtime=_rt(manager))
    assert first.state == "ready"
    assert first.base_commit == git(tiny_project, "rev-parse", "HEAD").strip()
    assert first.source_tree == git(tiny_project, "rev-parse", "HEAD^{tree}").strip()
    messages: list[str] = []
    again = manager.build_snapshot(project, runtime=_rt(manager), progress=messages.append)
    assert again.id == first.id
    assert any("up to date" in m for m in messages)

    sidecar = manager.create_sidecar(project, runtime=_rt(manager))
    assert sidecar.state == "running" and sidecar.snapshot_id == first.id
    code, out = _out(manager, sidecar.id, "cat installed.txt; cat src/app.py")
    assert code == 0
    assert "dep==1" in out and "built-once" in out and "print('app')" in out


def test_input_change_gives_a_new_snapshot(manager: SidecarManager, tiny_project: Path) -> None:
    project = find_project(tiny_project)
    first = manager.build_snapshot(project, runtime=_rt(manager))
    (tiny_project / "requirements.txt").write_text("dep==2\n")  # uncommitted, like a user edit
    second = manager.build_snapshot(project, runtime=_rt(manager))
    assert second.id != first.id
    sidecar = manager.create_sidecar(project, runtime=_rt(manager))
    assert sidecar.snapshot_id == second.id
    assert "dep==2" in _out(manager, sidecar.id, "cat installed.txt")[1]
    # The source tree records the working tree's input file, not HEAD's.
    assert second.source_tree != first.source_tree
    # Unchanged source files do not change the key.
    (tiny_project / "src" / "app.py").write_text("print('edited')\n")
    assert manager.build_snapshot(project, runtime=_rt(manager)).id == second.id


def test_writes_stay_in_one_sidecar(manager: SidecarManager, tiny_project: Path) -> None:
    project = find_project(tiny_project)
    a = manager.create_sidecar(project, runtime=_rt(manager))
    b = manager.create_sidecar(project, runtime=_rt(manager))
    _out(manager, a.id, "echo mine > src/app.py")
    assert "print('app')" in _out(manager, b.id, "cat src/app.py")[1]
    assert (tiny_project / "src" / "app.py").read_text() == "print('app')\n"
    reset = manager.reset(a.id)
    assert reset.id == a.id
    assert "print('app')" in _out(manager, a.id, "cat src/app.py")[1]


def test_state_survives_a_new_manager(
    manager: SidecarManager, tiny_project: Path, state_dir: Path
) -> None:
    project = find_project(tiny_project)
    created = manager.create_sidecar(project, runtime=_rt(manager))
    manager.suspend(created.id)
    other = SidecarManager(state_dir)
    try:
        assert other.get(created.id).state == "suspended"
        # Any exec resumes a suspended sidecar transparently.
        result, out, _ = other.exec(created.id, ["cat", "installed.txt"]).collect()
        assert result.exit_code == 0 and b"built-once" in out
        assert other.get(created.id).state == "running"
    finally:
        other.close()


def test_dead_sidecar_is_marked_not_reused(manager: SidecarManager, tiny_project: Path) -> None:
    project = find_project(tiny_project)
    created = manager.create_sidecar(project, runtime=_rt(manager))
    handle = created.handle
    if _rt(manager) == "namespace":
        os.kill(handle["init_pid"], 9)
        deadline = time.monotonic() + 5
        while manager.get(created.id).state != "dead" and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        import shutil

        shutil.rmtree(handle["dir"])
    assert manager.get(created.id).state == "dead"
    assert [r.state for r in manager.list_sidecars()] == ["dead"]
    with pytest.raises(SidecarDead, match="is dead"):
        manager.exec(created.id, ["true"])
    manager.reset(created.id)
    assert manager.get(created.id).state == "running"
    assert _out(manager, created.id, "echo back")[0] == 0


def test_destroy_and_prune(manager: SidecarManager, tiny_project: Path, state_dir: Path) -> None:
    project = find_project(tiny_project)
    old = manager.build_snapshot(project, runtime=_rt(manager))
    sidecar = manager.create_sidecar(project, runtime=_rt(manager))
    (tiny_project / "requirements.txt").write_text("dep==3\n")
    new = manager.build_snapshot(project, runtime=_rt(manager))
    # The old snapshot is in use: prune keeps it.
    assert manager.prune_snapshots() == []
    manager.destroy(sidecar.id)
    assert not (state_dir / "sidecars" / sidecar.id).exists()
    removed = manager.prune_snapshots()
    assert [r.id for r in removed] == [old.id]
    assert not (state_dir / "snapshots" / old.id).exists()
    assert [s.id for s in manager.list_snapshots()] == [new.id]
    assert [r.id for r in manager.prune_snapshots(keep_latest=False)] == [new.id]
    assert manager.list_snapshots() == []


def test_destroy_all_leaves_no_sidecar(
    manager: SidecarManager, tiny_project: Path, state_dir: Path
) -> None:
    project = find_project(tiny_project)
    made = [manager.create_sidecar(project, runtime=_rt(manager)) for _ in range(2)]
    assert sorted(manager.destroy_all()) == sorted((s.id, None) for s in made)
    assert manager.store.list_sidecars() == []
    assert not any((state_dir / "sidecars" / s.id).exists() for s in made)
    assert manager.destroy_all() == []


def test_failing_setup_names_command_and_output(manager: SidecarManager, tmp_path: Path) -> None:
    from conftest import write_project

    root = write_project(
        tmp_path / "bad",
        '[snapshot]\nsetup = ["echo ok", "echo step-two; echo broken-dependency >&2; exit 4"]\n',
    )
    with pytest.raises(SetupFailed) as info:
        manager.build_snapshot(find_project(root), runtime=_rt(manager))
    err = info.value
    assert err.exit_code == 4
    assert "echo step-two" in str(err)
    assert "broken-dependency" in err.details()
    assert [s.state for s in manager.list_snapshots()] == ["failed"]
    snapshots_dir = manager.state_dir / "snapshots"
    assert [p.name for p in snapshots_dir.iterdir() if p.is_dir()] == []
    assert not any((manager.state_dir / "sidecars").iterdir())


def test_project_without_commit_is_a_clear_error(manager: SidecarManager, tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "microbuild.toml").write_text('[snapshot]\nsetup = ["true"]\n')
    git(root, "init", "-q")
    with pytest.raises(SnapshotError, match="no commit yet"):
        manager.build_snapshot(find_project(root), runtime=_rt(manager))


def test_prune_removes_stale_building_records(manager: SidecarManager, tiny_project: Path) -> None:
    """A build killed outright leaves a `building` record; prune cleans it, a live build not."""
    import fcntl

    from microbuild.store import SnapshotRecord

    stale = SnapshotRecord(
        id="sn_stale", key="k", project="/gone", runtime=_rt(manager), state="building"
    )
    live = SnapshotRecord(
        id="sn_live", key="k2", project="/gone2", runtime=_rt(manager), state="building"
    )
    manager.store.put_snapshot(stale)
    manager.store.put_snapshot(live)
    snapshots_dir = manager.state_dir / "snapshots"
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    (snapshots_dir / "sn_stale").mkdir()
    with open(snapshots_dir / "sn_live.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = manager.prune_snapshots(keep_latest=False)
    assert [r.id for r in removed] == ["sn_stale"]
    assert not (snapshots_dir / "sn_stale").exists()
    assert [s.id for s in manager.list_snapshots()] == ["sn_live"]


# -- sync: the patch applied inside the sidecar, one record read and one write -----------------

TREE_A = "a" * 40
TREE_B = "b" * 40


def _patch(project: Path, path: str, text: str) -> bytes:
    """`git diff --binary` of one edit of a tracked file, the file then put back."""
    target = project / path
    old = target.read_text()
    target.write_text(text)
    try:
        return git(project, "diff", "--binary").encode()
    finally:
        target.write_text(old)


def test_sync_applies_a_patch_and_records_the_tree(
    manager: SidecarManager, tiny_project: Path
) -> None:
    project = find_project(tiny_project)
    sidecar = manager.create_sidecar(project, runtime=_rt(manager))
    held = sidecar.tree
    synced = manager.sync(
        sidecar.id,
        to_tree=TREE_A,
        payload=_patch(tiny_project, "src/app.py", "print('synced')\n"),
        from_tree=held,
    )
    assert synced.tree == TREE_A and synced.state == "running"
    assert manager.get(sidecar.id).tree == TREE_A
    assert "print('synced')" in _out(manager, sidecar.id, "cat src/app.py")[1]
    assert manager.changed_since_sync(manager.get(sidecar.id)) == []
    # An empty patch only moves the tree; one from a tree the sidecar lacks is refused.
    assert manager.sync(sidecar.id, to_tree=TREE_B, payload=b"", from_tree=TREE_A).tree == TREE_B
    with pytest.raises(TreeMismatch):
        manager.sync(sidecar.id, to_tree=TREE_A, payload=b"x", from_tree=TREE_A)
    assert manager.get(sidecar.id).tree == TREE_B


@pytest.mark.parametrize("where", ["..", "/tmp", "link"], ids=["dotdot", "absolute", "symlink"])
def test_a_hostile_patch_changes_nothing(
    manager: SidecarManager, tiny_project: Path, where: str, tmp_path: Path
) -> None:
    """Paths that leave the workspace (`..`, absolute, through a symlink a command made) are
    refused whole: not even the harmless part of the patch is applied, the tree stays."""
    project = find_project(tiny_project)
    sidecar = manager.create_sidecar(project, runtime=_rt(manager))
    name = f"outside-{os.getpid()}.txt"
    target = f"{where}/{name}"
    outside = tmp_path / "escape"
    outside.mkdir()
    _out(manager, sidecar.id, f"ln -s {outside} link")
    good = _patch(tiny_project, "src/app.py", "print('half')\n")
    evil = (
        f"diff --git a/{target} b/{target}\nnew file mode 100644\n--- /dev/null\n"
        f"+++ b/{target}\n@@ -0,0 +1 @@\n+pwned\n"
    ).encode()
    with pytest.raises(ApplyFailed, match="did not apply"):
        manager.sync(sidecar.id, to_tree=TREE_A, payload=good + evil)
    assert manager.get(sidecar.id).tree == sidecar.tree
    assert "print('app')" in _out(manager, sidecar.id, "cat src/app.py")[1]
    assert not (outside / name).exists()
    assert _out(manager, sidecar.id, f"cat ../{name} /tmp/{name} 2>/dev/null")[0] != 0


def test_sync_of_a_suspended_sidecar_leaves_it_running(
    manager: SidecarManager, tiny_project: Path
) -> None:
    if _rt(manager) != "namespace":
        pytest.skip("suspension is the namespace runtime's (cgroup freezer)")
    project = find_project(tiny_project)
    sidecar = manager.create_sidecar(project, runtime=_rt(manager))
    manager.suspend(sidecar.id)
    patch = _patch(tiny_project, "src/app.py", "print('woken')\n")
    synced = manager.sync(sidecar.id, to_tree=TREE_A, payload=patch)
    assert synced.state == "running"
    assert manager.get(sidecar.id).state == "running"
    record = manager.get(sidecar.id)
    rt = manager.runtime(record.runtime)
    assert not rt.is_suspended(SidecarHandle.from_json(record.handle))
    # An empty patch does not wake it.
    manager.suspend(sidecar.id)
    assert manager.sync(sidecar.id, to_tree=TREE_B, payload=b"").state == "suspended"
    assert manager.get(sidecar.id).state == "suspended"
