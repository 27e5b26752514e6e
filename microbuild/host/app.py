"""The host's HTTP API: sidecars and snapshots as resources under /v1, exec streamed as NDJSON,
files and a PTY shell. One `SidecarManager` behind it does the work.

Blocking work (runtimes, SQLite) runs in worker threads; streams hand each chunk over from a
thread so the event loop never waits on a sidecar.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from microbuild import __version__
from microbuild.config import (
    CheckConfig,
    ProjectConfig,
    SidecarConfig,
    _require_plain,
    config_hash,
)
from microbuild.errors import ConfigError, SetupFailed, SnapshotError
from microbuild.host import files
from microbuild.host.manager import (
    AdmissionRefused,
    ApplyFailed,
    SidecarDead,
    SidecarManager,
    TreeMismatch,
)
from microbuild.host.policy import GRANT_HEADER, HostPolicy, PolicyRefused
from microbuild.runtime import (
    ExecResult,
    Execution,
    OutputChunk,
    RuntimeError_,
    RuntimeUnavailable,
    SidecarGone,
)
from microbuild.snapshot import SnapshotRequest
from microbuild.store import NotFound, SidecarRecord, SnapshotRecord, StoreError

JSON_BODY_LIMIT = 1 << 20
SOURCE_BODY_LIMIT = 2 << 30
NDJSON = "application/x-ndjson"
IdPath = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]
# An exec request gathers the command's output for up to this long before its response
# starts: a short command (`true`, a patch applied) is over by then and its whole answer comes
# out of one thread hop instead of two; a long one's first output waits that much longer.
EXEC_FIRST_WAIT_S = 0.02


# -- models ------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Sidecar(BaseModel):
    id: str
    snapshot: str
    runtime: str
    state: str
    project: str
    tree: str | None
    network: str | None
    init_pid: int | None
    created_at: float
    last_used_at: float
    changed: list[str] | None = None
    """Workspace paths commands wrote or deleted since the last sync (null: unknown, or too
    many); a tracked one means the sidecar no longer holds `tree`. Only on get and list."""
    run: str | None = None
    """The microbuild running in it now (a sync or another run waits for it). Get and list."""

    @classmethod
    def of(
        cls,
        record: SidecarRecord,
        state: str | None = None,
        changed: list[str] | None = None,
        run: str | None = None,
    ) -> Sidecar:
        handle = record.handle or {}
        return cls(
            id=record.id,
            snapshot=record.snapshot_id,
            runtime=record.runtime,
            state=state or record.state,
            project=record.project,
            tree=record.tree,
            network=handle.get("spec", {}).get("network"),
            init_pid=handle.get("init_pid"),
            created_at=record.created_at,
            last_used_at=record.last_used_at,
            changed=changed,
            run=run,
        )


class Snapshot(BaseModel):
    id: str
    project: str
    runtime: str
    state: str
    base_commit: str | None
    source_tree: str | None
    setup: list[str]
    inputs: list[list[str]]
    size_bytes: int
    build_s: float
    error: str | None
    created_at: float
    last_used_at: float

    @classmethod
    def of(cls, record: SnapshotRecord) -> Snapshot:
        return cls(**{k: v for k, v in record.to_json().items() if k != "key"})


class SnapshotResolution(BaseModel):
    snapshot: Snapshot
    needs_source: bool


class CreateSidecar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    snapshot_id: IdPath
    settings: SidecarConfig | None = None
    project: str | None = Field(default=None, min_length=1, max_length=4096)
    """The project the sidecar belongs to (the snapshot's when not given)."""


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    argv: list[Annotated[str, Field(max_length=1 << 16)]] = Field(min_length=1, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict, max_length=1024)
    cwd: str | None = Field(default=None, max_length=4096)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    stdin: str | None = Field(default=None, description="base64")

    @model_validator(mode="after")
    def _checked(self) -> ExecRequest:
        for text in (*self.argv, *self.env, *self.env.values(), self.cwd or ""):
            _require_plain(text)
        for name in self.env:
            if not name or "=" in name:
                raise ValueError(f"invalid environment variable name {name!r}")
        if self.stdin is not None:
            try:
                base64.b64decode(self.stdin, validate=True)
            except (ValueError, TypeError):
                raise ValueError("stdin must be base64") from None
        return self


class ExecResultModel(BaseModel):
    exit_code: int
    signal: int | None
    timed_out: bool
    oom_killed: bool
    duration_s: float
    cpu_s: float | None
    disk_limit_reached: int | None = None
    """The sidecar's disk limit in bytes, when the command failed with that disk full."""

    @classmethod
    def of(cls, result: ExecResult) -> ExecResultModel:
        return cls(
            exit_code=result.exit_code,
            signal=result.signal,
            timed_out=result.timed_out,
            oom_killed=result.oom_killed,
            duration_s=result.duration_s,
            cpu_s=result.cpu_s,
            disk_limit_reached=result.disk_limit_reached,
        )


class HostInfo(BaseModel):
    version: str
    pid: int
    state_dir: str
    runtime: str
    isolates: bool
    started_at: float
    sidecars: int
    snapshots: int


class Health(BaseModel):
    status: Literal["ok"]


# -- microbuild runs ---------------------------------------------------------------------------

TreeId = Annotated[str, Field(pattern=r"^[0-9a-f]{40,64}$")]
ConfigHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# Check names become log file names (NAME_MAX); commands one argv string (MAX_ARG_STRLEN).
MAX_CHECK_NAME = 200
MAX_CHECK_COMMAND = 1 << 16
DEFAULT_REPORT_TOKENS = 2000
ReportTokens = Annotated[int, Field(ge=200, le=200_000)]


class MicrobuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checks: list[CheckConfig] = Field(max_length=256)
    fail_fast: bool = True
    tree: TreeId | None = Field(
        default=None,
        description="the tree the client synced to the sidecar (409 tree_mismatch if the "
        "sidecar holds another); omitted: whatever tree the sidecar holds",
    )
    config_hash: ConfigHash
    project: str = Field(min_length=1, max_length=4096)
    report_tokens: ReportTokens = Field(
        default=DEFAULT_REPORT_TOKENS, description="the report's budget in tokens (o200k)"
    )

    @model_validator(mode="after")
    def _checked(self) -> MicrobuildRequest:
        _require_plain(self.project)
        seen: set[str] = set()
        for check in self.checks:
            if check.name in seen:
                raise ValueError(f"duplicate check name {check.name!r}")
            seen.add(check.name)
            if len(check.name) > MAX_CHECK_NAME:
                raise ValueError(f"check name over {MAX_CHECK_NAME} characters")

            if len(check.command.encode(errors="replace")) >= MAX_CHECK_COMMAND:
                raise ValueError(f"check {check.name!r}: command over {MAX_CHECK_COMMAND} bytes")
            for text in (check.command, check.parser):
                _require_plain(text)
        return self


class CheckRun(BaseModel):
    name: str
    status: Literal["passed", "failed", "timed_out", "error", "skipped"]
    exit_code: int | None
    duration_s: float
    cpu_s: float | None
    log: str | None = Field(description="where the host serves the check's full log")
    reason: str | None = Field(description="why the environment failed (timed_out, error)")


class RunFailure(BaseModel):
    check: str
    id: str = Field(description="test id, rule, or a short label")
    location: str | None = Field(description="file:line, relative to the project root")
    message: str
    kind: Literal["code", "environment"]
    count: int = Field(description="identical failures this one stands for")


class RunTokens(BaseModel):
    report: int | None = Field(description="tokens (o200k) of `report`")
    raw: int | None = Field(description="tokens of every check's full log (estimated if huge)")


class Run(BaseModel):
    id: str
    project: str
    sidecar: str
    snapshot: str
    tree: str
    config_hash: str
    status: Literal["running", "passed", "failed", "error"]
    cached: bool
    cached_from: str | None
    error: str | None = Field(description="why the run itself failed, when no check says")
    fail_fast: bool
    started_at: float
    wall_s: float
    cpu_s: float = Field(description="core-seconds used by the checks")
    checks: list[CheckRun]
    failures: list[RunFailure] = Field(description="what the checks' parsers found")
    tokens: RunTokens
    report: str = Field(description="the plain report: verdict, failing output, where logs are")


# -- middleware --------------------------------------------------------------------------------


def _json_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class GuardMiddleware:
    """Bearer-token authentication (HTTP and WebSocket) and request body limits.

    A body over its limit is refused with 413: at once when its Content-Length says so, and as
    soon as a chunked body passes the limit while a handler reads it (routes that take no body
    never read it, so it costs nothing).
    """

    def __init__(self, app: ASGIApp, token: str | None, activity: Activity) -> None:
        self.app = app
        self.token = token
        self.activity = activity

    def _authorized(self, scope: Scope) -> bool:
        if self.token is None or scope.get("path") == "/v1/health":
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                expected = f"Bearer {self.token}".encode()
                return hmac.compare_digest(value, expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.activity.active += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.activity.active -= 1
            self.activity.last = time.monotonic()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._authorized(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4401, "reason": "unauthorized"})
                return
            response = _json_error(401, "unauthorized", "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = SOURCE_BODY_LIMIT if path.endswith(("/source", "/sync")) else JSON_BODY_LIMIT
        if "/files/" in path:
            limit = files.MAX_FILE_BYTES
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    await _json_error(413, "body_too_large", f"request body over {limit} bytes")(
                        scope, receive, send
                    )
                    return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    raise _BodyTooLarge(limit)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _json_error(413, "body_too_large", f"request body over {limit} bytes")(
                    scope, receive, send
                )


class _BodyTooLarge(StarletteHTTPException):
    """Raised while a handler reads its body. An HTTPException, because FastAPI turns any other
    exception raised during body parsing into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class Activity:
    """Requests in flight and when the last one ended: an idle local host may exit."""

    def __init__(self) -> None:
        self.active = 0
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.active else time.monotonic() - self.last


# -- the application ---------------------------------------------------------------------------


def create_app(
    manager: SidecarManager,
    *,
    policy: HostPolicy | None = None,
    grants: bool = False,
    token: str | None = None,
    on_stop: Callable[[], None] | None = None,
    idle_check_s: float = 5.0,
    exit_when_idle_s: float | None = None,
) -> FastAPI:
    started_at = time.time()
    activity = Activity()
    if policy is None:
        policy = HostPolicy.for_host(manager.state_dir)

    def granted(request: Request) -> bool:
        """`--allow-host-access` counts only on the Unix socket (the user's own, by SO_PEERCRED)."""
        return grants and request.headers.get(GRANT_HEADER) == "granted"

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def suspend_idle_forever() -> None:
            while True:
                await asyncio.sleep(idle_check_s)
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(manager.suspend_idle)
                if (
                    exit_when_idle_s is not None
                    and on_stop is not None
                    and activity.idle_for() > exit_when_idle_s
                ):
                    # Sidecars outlive the host; the next client starts a host that adopts them.
                    on_stop()

        task = asyncio.create_task(suspend_idle_forever())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(
        title="microbuild host",
        version=__version__,
        description="Sidecars (isolated environments started from snapshots), exec, files.",
        lifespan=lifespan,
        responses={
            401: {"model": ErrorResponse, "description": "missing or wrong token"},
            413: {"model": ErrorResponse, "description": "body too large"},
        },
    )
    app.add_middleware(GuardMiddleware, token=token, activity=activity)
    run = anyio.to_thread.run_sync

    def handler(status: int, code: str) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handle(_request: Request, exc: Exception) -> Response:
            return _json_error(status, code, str(exc).splitlines()[0] if str(exc) else code)

        return handle

    @app.exception_handler(_BodyTooLarge)
    async def too_large(_request: Request, exc: _BodyTooLarge) -> Response:
        return _json_error(413, "body_too_large", exc.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        # ensure_ascii: the offending input is echoed back and may hold lone surrogates.
        body = {"detail": jsonable_encoder(exc.errors(), exclude={"ctx", "url"})}
        return Response(
            json.dumps(body, ensure_ascii=True, default=repr),
            status_code=422,
            media_type="application/json",
        )

    for exc_type, status, code in (
        (NotFound, 404, "not_found"),
        (ConfigError, 422, "invalid_config"),
        (files.PathRefused, 403, "path_refused"),
        (PolicyRefused, 403, "host_access_refused"),
        (TreeMismatch, 409, "tree_mismatch"),
        (ApplyFailed, 409, "apply_failed"),
        (SidecarDead, 409, "sidecar_dead"),
        (SidecarGone, 409, "sidecar_dead"),
        (SnapshotError, 409, "snapshot_error"),
        (AdmissionRefused, 503, "admission_refused"),
        (RuntimeUnavailable, 503, "runtime_unavailable"),
        (RuntimeError_, 409, "runtime_error"),
        (StoreError, 503, "store_error"),
        (FileNotFoundError, 404, "not_found"),
        (IsADirectoryError, 403, "path_refused"),
        (NotADirectoryError, 403, "path_refused"),
        (PermissionError, 403, "path_refused"),
        (files.PathInvalid, 400, "path_invalid"),
    ):
        app.add_exception_handler(exc_type, handler(status, code))

    @app.get("/v1/health", response_model=Health, tags=["host"])
    async def health() -> Health:
        return Health(status="ok")

    @app.get("/v1/host", response_model=HostInfo, tags=["host"])
    async def host_info() -> HostInfo:
        def info() -> HostInfo:
            import os

            rt = manager.runtime()
            return HostInfo(
                version=__version__,
                pid=os.getpid(),
                state_dir=str(manager.state_dir),
                runtime=rt.name,
                isolates=rt.isolates,
                started_at=started_at,
                sidecars=len(manager.store.list_sidecars()),
                snapshots=len(manager.store.list_snapshots()),
            )

        return await run(info)

    @app.post("/v1/host/stop", status_code=202, tags=["host"])
    async def stop() -> dict[str, str]:
        if on_stop is not None:
            asyncio.get_running_loop().call_later(0.1, on_stop)
        return {"status": "stopping"}

    # -- snapshots -----------------------------------------------------------------------------

    @app.post("/v1/snapshots", response_model=SnapshotResolution, tags=["snapshots"])
    async def resolve_snapshot(
        request: SnapshotRequest,
        http: Request,
        rebuild: bool = False,
        runtime: Literal["auto", "namespace", "process"] | None = None,
    ) -> SnapshotResolution:
        policy.check_sidecar(request.sidecar, granted=granted(http))
        record, needed = await run(
            lambda: manager.resolve_snapshot(request, runtime=runtime, rebuild=rebuild)
        )
        return SnapshotResolution(snapshot=Snapshot.of(record), needs_source=needed)

    @app.put(
        "/v1/snapshots/{snapshot_id}/source",
        tags=["snapshots"],
        response_class=StreamingResponse,
        responses={200: {"content": {NDJSON: {}}, "description": "build events, one per line"}},
    )
    async def build_snapshot(
        snapshot_id: IdPath,
        request: Request,
    ) -> StreamingResponse:
        await run(manager.store.get_snapshot, snapshot_id)
        spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by the stream
            dir=manager.state_dir, prefix="upload-", suffix=".tar"
        )
        try:
            async for chunk in request.stream():
                await run(spool.write, chunk)
            await run(spool.flush)
        except BaseException:
            spool.close()
            raise

        def events(emit: Callable[[dict[str, Any]], None]) -> None:
            def progress(message: str) -> None:
                emit({"event": "step", "message": message})

            def output(data: bytes) -> None:
                emit({"event": "output", "data": data.decode(errors="replace")})

            try:
                record = manager.build_snapshot_from(
                    snapshot_id, Path(spool.name), progress=progress, output=output
                )
                emit({"event": "done", "snapshot": Snapshot.of(record).model_dump()})
            except SetupFailed as exc:
                emit(
                    {
                        "event": "error",
                        "code": "setup_failed",
                        "message": str(exc),
                        "command": exc.command,
                        "exit_code": exc.exit_code,
                        "timed_out": exc.timed_out,
                        "tail": exc.tail,
                    }
                )
            except Exception as exc:  # the stream must end with an event, whatever happened
                emit({"event": "error", "code": "build_failed", "message": str(exc)})
            finally:
                spool.close()

        return StreamingResponse(_thread_events(events), media_type=NDJSON)

    @app.get("/v1/snapshots", response_model=list[Snapshot], tags=["snapshots"])
    async def list_snapshots(project: str | None = None) -> list[Snapshot]:
        return [Snapshot.of(r) for r in await run(manager.list_snapshots, project)]

    @app.get("/v1/snapshots/{snapshot_id}", response_model=Snapshot, tags=["snapshots"])
    async def get_snapshot(snapshot_id: IdPath) -> Snapshot:
        return Snapshot.of(await run(manager.store.get_snapshot, snapshot_id))

    @app.delete("/v1/snapshots/{snapshot_id}", response_model=Snapshot, tags=["snapshots"])
    async def delete_snapshot(snapshot_id: IdPath) -> Snapshot:
        return Snapshot.of(await run(manager.delete_snapshot, snapshot_id))

    @app.post("/v1/snapshots/prune", response_model=list[Snapshot], tags=["snapshots"])
    async def prune_snapshots(all: bool = False) -> list[Snapshot]:
        removed = await run(lambda: manager.prune_snapshots(keep_latest=not all))
        return [Snapshot.of(r) for r in removed]

    # -- sidecars ------------------------------------------------------------------------------

    @app.post("/v1/sidecars", response_model=Sidecar, status_code=201, tags=["sidecars"])
    async def create_sidecar(body: CreateSidecar, http: Request) -> Sidecar:
        settings = body.settings
        if settings is None:
            snap = await run(manager.store.get_snapshot, body.snapshot_id)
            settings = SnapshotRequest.model_validate(snap.request).sidecar
        policy.check_sidecar(settings, granted=granted(http))
        record = await run(
            lambda: manager.create_sidecar_from(body.snapshot_id, body.settings, body.project)
        )
        return Sidecar.of(record)

    @app.get("/v1/sidecars", response_model=list[Sidecar], tags=["sidecars"])
    async def list_sidecars(project: str | None = None) -> list[Sidecar]:
        def listing() -> list[Sidecar]:
            return [
                Sidecar.of(r, changed=manager.changed_since_sync(r), run=manager.running_run(r.id))
                for r in manager.list_sidecars(project)
            ]

        return await run(listing)

    @app.get("/v1/sidecars/{sidecar_id}", response_model=Sidecar, tags=["sidecars"])
    async def get_sidecar(sidecar_id: IdPath) -> Sidecar:
        def one() -> Sidecar:
            record = manager.get(sidecar_id)
            return Sidecar.of(
                record,
                changed=manager.changed_since_sync(record),
                run=manager.running_run(record.id),
            )

        return await run(one)

    @app.post("/v1/sidecars/{sidecar_id}/suspend", response_model=Sidecar, tags=["sidecars"])
    async def suspend(sidecar_id: IdPath) -> Sidecar:
        return Sidecar.of(await run(manager.suspend, sidecar_id))

    @app.post("/v1/sidecars/{sidecar_id}/resume", response_model=Sidecar, tags=["sidecars"])
    async def resume(sidecar_id: IdPath) -> Sidecar:
        return Sidecar.of(await run(manager.resume, sidecar_id))

    @app.post("/v1/sidecars/{sidecar_id}/reset", response_model=Sidecar, tags=["sidecars"])
    async def reset(sidecar_id: IdPath) -> Sidecar:
        return Sidecar.of(await run(manager.reset, sidecar_id))

    @app.delete("/v1/sidecars/{sidecar_id}", response_model=Sidecar, tags=["sidecars"])
    async def destroy(sidecar_id: IdPath) -> Sidecar:
        return Sidecar.of(await run(manager.destroy, sidecar_id), state="destroyed")

    @app.post(
        "/v1/sidecars/{sidecar_id}/exec",
        tags=["sidecars"],
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {NDJSON: {}},
                "description": 'lines {"stream": "stdout"|"stderr", "data": base64} then '
                '{"result": {...}}; a client that disconnects kills the command',
            }
        },
    )
    async def exec_(sidecar_id: IdPath, body: ExecRequest) -> StreamingResponse:
        stdin = base64.b64decode(body.stdin, validate=True) if body.stdin else None

        def start() -> _Started:
            record = manager.get(sidecar_id)
            busy = manager.using(record.id)
            busy.__enter__()
            try:
                execution = manager.exec(
                    record.id,
                    body.argv,
                    env=body.env,
                    cwd=body.cwd,
                    timeout=body.timeout_s,
                    stdin=stdin,
                )
            except BaseException:
                busy.__exit__(None, None, None)
                raise
            try:
                return _Started(execution, busy)
            except BaseException:
                execution.kill()
                busy.__exit__(None, None, None)
                raise

        return StreamingResponse(_exec_stream(await run(start)), media_type=NDJSON)

    @app.get(
        "/v1/sidecars/{sidecar_id}/files/{path:path}",
        tags=["files"],
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def read(sidecar_id: IdPath, path: str) -> Response:
        def go() -> bytes:
            with manager.using(sidecar_id):
                return files.read_file(manager.workspace(sidecar_id), path)

        return Response(await run(go), media_type="application/octet-stream")

    @app.put("/v1/sidecars/{sidecar_id}/files/{path:path}", status_code=204, tags=["files"])
    async def write(
        sidecar_id: IdPath,
        path: str,
        request: Request,
        mode: Annotated[int, Query(ge=0, le=0o7777)] = 0o644,
    ) -> Response:
        data = await request.body()

        def go() -> None:
            with manager.using(sidecar_id):
                files.write_file(manager.workspace(sidecar_id), path, data, mode & 0o777)

        await run(go)
        return Response(status_code=204)

    @app.websocket("/v1/sidecars/{sidecar_id}/shell")
    async def shell(
        websocket: WebSocket,
        sidecar_id: str,
        rows: int = 24,
        cols: int = 80,
        command: str = "/bin/sh",
    ) -> None:
        def start() -> tuple[Execution, contextlib.AbstractContextManager[None]]:
            record = manager.get(sidecar_id)
            busy = manager.using(record.id)  # an open shell keeps idle suspension away
            busy.__enter__()
            try:
                return manager.exec(record.id, [command, "-i"], pty=True, env={}), busy
            except BaseException:
                busy.__exit__(None, None, None)
                raise

        try:
            execution, busy = await run(start)
        except (NotFound, RuntimeError_) as exc:
            await websocket.close(
                code=4404 if isinstance(exc, NotFound) else 4409, reason=str(exc)[:120]
            )
            return
        try:
            await websocket.accept()
            execution.resize(rows, cols)
            await _pump_shell(websocket, execution)
        finally:
            busy.__exit__(None, None, None)

    from microbuild.host.sync_api import router as sync_router

    app.include_router(sync_router(manager))
    _add_run_routes(app, manager, policy, granted)
    app.state.manager = manager
    return app


def _thread_events(
    work: Callable[[Callable[[dict[str, Any]], None]], None],
) -> AsyncIterator[bytes]:
    """Run `work` in a thread; each event it emits becomes one NDJSON line, as it happens."""

    async def stream() -> AsyncIterator[bytes]:
        send, receive = anyio.create_memory_object_stream[dict[str, Any] | None](1024)

        def emit(event: dict[str, Any]) -> None:
            anyio.from_thread.run(send.send, event)

        async def runner() -> None:
            try:
                await anyio.to_thread.run_sync(work, emit)
            finally:
                await send.send(None)

        async with anyio.create_task_group() as group:
            group.start_soon(runner)
            async with receive:
                async for event in receive:
                    if event is None:
                        break
                    yield (json.dumps(event) + "\n").encode()

    return stream()


class _Started:
    """A command just started for an exec request, and what it did in its first moments:
    a short command is over by then, and its whole answer needs no more thread hops."""

    def __init__(self, execution: Execution, busy: contextlib.AbstractContextManager[None]):
        self.execution = execution
        self.release = _once(lambda: busy.__exit__(None, None, None))
        self.early = list(execution.chunks(until=time.monotonic() + EXEC_FIRST_WAIT_S))
        self.result: ExecResult | None = None
        if execution.output_done and execution.proc.poll() is not None:
            self.result = execution.result()
            self.release()


async def _exec_stream(started: _Started) -> AsyncIterator[bytes]:
    execution, release = started.execution, started.release
    chunks: Iterator[OutputChunk] = execution.chunks()
    finished = False

    def step() -> OutputChunk | ExecResult:
        """The next output, or at the end the result (one thread hop, not two, for the end
        and none on the event loop for the store's write when the sidecar is idle again)."""
        chunk = next(chunks, None)
        if chunk is not None:
            return chunk
        result = execution.result()
        release()
        return result

    def line(item: OutputChunk | ExecResult) -> bytes:
        if isinstance(item, ExecResult):
            event: dict[str, Any] = {"result": ExecResultModel.of(item).model_dump()}
        else:
            event = {"stream": item.stream, "data": base64.b64encode(item.data).decode()}
        return (json.dumps(event) + "\n").encode()

    try:
        for chunk in started.early:
            yield line(chunk)
        item: OutputChunk | ExecResult | None = started.result
        while not isinstance(item, ExecResult):
            # abandon_on_cancel: a client that goes away must not wait for the next output.
            item = await anyio.to_thread.run_sync(step, abandon_on_cancel=True)
            if isinstance(item, OutputChunk):
                yield line(item)
        finished = True
        yield line(item)
    finally:
        if not finished:
            # The client went away (or the server is stopping): nobody wants the output.
            execution.kill()
            with contextlib.suppress(Exception):
                await anyio.to_thread.run_sync(execution.result)
        release()


def _once(fn: Callable[[], object]) -> Callable[[], None]:
    """A callable that runs `fn` the first time it is called, from whichever thread, and
    does nothing after that."""
    lock = threading.Lock()
    done = False

    def call() -> None:
        nonlocal done
        with lock:
            if done:
                return
            done = True
        fn()

    return call


async def _pump_shell(websocket: WebSocket, execution: Execution) -> None:
    chunks: Iterator[Any] = execution.chunks()
    done: Any = object()

    async def to_client() -> None:
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, done, abandon_on_cancel=True)
            if chunk is done:
                break
            await websocket.send_bytes(chunk.data)
        result = await anyio.to_thread.run_sync(execution.result)
        await websocket.send_text(json.dumps({"exit": result.exit_code}))
        await websocket.close()

    async def from_client() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect()
            if message.get("bytes"):
                await anyio.to_thread.run_sync(execution.write, message["bytes"])
            elif message.get("text"):
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    control = json.loads(message["text"])
                    if "resize" in control:
                        rows, cols = control["resize"]
                        execution.resize(int(rows), int(cols))
                    if "data" in control:
                        await anyio.to_thread.run_sync(
                            execution.write, str(control["data"]).encode()
                        )

    try:
        async with anyio.create_task_group() as group:

            async def stop_when(coro: Callable[[], Awaitable[None]]) -> None:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await coro()
                group.cancel_scope.cancel()

            group.start_soon(stop_when, to_client)
            group.start_soon(stop_when, from_client)
    finally:
        execution.kill()
        with contextlib.suppress(Exception):
            await anyio.to_thread.run_sync(execution.result)


def _add_run_routes(
    app: FastAPI,
    manager: SidecarManager,
    policy: HostPolicy,
    granted: Callable[[Request], bool],
) -> None:
    """Microbuilds: run checks in a sidecar (streamed), look up cached results, list runs, and
    serve their logs."""
    from microbuild.build.runner import Cancellation, read_log, run_json, run_microbuild

    run = anyio.to_thread.run_sync

    @app.post(
        "/v1/sidecars/{sidecar_id}/microbuilds",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {NDJSON: {}},
                "description": 'lines {"event": "check_started", "check": NAME}, {"event": '
                '"check_finished", "check": {...}}, then {"event": "done", "run": {...}} (only '
                "that one for a cached result); a client that disconnects cancels the run",
            },
            409: {"model": ErrorResponse, "description": "tree_mismatch: sync first"},
        },
    )
    async def microbuild(
        sidecar_id: IdPath, body: MicrobuildRequest, http: Request
    ) -> StreamingResponse:
        policy.check_checks(body.checks, granted=granted(http))
        record = await run(manager.get, sidecar_id)
        if record.state not in ("running", "suspended"):
            raise SidecarDead(
                f"sidecar {record.id} is {record.state}; run `microbuild sidecar reset "
                f"{record.id}` or destroy it"
            )
        tree = body.tree or record.tree
        if tree is None or record.tree != tree:
            raise TreeMismatch(
                f"sidecar {record.id} holds tree {record.tree}, not {tree}; sync it first"
            )
        cancel = Cancellation()

        def work(emit: Callable[[dict[str, Any]], None]) -> None:
            try:
                run_microbuild(
                    manager,
                    record.id,
                    body.checks,
                    tree=tree,
                    # The cache is keyed by this hash: it must say what the checks are, not
                    # what a client claims they are.
                    config_hash=config_hash(ProjectConfig(checks=tuple(body.checks))),
                    project=body.project,
                    fail_fast=body.fail_fast,
                    emit=emit,
                    cancel=cancel,
                    report_tokens=body.report_tokens,
                )
            except TreeMismatch as exc:  # another sync came between this client's and its run
                with contextlib.suppress(Exception):
                    emit({"event": "error", "code": "tree_mismatch", "message": str(exc)})
            except Exception as exc:  # the stream must end with an event, whatever happened
                with contextlib.suppress(Exception):
                    emit({"event": "error", "code": "run_failed", "message": str(exc)})

        def client_gone() -> None:
            cancel.cancel("cancelled: the client went away")

        return StreamingResponse(_cancellable_events(work, client_gone), media_type=NDJSON)

    @app.get(
        "/v1/runs/cached",
        response_model=Run,
        tags=["runs"],
        responses={404: {"model": ErrorResponse, "description": "no cached result"}},
    )
    async def cached_run(
        tree: Annotated[str, Query(pattern=r"^[0-9a-f]{40,64}$")],
        config_hash: Annotated[str, Query(pattern=r"^[0-9a-f]{64}$")],
        snapshot_id: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^\w+$")],
        complete: bool = False,
        report_tokens: Annotated[int, Query(ge=200, le=200_000)] = DEFAULT_REPORT_TOKENS,
    ) -> dict[str, Any]:
        """The latest passed or failed run for this key (environment errors are never cached),
        presented as a cache answer; with `complete`, not a fail-fast run that stopped early."""
        from microbuild.build.runner import find_cached

        hit = await run(
            lambda: find_cached(manager.store, tree, config_hash, snapshot_id, complete=complete)
        )
        if hit is None:
            raise NotFound("no cached run for this tree, config and snapshot")
        return await run(lambda: run_json(hit, cached=True, report_tokens=report_tokens))

    @app.get("/v1/runs", response_model=list[Run], tags=["runs"])
    async def list_runs(
        project: Annotated[str | None, Query(max_length=4096)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        report_tokens: Annotated[int, Query(ge=200, le=200_000)] = DEFAULT_REPORT_TOKENS,
    ) -> list[dict[str, Any]]:
        def go() -> list[dict[str, Any]]:
            runs = manager.store.list_runs(project, limit)
            return [run_json(r, report_tokens=report_tokens) for r in runs]

        return await run(go)

    @app.get("/v1/runs/{run_id}", response_model=Run, tags=["runs"])
    async def get_run(
        run_id: IdPath,
        report_tokens: Annotated[int, Query(ge=200, le=200_000)] = DEFAULT_REPORT_TOKENS,
    ) -> dict[str, Any]:
        return await run(
            lambda: run_json(manager.store.get_run(run_id), report_tokens=report_tokens)
        )

    @app.get(
        "/v1/runs/{run_id}/logs/{check}",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "the full log"}},
    )
    async def run_log(
        run_id: IdPath, check: Annotated[str, Field(min_length=1, max_length=255)]
    ) -> StreamingResponse:
        record = await run(manager.store.get_run, run_id)
        path = read_log(manager.state_dir, record, check)
        if path is None:
            raise NotFound(f"run {record.id} has no log of a check named {check!r}")
        handle = await run(open, path, "rb")
        size = os.fstat(handle.fileno()).st_size
        return StreamingResponse(_file_chunks(handle, size), media_type="text/plain; charset=utf-8")


async def _file_chunks(handle: IO[bytes], size: int) -> AsyncIterator[bytes]:
    """A file as it was when opened (a running check's log grows meanwhile)."""
    try:
        left = size
        while left > 0:
            data = await anyio.to_thread.run_sync(handle.read, min(left, 1 << 16))
            if not data:
                break
            left -= len(data)
            yield data
    finally:
        handle.close()


def _cancellable_events(
    work: Callable[[Callable[[dict[str, Any]], None]], None],
    on_close: Callable[[], None],
) -> AsyncIterator[bytes]:
    """Like `_thread_events`, but calls `on_close` as soon as the stream is abandoned (the
    client went away) instead of first waiting for `work` to finish on its own."""

    async def stream() -> AsyncIterator[bytes]:
        send, receive = anyio.create_memory_object_stream[dict[str, Any] | None](1024)
        finished = False

        def emit(event: dict[str, Any]) -> None:
            anyio.from_thread.run(send.send, event)

        async def runner() -> None:
            try:
                await anyio.to_thread.run_sync(work, emit)
            finally:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await send.send(None)

        async with anyio.create_task_group() as group:
            group.start_soon(runner)
            try:
                async with receive:
                    async for event in receive:
                        if event is None:
                            finished = True
                            break
                        yield (json.dumps(event) + "\n").encode()
            finally:
                if not finished:
                    on_close()

    return stream()
