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
    files = group.procs_files()

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
