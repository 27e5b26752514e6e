"""What a repository's config or an API client may reach of the host: exposed paths, a root
filesystem, the host's network. Never the state dir, the token or home directories; anything
else only when the host allows it (serve's flags, the user's own config) or, on the local Unix
socket only, when the user passes --allow-host-access for that command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import need_isolation, write_project

from microbuild.host.app import create_app
from microbuild.host.manager import SidecarManager
from microbuild.host.policy import GRANT_HEADER, HostPolicy, PolicyRefused, user_policy
from microbuild.snapshot import SnapshotRequest

GRANTED = {GRANT_HEADER: "granted"}


@pytest.fixture
def manager(state_dir: Path) -> Iterator[SidecarManager]:
    mgr = SidecarManager(state_dir, default_runtime="process")
    yield mgr
    mgr.close()


def _resolve(app: Any, sidecar: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    body = SnapshotRequest(
        project="/p", setup=(), sidecar=sidecar, base_commit="0" * 40, source_tree="1" * 40
    )
    transport = httpx.ASGITransport(app=app)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
            return await client.post(
                "/v1/snapshots", json=body.model_dump(mode="json"), headers=headers or {}
            )

    import anyio

    return anyio.run(call)


@pytest.mark.parametrize(
    "sidecar",
    [
        {"expose": ["/etc"]},
        {"rootfs": "/"},
        {"network": "host"},
    ],
)
def test_a_repositorys_ask_is_refused_by_default(manager: SidecarManager, sidecar: Any) -> None:
    app = create_app(manager, grants=False)
    response = _resolve(app, sidecar)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "host_access_refused"
    message = response.json()["error"]["message"]
    assert "config.toml [host]" in message and "\n" not in message


def test_the_grant_counts_on_the_unix_socket_only(manager: SidecarManager) -> None:
    over_tcp = create_app(manager, grants=False)
    assert _resolve(over_tcp, {"expose": ["/etc"]}, GRANTED).status_code == 403
    local = create_app(manager, grants=True)
    assert _resolve(local, {"expose": ["/etc"]}, GRANTED).status_code == 200
    assert _resolve(local, {"expose": ["/etc"]}).status_code == 403


@pytest.mark.parametrize("what", ["state", "parent", "home", "root", "slash"])
def test_state_dir_token_and_homes_are_never_exposed(
    manager: SidecarManager, state_dir: Path, what: str
) -> None:
    """Not even with an allow-list of `/` and the user's grant."""
    path = {
        "state": str(state_dir / "snapshots"),
        "parent": str(state_dir.parent),
        "home": str(Path.home()),
        "root": "/root/.ssh",
        "slash": "/",
    }[what]
    policy = HostPolicy.for_host(
        state_dir, allow_expose=[Path("/")], token_file=state_dir / "host.token"
    )
    app = create_app(manager, grants=True, policy=policy)
    response = _resolve(app, {"expose": [path]}, GRANTED)
    assert response.status_code == 403, response.text
    assert "never exposed" in response.json()["error"]["message"]


def test_serves_allow_list_admits_what_it_names_and_nothing_else(state_dir: Path) -> None:
    policy = HostPolicy.for_host(state_dir, allow_expose=[Path("/usr/share")])
    from microbuild.config import SidecarConfig

    policy.check_sidecar(SidecarConfig(expose=("/usr/share/doc",)))
    with pytest.raises(PolicyRefused, match="expose /usr: this host does not allow it"):
        policy.check_sidecar(SidecarConfig(expose=("/usr",)))
    with pytest.raises(PolicyRefused, match=r"expose /usr/share/\.\./lib"):
        policy.check_sidecar(SidecarConfig(expose=("/usr/share/../lib",)))


def test_the_users_own_config_allows_and_a_broken_one_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[host]\nallow_expose = ["/opt"]\nallow_host_network = true\n')
    policy = user_policy(config)
    assert policy.allow_expose == (Path(os.path.realpath("/opt")),)
    assert policy.allow_host_network
    config.write_text('[host]\nallow_expose = ["relative"]\n')
    with pytest.raises(PolicyRefused, match="must be a list of absolute paths"):
        user_policy(config)
    config.write_text("[host\n")
    with pytest.raises(PolicyRefused, match="cannot be read"):
        user_policy(config)
    assert user_policy(tmp_path / "missing.toml") == HostPolicy()


@pytest.mark.isolation
def test_validate_of_a_repo_that_asks_for_host_paths_needs_the_users_flag(
    state_dir: Path, tmp_path: Path
) -> None:
    """End to end through the local host: refused with a one-line error that says how to
    allow it; with --allow-host-access the exposed path is there, read-only."""
    need_isolation()
    config = (
        '[sidecar]\nmemory = "256MiB"\nexpose = ["/usr/share/common-licenses"]\n\n'
        '[[check]]\nname = "t"\ncommand = "test -r /usr/share/common-licenses/GPL-3"\n'
    )
    if not Path("/usr/share/common-licenses/GPL-3").exists():
        pytest.skip("no /usr/share/common-licenses/GPL-3 on this machine")
    root = write_project(tmp_path / "asks", config)
    env = {
        **os.environ,
        "MICROBUILD_STATE_DIR": str(state_dir),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }

    def mb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "microbuild", *args, "validate", "--json"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    try:
        refused = mb()
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "--allow-host-access" in lines[0], refused.stderr
        allowed = mb("--allow-host-access")
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert json.loads(allowed.stdout)["status"] == "passed"
    finally:
        subprocess.run(
            [sys.executable, "-m", "microbuild", "host", "stop"], env=env, capture_output=True
        )


def test_a_second_host_on_the_same_state_dir_is_refused(state_dir: Path) -> None:
    """Real processes: the first host holds the state dir; the second says who does and
    exits 2, and the first keeps serving."""
    env = {**os.environ, "MICROBUILD_STATE_DIR": str(state_dir)}
    sock = state_dir / "first.sock"
    first = subprocess.Popen(
        [sys.executable, "-m", "microbuild", "serve", "--listen", f"unix:{sock}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        assert "microbuild host" in first.stdout.readline()
        second = subprocess.run(
            [sys.executable, "-m", "microbuild", "serve", "--listen", f"unix:{state_dir / 'b'}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert f"another host (pid {first.pid}) is serving" in second.stderr
        assert first.poll() is None and sock.exists()
    finally:
        first.terminate()
        first.wait(timeout=30)


def test_a_damaged_state_database_says_how_to_move_it_aside(state_dir: Path) -> None:
    from microbuild.store import Store, StoreError

    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"is not a database \(damaged\): move it aside with `mv"):
        Store(state_dir / "state.db")
    env = {**os.environ, "MICROBUILD_STATE_DIR": str(state_dir)}
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "microbuild", "stats", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [line for line in shown.stderr.splitlines() if line.strip()]
        assert shown.returncode != 0 and len(lines) == 1 and "mv " in lines[0], shown.stderr
    finally:
        (state_dir / "state.db").unlink()
