"""The SQLite store: records survive reopening, ids resolve by prefix, bad files are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from microbuild.store import NotFound, SidecarRecord, SnapshotRecord, Store, StoreError


def _sidecar(ident: str, snapshot: str = "sn_1") -> SidecarRecord:
    return SidecarRecord(
        id=ident,
        project="/p",
        snapshot_id=snapshot,
        runtime="namespace",
        state="running",
        handle={"id": ident, "init_pid": 1},
    )


def test_records_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = Store(db)
    store.put_snapshot(
        SnapshotRecord(
            id="sn_abc",
            key="k",
            project="/p",
            runtime="namespace",
            state="ready",
            layers=["/l1", "/l2"],
            inputs=[["a", "h"]],
        )
    )
    store.put_sidecar(_sidecar("sc_123"))
    store.close()
    again = Store(db)
    snap = again.get_snapshot("sn_abc")
    assert snap.layers == ["/l1", "/l2"] and snap.inputs == [["a", "h"]]
    sidecar = again.get_sidecar("sc_123")
    assert sidecar.handle == {"id": "sc_123", "init_pid": 1}
    again.set_sidecar_state("sc_123", "dead")
    assert again.get_sidecar("sc_123").state == "dead"
    assert [s.id for s in again.list_sidecars(snapshot_id="sn_1")] == ["sc_123"]
    again.delete_sidecar("sc_123")
    assert again.list_sidecars() == []


def test_prefix_resolution_and_errors(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.put_sidecar(_sidecar("sc_aa11"))
    store.put_sidecar(_sidecar("sc_aa22"))
    assert store.get_sidecar("sc_aa1").id == "sc_aa11"
    with pytest.raises(NotFound, match="ambiguous"):
        store.get_sidecar("sc_aa")
    with pytest.raises(NotFound, match="no sidecar with id 'sc_zz'"):
        store.get_sidecar("sc_zz")
    # LIKE wildcards in an id are literal, not patterns.
    with pytest.raises(NotFound):
        store.get_sidecar("%")
    with pytest.raises(NotFound):
        store.get_sidecar("")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer microbuild"):
        Store(db)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"is not a database \(damaged\): move it aside"):
        Store(db)


def test_schema_3_store_gains_report_columns_and_keeps_its_runs(tmp_path: Path) -> None:
    """A state dir from the previous release (schema 3) is migrated in place: its runs are
    still there, and new runs keep failures and token counts."""
    import sqlite3

    from microbuild.store import SCHEMA, SCHEMA_VERSION, CheckResult, HookSession, RunRecord

    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)
    old = (
        SCHEMA.replace(",\n    report_tokens INTEGER,\n    raw_tokens INTEGER", "")
        .replace("    failures TEXT NOT NULL DEFAULT '[]',\n", "")
        .split("CREATE TABLE IF NOT EXISTS hook_sessions")[0]
    )
    assert "report_tokens" not in old and "failures" not in old
    conn.executescript(old)
    conn.execute(
        "INSERT INTO runs (id, project, sidecar_id, snapshot_id, tree, config_hash, status,"
        " started_at) VALUES ('run_old', '/p', 'sc', 'sn', 't', 'h', 'passed', 1.0)"
    )
    conn.execute(
        "INSERT INTO check_results (run_id, position, name, status) VALUES"
        " ('run_old', 0, 'tests', 'passed')"
    )
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    store = Store(db)
    old_run = store.get_run("run_old")
    assert old_run.report_tokens is None and old_run.checks[0].failures == []
    failure = {"id": "tests/test_a.py::test_b", "message": "assert 1 == 2", "count": 1}
    store.put_run(
        RunRecord(
            id="run_new",
            project="/p",
            sidecar_id="sc",
            snapshot_id="sn",
            tree="t2",
            config_hash="h",
            status="failed",
            report_tokens=120,
            raw_tokens=4000,
            checks=[
                CheckResult(
                    name="tests",
                    status="failed",
                    exit_code=1,
                    failures=[failure],
                    parser="pytest",
                    total=318,
                    failed=2,
                    complete=False,
                )
            ],
        )
    )
    new_run = store.get_run("run_new")
    assert (new_run.report_tokens, new_run.raw_tokens) == (120, 4000)
    assert new_run.checks[0].failures == [failure]
    check = new_run.checks[0]
    assert (check.parser, check.total, check.failed, check.complete) == ("pytest", 318, 2, False)
    assert (old_run.checks[0].parser, old_run.checks[0].complete) == (None, True)
    store.put_hook_session(HookSession(agent="claude", session="s1", project="/p", attempts=2))
    got = store.get_hook_session("claude", "s1", "/p")
    assert got is not None and got.attempts == 2
    assert store.get_hook_session("claude", "s2", "/p") is None
    assert store._query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
