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
    """HTTP/1.1 over a Unix socket, one connection per request (a connect costs ~50 µs here,
    and a stream the caller abandons must close its connection: the host then kills what the
    stream was following)."""

    def __init__(self, path: str, headers: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.headers = dict(headers or {})

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        content: bytes | IO[bytes] | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
    ) -> _UnixResponse:
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
        conn = _UnixConnection(self.path, timeout or READ_TIMEOUT_S)
        try:
            conn.request(method, url, body=body, headers=all_headers)
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(str(exc) or type(exc).__name__) from exc
        return _UnixResponse(conn, raw)

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
        response = self._send(method, path, params, json, content, headers, timeout)
        try:
            response.read()
        finally:
            response.close()
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
        response = self._send(method, path, params, json, content, headers, None)
        try:
            yield response
        finally:
            response.close()

    def close(self) -> None:
        pass


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
