"""How the client reaches a host: HTTP/1.1 over the local Unix socket with the standard library,
or httpx for a remote host (TCP, TLS, a token).

The local path is the one agents hit on every stop: importing httpx alone costs ~70 ms, more
than a whole cached answer should take, so a Unix-socket client never imports it.
"""

from __future__ import annotations

import contextlib
import http.client
import json as jsonlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any, Protocol
from urllib.parse import quote, urlencode

__all__ = [
    "HttpxTransport",
    "Response",
    "Transport",
    "TransportError",
    "UnixTransport",
    "encode_params",
]

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0
# How long an idle connection is reused: well under the host's keep-alive (uvicorn's 5 s), so
# that the host does not close it just as a request goes out.
KEEPALIVE_S = 2.0
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# How long the end of a stream is waited for when its reader stops: a stream read to its last
# line ends within it, and its connection is kept; one abandoned half-way is closed.
STREAM_DRAIN_S = 0.02
_CHUNK = 64 * 1024


class TransportError(Exception):
    """The host could not be reached, or the connection broke."""


class Response(Protocol):
    """What the client reads of a response (a subset of httpx.Response)."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    def json(self) -> Any: ...

    def read(self) -> bytes: ...

    def iter_lines(self) -> Iterator[str]: ...


class Transport(Protocol):
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response: ...

    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> contextlib.AbstractContextManager[Response]: ...

    def close(self) -> None: ...


def encode_params(params: Mapping[str, Any] | None) -> str:
    """Query parameters as httpx writes them: booleans as `true`/`false`, None left out."""
    if not params:
        return ""
    pairs = [
        (k, ("true" if v else "false") if isinstance(v, bool) else str(v))
        for k, v in params.items()
        if v is not None
    ]
    return "?" + urlencode(pairs) if pairs else ""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("microbuild", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(min(CONNECT_TIMEOUT_S, self.timeout or CONNECT_TIMEOUT_S))
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.timeout)
        self.sock = sock


class _UnixResponse:
    def __init__(self, conn: _UnixConnection, raw: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._raw = raw
        self._content: bytes | None = None

    @property
    def status_code(self) -> int:
        return self._raw.status

    @property
    def content(self) -> bytes:
        return self.read()

    def read(self) -> bytes:
        if self._content is None:
            try:
                self._content = self._raw.read()
            except (OSError, http.client.HTTPException) as exc:
                raise TransportError(f"the host broke off the response: {exc}") from exc
        return self._content

    def json(self) -> Any:
        return jsonlib.loads(self.read())

    def iter_lines(self) -> Iterator[str]:
        try:
            while True:
                line = self._raw.readline()
                if not line:
                    return
                yield line.decode("utf-8", errors="replace").rstrip("\r\n")
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"the host broke off the stream: {exc}") from exc

    def close(self) -> None:
        self._raw.close()
        self._conn.close()


class UnixTransport:
    """HTTP/1.1 over a Unix socket. A response read to its end leaves its connection for the
    next request while it is fresh: the host's end of a new connection costs it more than the
    connect does here (~0.5 ms a request). A stream the caller abandons closes its connection:
    the host then kills what the stream was following."""

    def __init__(self, path: str, headers: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.headers = dict(headers or {})
        self._lock = threading.Lock()
        # (connection, when it was last used, the process that made it)
        self._idle: tuple[_UnixConnection, float, int] | None = None

    def _checkout(self, timeout: float) -> tuple[_UnixConnection, bool]:
        """A connection for one request, and whether it already served one."""
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is not None:
            conn, last, pid = idle
            fresh = time.monotonic() - last < KEEPALIVE_S and pid == os.getpid()
            if fresh and conn.sock is not None:
                conn.sock.settimeout(timeout)
                return conn, True
            conn.close()  # (in a forked child, its copy of the socket only)
        return _UnixConnection(self.path, timeout), False

    def _checkin(self, conn: _UnixConnection) -> None:
        with self._lock:
            if self._idle is None:
                self._idle = (conn, time.monotonic(), os.getpid())
                return
        conn.close()

    def _prepare(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        content: bytes | IO[bytes] | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[str, bytes | IO[bytes] | None, dict[str, str]]:
        all_headers = {**self.headers, **(headers or {})}
        body: bytes | IO[bytes] | None = content
        if json is not None:
            body = jsonlib.dumps(json).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if isinstance(body, bytes):
            all_headers["Content-Length"] = str(len(body))
        elif body is not None:
            all_headers["Content-Length"] = str(os.fstat(body.fileno()).st_size - body.tell())
        elif method in ("POST", "PUT", "PATCH"):
            all_headers["Content-Length"] = "0"
        url = quote(path, safe="/:@!$&'()*+,;=-._~") + encode_params(params)
        return url, body, all_headers

    def _exchange(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        content: bytes | IO[bytes] | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
    ) -> _UnixResponse:
        """Send a request and read the response's head (status and headers)."""
        url, body, all_headers = self._prepare(method, path, params, json, content, headers)
        start = body.tell() if body is not None and not isinstance(body, bytes) else None
        for attempt in (1, 2):
            conn, reused = self._checkout(timeout or READ_TIMEOUT_S)
            sent = False
            try:
                conn.request(method, url, body=body, headers=all_headers)
                sent = True
                return _UnixResponse(conn, conn.getresponse())
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # A reused connection the host closed meanwhile: the request never reached it
                # if sending failed, or if it got nothing at all back to a request that is
                # safe to repeat. Then, once, on a new connection.
                gone = isinstance(exc, (ConnectionError, http.client.RemoteDisconnected))
                safe = not sent or method in IDEMPOTENT
                if reused and gone and safe and attempt == 1:
                    if start is not None:
                        body.seek(start)  # type: ignore[union-attr]
                    continue
                raise TransportError(str(exc) or type(exc).__name__) from exc
        raise AssertionError("unreachable")

    def _release(self, response: _UnixResponse, drain: bool) -> None:
        """Keep the connection for the next request if its response was read to the end (with
        `drain`, after reading what is left for a moment: a stream's last bytes); else close it,
        which tells the host that nobody follows what the stream was about."""
        raw, conn = response._raw, response._conn
        if drain and not raw.isclosed() and not raw.will_close and conn.sock is not None:
            deadline = time.monotonic() + STREAM_DRAIN_S
            try:
                conn.sock.settimeout(STREAM_DRAIN_S)
                while not raw.isclosed() and time.monotonic() < deadline and raw.read(_CHUNK):
                    pass
            except (OSError, http.client.HTTPException):
                pass
        if raw.isclosed() and not raw.will_close and conn.sock is not None:
            self._checkin(conn)
        else:
            response.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        response = self._exchange(method, path, params, json, content, headers, timeout)
        try:
            response.read()
        finally:
            self._release(response, drain=False)
        return response

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[Response]:
        response = self._exchange(method, path, params, json, content, headers, None)
        try:
            yield response
        finally:
            self._release(response, drain=True)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, None
        if idle is not None:
            idle[0].close()


class HttpxTransport:
    """A remote host over TCP (TLS, a CA of its own), through httpx."""

    def __init__(
        self, base_url: str, headers: Mapping[str, str], verify: bool | str = True
    ) -> None:
        import ssl

        import httpx

        self._httpx = httpx
        verify_arg: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self._client = httpx.Client(
            base_url=base_url,
            headers=dict(headers),
            verify=verify_arg,
            timeout=httpx.Timeout(
                connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S, write=600.0, pool=10.0
            ),
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        try:
            return self._client.request(
                method,
                path + encode_params(params),
                json=json,
                content=content,
                headers=headers,
                timeout=timeout if timeout is not None else self._client.timeout,
            )
        except self._httpx.TransportError as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | IO[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[Response]:
        try:
            with self._client.stream(
                method, path + encode_params(params), json=json, content=content, headers=headers
            ) as response:
                yield _HttpxStream(response, self._httpx)
        except self._httpx.TransportError as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self._client.close()


class _HttpxStream:
    """An httpx streaming response whose mid-stream errors are TransportErrors too."""

    def __init__(self, response: Any, httpx: Any) -> None:
        self._response = response
        self._httpx = httpx

    @property
    def status_code(self) -> int:
        return int(self._response.status_code)

    @property
    def content(self) -> bytes:
        return self.read()

    def read(self) -> bytes:
        try:
            return bytes(self._response.read())
        except self._httpx.TransportError as exc:
            raise TransportError(str(exc)) from exc

    def json(self) -> Any:
        return jsonlib.loads(self.read())

    def iter_lines(self) -> Iterator[str]:
        try:
            yield from self._response.iter_lines()
        except self._httpx.TransportError as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
