"""Property tests of the host's HTTP API against its own OpenAPI document (schemathesis).

The app runs in-process (ASGI) with a real `SidecarManager` on a temporary state dir, the
namespace runtime and a bearer token (sent with every case). Schemathesis generates requests for
every operation in /openapi.json (the WebSocket shell is not in it, so it is not fuzzed) and the
property is: never a 5xx, and every response whose status and media type the document declares
matches the declared schema.

Random ids only ever reach the 404 paths, so a real snapshot and a real sidecar are made first
and the `{snapshot_id}` / `{sidecar_id}` operations, and sidecar creation, are fuzzed again with
those ids. A case may destroy or reset the sidecar: it is checked (and recreated if needed)
before every case, and every sidecar is destroyed at the end.

Inputs known to crash the host (found while writing these tests) are pinned below as explicit
cases, each an xfail(strict=True) naming the bug, and `known_crash` keeps the fuzzing away from
exactly those inputs: bounded to stay fast, it reaches them only by chance, and it should keep
looking for new failures meanwhile. When a bug is fixed its case XPASSes and fails: remove the
mark and its condition in `known_crash` then. `MICROBUILD_FUZZ_EXAMPLES=200` fuzzes harder
(the default is 15 examples per operation, plus schemathesis' coverage cases).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import TINY_CONFIG, need_isolation, write_project
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
)

from microbuild.config import Project, find_project
from microbuild.host.app import create_app
from microbuild.host.manager import Admission, SidecarManager
from microbuild.host.policy import HostPolicy
from microbuild.store import NotFound

pytestmark = pytest.mark.isolation

TOKEN = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# No `status_code_conformance`: the document declares only 2xx/401/413/422, while the app
# answers 403/404/409/503 with its ErrorResponse body on purpose (the exception handlers in
# microbuild/host/app.py); `response_schema_conformance` skips undeclared statuses, so every
# declared one is still validated. The NDJSON streams (exec, source upload) declare a media type
# but no schema, so for them these checks come down to not_a_server_error + the content type;
# a schema check of NDJSON would only fail on parsing the body as one JSON document.
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]

# A generated command could in principle wait for a long time (`sleep 1e9`): bound every exec.
EXEC_TIMEOUT_CAP_S = 5.0

# Files the tiny project's snapshot has, so that reads of real files are fuzzed too.
REAL_FILES = ("installed.txt", "requirements.txt", "src/app.py")

FUZZ = settings(
    max_examples=int(os.environ.get("MICROBUILD_FUZZ_EXAMPLES", "15")),
    deadline=None,
    derandomize=True,
    database=None,  # nothing written under .hypothesis/ in the repository
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@dataclass
class Host:
    """The app under test and the real resources the fuzzing reuses."""

    manager: SidecarManager
    project: Project
    app: Any
    snapshot_id: str = ""
    sidecar_id: str = ""
    cases: int = 0
    # "METHOD /path" -> status codes answered with a real id: shows real resources were reached.
    statuses: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def ensure_snapshot(self) -> str:
        """The tiny project's snapshot, ready (rebuilt if a fuzzed delete or prune removed it)."""
        record = self.manager.build_snapshot(self.project, runtime="namespace")
        assert record.state == "ready", record
        self.snapshot_id = record.id
        return record.id

    def ensure_sidecar(self) -> str:
        """A live sidecar: the same one while it lasts, reset if dead, recreated if destroyed."""
        if self.sidecar_id:
            try:
                record = self.manager.get(self.sidecar_id)
            except NotFound:
                pass
            else:
                if record.state not in ("running", "suspended"):
                    self.manager.reset(record.id)
                return record.id
        record = self.manager.create_sidecar_from(self.ensure_snapshot())
        self.sidecar_id = record.id
        return record.id

    def record(self, case: Case, status: int) -> None:
        # Schemathesis also probes undeclared methods (405): only the declared one counts.
        if case.method.upper() == case.operation.method.upper():
            self.statuses[f"{case.operation.method.upper()} {case.operation.path}"][status] += 1

    def destroy_all(self) -> None:
        for record in self.manager.list_sidecars():
            with contextlib.suppress(NotFound):
                self.manager.destroy(record.id)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    need_isolation()
    # Short, like conftest's state_dir: overlay mount options carry these paths.
    state = Path(tempfile.mkdtemp(prefix="mbt-", dir="/var/tmp"))
    project = find_project(
        write_project(
            tmp_path_factory.mktemp("openapi") / "proj",
            TINY_CONFIG,
            {"requirements.txt": "dep==1\n", "src/app.py": "print('app')\n"},
        )
    )
    # No memory floor: fuzzed creates should reach the runtime, not stop at admission.
    manager = SidecarManager(
        state, default_runtime="namespace", admission=Admission(min_available_memory=0)
    )
    # Every host path allowed (but what is never exposed): fuzzed creates reach the runtime.
    policy = HostPolicy.for_host(
        state, allow_expose=[Path("/")], allow_rootfs=[Path("/")], allow_host_network=True
    )
    app = create_app(manager, token=TOKEN, idle_check_s=3600, policy=policy)
    found = Host(manager=manager, project=project, app=app)
    try:
        found.ensure_sidecar()
        yield found
    finally:
        try:
            found.destroy_all()
            # What the pinned crashes leak (cgroups, sidecar dirs): nothing is left behind.
            manager.runtime("namespace").collect_garbage(keep=set())
        finally:
            from schemathesis.python import asgi

            with contextlib.suppress(Exception):
                asgi.shutdown_lifespans()  # the app's idle-suspend task
            manager.close()
            shutil.rmtree(state, ignore_errors=True)


def _openapi_document() -> dict[str, Any]:
    """The host's OpenAPI document. It does not depend on the manager, so a throwaway one on an
    empty state dir gives it, without root; the cases are sent to the real app (`host`).

    (`schemathesis.pytest.from_fixture` would load it from the fixture instead, but schemathesis
    4.32.5 under pytest 9.2 fails there: it sets `request.node._nodeid`, gone from pytest.)"""
    with tempfile.TemporaryDirectory(prefix="mbt-spec-") as tmp:
        manager = SidecarManager(Path(tmp))
        try:
            return create_app(manager, token=TOKEN).openapi()
        finally:
            manager.close()


schema = schemathesis.openapi.from_dict(_openapi_document())


def _run(case: Case, host: Host, *, fuzzing: bool = True) -> Any:
    if case.operation.path.endswith("/exec") and isinstance(case.body, dict):
        timeout = case.body.get("timeout_s")
        if not isinstance(timeout, int | float) or not 0 < timeout <= EXEC_TIMEOUT_CAP_S:
            case.body["timeout_s"] = EXEC_TIMEOUT_CAP_S
    return case.call_and_validate(headers=AUTH, checks=CHECKS, app=host.app)


# -- every operation, generated ids ------------------------------------------------------------


@schema.parametrize()
@FUZZ
def test_api_never_fails_and_conforms(case: Case, host: Host) -> None:
    _run(case, host)


# -- the same operations on real resources -----------------------------------------------------


@schema.include(path_regex=r"\{sidecar_id\}").parametrize()
@FUZZ
def test_sidecar_operations_on_a_real_sidecar(case: Case, host: Host) -> None:
    case.path_parameters["sidecar_id"] = host.ensure_sidecar()
    if case.operation.method == "get" and "path" in case.path_parameters:
        host.cases += 1
        if host.cases % 2:  # every other read is of a file that exists
            case.path_parameters["path"] = REAL_FILES[host.cases // 2 % len(REAL_FILES)]
    host.record(case, _run(case, host).status_code)


@schema.include(path_regex=r"\{snapshot_id\}").parametrize()
@FUZZ
def test_snapshot_operations_on_the_real_snapshot(case: Case, host: Host) -> None:
    host.ensure_sidecar()  # so that a fuzzed DELETE meets a snapshot in use (409)
    case.path_parameters["snapshot_id"] = host.ensure_snapshot()
    host.record(case, _run(case, host).status_code)


@schema.include(method="POST", path="/v1/sidecars").parametrize()
@FUZZ
def test_create_sidecar_from_the_real_snapshot(case: Case, host: Host) -> None:
    if isinstance(case.body, dict):
        case.body["snapshot_id"] = host.ensure_snapshot()
    response = _run(case, host)
    host.record(case, response.status_code)
    if response.status_code == 201:
        host.manager.destroy(response.json()["id"])


def test_the_real_resources_were_exercised(host: Host) -> None:
    """Runs after the fuzz tests above (file order): every operation fuzzed with a real id got a
    2xx at least once, so the fuzzing did not only meet the 404 and 422 paths."""
    if not host.statuses:
        pytest.skip("run together with the fuzz tests above")
    operations = [result.ok() for result in schema.get_all_operations()]
    expected = {
        f"{op.method.upper()} {op.path}"
        for op in operations
        if "{sidecar_id}" in op.path or "{snapshot_id}" in op.path or op.path == "/v1/sidecars"
    } - {"GET /v1/sidecars", "DELETE /v1/snapshots/{snapshot_id}"}  # a list; in use: always 409
    seen_2xx = {op for op, seen in host.statuses.items() if any(200 <= s < 300 for s in seen)}
    assert expected <= seen_2xx, {op: dict(host.statuses[op]) for op in expected - seen_2xx}
    assert host.statuses["DELETE /v1/snapshots/{snapshot_id}"].keys() == {409}


def test_token_is_required(host: Host) -> None:
    async def statuses() -> list[int]:
        transport = httpx.ASGITransport(app=host.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            return [
                (await client.get("/v1/health")).status_code,
                (await client.get(f"/v1/sidecars/{host.ensure_sidecar()}")).status_code,
                (
                    await client.get("/v1/sidecars", headers={"Authorization": "Bearer no"})
                ).status_code,
                (await client.get("/openapi.json")).status_code,
                (await client.get("/openapi.json", headers=AUTH)).status_code,
            ]

    assert asyncio.run(statuses()) == [200, 401, 401, 401, 200]


# -- known crashes, pinned ---------------------------------------------------------------------
#
# Each is a 500 from the real server (in-process the exception itself reaches the test, hence
# `raises=`). The reasons name the code at fault; they are reported, not fixed, here.

B64 = "exec_ (microbuild/host/app.py) decodes stdin with base64.b64decode(validate=True) uncaught"
NUL = (
    "NamespaceRuntime.exec (microbuild/runtime/namespace.py) -> subprocess.Popen raises "
    "ValueError for a NUL byte in argv/env or '=' in an env name; ExecRequest accepts them"
)
NAME = (
    "files._openat2 (microbuild/host/files.py) raises a plain OSError(ENAMETOOLONG) that no "
    "exception handler in microbuild/host/app.py maps"
)
ROOTFS = (
    "NamespaceRuntime._layout (microbuild/runtime/namespace.py) recurses forever when rootfs "
    "is not a directory: _skeleton returns spec.rootfs, isdir() fails, _layout calls itself"
)
EXPOSE = (
    "NamespaceRuntime._exposed (microbuild/runtime/namespace.py): os.path.realpath() raises "
    "ValueError on a NUL byte or a lone surrogate; SidecarConfig.expose only checks '/...'"
)
CPUS = (
    "Cgroup.set_limits (microbuild/runtime/cgroup.py): int(cpus * CPU_PERIOD_US) raises "
    "OverflowError for cpus > ~1.8e303 (SidecarConfig.cpus has no upper bound), and "
    "NamespaceRuntime.create cleans up only after OSError/CgroupError: each such request leaks "
    "the sidecar's cgroups and directory"
)
SURROGATE = (
    'a lone surrogate (JSON "\\ud800") cannot be encoded as UTF-8 where it is echoed back: '
    "FastAPI's default 422 handler repeats the input (argv, cwd, project have length limits, "
    "so pydantic refuses it there), and a stored snapshot's `setup` repeats it in every answer"
)
LONG_NAME = "a" * 256  # one path component over NAME_MAX
BASE = {"base_commit": "a" * 40, "source_tree": "b" * 40}
EXEC = "/v1/sidecars/{sidecar_id}/exec"
FILE = "/v1/sidecars/{sidecar_id}/files/{path}"
CREATE = "/v1/sidecars"
RESOLVE = "/v1/snapshots"


def _case(
    id: str, method: str, path: str, body: Any = None, file: str = "", crash: str = "", **_: Any
) -> Any:
    """One pinned request. `body` of CREATE is its `settings`; `file` fills `{path}`. With
    `crash` (the bug it once hit: a 500), the host must now refuse it with a 4xx instead."""
    return pytest.param(method, path, body, file, bool(crash), id=id)


@pytest.mark.parametrize(
    ("method", "path", "body", "file", "rejected"),
    [
        _case(
            "exec-stdin-padding",
            "POST",
            EXEC,
            {"argv": ["true"], "stdin": "0"},
            crash=B64,
            raises=ValueError,
        ),
        _case(
            "exec-stdin-non-ascii",
            "POST",
            EXEC,
            {"argv": ["true"], "stdin": "\x80"},
            crash=B64,
            raises=ValueError,
        ),
        _case(
            "exec-argv-nul", "POST", EXEC, {"argv": ["true", "a\x00"]}, crash=NUL, raises=ValueError
        ),
        _case(
            "exec-env-nul",
            "POST",
            EXEC,
            {"argv": ["true"], "env": {"A": "\x00"}},
            crash=NUL,
            raises=ValueError,
        ),
        _case(
            "exec-env-name-equals",
            "POST",
            EXEC,
            {"argv": ["true"], "env": {"A=B": "c"}},
            crash=NUL,
            raises=ValueError,
        ),
        _case(
            "exec-argv-surrogate",
            "POST",
            EXEC,
            {"argv": ["\ud800"]},
            crash=SURROGATE,
            raises=ValueError,
        ),
        _case(
            "exec-cwd-surrogate",
            "POST",
            EXEC,
            {"argv": ["true"], "cwd": "\ud800"},
            crash=SURROGATE,
            raises=ValueError,
        ),
        _case("read-name-too-long", "GET", FILE, file=LONG_NAME, crash=NAME, raises=OSError),
        _case("write-name-too-long", "PUT", FILE, file=LONG_NAME, crash=NAME, raises=OSError),
        _case(
            "create-rootfs-missing",
            "POST",
            CREATE,
            {"rootfs": "/nonexistent"},
            crash=ROOTFS,
            raises=RecursionError,
        ),
        _case(
            "create-cpus-overflow",
            "POST",
            CREATE,
            {"cpus": 1.8e303},
            crash=CPUS,
            raises=OverflowError,
        ),
        _case(
            "create-expose-nul",
            "POST",
            CREATE,
            {"expose": ["/a\x00"]},
            crash=EXPOSE,
            raises=ValueError,
        ),
        _case(
            "create-expose-surrogate",
            "POST",
            CREATE,
            {"expose": ["/\ud800"]},
            crash=EXPOSE,
            raises=ValueError,
        ),
        _case(
            "resolve-project-surrogate",
            "POST",
            RESOLVE,
            {"project": "\ud800", **BASE},
            crash=SURROGATE,
            raises=ValueError,
        ),
        # Their working neighbours, so that the failures above are not the harness's.
        _case("exec-ok", "POST", EXEC, {"argv": ["true"], "stdin": "aGk=", "env": {"A": "b"}}),
        _case("read-ok", "GET", FILE, file="installed.txt"),
        _case("write-ok", "PUT", FILE, file="a" * 255),
        _case("create-ok", "POST", CREATE, {"expose": ["/etc"], "network": "host"}),
        _case("resolve-ok", "POST", RESOLVE, {"project": "/p\u00e9", **BASE}),
    ],
)
def test_known_crashes(
    host: Host, method: str, path: str, body: Any, file: str, rejected: bool
) -> None:
    params: dict[str, Any] = {}
    if "{sidecar_id}" in path:
        params["sidecar_id"] = host.ensure_sidecar()
    if "{path}" in path:
        params["path"] = file
    kwargs: dict[str, Any] = {"path_parameters": params}
    if path == CREATE:
        kwargs["body"] = {"snapshot_id": host.ensure_snapshot(), "settings": body}
    elif body is not None:
        kwargs["body"] = body
    response = _run(schema[path][method].Case(**kwargs), host, fuzzing=False)
    if rejected:
        assert 400 <= response.status_code < 500, response.text
        return
    assert response.status_code < 300, response.text
    if path == CREATE:
        host.manager.destroy(response.json()["id"])


def test_a_stored_surrogate_does_not_break_listing(state_dir: Path) -> None:
    """POST /v1/snapshots with a lone surrogate in `setup` stores the record, then fails to
    answer (500); from then on GET /v1/snapshots (`microbuild snapshot list`) is a 500 for every
    client until the record is pruned. A host of its own: the shared one must stay usable."""
    manager = SidecarManager(state_dir, default_runtime="process")
    app = create_app(manager, token=TOKEN, idle_check_s=3600)
    try:
        refused = _call(app, "POST", RESOLVE, {"project": "/p", "setup": ["\ud800"], **BASE})
        assert refused.status_code == 422
        listed = _call(app, "GET", RESOLVE, None)
        assert listed.status_code == 200 and listed.json() == []
    finally:
        manager.close()


def _call(app: Any, method: str, path: str, body: Any) -> Any:
    case = schema[path][method].Case(**({"body": body} if body is not None else {}))
    return case.call_and_validate(headers=AUTH, checks=CHECKS, app=app)


DEEP = (
    "NamespaceRuntime.destroy -> _remove_tree (microbuild/runtime/namespace.py): shutil.rmtree "
    "recurses once per directory level (Python 3.11) and its RecursionError escapes, so a "
    "sidecar holding a tree deeper than ~1000 levels (PUT .../files/d/d/.../f makes one) can "
    "be neither reset (it is left dead) nor destroyed"
)
DEPTH = 1200


@pytest.fixture
def deep_sidecar(host: Host) -> Iterator[str]:
    """A sidecar whose workspace holds a directory tree DEPTH levels deep, written through the
    files API; removed by hand (rm -rf) at the end."""
    record = host.manager.create_sidecar_from(host.ensure_snapshot())
    try:
        # The files API refuses paths this deep; a command in the sidecar can still make one.
        script = f"import os\nfor _ in range({DEPTH}):\n    os.mkdir('d')\n    os.chdir('d')"
        result = host.manager.exec(record.id, ["python3", "-c", script]).result()
        assert result.exit_code == 0
        deep = "d/" * 300 + "f"
        case = schema[FILE]["PUT"].Case(path_parameters={"sidecar_id": record.id, "path": deep})
        assert _run(case, host, fuzzing=False).status_code == 400
        yield record.id
    finally:
        with contextlib.suppress(NotFound):
            sidecar_dir = host.manager.store.get_sidecar(record.id).handle.get("dir")
            if sidecar_dir:
                subprocess.run(["rm", "-rf", "--one-file-system", sidecar_dir], check=False)
            host.manager.destroy(record.id)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/sidecars/{sidecar_id}/reset"), ("DELETE", "/v1/sidecars/{sidecar_id}")],
    ids=["reset", "destroy"],
)
def test_deep_workspace_tree(host: Host, deep_sidecar: str, method: str, path: str) -> None:
    case = schema[path][method].Case(path_parameters={"sidecar_id": deep_sidecar})
    assert _run(case, host, fuzzing=False).status_code == 200


def _source_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("README")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    return buf.getvalue()


def test_snapshot_build_always_ends_with_a_result(host: Host) -> None:
    request = {"project": "/p", "setup": ["true"], "sidecar": {"rootfs": "/nonexistent"}, **BASE}

    async def events() -> list[str]:
        transport = httpx.ASGITransport(app=host.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://host", headers=AUTH
        ) as client:
            resolved = await client.post(RESOLVE, json=request)
            assert resolved.status_code == 200, resolved.text
            snapshot_id = resolved.json()["snapshot"]["id"]
            built = await client.put(f"/v1/snapshots/{snapshot_id}/source", content=_source_tar())
            assert built.status_code == 200
            return [line for line in built.text.splitlines() if line.strip()]

    lines = asyncio.run(events())
    assert lines and ('"event": "done"' in lines[-1] or '"event": "error"' in lines[-1]), lines
