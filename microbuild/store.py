"""State that must survive a restart: snapshots and sidecars, in one small SQLite file.

Like pre-commit's Store: a thin, explicit layer over stdlib sqlite3 with a schema version, WAL
so that the CLI and a host can read while another writes, and plain records in and out.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    project TEXT NOT NULL,
    runtime TEXT NOT NULL,
    state TEXT NOT NULL,
    layers TEXT NOT NULL DEFAULT '[]',
    base_commit TEXT,
    source_tree TEXT,
    setup TEXT NOT NULL DEFAULT '[]',
    inputs TEXT NOT NULL DEFAULT '[]',
    size_bytes INTEGER NOT NULL DEFAULT 0,
    build_s REAL NOT NULL DEFAULT 0,
    error TEXT,
    request TEXT NOT NULL DEFAULT 'null',
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sidecars (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,
    runtime TEXT NOT NULL,
    state TEXT NOT NULL,
    handle TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}',
    tree TEXT,
    created_at REAL NOT NULL,
    last_used_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sidecars_snapshot ON sidecars(snapshot_id);
"""

MIGRATIONS = {
    # version 1 -> 2: the request a snapshot was built from, and a sidecar's settings.
    1: (
        "ALTER TABLE snapshots ADD COLUMN request TEXT NOT NULL DEFAULT 'null'",
        "ALTER TABLE sidecars ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
    ),
}

SNAPSHOT_STATES = ("pending", "building", "ready", "failed")
SIDECAR_STATES = ("creating", "running", "suspended", "dead")


class StoreError(Exception):
    """The state database cannot be opened or is from a newer microbuild."""


class NotFound(StoreError):
    """No record has that id (or that id prefix)."""


def default_state_dir() -> Path:
    """MICROBUILD_STATE_DIR, else /var/lib/microbuild for root, else the XDG state dir."""
    env = os.environ.get("MICROBUILD_STATE_DIR")
    if env:
        return Path(env).absolute()
    if os.geteuid() == 0:
        return Path("/var/lib/microbuild")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "microbuild"


@dataclass
class SnapshotRecord:
    id: str
    key: str
    project: str
    runtime: str
    state: str
    layers: list[str] = field(default_factory=list)
    base_commit: str | None = None
    source_tree: str | None = None
    setup: list[str] = field(default_factory=list)
    inputs: list[list[str]] = field(default_factory=list)
    size_bytes: int = 0
    build_s: float = 0.0
    error: str | None = None
    request: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("request")
        return data


@dataclass
class SidecarRecord:
    id: str
    project: str
    snapshot_id: str
    runtime: str
    state: str
    handle: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    tree: str | None = None
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.pop("handle")
        data.pop("settings")
        return data


_JSON_COLUMNS = {"layers", "setup", "inputs", "handle", "settings", "request"}


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # One connection shared by the host's worker threads, serialised by a lock.
            self._db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path} was written by a newer microbuild (schema {version}); upgrade "
                    "microbuild or point MICROBUILD_STATE_DIR elsewhere"
                )
            if version in MIGRATIONS:
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS.get(step, ()):
                        self._db.execute(statement)
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open state database {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    @staticmethod
    def _encode(record: SnapshotRecord | SidecarRecord) -> dict[str, Any]:
        return {k: json.dumps(v) if k in _JSON_COLUMNS else v for k, v in record.__dict__.items()}

    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        keys = row.keys()  # iterating a Row yields values, not keys
        return {k: json.loads(row[k]) if k in _JSON_COLUMNS else row[k] for k in keys}

    def _upsert(self, table: str, record: SnapshotRecord | SidecarRecord) -> None:
        values = self._encode(record)
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        with self.transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})", values)

    def _resolve(self, table: str, ident: str, kind: str) -> sqlite3.Row:
        exact = self._query(f"SELECT * FROM {table} WHERE id = ?", (ident,))
        if exact:
            return exact[0]
        escaped = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._query(
            f"SELECT * FROM {table} WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (escaped + "%",)
        )
        if len(rows) == 1 and ident:
            return rows[0]
        if len(rows) > 1:
            raise NotFound(f"{kind} id {ident!r} is ambiguous; give more characters")
        raise NotFound(f"no {kind} with id {ident!r}; `microbuild {kind} list` shows them")

    # -- snapshots ---------------------------------------------------------------------------

    def put_snapshot(self, record: SnapshotRecord) -> None:
        self._upsert("snapshots", record)

    def get_snapshot(self, ident: str) -> SnapshotRecord:
        return SnapshotRecord(**self._decode(self._resolve("snapshots", ident, "snapshot")))

    def find_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        rows = self._query("SELECT * FROM snapshots WHERE id = ?", (snapshot_id,))
        return SnapshotRecord(**self._decode(rows[0])) if rows else None

    def list_snapshots(self, project: str | None = None) -> list[SnapshotRecord]:
        if project is None:
            rows = self._query("SELECT * FROM snapshots ORDER BY created_at")
        else:
            rows = self._query(
                "SELECT * FROM snapshots WHERE project = ? ORDER BY created_at", (project,)
            )
        return [SnapshotRecord(**self._decode(r)) for r in rows]

    def touch_snapshot(self, snapshot_id: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE snapshots SET last_used_at = ? WHERE id = ?", (time.time(), snapshot_id)
            )

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    # -- sidecars ----------------------------------------------------------------------------

    def put_sidecar(self, record: SidecarRecord) -> None:
        self._upsert("sidecars", record)

    def get_sidecar(self, ident: str) -> SidecarRecord:
        return SidecarRecord(**self._decode(self._resolve("sidecars", ident, "sidecar")))

    def list_sidecars(
        self, project: str | None = None, snapshot_id: str | None = None
    ) -> list[SidecarRecord]:
        query = "SELECT * FROM sidecars"
        clauses: list[str] = []
        args: list[str] = []
        if project is not None:
            clauses.append("project = ?")
            args.append(project)
        if snapshot_id is not None:
            clauses.append("snapshot_id = ?")
            args.append(snapshot_id)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self._query(query + " ORDER BY created_at", args)
        return [SidecarRecord(**self._decode(r)) for r in rows]

    def set_sidecar_state(self, sidecar_id: str, state: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE sidecars SET state = ?, last_used_at = ? WHERE id = ?",
                (state, time.time(), sidecar_id),
            )

    def touch_sidecar(self, sidecar_id: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE sidecars SET last_used_at = ? WHERE id = ?", (time.time(), sidecar_id)
            )

    def delete_sidecar(self, sidecar_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM sidecars WHERE id = ?", (sidecar_id,))
