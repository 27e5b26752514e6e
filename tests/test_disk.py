"""`[sidecar] disk`: the writable layer on a size-limited filesystem of its own (a sparse,
loop-mounted ext4 image), so a runaway write fills it and not the host; its loop device is
released on every way a sidecar goes; a full disk is an environment error naming the limit;
the store survives a full state disk."""

from __future__ import annotations

import glob
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_isolation, write_project

from microbuild.build.runner import exit_code_for, run_checks
from microbuild.config import CheckConfig, ConfigError, GiB, MiB, find_project, load_config
from microbuild.host.manager import SidecarManager
from microbuild.report.classify import disk_limit_cause, remedy
from microbuild.report.render import plain_report
from microbuild.runtime import Limits, SidecarHandle, SidecarSpec
from microbuild.runtime import disk as disks
from microbuild.runtime.namespace import NamespaceRuntime
from microbuild.store import RESERVE_NAME, RunRecord, Store, StoreFull

LIMIT = 64 * MiB


def attached_under(path: Path) -> list[str]:
    """Loop devices whose backing file is under `path` (deleted or not)."""
    found = []
    for name in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            backing = Path(name).read_text().strip()
        except OSError:
            continue
        if backing.startswith(str(path)):
            found.append(name.split("/")[3])
    return found


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path))]


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def run(rt: NamespaceRuntime, h: SidecarHandle, script: str) -> tuple[int, str, object]:
    result, out, err = rt.exec(h, ["/bin/sh", "-c", script], timeout=60).collect()
    return result.exit_code, (out + err).decode(), result


@pytest.fixture
def runtime(state_dir: Path) -> Iterator[NamespaceRuntime]:
    need_isolation()
    rt = NamespaceRuntime(state_dir, zygote=True)
    yield rt
    rt.close()


def spec(layer: Path, size: int | None = LIMIT) -> SidecarSpec:
    return SidecarSpec(layers=(str(layer),), limits=Limits(256 << 20, 128, 1.0), disk=size)


# -- config and classification (no root) ------------------------------------------------------


def test_disk_defaults_to_10gib_and_none_means_unlimited(tmp_path: Path) -> None:
    (tmp_path / "microbuild.toml").write_text("[sidecar]\n")
    assert load_config(tmp_path / "microbuild.toml").sidecar.disk == 10 * GiB
    (tmp_path / "microbuild.toml").write_text('[sidecar]\ndisk = "512MiB"\n')
    assert load_config(tmp_path / "microbuild.toml").sidecar.disk == 512 * MiB
    (tmp_path / "microbuild.toml").write_text('[sidecar]\ndisk = "none"\n')
    assert load_config(tmp_path / "microbuild.toml").sidecar.disk is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"15M"', "must be at least 16 MiB, got '15M'"),
        ('"lots"', "invalid size 'lots': expected a number of bytes or a number with a unit"),
        ("-1", "size must not be negative, got -1"),
        ("true", "expected a size like '4GiB' or a number of bytes, got True"),
        ('"2048TiB"', "must be at most 1PiB, got '2048TiB'"),
    ],
)
def test_bad_disk_values_are_one_line_errors(tmp_path: Path, value: str, message: str) -> None:
    (tmp_path / "microbuild.toml").write_text(f"[sidecar]\ndisk = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "microbuild.toml")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"microbuild.toml:2: [sidecar] disk: {message}")


def test_disk_limit_cause_and_remedy() -> None:
    assert disk_limit_cause(10 * GiB) == "disk limit 10GiB reached"
    assert disk_limit_cause(LIMIT) == "disk limit 64MiB reached"
    fix = remedy(disk_limit_cause(10 * GiB))
    assert fix is not None
    assert "[sidecar] disk in microbuild.toml" in fix
    assert "microbuild sidecar reset" in fix
    generic = remedy("disk full (No space left on device)")
    assert generic is not None and "[sidecar] disk" in generic


# -- the runtime (root) ------------------------------------------------------------------------


@pytest.mark.isolation
def test_writing_twice_the_limit_fails_with_enospc_and_the_host_gains_at_most_the_limit(
    runtime: NamespaceRuntime, layer: Path, state_dir: Path
) -> None:
    h = runtime.create("sc_fill", spec(layer))
    try:
        image = Path(h.dir) / disks.IMAGE
        before = allocated(image)
        assert before < 8 * MiB  # sparse: a fresh image holds only ext4's metadata
        code, out, result = run(
            runtime, h, "dd if=/dev/zero of=/workspace/big bs=1M count=128 2>&1; echo dd=$?"
        )
        assert "No space left on device" in out
        assert "dd=1" in out
        written = os.path.getsize(Path(h.dir) / "disk/upper/workspace/big")
        assert LIMIT * 3 // 4 < written <= LIMIT
        assert allocated(image) <= LIMIT
        # nothing else of the sidecar's landed on the host's filesystem
        assert not (Path(h.dir) / "upper").exists()
        # the command itself succeeded (echo): only a failed one is blamed on the disk
        assert code == 0 and getattr(result, "disk_limit_reached", "?") is None
        code, _, result = run(runtime, h, "head -c 4M /dev/zero > /workspace/more")
        assert code != 0
        assert getattr(result, "disk_limit_reached", None) == LIMIT
        # /tmp is a tmpfs of its own, untouched by the disk limit
        assert run(runtime, h, "echo ok > /tmp/x && cat /tmp/x")[1].strip() == "ok"
        # a mount of the sidecar's own: nosuid,nodev
        with open("/proc/self/mounts") as f:
            line = next(x for x in f if x.split()[1] == str(Path(h.dir) / disks.MOUNT_DIR))
        assert {"nosuid", "nodev"} <= set(line.split()[3].split(","))
    finally:
        runtime.destroy(h)
    assert attached_under(state_dir) == []
    assert not Path(h.dir).exists()
    # its image is deleted in the background, soon
    deadline = time.monotonic() + 10
    while list((state_dir / disks.POOL_DIR).glob(".trash-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list((state_dir / disks.POOL_DIR).glob(".trash-*")) == []


@pytest.mark.isolation
def test_destroy_reset_gc_and_failed_create_release_the_loop_device(
    runtime: NamespaceRuntime, layer: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = runtime.create("sc_a", spec(layer))
    assert len(attached_under(Path(h.dir))) == 1
    run(runtime, h, "echo x > /workspace/f")
    h2 = runtime.reset(h)
    assert len(attached_under(state_dir / "sidecars")) == 1
    assert run(runtime, h2, "test -e /workspace/f || echo fresh")[1].strip() == "fresh"
    runtime.destroy(h2)
    runtime.destroy(h2)  # idempotent
    assert attached_under(state_dir) == [] and mounts_under(state_dir) == []

    # a host restart: the sidecar's record is gone, its mount and loop device are not
    h3 = runtime.create("sc_b", spec(layer))
    run(runtime, h3, "sleep 600 &")
    assert "sc_b" in runtime.collect_garbage(keep=set())
    assert attached_under(state_dir) == [] and mounts_under(state_dir) == []
    assert not Path(h3.dir).exists()

    # a create that fails after the disk was mounted leaves nothing
    def broken(*args: object) -> int:
        raise RuntimeError("spawn failed")

    assert runtime._zygote is not None
    monkeypatch.setattr(runtime._zygote, "spawn_init", broken)
    with pytest.raises(RuntimeError, match="spawn failed"):
        runtime.create("sc_c", spec(layer))
    assert attached_under(state_dir) == [] and mounts_under(state_dir) == []
    assert not (state_dir / "sidecars" / "sc_c").exists()


@pytest.mark.isolation
def test_freeze_copies_a_disk_limited_layer_into_a_correct_snapshot(
    runtime: NamespaceRuntime, layer: Path, state_dir: Path
) -> None:
    (layer / "workspace" / "gone.txt").write_text("deleted in the sidecar\n")
    (layer / "workspace" / "olddir").mkdir()
    (layer / "workspace" / "olddir" / "old.txt").write_text("hidden by an opaque dir\n")
    h = runtime.create("sc_f", spec(layer))
    code, out, _ = run(
        runtime,
        h,
        "cd /workspace && echo new > new.txt && ln new.txt hard.txt && ln -s new.txt link "
        "&& rm gone.txt && rm -r olddir && mkdir olddir && echo fresh > olddir/fresh.txt "
        "&& mkdir -p deep/er && chmod 750 deep && cp /bin/true sbit && chmod u+s sbit",
    )
    assert code == 0, out
    dest = state_dir / "snapshots" / "sn_t" / "layer"
    layers = runtime.freeze(h, dest)
    assert layers == (str(dest), str(layer))
    assert attached_under(state_dir) == [] and mounts_under(state_dir) == []
    assert not os.path.ismount(dest)
    assert (dest / "workspace" / "new.txt").read_text() == "new\n"
    assert os.stat(dest / "workspace" / "sbit").st_mode & 0o4000 == 0  # stripped
    h2 = runtime.create("sc_g", SidecarSpec(layers=layers, disk=LIMIT))
    try:
        code, out, _ = run(
            runtime,
            h2,
            "cd /workspace && cat new.txt hard.txt link olddir/*; "
            "test -e gone.txt || echo gone-is-gone; test -e olddir/old.txt || echo opaque; "
            "stat -c %h new.txt; stat -c %a deep",
        )
        assert out.split() == ["new", "new", "new", "fresh", "gone-is-gone", "opaque", "2", "750"]
    finally:
        runtime.destroy(h2)
    assert attached_under(state_dir) == []


@pytest.mark.isolation
def test_unlimited_disk_keeps_the_layer_on_the_state_dir(
    runtime: NamespaceRuntime, layer: Path, state_dir: Path
) -> None:
    h = runtime.create("sc_u", spec(layer, None))
    try:
        assert run(runtime, h, "echo x > /workspace/f")[0] == 0
        assert (Path(h.dir) / "upper" / "workspace" / "f").exists()
        assert attached_under(state_dir) == []
    finally:
        runtime.destroy(h)


@pytest.mark.isolation
def test_images_are_sparse_copies_of_one_formatted_template(state_dir: Path) -> None:
    need_isolation()
    pool = disks.DiskPool(state_dir)
    pool.fill(LIMIT)
    template = state_dir / disks.POOL_DIR / f"{LIMIT}.img"
    assert oct(os.stat(state_dir / disks.POOL_DIR).st_mode & 0o777) == "0o700"
    made = template.stat().st_mtime_ns
    sdir = state_dir / "sidecars" / "x"
    sdir.mkdir(parents=True)
    for name in ("a.img", "b.img"):
        pool.take(LIMIT, sdir / name)
        assert os.path.getsize(sdir / name) == LIMIT
        assert allocated(sdir / name) <= allocated(template) < 1 * MiB
        check = subprocess.run(
            ["fsck.ext4", "-n", "-f", str(sdir / name)], capture_output=True, check=False
        )
        assert check.returncode == 0, check.stdout
    assert template.stat().st_mtime_ns == made  # formatted once
    assert [p.name for p in (state_dir / disks.POOL_DIR).iterdir()] == [template.name]


# -- through the runner ------------------------------------------------------------------------


@pytest.mark.isolation
def test_a_check_that_fills_the_disk_is_an_environment_error_exit_3(
    state_dir: Path, tmp_path: Path
) -> None:
    need_isolation()
    project = write_project(
        tmp_path / "proj",
        '[snapshot]\nsetup = ["echo built > built.txt"]\n\n'
        '[sidecar]\nmemory = "256MiB"\npids = 128\ndisk = "64MiB"\n',
        {"src/app.py": "print('app')\n"},
    )
    manager = SidecarManager(state_dir, default_runtime="namespace")
    try:
        record = manager.create_sidecar(find_project(project), runtime="namespace")
        assert record.tree
        run = run_checks(
            manager,
            record.id,
            [
                CheckConfig(name="fill", command="cat built.txt && dd if=/dev/zero of=big bs=1M"),
                CheckConfig(name="after", command="true"),
            ],
            tree=record.tree,
            config_hash="a" * 64,
            project="/proj",
            fail_fast=True,
        )
        fill = run.checks[0]
        assert (fill.status, fill.reason) == ("error", "disk limit 64MiB reached")
        assert exit_code_for(run.status) == 3
        report = plain_report(run)
        assert report.splitlines()[0] == "ERROR fill: disk limit 64MiB reached — environment"
        assert "[sidecar] disk in microbuild.toml" in report
        assert "microbuild sidecar reset" in report
        manager.reset(record.id)
        for sidecar in manager.list_sidecars():
            manager.destroy(sidecar.id)
        assert attached_under(state_dir) == []
    finally:
        manager.close()


# -- the store on a full disk (root: a small filesystem of its own) ----------------------------


@pytest.fixture
def small_fs() -> Iterator[Path]:
    need_isolation()
    work = Path(tempfile.mkdtemp(prefix="mbt-fs-", dir="/var/tmp"))
    image, mnt = work / "fs.img", work / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext4", *disks.MKFS_ARGS, str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    # autoclear detaches the loop device asynchronously (a kernel workqueue)
    deadline = time.monotonic() + 5
    while attached_under(work) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert attached_under(work) == []


def fill_up(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            pass
    with open(path, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass


def big_run(n: int) -> RunRecord:
    return RunRecord(
        id=f"mb_{n}",
        project="/proj",
        tree="t" * 40,
        config_hash="h" * 64,
        snapshot_id="sn_x",
        sidecar_id="sc_x",
        status="running",
        error="x" * (256 << 10),
    )


@pytest.mark.isolation
def test_the_store_survives_a_full_state_disk(small_fs: Path) -> None:
    store = Store(small_fs / "state.db")
    try:
        # at most 1/64 of a filesystem this small, with real blocks
        reserve = (small_fs / RESERVE_NAME).stat()
        assert 512 * 1024 < reserve.st_size <= 1 * MiB
        assert reserve.st_blocks * 512 >= reserve.st_size
        fill_up(small_fs / "filler")
        with pytest.raises(OSError):
            (small_fs / "probe").write_bytes(b"x" * (1 << 20))
        store.put_run(big_run(1))  # the reserve makes room for it
        assert not (small_fs / RESERVE_NAME).exists()
        assert store.get_run("mb_1").status == "running"
        written = ["mb_1"]
        with pytest.raises(StoreFull) as info:
            for n in range(2, 100):
                store.put_run(big_run(n))
                written.append(f"mb_{n}")
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("state disk full: no space left for ")
        assert "MICROBUILD_STATE_DIR" in message
        assert store.get_run("mb_1").status == "running"  # what was written is intact
        # a host restarting on the freed disk marks the run left running as failed
        os.unlink(small_fs / "filler")
        assert store.make_reserve()
        failed = store.fail_unfinished_runs("the host stopped during the microbuild")
        assert sorted(failed) == sorted(written)
        assert store.get_run("mb_1").status == "error"
    finally:
        store.close()
    db = sqlite3.connect(small_fs / "state.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


@pytest.mark.isolation
def test_adopting_after_the_host_lost_its_mount_mounts_the_same_filesystem_again(
    runtime: NamespaceRuntime, layer: Path, state_dir: Path
) -> None:
    h = runtime.create("sc_r", spec(layer))
    try:
        assert run(runtime, h, "echo before > /workspace/before")[0] == 0
        target = Path(h.dir) / disks.MOUNT_DIR
        subprocess.run(["umount", str(target)], check=True)  # a host in a namespace of its own
        assert not os.path.ismount(target)
        runtime.adopt(h)
        assert os.path.ismount(target)
        assert len(attached_under(state_dir)) == 1  # the same loop device, not a second one
        assert run(runtime, h, "echo after > /workspace/after")[0] == 0
        assert (target / "upper/workspace/after").read_text() == "after\n"
        assert (target / "upper/workspace/before").read_text() == "before\n"
    finally:
        runtime.destroy(h)
    assert attached_under(state_dir) == [] and mounts_under(state_dir) == []


@pytest.mark.isolation
def test_reconcile_fails_runs_left_running_and_releases_dead_sidecars_disks(
    state_dir: Path, tiny_project: Path
) -> None:
    need_isolation()
    import signal

    manager = SidecarManager(state_dir, default_runtime="namespace")
    try:
        live = manager.create_sidecar(find_project(tiny_project), runtime="namespace")
        dead = manager.create_sidecar(find_project(tiny_project), runtime="namespace")
        assert len(attached_under(state_dir / "sidecars")) == 2
        run = big_run(1)
        run.error, run.sidecar_id = None, live.id
        manager.store.put_run(run)  # a host killed mid-run leaves it so
        assert dead.handle is not None
        os.kill(dead.handle["init_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10  # until reaped (a zombie still counts as alive)
        while os.path.exists(f"/proc/{dead.handle['init_pid']}") and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        manager.close()
    manager = SidecarManager(state_dir, default_runtime="namespace")  # the host restarted
    try:
        report = manager.reconcile()
        assert report["adopted"] == [live.id] and report["dead"] == [dead.id]
        assert "mb_1" in report["failed"]
        failed = manager.store.get_run("mb_1")
        assert (failed.status, failed.error) == ("error", "the host stopped during the microbuild")
        deadline = time.monotonic() + 5
        while len(attached_under(state_dir / "sidecars")) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert attached_under(state_dir / "sidecars" / dead.id) == []
        assert len(attached_under(state_dir / "sidecars" / live.id)) == 1
        result, _, _ = manager.exec(live.id, ["/bin/sh", "-c", "echo ok > f"]).collect()
        assert result.exit_code == 0
        for record in manager.list_sidecars():
            manager.destroy(record.id)
        assert attached_under(state_dir) == []
    finally:
        manager.close()
