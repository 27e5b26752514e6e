"""Talking to a host over HTTP: a local one on a Unix socket (started on first use, like a build
server daemon) or a remote one by URL and token.

`connect()` decides which: `--host`/MICROBUILD_HOST (https://..., http://..., or unix:/path)
with a token from MICROBUILD_TOKEN or MICROBUILD_TOKEN_FILE; otherwise the local host under the
state dir, which is started if it is not running.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from microbuild.store import default_state_dir
from microbuild.transport import (
    HttpxTransport,
    Response,
    Transport,
    TransportError,
    UnixTransport,
)

LOCAL_START_TIMEOUT_S = 20.0
# A host the CLI started for itself goes away after this long without requests (its sidecars
# keep running and the next host adopts them); MICROBUILD_HOST_IDLE_EXIT overrides it.
LOCAL_IDLE_EXIT_S = 1800.0


class HostError(Exception):
    """The host refused a request (or cannot be reached); `code` says which, the message why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        uds: str | None = None,
        verify: bool | str = True,
        grant_host_access: bool = False,
    ) -> None:
        self.base_url = base_url
        self.uds = uds
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if grant_host_access:
            # Honoured by a host on its Unix socket only (the user's own); a TCP host ignores it.
            headers["X-Microbuild-Host-Access"] = "granted"
        self.token = token
        self._http: Transport = (
            UnixTransport(uds, headers) if uds else HttpxTransport(base_url, headers, verify)
        )
        self.verify = verify

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return f"unix:{self.uds}" if self.uds else self.base_url

    # -- plumbing ----------------------------------------------------------------------------

    def _raise_for(self, response: Response) -> None:
        if response.status_code < 400:
            return
        code, message = "http_error", f"HTTP {response.status_code}"
        with contextlib.suppress(ValueError, KeyError, TypeError):
            body = response.json()
            if "error" in body:
                code, message = body["error"]["code"], body["error"]["message"]
            elif "detail" in body:  # FastAPI's request validation
                detail = body["detail"]
                if isinstance(detail, list) and detail:
                    first = detail[0]
                    where = ".".join(str(p) for p in first.get("loc", []))
                    code, message = "invalid_request", f"{where}: {first.get('msg')}"
                else:
                    code, message = "invalid_request", str(detail)
        if response.status_code == 401:
            message = (
                f"the host at {self.where} refused the token; set MICROBUILD_TOKEN or "
                "MICROBUILD_TOKEN_FILE to the host's token"
            )
        raise HostError(response.status_code, code, message)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except TransportError as exc:
            raise HostError(
                0, "unreachable", f"cannot reach the host at {self.where}: {exc}"
            ) from exc
        self._raise_for(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @contextlib.contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[Response]:
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for(response)
                yield response
        except TransportError as exc:
            raise HostError(0, "unreachable", f"lost the host at {self.where}: {exc}") from exc

    # -- host --------------------------------------------------------------------------------

    def health(self) -> bool:
        try:
            return self._http.request("GET", "/v1/health", timeout=2.0).status_code == 200
        except TransportError:
            return False

    def host_info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/host")  # type: ignore[no-any-return]

    def stop_host(self) -> None:
        self._request("POST", "/v1/host/stop")

    # -- snapshots ---------------------------------------------------------------------------

    def resolve_snapshot(
        self, request: dict[str, Any], *, rebuild: bool = False, runtime: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        params: dict[str, Any] = {"rebuild": rebuild}
        if runtime:
            params["runtime"] = runtime
        data = self._request("POST", "/v1/snapshots", json=request, params=params)
        return data["snapshot"], bool(data["needs_source"])

    def upload_source(self, snapshot_id: str, tar: Path) -> Iterator[dict[str, Any]]:
        """Upload the source and follow the build: one event per step/output line/end."""
        with (
            open(tar, "rb") as f,
            self._stream(
                "PUT",
                f"/v1/snapshots/{snapshot_id}/source",
                content=f,
                headers={"Content-Type": "application/x-tar"},
            ) as response,
        ):
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def list_snapshots(self, project: str | None = None) -> list[dict[str, Any]]:
        params = {"project": project} if project else {}
        return self._request("GET", "/v1/snapshots", params=params)  # type: ignore[no-any-return]

    def delete_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/snapshots/{snapshot_id}")  # type: ignore[no-any-return]

    def prune_snapshots(self, *, prune_all: bool = False) -> list[dict[str, Any]]:
        return self._request(  # type: ignore[no-any-return]
            "POST", "/v1/snapshots/prune", params={"all": prune_all}
        )

    # -- sidecars ----------------------------------------------------------------------------

    def create_sidecar(
        self,
        snapshot_id: str,
        settings: dict[str, Any] | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"snapshot_id": snapshot_id}
        if settings is not None:
            body["settings"] = settings
        if project is not None:
            body["project"] = project
        return self._request("POST", "/v1/sidecars", json=body)  # type: ignore[no-any-return]

    def list_sidecars(self, project: str | None = None) -> list[dict[str, Any]]:
        params = {"project": project} if project else {}
        return self._request("GET", "/v1/sidecars", params=params)  # type: ignore[no-any-return]

    def get_sidecar(self, sidecar_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/sidecars/{_id(sidecar_id)}")  # type: ignore[no-any-return]

    def sidecar_action(self, sidecar_id: str, action: str) -> dict[str, Any]:
        if action == "destroy":
            return self._request("DELETE", f"/v1/sidecars/{_id(sidecar_id)}")  # type: ignore[no-any-return]
        return self._request(  # type: ignore[no-any-return]
            "POST", f"/v1/sidecars/{_id(sidecar_id)}/{action}"
        )

    def exec(
        self,
        sidecar_id: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float | None = None,
        stdin: bytes | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """Yields ("stdout"|"stderr", bytes) as output arrives, then ("result", {...})."""
        body: dict[str, Any] = {"argv": argv, "env": env or {}}
        if cwd is not None:
            body["cwd"] = cwd
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if stdin is not None:
            body["stdin"] = base64.b64encode(stdin).decode()
        with self._stream("POST", f"/v1/sidecars/{_id(sidecar_id)}/exec", json=body) as response:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if "result" in event:
                    yield "result", event["result"]
                    return
                yield event["stream"], base64.b64decode(event["data"])
        raise HostError(0, "stream_ended", "the host ended the exec stream without a result")

    def sync(
        self,
        sidecar_id: str,
        *,
        to_tree: str,
        payload: bytes,
        kind: str = "patch",
        from_tree: str | None = None,
        reset: bool = False,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"to": to_tree, "format": kind, "reset": reset}
        if from_tree is not None:
            params["from"] = from_tree
        return self._request(  # type: ignore[no-any-return]
            "POST",
            f"/v1/sidecars/{_id(sidecar_id)}/sync",
            params=params,
            content=payload,
            headers={"Content-Type": "application/octet-stream"},
        )

    def cached_run(
        self,
        tree: str,
        config_hash: str,
        snapshot_id: str,
        *,
        complete: bool = False,
        report_tokens: int | None = None,
    ) -> dict[str, Any] | None:
        """A finished run for this key, if any; `complete`: not one that fail-fast cut short.
        Its report is kept within `report_tokens` (the host's default when None)."""
        params: dict[str, Any] = {
            "tree": tree,
            "config_hash": config_hash,
            "snapshot_id": snapshot_id,
            "complete": complete,
        }
        if report_tokens is not None:
            params["report_tokens"] = report_tokens
        try:
            return self._request(  # type: ignore[no-any-return]
                "GET", "/v1/runs/cached", params=params
            )
        except HostError as exc:
            if exc.status == 404:
                return None
            raise

    def microbuild(
        self,
        sidecar_id: str,
        *,
        checks: list[dict[str, Any]],
        tree: str,
        config_hash: str,
        project: str,
        fail_fast: bool = True,
        report_tokens: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Run the checks in the sidecar; yields the host's events as they happen. The report
        is kept within `report_tokens` (the host's default when None)."""
        body: dict[str, Any] = {
            "checks": checks,
            "tree": tree,
            "config_hash": config_hash,
            "project": project,
            "fail_fast": fail_fast,
        }
        if report_tokens is not None:
            body["report_tokens"] = report_tokens
        with self._stream(
            "POST", f"/v1/sidecars/{_id(sidecar_id)}/microbuilds", json=body
        ) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def read_file(self, sidecar_id: str, path: str) -> bytes:
        try:
            response = self._http.request("GET", f"/v1/sidecars/{_id(sidecar_id)}/files/{path}")
        except TransportError as exc:
            raise HostError(
                0, "unreachable", f"cannot reach the host at {self.where}: {exc}"
            ) from exc
        self._raise_for(response)
        return response.content

    def write_file(self, sidecar_id: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self._request(
            "PUT",
            f"/v1/sidecars/{_id(sidecar_id)}/files/{path}",
            content=data,
            params={"mode": mode},
        )

    def shell_url(self, sidecar_id: str, rows: int, cols: int) -> str:
        base = self.base_url.replace("https://", "wss://").replace("http://", "ws://")
        return f"{base}/v1/sidecars/{_id(sidecar_id)}/shell?rows={rows}&cols={cols}"


def _id(ident: str) -> str:
    """Ids go into URL paths: refuse anything that could change the path."""
    if not ident or not all(c.isalnum() or c == "_" for c in ident):
        raise HostError(404, "not_found", f"no sidecar with id {ident!r}")
    return ident


def _token_from_env() -> str | None:
    token = os.environ.get("MICROBUILD_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("MICROBUILD_TOKEN_FILE")
    if path:
        try:
            return Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise HostError(
                0, "token_unreadable", f"cannot read MICROBUILD_TOKEN_FILE: {exc}"
            ) from exc
    return None


def connect(
    host: str | None = None, state_dir: Path | None = None, *, grant_host_access: bool = False
) -> Client:
    """The client for --host / MICROBUILD_HOST, or for the local host (started if needed)."""
    target = host or os.environ.get("MICROBUILD_HOST")
    grant = grant_host_access
    if target:
        token = _token_from_env()
        verify: bool | str = os.environ.get("MICROBUILD_CA") or True
        if target.startswith("unix:"):
            return Client("http://microbuild", token=token, uds=target[5:], grant_host_access=grant)
        if not target.startswith(("http://", "https://")):
            raise HostError(
                0, "bad_host", f"--host {target!r}: use https://HOST:PORT, http://... or unix:PATH"
            )
        return Client(target.rstrip("/"), token=token, verify=verify)
    sock = str(ensure_local_host(state_dir))
    return Client("http://microbuild", uds=sock, grant_host_access=grant)


def ensure_local_host(state_dir: Path | None = None) -> Path:
    """The local host's socket, starting the host first if nothing answers there."""
    state = (state_dir or default_state_dir()).absolute()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = state / "host.sock"
    probe = Client("http://microbuild", uds=str(sock))
    try:
        if probe.health():
            return sock
        with open(state / "host.start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if probe.health():
                return sock
            _start_local_host(state, sock, probe)
            return sock
    finally:
        probe.close()


def _start_local_host(state: Path, sock: Path, probe: Client) -> None:
    log = state / "host.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "microbuild",
                "--state-dir",
                str(state),
                "serve",
                "--listen",
                f"unix:{sock}",
                "--exit-when-idle",
                os.environ.get("MICROBUILD_HOST_IDLE_EXIT", str(LOCAL_IDLE_EXIT_S)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + LOCAL_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if probe.health():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = ""
    with contextlib.suppress(OSError):
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    raise HostError(0, "host_start_failed", f"the local host did not start ({log}): {tail}")
