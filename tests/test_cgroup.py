"""Both cgroup drivers on the real kernel. This machine is hybrid: v1 controllers plus a v2
hierarchy with no controllers, so the v2 freezer and cgroup.kill are exercised for real here."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_isolation

from microbuild.runtime import cgroup as cg

pytestmark = pytest.mark.isolation


def _v2_mount() -> str | None:
    for point, fstype, _ in cg._mounts():
        if fstype == "cgroup2":
            return point
    return None


def _spawn_counter(group: cg.Cgroup, counter: Path) -> subprocess.Popen[bytes]:
    files = group.join_files()

    def join() -> None:
        for path in files:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)

    # Write then rename: a freeze must never catch the file truncated and empty.
    script = (
        f"i=0; while true; do i=$((i+1)); echo $i > {counter}.tmp; "
        f"mv {counter}.tmp {counter}; sleep 0.01; done"
    )
    return subprocess.Popen(["/bin/sh", "-c", script], preexec_fn=join)


def _value(counter: Path) -> int:
    for _ in range(200):
        text = counter.read_text().strip() if counter.exists() else ""
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError("counter never written")


@pytest.fixture
def v2_group() -> Iterator[cg.CgroupV2]:
    need_isolation()
    mount = _v2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted on this machine")
    group = cg.CgroupV2(f"{mount}/microbuild-test-{os.getpid()}", controllers=())
    group.create()
    yield group
    group.remove()


def _exercise(group: cg.Cgroup, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    proc = _spawn_counter(group, counter)
    try:
        time.sleep(0.2)
        assert proc.pid in group.pids()
        group.freeze()
        assert group.is_frozen()
        frozen_at = _value(counter)
        time.sleep(0.3)
        assert _value(counter) == frozen_at
        group.thaw()
        assert not group.is_frozen()
        time.sleep(0.3)
        assert _value(counter) > frozen_at
        group.kill_all()
        assert proc.wait(5) == -9
        assert group.pids() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_v2_freeze_thaw_kill_remove(v2_group: cg.CgroupV2, tmp_path: Path) -> None:
    _exercise(v2_group, tmp_path)
    child = v2_group.child("x1")
    child.create()
    assert child.exists()
    v2_group.remove()
    assert not v2_group.exists()


def test_v2_limits_without_controllers_say_what_to_do(v2_group: cg.CgroupV2) -> None:
    available = (v2_group.path / "cgroup.controllers").read_text().split()
    if all(c in available for c in cg.V2_CONTROLLERS):
        limits = cg.Limits(memory=64 << 20, pids=32, cpus=0.5)
        v2_group.set_limits(limits)
        assert (v2_group.path / "memory.max").read_text().strip() == str(64 << 20)
        assert (v2_group.path / "pids.max").read_text().strip() == "32"
        assert (v2_group.path / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        with pytest.raises(cg.CgroupError, match="subtree_control"):
            v2_group.set_limits(cg.Limits(memory=64 << 20, pids=32, cpus=0.5))


def test_v1_driver_limits_and_freezer(tmp_path: Path) -> None:
    need_isolation()
    root = cg.sidecar_root()
    if not isinstance(root, cg.CgroupV1):
        pytest.skip("this machine has no cgroup v1 hierarchies")
    group = root.child(f"test-{os.getpid()}")
    group.create()
    try:
        group.set_limits(cg.Limits(memory=64 << 20, pids=32, cpus=0.5))
        assert (group.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        assert (group.dirs["pids"] / "pids.max").read_text().strip() == "32"
        assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        _exercise(group, tmp_path)
    finally:
        group.remove()
    assert not any(d.exists() for d in group.dirs.values())


def test_roundtrip_through_json() -> None:
    v1 = cg.CgroupV1(
        {"memory": "/a/m", "pids": "/a/p", "cpu": "/a/c", "cpuacct": "/a/ca", "freezer": "/a/f"}
    )
    again = cg.from_json(v1.to_json())
    assert isinstance(again, cg.CgroupV1) and again.dirs == v1.dirs
    v2 = cg.CgroupV2("/sys/fs/cgroup/microbuild/x", ("memory",))
    back = cg.from_json(v2.to_json())
    assert isinstance(back, cg.CgroupV2)
    assert back.path == v2.path and back.controllers == ("memory",)


def _v1_root() -> cg.CgroupV1:
    need_isolation()
    root = cg.sidecar_root()
    if not isinstance(root, cg.CgroupV1):
        pytest.skip("this machine has no cgroup v1 hierarchies")
    return root


def test_join_files_move_a_forked_process_without_the_global_lock(tmp_path: Path) -> None:
    """On v1 a just-forked process joins through `tasks` (its one thread, which the kernel
    moves without the lock whose RCU grace period made cgroup.procs writes slow); all of it
    is then in the cgroup, in every hierarchy."""
    group = _v1_root().child(f"join-{os.getpid()}")
    group.create()
    try:
        assert all(path.endswith("/tasks") for path in group.join_files())
        assert all(path.endswith("/cgroup.procs") for path in group.procs_files())
        proc = _spawn_counter(group, tmp_path / "n")
        try:
            time.sleep(0.1)
            for path in group.procs_files():
                assert str(proc.pid) in Path(path).read_text().split()
        finally:
            proc.kill()
            proc.wait()
    finally:
        group.remove()


def test_home_join_files_lead_back_to_this_process_cgroups() -> None:
    """Each file of the sidecar root's hierarchies has its twin in this process's own cgroup
    there: where the exec helper goes back to after starting a command."""
    root = _v1_root()
    homes = cg.home_join_files(root.join_files())
    assert len(homes) == len(root.join_files())
    for join, home in zip(root.join_files(), homes, strict=True):
        assert Path(home).name == Path(join).name == "tasks"
        assert str(os.getpid()) in Path(home).parent.joinpath("cgroup.procs").read_text().split()
    with pytest.raises(cg.CgroupError, match="no cgroup filesystem"):
        cg.home_join_files(["/tmp/not-a-cgroup/tasks"])


def test_remove_kills_what_is_left_and_removes_an_empty_one_at_once(tmp_path: Path) -> None:
    root = _v1_root()
    busy = root.child(f"busy-{os.getpid()}", only=("freezer", "memory"))
    idle = root.child(f"idle-{os.getpid()}", only=("freezer", "memory"))
    for group in (busy, idle):
        group.create()
    proc = _spawn_counter(busy, tmp_path / "n")
    try:
        time.sleep(0.1)
        idle.remove()
        assert not any(idle.dirs[name].exists() for name in idle.owned)
        busy.remove()  # its process keeps it busy: killed first, then removed
        assert proc.wait(5) == -9
        assert not any(busy.dirs[name].exists() for name in busy.owned)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for group in (busy, idle):
            group.remove()
    root.prune_empty()


def test_v2_remove_kills_what_is_left(v2_group: cg.CgroupV2, tmp_path: Path) -> None:
    child = v2_group.child("busy")
    child.create()
    proc = _spawn_counter(child, tmp_path / "n")
    time.sleep(0.1)
    child.remove()
    assert proc.wait(5) == -9
    assert not child.exists()


def test_a_v1_child_needs_a_freezer_of_its_own() -> None:
    v1 = cg.CgroupV1(
        {"memory": "/a/m", "pids": "/a/p", "cpu": "/a/c", "cpuacct": "/a/ca", "freezer": "/a/f"}
    )
    with pytest.raises(ValueError, match="freezer"):
        v1.child("x", only=("memory",))
    assert v1.child("x", only=("freezer", "memory")).owned == ("freezer", "memory")
