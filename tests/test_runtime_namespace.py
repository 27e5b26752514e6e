"""The namespace runtime on real namespaces, overlayfs and cgroups: what a sidecar can and
cannot do, and that it leaves nothing behind."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need_isolation

from microbuild.runtime import Limits, RuntimeError_, SidecarGone, SidecarHandle, SidecarSpec
from microbuild.runtime import cgroup as cg
from microbuild.runtime.namespace import NamespaceRuntime

pytestmark = pytest.mark.isolation
SidecarFactory = Callable[..., SidecarHandle]


def run(
    rt: NamespaceRuntime, h: SidecarHandle, script: str, timeout: float = 30
) -> tuple[int, str]:
    result, out, err = rt.exec(h, ["/bin/sh", "-c", script], timeout=timeout).collect()
    return result.exit_code, (out + err).decode()


def test_exec_sees_snapshot_and_streams_exit_status(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    code, out = run(namespace_runtime, h, "cat hello.txt; pwd; hostname; exit 7")
    assert code == 7
    assert "hello from the snapshot" in out
    assert "/workspace" in out
    assert f"sidecar-{h.id[-8:]}" in out


def test_output_streams_before_the_command_ends(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    execution = namespace_runtime.exec(h, ["/bin/sh", "-c", "echo first; sleep 3; echo second"])
    started = time.monotonic()
    first = next(iter(execution.chunks()))
    assert first.data.startswith(b"first")
    assert time.monotonic() - started < 2.5
    assert execution.result().exit_code == 0


def test_stdin_env_and_cwd(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    result, out, _ = namespace_runtime.exec(
        h,
        ["/bin/sh", "-c", "cat; echo $GREETING; pwd"],
        env={"GREETING": "hi"},
        cwd="pkg",
        stdin=b"from-stdin\n",
    ).collect()
    assert result.exit_code == 0
    assert out.decode().split() == ["from-stdin", "hi", "/workspace/pkg"]


def test_missing_command_is_exit_127(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    result, _, err = namespace_runtime.exec(h, ["no-such-command-xyz"]).collect()
    assert result.exit_code == 127
    assert b"command not found: no-such-command-xyz" in err


def test_no_network_when_network_is_none(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    probe = (
        "import socket,sys\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "except OSError as e:\n    print('blocked', e); sys.exit(3)\n"
        "print('connected')\n"
    )
    try:
        isolated = make_sidecar(network="none")
        result, out, _ = namespace_runtime.exec(isolated, ["python3", "-c", probe]).collect()
        assert result.exit_code == 3, out
        assert b"blocked" in out
        # Loopback inside the sidecar is up and its own.
        code, out_s = run(
            namespace_runtime,
            isolated,
            "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); "
            "s.listen(); socket.create_connection(s.getsockname()); print('own-loopback')\"",
        )
        assert code == 0 and "own-loopback" in out_s
        # The same probe reaches the listener when the sidecar shares the host network.
        shared = make_sidecar(network="host")
        result, out, _ = namespace_runtime.exec(shared, ["python3", "-c", probe]).collect()
        assert result.exit_code == 0 and b"connected" in out
    finally:
        listener.close()


def test_cannot_see_or_signal_host_processes(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    host_pid = os.getpid()
    code, out = run(
        namespace_runtime,
        h,
        f"ls /proc | grep -c '^[0-9]'; test -e /proc/{host_pid}/cmdline && echo visible; "
        f"kill -0 {host_pid} 2>/dev/null && echo signalled; echo done",
    )
    assert code == 0
    count = int(out.split()[0])
    assert count < 10, out  # init, its sleep, the shell, ls, grep
    assert "visible" not in out and "signalled" not in out
    assert "done" in out


def test_writes_never_reach_snapshot_or_host(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory, layer: Path
) -> None:
    h = make_sidecar()
    marker = f"mb-test-{os.getpid()}-{time.monotonic_ns()}"
    code, out = run(
        namespace_runtime,
        h,
        f"echo changed > hello.txt; echo new > new.txt; rm pkg/__init__.py; "
        f"echo x > /root/{marker}; echo x > /tmp/{marker}; "
        f"(echo x > /usr/{marker}) 2>/dev/null || echo usr-readonly; "
        f"(echo x > /etc/{marker}) 2>/dev/null || echo etc-readonly; cat hello.txt",
    )
    assert code == 0
    assert "usr-readonly" in out and "etc-readonly" in out
    assert out.strip().endswith("changed")
    assert (layer / "workspace" / "hello.txt").read_text() == "hello from the snapshot\n"
    assert (layer / "workspace" / "pkg" / "__init__.py").exists()
    assert not (layer / "workspace" / "new.txt").exists()
    for host_path in (f"/root/{marker}", f"/tmp/{marker}", f"/usr/{marker}", f"/etc/{marker}"):
        assert not os.path.exists(host_path)
    # The host can read the sidecar's workspace (sync and the files API rely on it).
    assert (namespace_runtime.workspace(h) / "new.txt").read_text() == "new\n"


def test_secrets_and_privileged_operations_are_refused(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    _code, out = run(
        namespace_runtime,
        h,
        "test -s /etc/shadow && echo shadow-readable; "
        "mount -t tmpfs none /mnt 2>/dev/null && echo mounted; "
        "mount -o remount,rw /usr 2>/dev/null && echo remounted; "
        "echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo sysctl-written; "
        "grep CapBnd /proc/self/status",
    )
    assert "shadow-readable" not in out
    assert "mounted" not in out and "remounted" not in out
    assert "sysctl-written" not in out
    bounding = int(out.split("CapBnd:")[1].split()[0], 16)
    assert not bounding & (1 << 21), "CAP_SYS_ADMIN must be dropped"


def test_fork_bomb_hits_pids_limit_and_host_lives(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    bombed = make_sidecar(pids=48)
    neighbour = make_sidecar()
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('fork refused after', n, e.errno, flush=True)\n"
    )
    started = time.monotonic()
    result, out, _ = namespace_runtime.exec(bombed, ["python3", "-c", bomb], timeout=30).collect()
    assert not result.timed_out
    assert b"fork refused after" in out
    forked = int(out.split()[3])
    assert 0 < forked < 48
    assert time.monotonic() - started < 20
    # The children were killed with the command: the sidecar is back to init and its sleep.
    assert namespace_runtime.stats(bombed).processes <= 2
    assert run(namespace_runtime, bombed, "echo alive")[1].strip() == "alive"
    assert run(namespace_runtime, neighbour, "echo fine")[1].strip() == "fine"


def test_memory_hog_is_oom_killed_inside_the_sidecar(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    hogged = make_sidecar(memory=96 << 20)
    neighbour = make_sidecar()
    hog = "a = []\nwhile True:\n    a.append(bytearray(8 << 20))\n"
    result, _, _ = namespace_runtime.exec(hogged, ["python3", "-c", hog], timeout=60).collect()
    assert result.oom_killed
    assert result.signal == 9
    assert not result.timed_out
    assert namespace_runtime.is_alive(hogged)
    assert run(namespace_runtime, hogged, "echo survived")[1].strip() == "survived"
    assert run(namespace_runtime, neighbour, "echo fine")[1].strip() == "fine"


def test_suspend_stops_progress_and_resume_continues(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    execution = namespace_runtime.exec(
        h,
        [
            "/bin/sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > n.tmp; mv n.tmp n; sleep 0.01; done",
        ],
        timeout=60,
    )
    worker = threading.Thread(target=execution.result)
    worker.start()
    counter = namespace_runtime.workspace(h) / "n"

    def value() -> int:
        for _ in range(100):
            text = counter.read_text().strip() if counter.exists() else ""
            if text:
                return int(text)
            time.sleep(0.01)
        raise AssertionError("counter never written")

    try:
        time.sleep(0.3)
        assert value() > 0
        namespace_runtime.suspend(h)
        frozen_at = value()
        time.sleep(0.4)
        assert value() == frozen_at
        namespace_runtime.resume(h)
        time.sleep(0.4)
        assert value() > frozen_at
    finally:
        execution.kill()
        worker.join(10)
    assert not worker.is_alive()


def test_exec_in_suspended_sidecar_resumes_it(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    namespace_runtime.suspend(h)
    assert run(namespace_runtime, h, "echo awake", timeout=10)[1].strip() == "awake"


def test_timeout_kills_the_whole_tree(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    started = time.monotonic()
    result, _, _ = namespace_runtime.exec(
        h, ["/bin/sh", "-c", "sleep 100 & (setsid sleep 100 &); sleep 100"], timeout=0.5
    ).collect()
    assert result.timed_out
    assert time.monotonic() - started < 5
    assert namespace_runtime.stats(h).processes <= 2  # init and its own sleep


def test_background_leftovers_are_reaped_when_command_exits(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    started = time.monotonic()
    code, _ = run(namespace_runtime, h, "sleep 100 & echo started")
    assert code == 0
    assert time.monotonic() - started < 5
    assert namespace_runtime.stats(h).processes <= 2


def test_reset_gives_a_fresh_layer_under_the_same_id(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    run(namespace_runtime, h, "echo dirty > hello.txt; echo x > extra")
    fresh = namespace_runtime.reset(h)
    assert fresh.id == h.id
    assert fresh.init_pid != h.init_pid
    _code, out = run(namespace_runtime, fresh, "cat hello.txt; ls extra 2>&1 || true")
    assert "hello from the snapshot" in out
    assert "No such file" in out


def _mount_points() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def test_destroy_leaves_no_mount_cgroup_process_or_directory(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    execution = namespace_runtime.exec(h, ["/bin/sh", "-c", "sleep 100 & sleep 100"], timeout=60)
    time.sleep(0.2)
    group = cg.from_json(h.cgroup or {})
    pids = group.pids()
    assert h.init_pid in pids and len(pids) >= 3
    init_mnt_ns = os.readlink(f"/proc/{h.init_pid}/ns/mnt")
    namespace_runtime.destroy(h)
    execution.result()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _not_same_process(pid, init_mnt_ns)
    assert not group.exists()
    assert isinstance(group, (cg.CgroupV1, cg.CgroupV2))
    dirs = group.dirs.values() if isinstance(group, cg.CgroupV1) else [group.path]
    assert all(not Path(d).exists() for d in dirs)
    assert not Path(h.dir).exists()
    assert h.dir not in _mount_points()
    assert not namespace_runtime.is_alive(h)
    namespace_runtime.destroy(h)  # idempotent


def _not_same_process(pid: int, mnt_ns: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") != mnt_ns
    except OSError:
        return True


def test_dead_sidecar_is_detected(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    assert h.init_pid is not None
    os.kill(h.init_pid, 9)
    deadline = time.monotonic() + 5
    while namespace_runtime.is_alive(h) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not namespace_runtime.is_alive(h)
    with pytest.raises(SidecarGone, match="is dead"):
        namespace_runtime.exec(h, ["true"])


def test_missing_layer_is_a_clear_error(
    namespace_runtime: NamespaceRuntime, state_dir: Path
) -> None:
    from microbuild.runtime import SidecarSpec

    with pytest.raises(RuntimeError_, match="rebuild the snapshot"):
        namespace_runtime.create("sc_missing", SidecarSpec(layers=(str(state_dir / "nope"),)))
    assert not (state_dir / "sidecars" / "sc_missing").exists()


def test_orphans_are_reaped_by_init(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar(network="none")
    # A double fork inside one exec leaves an orphan for init; it exits and must not linger.
    run(namespace_runtime, h, "(sh -c 'sleep 0.2' &) ; exit 0")
    time.sleep(0.6)
    _code, out = run(namespace_runtime, h, "grep -l '^State:.*Z' /proc/[0-9]*/status || true")
    assert out.strip() == ""


def test_missing_cwd_is_an_error_not_a_silent_fallback(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    with pytest.raises(RuntimeError_, match="no directory /workspace/nope"):
        namespace_runtime.exec(h, ["pwd"], cwd="nope")
    assert run(namespace_runtime, h, "pwd")[1].strip() == "/workspace"


def test_empty_cgroup_root_is_removed_after_last_destroy(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    root = namespace_runtime.cgroup_root
    if not isinstance(root, cg.CgroupV1):
        pytest.skip("the v2 root is shared and kept")
    h = make_sidecar()
    memory_root = root.dirs["memory"]
    assert memory_root.is_dir()
    others = [p for p in memory_root.iterdir() if p.is_dir() and p.name != h.id]
    namespace_runtime.destroy(h)
    if not others:  # another test run may share the root; then it must stay
        assert not memory_root.exists()


def test_host_network_for_one_command(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    """A check that says network = "host" reaches the host's loopback; the sidecar stays offline."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
    try:
        h = make_sidecar(network="none")
        online = namespace_runtime.exec(h, ["python3", "-c", probe], host_network=True)
        assert online.result().exit_code == 0
        offline = namespace_runtime.exec(h, ["python3", "-c", probe])
        assert offline.result().exit_code != 0
    finally:
        listener.close()


# -- the zygote's exec helper and the per-command cgroups ---------------------------------------


def _helper_pid(rt: NamespaceRuntime, h: SidecarHandle) -> int:
    entry = rt._helpers.get(h.id)
    assert entry is not None, "no exec helper was made for the sidecar"
    return entry[1].pid


def _gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


def _ignored_signals(rt: NamespaceRuntime, h: SidecarHandle) -> int:
    _code, out = run(rt, h, "grep SigIgn /proc/self/status")
    return int(out.split()[1], 16)


def test_commands_get_default_signal_handling(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    """SIGINT (ignored by the zygote), SIGPIPE and SIGXFSZ (by Python) are not ignored in a
    command: `yes | head -1` ends as it does in a shell."""
    h = make_sidecar()
    ignored = _ignored_signals(namespace_runtime, h)
    for sig in (2, 13, 25):  # SIGINT, SIGPIPE, SIGXFSZ
        assert not ignored & (1 << (sig - 1)), f"signal {sig} is ignored in commands"
    assert run(namespace_runtime, h, "yes | head -1") == (0, "y\n")  # no "Broken pipe"


def test_exec_helper_lives_outside_the_sidecar_and_goes_with_it(
    state_dir: Path, layer: Path
) -> None:
    """The helper that starts commands is not one of the sidecar's processes (limits,
    accounting and freezer never see it), commands still get the sidecar's namespaces, its
    cgroup and no dangerous capability, and destroy ends the helper."""
    need_isolation()
    rt = NamespaceRuntime(state_dir, zygote=True)
    try:
        spec = SidecarSpec(layers=(str(layer),), limits=Limits(256 << 20, 64, 1.0))
        h = rt.create(f"sc_h{os.getpid()}", spec)
        code, out = run(rt, h, "cat hello.txt; grep CapBnd /proc/self/status; echo $$")
        assert code == 0 and "hello from the snapshot" in out
        bounding = int(out.split("CapBnd:")[1].split()[0], 16)
        assert not bounding & (1 << 21), "CAP_SYS_ADMIN is in the command's bounding set"
        helper = _helper_pid(rt, h)
        group = cg.from_json(h.cgroup or {})
        assert helper not in group.pids()
        assert rt.stats(h).processes == 2  # init and its sleep
        assert os.readlink(f"/proc/{helper}/ns/mnt") == os.readlink(f"/proc/{h.init_pid}/ns/mnt")
        # Its home is the host's cgroup: in no hierarchy is it under the sidecar's.
        with open(f"/proc/{helper}/cgroup") as f:
            assert h.id not in f.read()
        # The same helper serves the next commands.
        assert run(rt, h, "true")[0] == 0
        assert _helper_pid(rt, h) == helper
        rt.destroy(h)
        assert _gone(helper)
        assert h.id not in rt._helpers
    finally:
        rt.close()


def test_a_killed_exec_helper_is_replaced(state_dir: Path, layer: Path) -> None:
    need_isolation()
    rt = NamespaceRuntime(state_dir, zygote=True)
    try:
        h = rt.create(f"sc_k{os.getpid()}", SidecarSpec(layers=(str(layer),)))
        try:
            assert run(rt, h, "true")[0] == 0
            first = _helper_pid(rt, h)
            os.kill(first, 9)
            assert _gone(first)
            code, out = run(rt, h, "echo again")
            assert (code, out.strip()) == (0, "again")
            assert _helper_pid(rt, h) != first
        finally:
            rt.destroy(h)
    finally:
        rt.close()


def test_exec_helper_ends_when_the_sidecar_dies(state_dir: Path, layer: Path) -> None:
    """Killed from outside (its init gone), a sidecar's helper does not keep its namespaces
    and mounts alive."""
    need_isolation()
    rt = NamespaceRuntime(state_dir, zygote=True)
    try:
        h = rt.create(f"sc_d{os.getpid()}", SidecarSpec(layers=(str(layer),)))
        try:
            assert run(rt, h, "true")[0] == 0
            helper = _helper_pid(rt, h)
            assert h.init_pid is not None
            os.kill(h.init_pid, 9)
            assert _gone(helper)
        finally:
            rt.destroy(h)
    finally:
        rt.close()


def test_concurrent_commands_in_one_sidecar(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    """Commands started at once (one helper, cgroups from a pool) each get their own status,
    output and cgroup, and the pool keeps none of their processes."""
    h = make_sidecar()
    results: dict[int, tuple[int, str]] = {}

    def one(i: int) -> None:
        results[i] = run(namespace_runtime, h, f"sleep 0.{i % 3}; echo out{i}; exit {i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: (i, f"out{i}\n") for i in range(8)}
    group = cg.from_json(h.cgroup or {})
    assert len(group.pids()) == 2  # init and its sleep: no command left anything behind
    for child in group.children():
        assert child.pids() == []


def test_a_command_cgroup_is_reused_only_when_empty(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    h = make_sidecar()
    group = cg.from_json(h.cgroup or {})
    assert run(namespace_runtime, h, "true")[0] == 0
    kept = {c.name for c in group.children()}
    assert len(kept) == 1
    # A daemon left behind is killed at the command's end; its cgroup is then reused.
    assert run(namespace_runtime, h, "setsid sleep 100 </dev/null >/dev/null 2>&1 &")[0] == 0
    assert {c.name for c in group.children()} == kept
    assert namespace_runtime.stats(h).processes == 2


def test_an_oom_kill_counts_for_its_command_only(
    namespace_runtime: NamespaceRuntime, make_sidecar: SidecarFactory
) -> None:
    """The next command in the same (reused) cgroup is not reported OOM-killed."""
    h = make_sidecar(memory=96 << 20)
    hog = "a = []\nwhile True:\n    a.append(bytearray(8 << 20))\n"
    big, _, _ = namespace_runtime.exec(h, ["python3", "-c", hog], timeout=60).collect()
    assert big.oom_killed
    after, _, _ = namespace_runtime.exec(h, ["true"]).collect()
    assert after.exit_code == 0 and not after.oom_killed
