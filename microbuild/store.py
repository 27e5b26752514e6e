"""State that must survive a restart: snapshots, sidecars and microbuild runs, in one small
SQLite file.

Like pre-commit's Store: a thin, explicit layer over stdlib sqlite3 with a schema version, WAL
so that the CLI and a host can read while another writes, and plain records in and out.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

SCHEMA_VERSION = 5

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
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    sidecar_id TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,
    tree TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    fail_fast INTEGER NOT NULL DEFAULT 1,
    started_at REAL NOT NULL,
    wall_s REAL NOT NULL DEFAULT 0,
    cpu_s REAL NOT NULL DEFAULT 0,
    cached_from TEXT,
    error TEXT,
    report_tokens INTEGER,
    raw_tokens INTEGER,
    check_tokens INTEGER
);
CREATE INDEX IF NOT EXISTS runs_cache_key ON runs(tree, config_hash, snapshot_id, started_at);
CREATE INDEX IF NOT EXISTS runs_project ON runs(project, started_at);
CREATE TABLE IF NOT EXISTS check_results (
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    duration_s REAL NOT NULL DEFAULT 0,
    cpu_s REAL,
    log_path TEXT,
    reason TEXT,
    failures TEXT NOT NULL DEFAULT '[]',
    parser TEXT,
    total INTEGER,
    failed INTEGER,
    complete INTEGER NOT NULL DEFAULT 1,
    stopped_after INTEGER,
    not_run INTEGER,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS test_durations (
    project TEXT NOT NULL,
    check_name TEXT NOT NULL,
    test_id TEXT NOT NULL,
    duration_s REAL NOT NULL,
    run_id TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (project, check_name, test_id)
);
CREATE TABLE IF NOT EXISTS hook_sessions (
    agent TEXT NOT NULL,
    session TEXT NOT NULL,
    project TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_tree TEXT,
    last_status TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (agent, session, project)
);
"""

MIGRATIONS = {
    # version 1 -> 2: the request a snapshot was built from, and a sidecar's settings.
    1: (
        "ALTER TABLE snapshots ADD COLUMN request TEXT NOT NULL DEFAULT 'null'",
        "ALTER TABLE sidecars ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
    ),
    # version 2 -> 3: microbuild runs and their check results (new tables, made by SCHEMA).
    2: (),
    # version 3 -> 4: report token counts, parsed failures, agent hook sessions (new table).
    3: (
        "ALTER TABLE runs ADD COLUMN report_tokens INTEGER",
        "ALTER TABLE runs ADD COLUMN raw_tokens INTEGER",
        "ALTER TABLE check_results ADD COLUMN failures TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE check_results ADD COLUMN parser TEXT",
        "ALTER TABLE check_results ADD COLUMN total INTEGER",
        "ALTER TABLE check_results ADD COLUMN failed INTEGER",
        "ALTER TABLE check_results ADD COLUMN complete INTEGER NOT NULL DEFAULT 1",
    ),
    # version 4 -> 5: the checks' own output in tokens (raw is the CI-style log), and per-test
    # durations from structured results (new table).
    4: (
        "ALTER TABLE runs ADD COLUMN check_tokens INTEGER",
        "ALTER TABLE check_results ADD COLUMN stopped_after INTEGER",
        "ALTER TABLE check_results ADD COLUMN not_run INTEGER",
    ),
}

SNAPSHOT_STATES = ("pending", "building", "ready", "failed")
SIDECAR_STATES = ("creating", "running", "suspended", "dead")
RUN_STATES = ("running", "passed", "failed", "error")
CHECK_STATES = ("passed", "failed", "timed_out", "error", "skipped")
# Only results that say something about the code are reused; environment failures are not.
CACHEABLE_RUN_STATES = ("passed", "failed")


class StoreError(Exception):
    """The state database cannot be opened or is from a newer microbuild."""


class StoreFull(StoreError):
    """The state dir's filesystem has no room left for the database."""


# Kept next to state.db with real blocks (not sparse): released when the database cannot
# grow, so that the write that found the disk full, and the next few, still succeed.
RESERVE_NAME = "state.reserve"
RESERVE_BYTES = 16 << 20

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "database or disk is full" in str(exc)
    )


def _writes(method: Callable[Concatenate[Store, _P], _R]) -> Callable[Concatenate[Store, _P], _R]:
    """A write that finds the disk full releases the reserve and is tried once more; failing
    again, it raises StoreFull (one line, what to do) rather than a raw sqlite3 error."""

    def write(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if not _disk_full(exc):
                raise
            if not self.release_reserve():
                raise self._full() from exc
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if _disk_full(exc):
                raise self._full() from exc
            raise

    functools.update_wrapper(write, method)
    return write


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


@dataclass
class CheckResult:
    """One check of a run: how it ended, and where its full log is (None: it never ran)."""

    name: str
    status: str
    exit_code: int | None = None
    duration_s: float = 0.0
    cpu_s: float | None = None
    log_path: str | None = None
    reason: str | None = None
    """Why an `error` or `timed_out` check is the environment's fault, in a few words."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """The failures the report's parsers found in its output, as JSON-ready dicts."""
    parser: str | None = None
    """The parser that read its output (None: not parsed)."""
    total: int | None = None
    """How many tests (or files) ran, when the tool said."""
    failed: int | None = None
    """How many of them failed, when the tool said."""
    complete: bool = True
    """False when the output was cut short (a timeout, a crash): more may have failed."""
    stopped_after: int | None = None
    """The tool stopped by itself after this many failures (pytest -x, --maxfail)."""
    not_run: int | None = None
    """With `stopped_after`: how many selected tests did not run, when the tool said."""
    durations: dict[str, float] = field(default_factory=dict, compare=False)
    """Seconds per test from the check's structured results; kept per test, not with the run."""


@dataclass
class RunRecord:
    """One microbuild: the checks run (or answered from the cache) against one synced tree."""

    id: str
    project: str
    sidecar_id: str
    snapshot_id: str
    tree: str
    config_hash: str
    status: str
    fail_fast: bool = True
    started_at: float = field(default_factory=time.time)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cached_from: str | None = None
    error: str | None = None
    """Why the run itself ended as an `error` when no check says so (e.g. cancelled)."""
    report_tokens: int | None = None
    raw_tokens: int | None = None
    """What an agent would otherwise read: the CI-style log (snapshot setup and every check)."""
    check_tokens: int | None = None
    """The checks' own output alone."""
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return self.cached_from is not None


@dataclass
class HookSession:
    """What an agent's stop hook remembers per (agent, session, project): how many times in a
    row it sent the agent back, and the tree and result of its last microbuild."""

    agent: str
    session: str
    project: str
    attempts: int = 0
    last_tree: str | None = None
    last_status: str | None = None
    updated_at: float = field(default_factory=time.time)


_RUN_COLUMNS = (
    "id",
    "project",
    "sidecar_id",
    "snapshot_id",
    "tree",
    "config_hash",
    "status",
    "fail_fast",
    "started_at",
    "wall_s",
    "cpu_s",
    "cached_from",
    "error",
    "report_tokens",
    "raw_tokens",
    "check_tokens",
)
_CHECK_COLUMNS = (
    "name",
    "status",
    "exit_code",
    "duration_s",
    "cpu_s",
    "log_path",
    "reason",
    "failures",
    "parser",
    "total",
    "failed",
    "complete",
    "stopped_after",
    "not_run",
)


def _check_values(check: CheckResult) -> list[object]:
    return [
        json.dumps(check.failures) if k == "failures" else getattr(check, k) for k in _CHECK_COLUMNS
    ]


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
                        self._migrate(statement)
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StoreError(
                    f"{path} is not a database (damaged): move it aside with "
                    f"`mv {path} {path}.damaged` and run again (the host then starts afresh "
                    "and cleans up sidecars it has no record of)"
                ) from exc
            if _disk_full(exc):
                raise self._full() from exc
            raise StoreError(f"cannot open state database {path}: {exc}") from exc
        self.make_reserve()

    @property
    def reserve_path(self) -> Path:
        return self.path.with_name(RESERVE_NAME)

    def make_reserve(self) -> bool:
        """Set aside RESERVE_BYTES (at most 1/64 of the filesystem) next to the database, if
        not there yet and there is room; True when a reserve is in place."""
        reserve = self.reserve_path
        if reserve.exists():
            return True
        tmp = reserve.with_name(f".{RESERVE_NAME}.{os.getpid()}")
        try:
            info = os.statvfs(reserve.parent)
            size = min(RESERVE_BYTES, info.f_blocks * info.f_frsize // 64)
            if info.f_bavail * info.f_frsize < 2 * size:
                return False  # already nearly full: taking the rest would not help
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
            os.rename(tmp, reserve)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False

    def release_reserve(self) -> bool:
        """Free the reserve for the database; False when there was none."""
        try:
            os.unlink(self.reserve_path)
        except OSError:
            return False
        return True

    def _full(self) -> StoreFull:
        return StoreFull(
            f"state disk full: no space left for {self.path} on its filesystem; free space "
            "there (`microbuild sidecar destroy`, `microbuild snapshot prune`, or other files) "
            "or use another state dir (MICROBUILD_STATE_DIR)"
        )

    def _migrate(self, statement: str) -> None:
        """Apply one `ALTER TABLE t ADD COLUMN c ...`; a table that does not exist yet is made
        whole by SCHEMA afterwards, so it is skipped, as is a column that is already there."""
        words = statement.split()
        table, column = words[2], words[5]
        present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        if present and column not in present:
            self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back itself (a full disk does that).
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                raise

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

    def _resolve(
        self, table: str, ident: str, kind: str, listing: str | None = None
    ) -> sqlite3.Row:
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
        listing = listing or f"microbuild {kind} list"
        raise NotFound(f"no {kind} with id {ident!r}; `{listing}` shows them")

    # -- snapshots ---------------------------------------------------------------------------

    @_writes
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

    @_writes
    def touch_snapshot(self, snapshot_id: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE snapshots SET last_used_at = ? WHERE id = ?", (time.time(), snapshot_id)
            )

    @_writes
    def delete_snapshot(self, snapshot_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    # -- sidecars ----------------------------------------------------------------------------

    @_writes
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

    @_writes
    def set_sidecar_state(self, sidecar_id: str, state: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE sidecars SET state = ?, last_used_at = ? WHERE id = ?",
                (state, time.time(), sidecar_id),
            )

    @_writes
    def set_sidecar_tree(self, sidecar_id: str, tree: str | None, used_at: float) -> None:
        """What a sync changes: the tree the sidecar holds, and when it was last used."""
        with self.transaction() as db:
            db.execute(
                "UPDATE sidecars SET tree = ?, last_used_at = ? WHERE id = ?",
                (tree, used_at, sidecar_id),
            )

    @_writes
    def touch_sidecar(self, sidecar_id: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE sidecars SET last_used_at = ? WHERE id = ?", (time.time(), sidecar_id)
            )

    @_writes
    def delete_sidecar(self, sidecar_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM sidecars WHERE id = ?", (sidecar_id,))

    # -- runs --------------------------------------------------------------------------------

    @_writes
    def fail_unfinished_runs(self, reason: str) -> list[str]:
        """Runs left `running` by a host that stopped: they will never finish."""
        with self.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE status = 'running'")]
            db.execute(
                "UPDATE runs SET status = 'error', error = ? WHERE status = 'running'", (reason,)
            )
        return ids

    @_writes
    def put_run(self, run: RunRecord) -> None:
        """Insert or replace a run together with its check results."""
        values = {k: getattr(run, k) for k in _RUN_COLUMNS}
        values["fail_fast"] = int(run.fail_fast)
        cols = ", ".join(_RUN_COLUMNS)
        marks = ", ".join(f":{k}" for k in _RUN_COLUMNS)
        check_cols = ", ".join(("run_id", "position", *_CHECK_COLUMNS))
        check_marks = ", ".join("?" for _ in range(len(_CHECK_COLUMNS) + 2))
        with self.transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", values)
            db.execute("DELETE FROM check_results WHERE run_id = ?", (run.id,))
            db.executemany(
                f"INSERT INTO check_results ({check_cols}) VALUES ({check_marks})",
                [
                    (run.id, position, *_check_values(check))
                    for position, check in enumerate(run.checks)
                ],
            )

    @_writes
    def put_test_durations(
        self, project: str, check: str, run_id: str, durations: dict[str, float]
    ) -> None:
        """The latest duration of each test a check's structured results timed."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO test_durations VALUES (?, ?, ?, ?, ?, ?)",
                [(project, check, t, float(d), run_id, now) for t, d in durations.items()],
            )

    def test_durations(self, project: str, check: str) -> dict[str, float]:
        rows = self._query(
            "SELECT test_id, duration_s FROM test_durations WHERE project = ? AND check_name = ?",
            (project, check),
        )
        return {row["test_id"]: row["duration_s"] for row in rows}

    def _runs(self, rows: list[sqlite3.Row]) -> list[RunRecord]:
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        checks: dict[str, list[CheckResult]] = {ident: [] for ident in ids}
        for start in range(0, len(ids), 500):  # SQLite's limit on host parameters
            chunk = ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for row in self._query(
                f"SELECT * FROM check_results WHERE run_id IN ({marks}) ORDER BY run_id, position",
                chunk,
            ):
                data = {k: row[k] for k in _CHECK_COLUMNS}
                data["failures"] = json.loads(data["failures"] or "[]")
                data["complete"] = bool(data["complete"])
                checks[row["run_id"]].append(CheckResult(**data))
        runs = []
        for row in rows:
            data = {k: row[k] for k in _RUN_COLUMNS}
            data["fail_fast"] = bool(data["fail_fast"])
            runs.append(RunRecord(**data, checks=checks[row["id"]]))
        return runs

    def get_run(self, ident: str) -> RunRecord:
        """A run by its id or an unambiguous prefix of it."""
        return self._runs([self._resolve("runs", ident, "run", "microbuild runs")])[0]

    def find_run(self, run_id: str) -> RunRecord | None:
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return self._runs(rows)[0] if rows else None

    def list_runs(self, project: str | None = None, limit: int = 50) -> list[RunRecord]:
        """The newest runs first (of one project, or of all)."""
        if project is None:
            rows = self._query("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (limit,))
        else:
            rows = self._query(
                "SELECT * FROM runs WHERE project = ? ORDER BY started_at DESC LIMIT ?",
                (project, limit),
            )
        return self._runs(rows)

    def find_cached_run(
        self, tree: str, config_hash: str, snapshot_id: str, *, complete: bool = False
    ) -> RunRecord | None:
        """The latest run (not itself a cache answer) for this key whose result is about the code
        (passed or failed; never an environment error). With `complete`, a failed fail-fast
        run does not count: it skipped checks that the caller wants to see run."""
        query = (
            "SELECT * FROM runs WHERE tree = ? AND config_hash = ? AND snapshot_id = ? "
            "AND cached_from IS NULL AND status IN (?, ?)"
        )
        args: list[object] = [tree, config_hash, snapshot_id, *CACHEABLE_RUN_STATES]
        if complete:
            query += " AND (status = 'passed' OR fail_fast = 0)"
        rows = self._query(query + " ORDER BY started_at DESC LIMIT 1", args)
        return self._runs(rows)[0] if rows else None

    # -- agent hook sessions ------------------------------------------------------------------

    def get_hook_session(self, agent: str, session: str, project: str) -> HookSession | None:
        rows = self._query(
            "SELECT * FROM hook_sessions WHERE agent = ? AND session = ? AND project = ?",
            (agent, session, project),
        )
        if not rows:
            return None
        return HookSession(**{k: rows[0][k] for k in rows[0].keys()})  # noqa: SIM118

    @_writes
    def put_hook_session(self, state: HookSession) -> None:
        state.updated_at = time.time()
        values = dict(state.__dict__)
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        with self.transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO hook_sessions ({cols}) VALUES ({marks})", values)

    def last_hook_tree(self, agent: str, project: str) -> str | None:
        """The tree the latest hook answer of any session of `agent` validated in `project`."""
        rows = self._query(
            "SELECT last_tree FROM hook_sessions WHERE agent = ? AND project = ? "
            "AND last_tree IS NOT NULL ORDER BY updated_at DESC LIMIT 1",
            (agent, project),
        )
        return rows[0][0] if rows else None

    @_writes
    def prune_hook_sessions(self, older_than_s: float = 30 * 86400) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM hook_sessions WHERE updated_at < ?", (time.time() - older_than_s,)
            )
        return cursor.rowcount
