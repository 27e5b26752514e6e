"""Microbuilds: checks run in a real namespace sidecar through a real `SidecarManager`, in order
and fail-fast, with timeouts, logs, core-seconds, the cache, the plain report, the HTTP API
(in-process ASGI and a real uvicorn on a Unix socket) and `microbuild runs`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import need_isolation

from microbuild.build.runner import (
    Cancellation,
    exit_code_for,
    find_cached,
    log_file,
    run_checks,
    run_microbuild,
)
from microbuild.config import CheckConfig, ProjectConfig, config_hash, find_project
from microbuild.host.app import create_app
from microbuild.host.manager import SidecarManager
from microbuild.report.render import plain_report
from microbuild.report.tokens import count_file_tokens
from microbuild.store import SCHEMA_VERSION, CheckResult, RunRecord, Store

HASH_A = "a" * 64
HASH_B = "b" * 64


def check(name: str, command: str, **kwargs: Any) -> CheckConfig:
    return CheckConfig(name=name, command=command, **kwargs)


@pytest.fixture
def manager(state_dir: Path) -> Iterator[SidecarManager]:
    need_isolation()
    mgr = SidecarManager(state_dir, default_runtime="namespace")
    yield mgr
    for record in mgr.list_sidecars():
        mgr.destroy(record.id)
    mgr.close()


@pytest.fixture
def sidecar(manager: SidecarManager, tiny_project: Path) -> str:
    return manager.create_sidecar(find_project(tiny_project), runtime="namespace").id


def run(
    manager: SidecarManager,
    sidecar: str,
    checks: list[CheckConfig],
    *,
    config_hash: str = HASH_A,
    fail_fast: bool = True,
    events: list[dict[str, Any]] | None = None,
    cancel: Cancellation | None = None,
) -> RunRecord:
    tree = manager.get(sidecar).tree
    assert tree
    return run_checks(
        manager,
        sidecar,
        checks,
        tree=tree,
        config_hash=config_hash,
        project="/proj",
        fail_fast=fail_fast,
        emit=None if events is None else events.append,
        cancel=cancel,
    )


def statuses(record: RunRecord) -> list[tuple[str, str]]:
    return [(c.name, c.status) for c in record.checks]


# -- the runner --------------------------------------------------------------------------------


@pytest.mark.isolation
def test_fail_fast_runs_in_order_and_skips_the_rest(manager: SidecarManager, sidecar: str) -> None:
    events: list[dict[str, Any]] = []
    record = run(
        manager,
        sidecar,
        [
            check("lint", "echo linted > lint.out"),
            check("types", "test -f lint.out && echo 'types: 1 error' && exit 2"),
            check("tests", "echo never"),
        ],
        events=events,
    )
    assert statuses(record) == [("lint", "passed"), ("types", "failed"), ("tests", "skipped")]
    assert record.status == "failed" and exit_code_for(record.status) == 1
    assert record.checks[1].exit_code == 2
    assert record.checks[2].log_path is None
    assert [(e["event"], e.get("check")) for e in events[:2]] == [
        ("check_started", "lint"),
        ("check_finished", events[1]["check"]),
    ]
    kinds = [e["event"] for e in events]
    assert kinds == ["check_started", "check_finished"] * 2 + ["done"]
    assert events[3]["check"]["name"] == "types" and events[3]["check"]["status"] == "failed"
    assert events[-1]["run"]["id"] == record.id and events[-1]["run"]["status"] == "failed"
    stored = manager.store.get_run(record.id)
    assert statuses(stored) == statuses(record)
    assert stored.status == "failed" and stored.wall_s > 0


@pytest.mark.isolation
def test_no_fail_fast_runs_every_check(manager: SidecarManager, sidecar: str) -> None:
    record = run(
        manager,
        sidecar,
        [check("a", "exit 1"), check("b", "exit 0"), check("c", "exit 3")],
        fail_fast=False,
    )
    assert statuses(record) == [("a", "failed"), ("b", "passed"), ("c", "failed")]
    assert [c.exit_code for c in record.checks] == [1, 0, 3]
    assert record.status == "failed"
    verdict = plain_report(record).splitlines()[0]
    assert verdict.startswith("FAILED a (exit 1), c (exit 3) in ") and verdict.endswith(" — code")


@pytest.mark.isolation
def test_timeout_kills_the_tree_and_is_an_environment_error(
    manager: SidecarManager, sidecar: str
) -> None:
    started = time.monotonic()
    record = run(
        manager,
        sidecar,
        [
            check("slow", "(sleep 41 &) ; echo started; sleep 42", timeout_s=0.5),
            check("after", "true"),
        ],
    )
    assert time.monotonic() - started < 10
    assert statuses(record) == [("slow", "timed_out"), ("after", "skipped")]
    assert record.status == "error" and exit_code_for(record.status) == 3
    assert plain_report(record).splitlines()[0] == (
        "ERROR slow: timed out after 0.5 s — environment"
    )
    assert "fix: raise the check's timeout_s in microbuild.toml" in plain_report(record)
    # Environment failures are never cached.
    assert find_cached(manager.store, record.tree, HASH_A, record.snapshot_id) is None
    # Nothing the timed-out check started is left running in the sidecar.
    leftovers = run(
        manager,
        sidecar,
        [check("ps", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done")],
    )
    text = Path(str(leftovers.checks[0].log_path)).read_text()
    assert "sleep 41" not in text and "sleep 42" not in text


@pytest.mark.isolation
def test_command_not_found_is_an_environment_error(manager: SidecarManager, sidecar: str) -> None:
    record = run(manager, sidecar, [check("tests", "no-such-tool-here --run"), check("x", "true")])
    assert record.checks[0].exit_code == 127
    assert statuses(record) == [("tests", "error"), ("x", "skipped")]
    assert record.status == "error"
    report = plain_report(record)
    assert report.splitlines()[0] == (
        "ERROR tests: command not found: no-such-tool-here (exit 127) — environment"
    )
    assert "fix: install the command in [snapshot] setup in microbuild.toml, then " in report
    assert find_cached(manager.store, record.tree, HASH_A, record.snapshot_id) is None


@pytest.mark.isolation
def test_logs_keep_all_output_interleaved(manager: SidecarManager, sidecar: str) -> None:
    script = (
        "i=0; while [ $i -lt 3000 ]; do echo out-$i; i=$((i+1)); done; "
        "echo err-line >&2; sleep 0.2; echo last-out"
    )
    record = run(manager, sidecar, [check("noisy", script)])
    assert record.status == "passed"
    path = log_file(manager.state_dir, record.id, "noisy")
    assert record.checks[0].log_path == str(path)
    lines = path.read_text().splitlines()
    assert lines[:3] == ["out-0", "out-1", "out-2"]
    assert "out-2999" in lines and "err-line" in lines
    assert lines.index("err-line") > lines.index("out-2999")
    assert lines[-1] == "last-out"
    assert len(lines) == 3002


@pytest.mark.isolation
def test_core_seconds_of_a_busy_check(manager: SidecarManager, sidecar: str) -> None:
    busy = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"
    record = run(manager, sidecar, [check("busy", busy), check("idle", "sleep 0.3")])
    busy_cpu, idle_cpu = (c.cpu_s or 0.0 for c in record.checks)
    assert busy_cpu > 0.05
    assert idle_cpu < busy_cpu
    assert record.cpu_s == pytest.approx(busy_cpu + idle_cpu)
    assert record.wall_s >= record.checks[0].duration_s + record.checks[1].duration_s


@pytest.mark.isolation
def test_cache_by_tree_config_and_snapshot(manager: SidecarManager, sidecar: str) -> None:
    record = run(manager, sidecar, [check("ok", "true")])
    key = (record.tree, HASH_A, record.snapshot_id)
    found = find_cached(manager.store, *key)
    assert found is not None and found.id == record.id
    assert find_cached(manager.store, record.tree, HASH_B, record.snapshot_id) is None
    assert find_cached(manager.store, "f" * 40, HASH_A, record.snapshot_id) is None
    assert find_cached(manager.store, record.tree, HASH_A, "sn_other") is None

    # A failed result is about the code: cached too (a later one wins).
    failed = run(manager, sidecar, [check("bad", "exit 1"), check("x", "true")], config_hash=HASH_B)
    hit = find_cached(manager.store, record.tree, HASH_B, record.snapshot_id)
    assert hit is not None and hit.id == failed.id
    # ...but it stopped early: a caller who wants every check run does not take it.
    complete = find_cached(manager.store, record.tree, HASH_B, record.snapshot_id, complete=True)
    assert complete is None

    # run_microbuild answers from the cache: nothing runs, the answer is recorded.
    events: list[dict[str, Any]] = []
    answer = run_microbuild(
        manager,
        sidecar,
        [check("ok", "exit 99")],
        tree=record.tree,
        config_hash=HASH_A,
        project="/proj",
        emit=events.append,
    )
    assert [e["event"] for e in events] == ["done"]
    assert events[0]["run"]["cached"] is True and events[0]["run"]["cached_from"] == record.id
    assert answer.status == "passed" and answer.cached_from == record.id
    assert plain_report(answer).splitlines()[0].endswith("(cached)")
    # The answer is not itself what later lookups return.
    again = find_cached(manager.store, *key)
    assert again is not None and again.id == record.id


@pytest.mark.isolation
def test_error_runs_are_never_cached(manager: SidecarManager, sidecar: str) -> None:
    hashed = "c" * 64
    first = run(manager, sidecar, [check("t", "exit 127")], config_hash=hashed)
    assert first.status == "error"
    assert find_cached(manager.store, first.tree, hashed, first.snapshot_id) is None
    # run_microbuild runs it again (it would pass now: the environment was fixed).
    second = run_microbuild(
        manager,
        sidecar,
        [check("t", "true")],
        tree=first.tree,
        config_hash=hashed,
        project="/proj",
    )
    assert second.cached_from is None and second.status == "passed"


@pytest.mark.isolation
def test_report_of_a_failing_check(manager: SidecarManager, sidecar: str) -> None:
    script = (
        "printf 'collected 4 items\\n\\n'; "
        "printf 'tests/test_a.py ..  [ 50%%]\\n'; printf '....  [ 50%%]\\n'; "
        "printf 'tests/test_b.py F.  [100%%]\\n\\n\\n'; "
        "printf '\\033[31mE   AssertionError: boom\\033[0m\\n'; "
        "printf 'tests/test_b.py:7: AssertionError\\n'; "
        "printf '1 failed, 3 passed in 0.12s\\n'; exit 1"
    )
    record = run(manager, sidecar, [check("lint", "true"), check("tests", script)])
    report = plain_report(record)
    lines = report.splitlines()
    assert re.fullmatch(r"FAILED tests \(exit 1\) in \d+\.\d s — code", lines[0]), lines[0]
    assert "E   AssertionError: boom" in report  # without its colour codes
    assert "\x1b" not in report
    assert "tests/test_b.py:7: AssertionError" in report
    assert "[ 50%]" not in report and "[100%]" not in report
    assert "collected 4 items" in report
    assert lines[-1] == f"full log: microbuild runs show {record.id} --log tests"
    assert "lint" not in report  # it passed: nothing to say about it

    passed = run(manager, sidecar, [check("a", "true"), check("b", "true")])
    assert re.fullmatch(r"PASSED 2 checks in \d+\.\d s\n", plain_report(passed))


@pytest.mark.isolation
def test_cancellation_kills_the_running_check(manager: SidecarManager, sidecar: str) -> None:
    cancel = Cancellation()
    result: list[RunRecord] = []
    worker = threading.Thread(
        target=lambda: result.append(
            run(manager, sidecar, [check("long", "sleep 60"), check("next", "true")], cancel=cancel)
        )
    )
    started = time.monotonic()
    worker.start()
    time.sleep(0.5)
    cancel.cancel("cancelled: test")
    worker.join(20)
    assert not worker.is_alive() and time.monotonic() - started < 10
    (record,) = result
    assert statuses(record) == [("long", "error"), ("next", "skipped")]
    assert record.checks[0].reason == "cancelled: test"
    assert record.status == "error"


@pytest.mark.isolation
def test_a_sidecar_that_dies_is_an_environment_error(manager: SidecarManager, sidecar: str) -> None:
    init_pid = manager.get(sidecar).handle["init_pid"]
    timer = threading.Timer(0.5, os.kill, (init_pid, signal.SIGKILL))
    timer.start()
    try:
        record = run(manager, sidecar, [check("long", "sleep 30"), check("next", "true")])
    finally:
        timer.cancel()
    assert record.status == "error"
    assert record.checks[0].status == "error"
    assert "sidecar died" in (record.checks[0].reason or "")
    assert plain_report(record).splitlines()[0] == (
        "ERROR long: the sidecar died during the check — environment"
    )
    assert "microbuild sidecar reset" in plain_report(record)


@pytest.mark.isolation
def test_a_tree_changed_during_the_run_is_not_a_result(
    manager: SidecarManager, sidecar: str
) -> None:
    def sync_meanwhile() -> None:
        record = manager.store.get_sidecar(sidecar)
        record.tree = "e" * 40
        manager.store.put_sidecar(record)

    timer = threading.Timer(0.3, sync_meanwhile)
    timer.start()
    try:
        record = run(manager, sidecar, [check("t", "sleep 1")])
    finally:
        timer.cancel()
    assert statuses(record) == [("t", "passed")]
    assert record.status == "error" and "tree changed" in (record.error or "")
    assert plain_report(record).startswith("ERROR the sidecar's tree changed during the run")
    assert find_cached(manager.store, record.tree, HASH_A, record.snapshot_id) is None


# -- parsed failures, classification and tokens, from real tools in a real sidecar -------------

CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = """from calc import add


def test_add_ok():
    assert add(1, 2) == 3


def test_add_wrong():
    assert add(2, 2) == 5


def test_add_types():
    assert add("a", 1) == "a1"
"""
TEST_NET = "import requests_not_installed_anywhere\n\n\ndef test_get():\n    pass\n"
# The sidecar's Python is the host's base interpreter: use its pytest when it has one, else
# install pytest into the snapshot's venv (with network, once per snapshot).
PYTEST_SETUP = (
    "python3 -c 'import pytest' 2>/dev/null || "
    "(python3 -m venv .venv && .venv/bin/pip install -q pytest)"
)


@pytest.fixture
def pytest_sidecar(manager: SidecarManager, tmp_path: Path) -> str:
    from conftest import write_project

    root = write_project(
        tmp_path / "calc",
        f'[snapshot]\nsetup = ["{PYTEST_SETUP}"]\n\n[sidecar]\nmemory = "512MiB"\n',
        {"calc.py": CALC, "tests/test_calc.py": TEST_CALC, "tests/test_net.py": TEST_NET},
    )
    return manager.create_sidecar(find_project(root), runtime="namespace").id


@pytest.mark.isolation
def test_real_pytest_failures_are_parsed_classified_and_counted(
    manager: SidecarManager, pytest_sidecar: str
) -> None:
    from microbuild.build.runner import run_json

    record = run(
        manager,
        pytest_sidecar,
        [check("tests", "python -m pytest -q -p no:cacheprovider tests/test_calc.py")],
    )
    assert statuses(record) == [("tests", "failed")]
    failures = record.checks[0].failures
    by_id = {f["id"]: f for f in failures}
    assert set(by_id) == {
        "tests/test_calc.py::test_add_wrong",
        "tests/test_calc.py::test_add_types",
    }
    assert re.fullmatch(
        r"tests/test_calc\.py:\d+", by_id["tests/test_calc.py::test_add_wrong"]["location"]
    )
    assert all(f["kind"] == "code" and f["check"] == "tests" for f in failures)
    # Stored with the run.
    assert manager.store.get_run(record.id).checks[0].failures == failures

    report = plain_report(record)
    assert re.match(r"FAILED tests \(2 of 3\) in \d+\.\d s — code\n", report), report
    assert "tests/test_calc.py::test_add_wrong" in report
    assert "tests/test_calc.py::test_add_types" in report
    assert report.splitlines()[-1] == f"full log: microbuild runs show {record.id} --log tests"

    stored = manager.store.get_run(record.id)
    assert stored.raw_tokens and stored.report_tokens
    assert stored.raw_tokens > stored.report_tokens
    shown = run_json(stored)
    assert shown["tokens"] == {
        "report": stored.report_tokens,
        "raw": stored.raw_tokens,
        "checks": stored.check_tokens,
    }
    # raw is the CI-style log: the snapshot's setup output (the pip install, if it ran) and
    # the check's own output, which is a figure of its own.
    setup_log = manager.setup_log(pytest_sidecar)
    assert setup_log.is_file() and setup_log.read_text().startswith(f"$ {PYTEST_SETUP}\n")
    assert stored.check_tokens and stored.raw_tokens >= stored.check_tokens
    assert stored.raw_tokens - stored.check_tokens == count_file_tokens(setup_log)
    # Per-test durations from the JUnit XML, for sharding: every test that ran, passing too.
    durations = manager.store.test_durations("/proj", "tests")
    assert set(durations) == {
        "tests/test_calc.py::test_add_ok",
        "tests/test_calc.py::test_add_wrong",
        "tests/test_calc.py::test_add_types",
    }
    assert all(0 <= d < 60 for d in durations.values())
    assert {(f["check"], f["id"], f["kind"]) for f in shown["failures"]} == {
        ("tests", "tests/test_calc.py::test_add_wrong", "code"),
        ("tests", "tests/test_calc.py::test_add_types", "code"),
    }
    assert set(shown["failures"][0]) == {
        "check",
        "id",
        "ids",
        "more_ids",
        "location",
        "message",
        "kind",
        "count",
    }
    tight = run_json(stored, report_tokens=200)
    assert tight["tokens"]["report"] <= 200 and "test_add_wrong" in tight["report"]

    # The machine-readable artifact went to the sidecar's /tmp, never into the synced tree.
    workspace = manager.workspace(pytest_sidecar)
    assert not [p for p in workspace.rglob("*.xml") if ".venv" not in p.parts]


@pytest.mark.isolation
def test_junit_instrumentation_keeps_the_users_pytest_addopts(
    manager: SidecarManager, tmp_path: Path
) -> None:
    """[sidecar] env sets PYTEST_ADDOPTS (-rA: a line per passed test); the runner's --junitxml
    is appended to it, not put in its place: both take effect."""
    from conftest import write_project

    root = write_project(
        tmp_path / "calc",
        f'[snapshot]\nsetup = ["{PYTEST_SETUP}"]\n\n[sidecar]\nmemory = "512MiB"\n'
        'env = { PYTEST_ADDOPTS = "-rA" }\n',
        {"calc.py": CALC, "tests/test_calc.py": TEST_CALC},
    )
    sidecar = manager.create_sidecar(find_project(root), runtime="namespace").id
    record = run(manager, sidecar, [check("tests", "python -m pytest -p no:cacheprovider tests")])
    log = Path(record.checks[0].log_path or "").read_text()
    assert "PASSED tests/test_calc.py::test_add_ok" in log  # the user's -rA
    assert "generated xml file: /tmp/" in log  # ours
    assert {f["id"] for f in record.checks[0].failures} == {
        "tests/test_calc.py::test_add_wrong",
        "tests/test_calc.py::test_add_types",
    }


@pytest.mark.isolation
def test_a_missing_third_party_module_is_an_environment_error(
    manager: SidecarManager, pytest_sidecar: str
) -> None:
    record = run(
        manager,
        pytest_sidecar,
        [check("tests", "python -m pytest -q -p no:cacheprovider tests/test_net.py")],
        config_hash="d" * 64,
    )
    result = record.checks[0]
    assert result.status == "error" and record.status == "error"
    assert result.reason == "missing module 'requests_not_installed_anywhere'"
    assert result.failures and all(f["kind"] == "environment" for f in result.failures)
    report = plain_report(record)
    assert report.splitlines()[0] == (
        "ERROR tests: missing module 'requests_not_installed_anywhere' — environment"
    )
    assert "fix: declare it in the project's dependencies" in report
    assert "microbuild snapshot build --rebuild" in report
    # Environment failures are never cached.
    assert find_cached(manager.store, record.tree, "d" * 64, record.snapshot_id) is None


@pytest.mark.isolation
def test_a_parser_that_fails_never_loses_the_result(manager: SidecarManager, sidecar: str) -> None:
    record = run(
        manager,
        sidecar,
        [check("odd", "echo 'x.py:1: error: bad'; exit 1", parser="no-such-parser")],
    )
    assert statuses(record) == [("odd", "failed")]
    assert record.checks[0].failures == []
    report = plain_report(record)
    assert report.startswith("FAILED odd (exit 1) in ") and "  | x.py:1: error: bad" in report


# -- the report, without a sidecar -------------------------------------------------------------


def _record(tmp_path: Path, log: str, **check: Any) -> RunRecord:
    path = tmp_path / "t.log"
    path.write_text(log)
    result = CheckResult(
        name="tests",
        status=check.pop("status", "failed"),
        exit_code=check.pop("exit_code", 1),
        duration_s=2.04,
        log_path=str(path),
        **check,
    )
    return RunRecord(
        id="run_0123456789",
        project="/p",
        sidecar_id="sc_1",
        snapshot_id="sn_1",
        tree="a" * 40,
        config_hash=HASH_A,
        status="failed" if result.status == "failed" else "error",
        wall_s=4.12,
        checks=[result, CheckResult(name="later", status="skipped")],
    )


def test_report_tail_is_bounded_and_meaningful(tmp_path: Path) -> None:
    body = "\n".join(f"line {i} " + "x" * 200 for i in range(100))
    record = _record(tmp_path, body + "\n....F.......  [ 42%]\n\n  \nfinal error\n")
    report = plain_report(record)
    lines = report.splitlines()
    assert lines[0] == "FAILED tests (exit 1) in 4.1 s — code"
    assert lines[1] == "" and lines[2].startswith("  | ")  # the verdict names the one check
    shown = [line for line in lines if line.startswith("  | ")]
    assert shown[-1] == "  | final error"
    assert 1 < len(shown) <= 25
    assert sum(len(line) - 4 + 1 for line in shown) <= 3000
    assert "[ 42%]" not in report and "line 99" in report and "line 0 " not in report
    assert lines[-2:] == [
        "skipped: later",
        "full log: microbuild runs show run_0123456789 --log tests",
    ]


def test_report_of_environment_failures(tmp_path: Path) -> None:
    oom = _record(tmp_path, "Killed\n", status="error", exit_code=137, reason="out of memory: x")
    assert plain_report(oom).splitlines()[0] == "ERROR tests: out of memory: x — environment"
    assert "fix: raise [sidecar] memory" in plain_report(oom)
    slow = _record(tmp_path, "", status="timed_out", exit_code=137, reason="timed out after 600 s")
    report = plain_report(slow)
    assert report.splitlines()[0] == "ERROR tests: timed out after 600 s — environment"
    assert "(no output)" in report


def test_store_migrates_from_schema_2(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE snapshots (id TEXT PRIMARY KEY, key TEXT NOT NULL, project TEXT NOT NULL,"
        " runtime TEXT NOT NULL, state TEXT NOT NULL, layers TEXT NOT NULL DEFAULT '[]',"
        " base_commit TEXT, source_tree TEXT, setup TEXT NOT NULL DEFAULT '[]',"
        " inputs TEXT NOT NULL DEFAULT '[]', size_bytes INTEGER NOT NULL DEFAULT 0,"
        " build_s REAL NOT NULL DEFAULT 0, error TEXT, request TEXT NOT NULL DEFAULT 'null',"
        " created_at REAL NOT NULL, last_used_at REAL NOT NULL);"
        "PRAGMA user_version = 2;"
    )
    conn.close()
    store = Store(db)
    record = RunRecord(
        id="run_aa11",
        project="/p",
        sidecar_id="sc_1",
        snapshot_id="sn_1",
        tree="a" * 40,
        config_hash=HASH_A,
        status="passed",
        checks=[CheckResult(name="t", status="passed", exit_code=0, cpu_s=0.5)],
    )
    store.put_run(record)
    assert store.get_run("run_aa").checks == record.checks
    assert store.list_runs("/p")[0].id == "run_aa11" and store.list_runs("/q") == []
    plan = store._query(
        "EXPLAIN QUERY PLAN SELECT * FROM runs WHERE tree = ? AND config_hash = ? "
        "AND snapshot_id = ? ORDER BY started_at DESC LIMIT 1",
        ("a", "b", "c"),
    )
    assert any("runs_cache_key" in str(tuple(row)) for row in plan)
    version = store._query("PRAGMA user_version")[0][0]
    assert version == SCHEMA_VERSION == 5
    assert store.test_durations("/p", "tests") == {}
    store.close()


# -- the HTTP API ------------------------------------------------------------------------------


def _api(app: Any, calls: Any) -> Any:
    async def go() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://host", timeout=60
        ) as client:
            return await calls(client)

    return asyncio.run(go())


def _ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


@pytest.mark.isolation
def test_api_microbuild_stream_cache_and_runs(manager: SidecarManager, sidecar: str) -> None:
    app = create_app(manager)
    tree = manager.get(sidecar).tree
    body = {
        "checks": [
            {"name": "lint", "command": "echo lint-ok"},
            {"name": "tests", "command": "echo 'E assert 1 == 2'; exit 1"},
            {"name": "never", "command": "true"},
        ],
        "tree": tree,
        "config_hash": HASH_A,
        "project": "/proj",
    }
    url = f"/v1/sidecars/{sidecar}/microbuilds"

    async def calls(client: httpx.AsyncClient) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["mismatch"] = await client.post(url, json={**body, "tree": "0" * 40})
        out["duplicate"] = await client.post(
            url, json={**body, "checks": [body["checks"][0], body["checks"][0]]}
        )
        out["nul"] = await client.post(
            url, json={**body, "checks": [{"name": "x", "command": "a\x00b"}]}
        )
        out["first"] = await client.post(url, json=body)
        out["second"] = await client.post(url, json=body)
        # The host keys the cache by the hash of the checks it was sent, not the client's claim.
        real_hash = config_hash(
            ProjectConfig(checks=tuple(CheckConfig(**c) for c in body["checks"]))
        )
        params = {
            "tree": tree,
            "config_hash": real_hash,
            "snapshot_id": manager.get(sidecar).snapshot_id,
        }
        out["cached"] = await client.get("/v1/runs/cached", params=params)
        out["not_cached"] = await client.get(
            "/v1/runs/cached", params={**params, "config_hash": HASH_B}
        )
        out["list"] = await client.get("/v1/runs", params={"project": "/proj"})
        out["other"] = await client.get("/v1/runs", params={"project": "/elsewhere"})
        return out

    out = _api(app, calls)
    assert out["mismatch"].status_code == 409
    assert out["mismatch"].json()["error"]["code"] == "tree_mismatch"
    assert out["duplicate"].status_code == 422 and out["nul"].status_code == 422

    first = out["first"]
    assert first.status_code == 200 and first.headers["content-type"] == "application/x-ndjson"
    events = _ndjson(first)
    assert [
        (e["event"], e.get("check") if e["event"] == "check_started" else None) for e in events
    ] == [
        ("check_started", "lint"),
        ("check_finished", None),
        ("check_started", "tests"),
        ("check_finished", None),
        ("done", None),
    ]
    assert events[3]["check"] == {
        "name": "tests",
        "status": "failed",
        "exit_code": 1,
        "duration_s": events[3]["check"]["duration_s"],
        "cpu_s": events[3]["check"]["cpu_s"],
        "log": f"/v1/runs/{events[-1]['run']['id']}/logs/tests",
        "reason": None,
    }
    done = events[-1]["run"]
    assert done["status"] == "failed" and done["cached"] is False
    assert [c["status"] for c in done["checks"]] == ["passed", "failed", "skipped"]
    assert done["report"].startswith("FAILED tests (exit 1) in ")
    assert "E assert 1 == 2" in done["report"]
    assert set(done) >= {
        "id", "project", "sidecar", "snapshot", "tree", "config_hash", "status", "cached",
        "started_at", "wall_s", "cpu_s", "checks", "failures", "tokens", "report",
    }  # fmt: skip
    assert done["tokens"]["raw"] > 0 and 0 < done["tokens"]["report"] <= 2000
    assert done["sidecar"] == sidecar and done["tree"] == tree and done["project"] == "/proj"

    second = _ndjson(out["second"])
    assert [e["event"] for e in second] == ["done"]
    assert second[0]["run"]["cached"] is True and second[0]["run"]["cached_from"] == done["id"]
    assert "(cached)" in second[0]["run"]["report"].splitlines()[0]

    cached = out["cached"]
    assert cached.status_code == 200
    assert cached.json()["id"] == done["id"] and cached.json()["cached"] is True
    assert out["not_cached"].status_code == 404
    assert out["not_cached"].json()["error"]["code"] == "not_found"

    listed = out["list"].json()
    assert [r["id"] for r in listed] == [second[0]["run"]["id"], done["id"]]
    assert out["other"].json() == []

    run_id = done["id"]

    async def details(client: httpx.AsyncClient) -> dict[str, httpx.Response]:
        base = f"/v1/runs/{run_id}"
        return {
            "run": await client.get(base),
            "prefix": await client.get(base[:-3]),
            "log": await client.get(f"{base}/logs/tests"),
            "cached_log": await client.get(f"/v1/runs/{second[0]['run']['id']}/logs/lint"),
            "skipped": await client.get(f"{base}/logs/never"),
            "unknown": await client.get(f"{base}/logs/passwd"),
            "traversal": await client.get(f"{base}/logs/..%2F..%2F..%2Fetc%2Fpasswd"),
            "dotdot": await client.get(f"{base}/logs/../../../../etc/passwd"),
            "encoded": await client.get(f"{base}/logs/%2E%2E"),
            "missing": await client.get("/v1/runs/run_nope"),
        }

    got = _api(app, details)
    shown = got["run"].json()
    assert shown["id"] == run_id and [c["name"] for c in shown["checks"]] == [
        "lint",
        "tests",
        "never",
    ]
    assert got["prefix"].json()["id"] == run_id
    assert got["log"].status_code == 200
    assert got["log"].headers["content-type"].startswith("text/plain")
    assert got["log"].text == "E assert 1 == 2\n"
    assert got["cached_log"].text == "lint-ok\n"
    for name in ("skipped", "unknown", "traversal", "dotdot", "encoded", "missing"):
        assert got[name].status_code == 404, (name, got[name].text)
        assert "root:" not in got[name].text


@pytest.mark.isolation
def test_api_refuses_a_dead_sidecar_and_runs_without_a_tree(
    manager: SidecarManager, sidecar: str
) -> None:
    app = create_app(manager)
    body = {"checks": [{"name": "t", "command": "true"}], "config_hash": HASH_B, "project": "/p"}

    async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
        # No tree: whatever the sidecar holds.
        ok = await client.post(f"/v1/sidecars/{sidecar}/microbuilds", json=body)
        manager.destroy(sidecar)
        gone = await client.post(f"/v1/sidecars/{sidecar}/microbuilds", json=body)
        return [ok, gone]

    ok, gone = _api(app, calls)
    assert _ndjson(ok)[-1]["run"]["status"] == "passed"
    assert gone.status_code == 404


# -- a real server, the client going away, and the CLI ------------------------------------------


@pytest.fixture
def served(manager: SidecarManager) -> Iterator[str]:
    import uvicorn

    sock = Path(tempfile.mkdtemp(prefix="mbs-", dir="/var/tmp")) / "h.sock"
    server = uvicorn.Server(
        uvicorn.Config(create_app(manager), uds=str(sock), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield str(sock)
    server.should_exit = True
    thread.join(10)
    sock.unlink(missing_ok=True)
    sock.parent.rmdir()


@pytest.mark.isolation
def test_a_client_that_goes_away_cancels_the_run(
    manager: SidecarManager, sidecar: str, served: str
) -> None:
    from microbuild.client import Client

    tree = manager.get(sidecar).tree
    assert tree
    started = time.monotonic()
    with Client("http://microbuild", uds=served) as client:
        events = client.microbuild(
            sidecar,
            checks=[{"name": "long", "command": "sleep 60"}, {"name": "next", "command": "true"}],
            tree=tree,
            config_hash=HASH_A,
            project="/proj",
        )
        assert next(events) == {"event": "check_started", "check": "long"}
        events.close()  # type: ignore[attr-defined]

    def finished() -> RunRecord | None:
        runs = manager.store.list_runs("/proj")
        return runs[0] if runs and runs[0].status != "running" else None

    deadline = time.monotonic() + 15
    while finished() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    record = finished()
    assert record is not None, "the run did not end after the client went away"
    assert time.monotonic() - started < 15
    assert record.status == "error"
    assert statuses(record) == [("long", "error"), ("next", "skipped")]
    assert "client went away" in (record.checks[0].reason or "")


@pytest.mark.isolation
def test_cli_runs_list_and_show(
    manager: SidecarManager, sidecar: str, served: str, tiny_project: Path
) -> None:
    from click.testing import CliRunner

    from microbuild.cli.main import cli

    project = str(find_project(tiny_project).root)
    tree = manager.get(sidecar).tree
    assert tree
    record = run_checks(
        manager,
        sidecar,
        [check("tests", "echo full-output-line; echo 'E  boom'; exit 1")],
        tree=tree,
        config_hash=HASH_A,
        project=project,
    )
    runner = CliRunner()
    base = ["--host", f"unix:{served}", "-C", str(tiny_project)]

    listed = runner.invoke(cli, [*base, "runs", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.output)] == [record.id]

    table = runner.invoke(cli, [*base, "runs"])
    assert table.exit_code == 0, table.output
    assert record.id in table.output and "failed" in table.output and tree[:10] in table.output

    shown = runner.invoke(cli, [*base, "runs", "show", record.id])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[0].startswith("FAILED tests (exit 1) in ")
    assert shown.output.splitlines()[-1] == (
        f"full log: microbuild runs show {record.id} --log tests"
    )

    log = runner.invoke(cli, [*base, "runs", "show", record.id, "--log", "tests"])
    assert log.exit_code == 0 and log.output == "full-output-line\nE  boom\n"

    missing = runner.invoke(cli, [*base, "runs", "show", record.id, "--log", "../state.db"])
    assert missing.exit_code == 2 and "no log" in missing.output

    everything = runner.invoke(cli, [*base, "runs", "-a", "--json"])
    assert [r["id"] for r in json.loads(everything.output)] == [record.id]


@pytest.mark.isolation
def test_a_check_that_rewrites_tracked_files_never_passes(
    manager: SidecarManager, sidecar: str
) -> None:
    """A fixer or formatter (or a linter with `fix = true`) validated a tree other than the
    synced one: the report says which files, and the check is not a pass. New files and caches
    written by a check are not the tree's."""
    record = run(
        manager,
        sidecar,
        [
            check(
                "scratch", "echo x > new.txt && mkdir -p .pytest_cache && echo 1 > .pytest_cache/v"
            ),
            check("fixer", "printf 'x = 1\\n' > src/app.py && rm requirements.txt"),
        ],
        fail_fast=False,
    )
    assert statuses(record) == [("scratch", "passed"), ("fixer", "failed")]
    (failure,) = record.checks[1].failures
    assert failure["id"] == "tree changed" and failure["kind"] == "code"
    assert failure["message"].startswith(
        "passed only by rewriting 2 tracked files in the sidecar: requirements.txt, src/app.py;"
    )
    report = plain_report(record)
    assert report.startswith("FAILED fixer"), report
    assert "check-only" in report


@pytest.mark.isolation
def test_a_linter_told_to_fix_by_the_projects_config_only_reports(
    manager: SidecarManager, tmp_path: Path
) -> None:
    """`[tool.ruff] fix = true`: `ruff check .` runs with --no-fix, so the unused import is a
    failure and the file is as synced."""
    from conftest import write_project

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not os.path.exists(ruff):
        pytest.skip("ruff is not installed")
    root = write_project(
        tmp_path / "lint",
        '[sidecar]\nmemory = "512MiB"\n',
        {"pyproject.toml": "[tool.ruff]\nfix = true\n", "app.py": "import os\n"},
    )
    (root / "bin").mkdir()
    shutil.copy(ruff, root / "bin" / "ruff")
    git = ["git", "-C", str(root)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "ruff"], check=True)
    sidecar = manager.create_sidecar(find_project(root), runtime="namespace").id
    record = run(manager, sidecar, [check("lint", "bin/ruff check --no-cache .")])
    assert statuses(record) == [("lint", "failed")]
    assert [(f["id"], f["location"]) for f in record.checks[0].failures] == [("F401", "app.py:1")]
    assert (manager.workspace(sidecar) / "app.py").read_text() == "import os\n"


@pytest.mark.isolation
def test_a_sync_waits_for_the_running_microbuild_and_a_second_run_says_it_waits(
    manager: SidecarManager, tiny_project: Path
) -> None:
    """Two validates on one sidecar: the second's sync waits until the first's run ends (the
    first's checks see only its own tree), the second's run says what it waits for, and a run
    whose tree another sync replaced is refused, never run on the wrong files."""
    from microbuild import sync
    from microbuild.build.runner import run_microbuild
    from microbuild.host.manager import TreeMismatch

    record = manager.create_sidecar(find_project(tiny_project), runtime="namespace")
    first = record.tree
    assert first
    (tiny_project / "src" / "app.py").write_text("print('second')\n")
    second = sync.tree_id(tiny_project)
    patch = sync.tree_diff(tiny_project, first, second)
    seen: dict[str, Any] = {}
    events: list[dict[str, Any]] = []

    def first_run(config_hash: str = HASH_A) -> None:
        seen["run"] = run_microbuild(
            manager,
            record.id,
            [check("slow", "sleep 1.5; cat src/app.py")],
            tree=first,
            config_hash=config_hash,
            project="/proj",
        )

    def late_run() -> None:
        seen["late"] = run_microbuild(
            manager,
            record.id,
            [check("quick", "cat src/app.py")],
            tree=first,
            config_hash=HASH_B,
            project="/proj",
            emit=events.append,
        )

    runner = threading.Thread(target=first_run)
    runner.start()
    time.sleep(0.4)
    assert manager.running_run(record.id) is not None
    started = time.monotonic()
    manager.sync(record.id, to_tree=second, payload=patch, from_tree=first)
    waited = time.monotonic() - started
    runner.join()
    log = Path(seen["run"].checks[0].log_path or "").read_text()
    assert seen["run"].status == "passed" and log == "print('app')\n"
    assert waited > 0.5 and manager.get(record.id).tree == second
    assert manager.running_run(record.id) is None
    # A run for the tree a later sync replaced is refused (the client syncs again).
    with pytest.raises(TreeMismatch, match="another sync came first"):
        late_run()
    # A run that finds the sidecar busy says what it waits for.
    runner = threading.Thread(target=first_run, args=("c" * 64,))  # not a cache answer
    manager.sync(record.id, to_tree=first, payload=sync.tree_diff(tiny_project, second, first))
    runner.start()
    time.sleep(0.4)
    late = threading.Thread(target=late_run)
    late.start()
    late.join()
    runner.join()
    busy = seen["run"].id
    assert events[0] == {"event": "waiting", "run": busy, "message": f"waiting for run {busy}"}
    assert seen["late"].status == "passed"


@pytest.mark.isolation
def test_files_the_project_ignores_are_ignored_by_tools_in_the_sidecar(
    manager: SidecarManager, tmp_path: Path
) -> None:
    """The workspace is an (empty) git repository, as CI's checkout is: ruff skips a file the
    setup generated and .gitignore names (hatch-vcs' version.py), and git answers there."""
    from conftest import write_project

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not os.path.exists(ruff):
        pytest.skip("ruff is not installed")
    root = write_project(
        tmp_path / "ign",
        "[snapshot]\nsetup = [\"printf 'import os\\\\n' > generated.py\"]\n\n"
        '[sidecar]\nmemory = "512MiB"\n',
        {".gitignore": "generated.py\n", "app.py": "print('app')\n"},
    )
    (root / "bin").mkdir()
    shutil.copy(ruff, root / "bin" / "ruff")
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "ruff"], check=True)
    sidecar = manager.create_sidecar(find_project(root), runtime="namespace").id
    record = run(
        manager,
        sidecar,
        [
            check("generated", "test -f generated.py"),
            check("lint", "bin/ruff check --no-cache ."),
            check("git", "git rev-parse --is-inside-work-tree"),
        ],
    )
    assert statuses(record) == [("generated", "passed"), ("lint", "passed"), ("git", "passed")]
