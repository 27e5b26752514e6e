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
    with pytest.raises(StoreError, match="cannot open state database"):
        Store(db)
