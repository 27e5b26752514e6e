"""The process runtime: same interface, no isolation, but paths and timeouts still behave."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from microbuild.runtime import RuntimeError_, SidecarSpec
from microbuild.runtime.process import ProcessRuntime


@pytest.fixture
def runtime(state_dir: Path) -> ProcessRuntime:
    return ProcessRuntime(state_dir)


def test_copy_exec_reset_destroy(runtime: ProcessRuntime, layer: Path) -> None:
    h = runtime.create("sc_p1", SidecarSpec(layers=(str(layer),)))
    result, out, _ = runtime.exec(h, ["sh", "-c", "cat hello.txt; echo x > hello.txt"]).collect()
    assert result.exit_code == 0 and b"hello from the snapshot" in out
    assert (layer / "workspace" / "hello.txt").read_text() == "hello from the snapshot\n"
    h = runtime.reset(h)
    _, out, _ = runtime.exec(h, ["cat", "hello.txt"]).collect()
    assert out == b"hello from the snapshot\n"
    runtime.destroy(h)
    assert not Path(h.dir).exists()
    assert not runtime.is_alive(h)


def test_cwd_is_the_sidecars_not_the_hosts(runtime: ProcessRuntime, layer: Path) -> None:
    h = runtime.create("sc_p2", SidecarSpec(layers=(str(layer),)))
    for cwd in ("/workspace", "/workspace/pkg", "pkg"):
        _, out, _ = runtime.exec(h, ["pwd"], cwd=cwd).collect()
        assert out.decode().strip().endswith(("workspace", "workspace/pkg")), cwd
        assert out.decode().startswith(h.dir)
    for bad in ("/tmp", "missing", "../..", "/workspace/../etc"):
        with pytest.raises(RuntimeError_):
            runtime.exec(h, ["pwd"], cwd=bad)
    runtime.destroy(h)


def test_timeout_kills_the_process_group(runtime: ProcessRuntime, layer: Path) -> None:
    h = runtime.create("sc_p3", SidecarSpec(layers=(str(layer),)))
    started = time.monotonic()
    result, _, _ = runtime.exec(
        h, ["sh", "-c", "sleep 30 & sleep 30; echo never"], timeout=0.5
    ).collect()
    assert result.timed_out and time.monotonic() - started < 5
    result, _, err = runtime.exec(h, ["no-such-binary-qq"]).collect()
    assert result.exit_code == 127 and b"command not found" in err
    runtime.destroy(h)
