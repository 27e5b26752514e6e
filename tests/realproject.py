"""Real projects nobody here wrote, fetched from PyPI at test time, for end-to-end tests.

`checkout(name, dest)` downloads the pinned sdist once (cached across test sessions in
``$MICROBUILD_TEST_CACHE`` or ``~/.cache/microbuild-tests/sdists``), unpacks it into ``dest``,
and commits it to a fresh git repository. `write_config(project, spec)` then writes and commits
a ``microbuild.toml`` whose snapshot installs the project and its test dependencies in
``.venv``.

Without network the tests that need a real project skip, with the reason; with
``MICROBUILD_REQUIRE_ISOLATION=1`` (CI, where the acceptance test must really run) they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_ENV = "MICROBUILD_REQUIRE_ISOLATION"
CACHE_ENV = "MICROBUILD_TEST_CACHE"
GIT_AUTHOR = ("-c", "user.name=microbuild tests", "-c", "user.email=tests@microbuild.invalid")
# Keep the commits reproducible and independent of the caller's git configuration.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
}
PYTEST_PIN = "pytest==8.3.3"
INPUTS = ("pyproject.toml", "setup.py", "setup.cfg", "requirements*.txt")


@dataclass(frozen=True)
class RealProject:
    """A pinned sdist whose tests run with plain `python -m pytest` after `pip install -e .`."""

    name: str
    version: str
    test_deps: tuple[str, ...] = (PYTEST_PIN,)
    # setuptools_scm finds no tag (and, in a sidecar, no .git): tell it the version.
    scm_version: bool = False
    # A test file and a `sed` script that breaks one of its assertions (a bug to catch).
    bug_file: str = ""
    bug_sed: str = ""
    extra_inputs: tuple[str, ...] = field(default=())

    @property
    def sdist(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


PROJECTS = {
    "pluggy": RealProject(
        name="pluggy",
        version="1.5.0",
        scm_version=True,
        bug_file="testing/test_helpers.py",
        bug_sed='s/assert varnames(f) == (("x",), ())/assert varnames(f) == (("y",), ())/',
    ),
    "iniconfig": RealProject(
        name="iniconfig",
        version="1.1.1",
        # Its tests use `py.test.mark`, which only the real `py` library has (not pytest's shim).
        test_deps=(PYTEST_PIN, "py==1.11.0"),
        scm_version=True,
        bug_file="testing/test_iniconfig.py",
        bug_sed="s/assert config.lineof('section') == 1/assert config.lineof('section') == 2/",
    ),
}


# Projects whose microbuild.toml `microbuild init` writes (tests/test_init.py): not in PROJECTS,
# whose users (test_validate, test_e2e_real_project, benchmarks) write their own configs.
INIT_PROJECTS = {
    "attrs": RealProject(
        name="attrs",
        version="26.1.0",
        scm_version=True,
        bug_file="tests/test_funcs.py",
        bug_sed='s/assert {"x": 1, "y": 2} == asdict(/assert {"x": 1, "y": 3} == asdict(/',
    ),
    "packaging": RealProject(
        name="packaging",
        version="26.4",
        bug_file="tests/test_version.py",
        bug_sed=(
            's/assert Version("1.0rc1") == Version("1.0c1")/'
            'assert Version("1.0rc1") == Version("1.0c2")/'
        ),
    ),
}


def spec_of(name: str) -> RealProject:
    return PROJECTS[name] if name in PROJECTS else INIT_PROJECTS[name]


def require(condition: bool, reason: str) -> None:
    """Skip with `reason` unless the condition holds; fail instead when isolation is required."""
    if condition:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1, so this fails instead of skipping)")
    pytest.skip(reason)


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    base = Path(env) if env else Path.home() / ".cache" / "microbuild-tests" / "sdists"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _pip(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    """pip's own ERROR lines (or its last line): what a skip reason should quote."""
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return " ".join(errors[:2]) if errors else (lines[-1] if lines else f"exit {proc.returncode}")


def fetch_sdist(spec: RealProject) -> Path:
    """The cached sdist, downloaded from PyPI the first time (skips/fails without network)."""
    cache = cache_dir()
    target = cache / spec.sdist
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        try:
            proc = _pip(
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--timeout",
                "15",
                f"{spec.name}=={spec.version}",
                "-d",
                tmp,
                timeout=300,
            )
            ok = proc.returncode == 0
            why = _why(proc)
        except subprocess.TimeoutExpired:
            ok, why = False, "timed out"
        found = list(Path(tmp).glob(f"{spec.name}-{spec.version}.tar.gz"))
        require(
            ok and len(found) == 1,
            f"cannot download {spec.name}=={spec.version} from PyPI (no network?): {why}",
        )
        os.replace(found[0], target)  # atomic: concurrent sessions never see half a file
    return target


def index_url() -> str:
    """The package index pip installs from: PIP_INDEX_URL, pip's configuration, or PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        proc = _pip("config", "get", "global.index-url", timeout=60)
        url = proc.stdout.strip() if proc.returncode == 0 else ""
    return (url or "https://pypi.org/simple").split()[0].rstrip("/")


def check_index_reachable(spec: RealProject) -> None:
    """The snapshot's `pip install` needs the index even when the sdist itself is cached.

    A real request rather than `pip index versions`, which local find-links or file://
    extra indexes can answer without any network.
    """
    url = f"{index_url()}/{spec.name}/"
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            response.read(1)
        why = ""
    except (OSError, ValueError) as exc:
        why = str(exc)
    require(
        not why, f"cannot reach the package index ({url}), which the snapshot setup needs: {why}"
    )


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *GIT_AUTHOR, "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout


def init_repo(path: Path, message: str = "import") -> None:
    """`git init` + commit everything, with a fixed author and no global git config."""
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A", "-f", ".")
    git(path, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", message)


def checkout(name: str, dest: Path) -> Path:
    """Unpack the pinned sdist of `name` into `dest`/<name>-<version>, committed; return it."""
    return checkout_spec(spec_of(name), dest)


def checkout_spec(spec: RealProject, dest: Path) -> Path:
    """`checkout` for any pinned sdist, including ones not registered here."""
    sdist = fetch_sdist(spec)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest / f"{spec.name}-{spec.version}"
    shutil.rmtree(root, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    if not root.is_dir():
        raise AssertionError(f"{sdist} did not unpack to {root}")
    # Stale caches shipped in some sdists would make the project's pytest runs order-dependent.
    for cache in root.rglob(".pytest_cache"):
        shutil.rmtree(cache, ignore_errors=True)
    init_repo(root, f"{spec.name} {spec.version} from its sdist")
    return root


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(spec: RealProject) -> str:
    install = " ".join(
        [".venv/bin/pip install -q --disable-pip-version-check -e .", *spec.test_deps]
    )
    lines = [
        "[snapshot]",
        "setup = [",
        f"  {_toml_str('python3 -m venv .venv')},",
        f"  {_toml_str(install)},",
        "]",
        "inputs = [" + ", ".join(_toml_str(p) for p in (*INPUTS, *spec.extra_inputs)) + "]",
        "",
        "[sidecar]",
        'memory = "2GiB"',
    ]
    if spec.scm_version:
        lines += [f"env = {{ SETUPTOOLS_SCM_PRETEND_VERSION = {_toml_str(spec.version)} }}"]
    return "\n".join(lines) + "\n"


def write_config(project: Path, name: str) -> Path:
    """Write and commit the project's microbuild.toml; return its path."""
    path = project / "microbuild.toml"
    path.write_text(config_text(PROJECTS[name]))
    git(project, "add", "microbuild.toml")
    git(project, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "add microbuild.toml")
    return path


def real_project(name: str, dest: Path) -> Path:
    """A committed checkout of `name` with its microbuild.toml, ready to build a snapshot."""
    spec = PROJECTS[name]
    project = checkout(name, dest)
    check_index_reachable(spec)
    write_config(project, name)
    return project


def run_microbuild(
    state: Path,
    cwd: Path,
    *args: str,
    timeout: float,
    host_idle_exit: str | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a separate process in `cwd`, against the host of `state`
    (started on demand; `host_idle_exit` seconds of idleness end it), with `env` added to
    this process's environment and `stdin` as its input."""
    full = {k: v for k, v in os.environ.items() if k != "MICROBUILD_STATE_DIR"}
    if host_idle_exit is not None:
        full["MICROBUILD_HOST_IDLE_EXIT"] = host_idle_exit
    full |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "microbuild", "--state-dir", str(state), *args],
        cwd=cwd,
        env=full,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
