"""`microbuild init`: what it detects from a project's files, what it writes, and when it refuses.

Fixture projects are small git repositories written in tmp_path; each test parses the generated
TOML and asserts the exact setup and checks. The slow tests run `init` on real sdists from PyPI.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from microbuild.cli.main import cli
from microbuild.config import ProjectConfig, find_project, load_config

if __package__:  # tests/ became a package
    from . import realproject
else:
    import realproject

VENV = "python3 -m venv .venv"
PIP = ".venv/bin/pip install"
LINT = {"name": "lint", "command": "ruff check .", "timeout_s": 300}
TESTS = {"name": "tests", "command": "python -m pytest -q", "timeout_s": 900}


def make_project(root: Path, files: dict[str, str], *, tag: str | None = None) -> Path:
    """A committed git repository holding `files` (path -> text)."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    realproject.init_repo(root)
    if tag is not None:
        realproject.git(root, "tag", tag)
    return root


def init(*args: str) -> Result:
    return CliRunner().invoke(cli, ["init", *args], catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def generated(root: Path) -> tuple[dict[str, Any], ProjectConfig]:
    """The written microbuild.toml, as raw TOML and as microbuild loads it."""
    path = root / "microbuild.toml"
    return tomllib.loads(path.read_text()), load_config(path)


def init_and_load(root: Path) -> tuple[dict[str, Any], ProjectConfig, str]:
    result = ok(init(str(root)))
    assert result.stdout == f"wrote {root / 'microbuild.toml'}\n"
    raw, config = generated(root)
    return raw, config, result.stderr


PYPROJECT_TESTS_EXTRA = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "demo"
version = "1.0"
dependencies = ["attrs"]

[project.optional-dependencies]
docs = ["sphinx"]
tests = ["pytest>=8", "coverage"]
"""


def test_pyproject_with_tests_extra_and_tests_dir(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo",
        {
            "pyproject.toml": PYPROJECT_TESTS_EXTRA,
            "src/demo/__init__.py": "",
            "tests/test_demo.py": "def test_it():\n    assert True\n",
        },
    )
    raw, config, stderr = init_and_load(root)
    # pytest comes with the tests extra: not installed a second time.
    assert raw["snapshot"] == {
        "setup": [VENV, f"{PIP} -e '.[tests]'"],
        "inputs": ["pyproject.toml"],
    }
    assert raw["check"] == [TESTS]
    assert "sidecar" not in raw
    assert config.sidecar.env == {}
    assert "kept    extra [tests]: pyproject.toml declares it" in stderr
    assert "kept    tests: `python -m pytest -q`: tests/ exists" in stderr
    assert "pytest comes from extra 'tests' (pyproject.toml)" in stderr
    assert "dropped lint: ruff is not configured" in stderr
    assert "dropped types: mypy is not configured" in stderr
    # The project is found the way every other command finds it.
    assert find_project(root / "src").config == config


@pytest.mark.parametrize(
    ("extras", "chosen"),
    [
        ({"dev": ["tox"], "testing": ["pytest"]}, "testing"),
        ({"dev": ["pytest"], "test": ["pytest"], "tests": ["pytest"]}, "test"),
        ({"Dev": ["pytest"]}, "Dev"),
    ],
)
def test_first_test_extra_wins(tmp_path: Path, extras: dict[str, list[str]], chosen: str) -> None:
    table = "\n".join(f"{name} = {json.dumps(reqs)}" for name, reqs in extras.items())
    root = make_project(
        tmp_path / "demo",
        {
            "pyproject.toml": f'[project]\nname = "demo"\nversion = "1"\n\n'
            f"[project.optional-dependencies]\n{table}\n",
            "tests/test_a.py": "",
        },
    )
    raw, _, _ = init_and_load(root)
    assert raw["snapshot"]["setup"] == [VENV, f"{PIP} -e '.[{chosen}]'"]


def test_ruff_and_mypy_in_pyproject(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo",
        {
            "pyproject.toml": '[project]\nname = "demo"\nversion = "1"\n\n'
            "[tool.ruff]\nline-length = 100\n\n[tool.mypy]\nstrict = true\n\n"
            '[tool.pytest.ini_options]\naddopts = "-ra"\n',
            "src/demo/__init__.py": "",
            "src/other/__init__.py": "",
            "docs/conf.py": "",
        },
    )
    raw, _, stderr = init_and_load(root)
    assert raw["snapshot"]["setup"] == [VENV, f"{PIP} -e . ruff mypy pytest"]
    # No `files` for mypy: the package directory named after the project.
    assert raw["check"] == [
        LINT,
        {"name": "types", "command": "mypy src/demo", "timeout_s": 600},
        TESTS,
    ]
    assert "kept    lint: `ruff check .`: pyproject.toml has [tool.ruff]; installs ruff" in stderr
    assert "kept    types: `mypy src/demo`: pyproject.toml has [tool.mypy]" in stderr
    assert "tests: `python -m pytest -q`: pyproject.toml has [tool.pytest.ini_options]" in stderr
    assert "dropped extras: the project declares no extras" in stderr


def test_ruff_toml_mypy_ini_and_dependency_group(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo",
        {
            "pyproject.toml": '[project]\nname = "demo"\nversion = "1"\n\n'
            "[dependency-groups]\n"
            'lint = ["ruff>=0.5"]\n'
            'dev = [{include-group = "lint"}, "pytest==8.3.3", "mypy"]\n',
            "ruff.toml": "line-length = 99\n",
            "mypy.ini": "[mypy]\nfiles = demo, tests\n",
            "uv.lock": "version = 1\n",
            "demo/__init__.py": "",
            "conftest.py": "",
        },
    )
    raw, _, stderr = init_and_load(root)
    # The group's requirements (its include resolved) are installed; none is added twice.
    assert raw["snapshot"] == {
        "setup": [VENV, f"{PIP} -e . 'ruff>=0.5' pytest==8.3.3 mypy"],
        "inputs": ["pyproject.toml", "uv.lock"],
    }
    assert raw["check"] == [
        LINT,
        {"name": "types", "command": "mypy", "timeout_s": 600},
        TESTS,
    ]
    assert "kept    dependency group dev: pyproject.toml [dependency-groups]" in stderr
    assert "mypy.ini exists, with files = demo, tests" in stderr
    assert "conftest.py exists" in stderr


def test_requirements_dev_txt(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo",
        {
            "setup.py": "from setuptools import setup\nsetup(name='demo', packages=['demo'])\n",
            "requirements.txt": "requests\n",
            "requirements-dev.txt": "-r requirements.txt\npytest==8.3.3  # pinned\nruff\n",
            "requirements-docs.txt": "sphinx\n",
            "test-requirements.txt": "hypothesis\n",
            "ruff.toml": "",
            "demo/__init__.py": "",
            "tests/test_demo.py": "",
        },
    )
    raw, _, stderr = init_and_load(root)
    assert raw["snapshot"] == {
        "setup": [
            VENV,
            f"{PIP} -e . -r requirements-dev.txt -r test-requirements.txt",
        ],
        "inputs": ["setup.py", "requirements*.txt", "test-requirements.txt"],
    }
    assert raw["check"] == [LINT, TESTS]
    assert "kept    -r requirements-dev.txt: test/development requirements" in stderr
    assert "dropped -r requirements.txt: runtime requirements" in stderr
    assert "dropped -r requirements-docs.txt: not test or development requirements" in stderr
    assert "pytest comes from requirements-dev.txt" in stderr
    assert "ruff comes from requirements-dev.txt" in stderr


def test_requirements_only_application(tmp_path: Path) -> None:
    """No package to install: the plain requirements are the project's dependencies."""
    root = make_project(
        tmp_path / "app",
        {
            "requirements.txt": "flask\n",
            "requirements/test.txt": "pytest\n",
            "app.py": "",
            "tests/test_app.py": "",
        },
    )
    raw, _, _ = init_and_load(root)
    assert raw["snapshot"] == {
        "setup": [VENV, f"{PIP} -r requirements.txt -r requirements/test.txt"],
        "inputs": ["requirements*.txt", "requirements/*.txt"],
    }
    assert raw["check"] == [TESTS]


def test_setup_cfg_only_with_mypy(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "tool",
        {
            "setup.cfg": "[metadata]\nname = tool\n\n[mypy]\nfiles = tool.py\nstrict = True\n",
            "tool.py": "X: int = 1\n",
        },
    )
    raw, _, stderr = init_and_load(root)
    # pip cannot install a setup.cfg without setup.py or pyproject.toml: only the tools.
    assert raw["snapshot"] == {"setup": [VENV, f"{PIP} mypy"], "inputs": ["setup.cfg"]}
    assert raw["check"] == [{"name": "types", "command": "mypy", "timeout_s": 600}]
    assert "dropped install -e .: setup.cfg alone is not installable" in stderr
    assert "kept    types: `mypy`: setup.cfg has [mypy], with files = tool.py" in stderr
    assert "dropped tests: no pytest configuration" in stderr


SCM_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64", "setuptools-scm>=8"]
build-backend = "setuptools.build_meta"

[project]
name = "demo"
dynamic = ["version"]

[tool.setuptools_scm]
"""


def test_scm_versioned_without_tags(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo", {"pyproject.toml": SCM_PYPROJECT, "src/demo/__init__.py": ""}
    )
    raw, config, stderr = init_and_load(root)
    assert raw["sidecar"] == {"env": {"SETUPTOOLS_SCM_PRETEND_VERSION": "0.0.0"}}
    assert config.sidecar.env == {"SETUPTOOLS_SCM_PRETEND_VERSION": "0.0.0"}
    assert raw["snapshot"]["setup"] == [VENV, f"{PIP} -e ."]
    assert "check" not in raw
    assert (
        "kept    sidecar.env SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0: pyproject.toml has "
        "[tool.setuptools_scm]: setuptools_scm reads the version from git, and sidecars have "
        "no git history; the repository has no tags"
    ) in stderr
    assert "dropped checks: no ruff or mypy configuration" in stderr


@pytest.mark.parametrize(
    ("files", "tag", "env"),
    [
        # Sidecars never see .git, tags or not: the nearest tag is the version to pretend.
        ({"pyproject.toml": SCM_PYPROJECT}, "v1.2.3", {"SETUPTOOLS_SCM_PRETEND_VERSION": "1.2.3"}),
        # An sdist says its version in PKG-INFO.
        (
            {"pyproject.toml": SCM_PYPROJECT, "PKG-INFO": "Metadata-Version: 2.1\nVersion: 4.5\n"},
            None,
            {"SETUPTOOLS_SCM_PRETEND_VERSION": "4.5"},
        ),
        (
            {
                "pyproject.toml": '[build-system]\nrequires = ["hatchling", "hatch-vcs"]\n'
                'build-backend = "hatchling.build"\n\n[project]\nname = "demo"\n'
                'dynamic = ["version"]\n'
            },
            None,
            {"SETUPTOOLS_SCM_PRETEND_VERSION": "0.0.0"},
        ),
        (
            {"setup.py": "from setuptools import setup\nsetup(use_scm_version=True)\n"},
            None,
            {"SETUPTOOLS_SCM_PRETEND_VERSION": "0.0.0"},
        ),
        # The project has its own fallback: nothing to pretend.
        (
            {"pyproject.toml": SCM_PYPROJECT + 'fallback_version = "0.1"\n'},
            None,
            {},
        ),
    ],
    ids=["tagged", "pkg-info", "hatch-vcs", "setup-py", "fallback"],
)
def test_scm_version_sources(
    tmp_path: Path, files: dict[str, str], tag: str | None, env: dict[str, str]
) -> None:
    root = make_project(tmp_path / "demo", {**files, "demo/__init__.py": ""}, tag=tag)
    raw, config, _ = init_and_load(root)
    assert raw.get("sidecar", {}).get("env", {}) == env
    assert config.sidecar.env == env


def test_no_python_project(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "web",
        {"package.json": "{}\n", "README.md": "hi\n", "tests/app.test.js": ""},
    )
    raw, config, stderr = init_and_load(root)
    assert raw == {"snapshot": {"setup": [], "inputs": []}}
    assert config.checks == () and config.snapshot.setup == ()
    assert "dropped setup: no Python project here" in stderr
    assert "dropped checks: nothing to check was found" in stderr


def test_python_files_and_tests_dir_only(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "scripts", {"tool.py": "", "tests/test_tool.py": "def test(): pass\n"}
    )
    raw, _, _ = init_and_load(root)
    assert raw["snapshot"] == {"setup": [VENV, f"{PIP} pytest"], "inputs": []}
    assert raw["check"] == [TESTS]


def test_python_files_without_tests(tmp_path: Path) -> None:
    root = make_project(tmp_path / "scripts", {"tool.py": ""})
    raw, _, stderr = init_and_load(root)
    assert raw["snapshot"] == {"setup": [VENV], "inputs": []}
    assert "check" not in raw
    assert "# No checks detected." in (root / "microbuild.toml").read_text()
    assert "dropped checks:" in stderr


def test_existing_config_needs_force(tmp_path: Path) -> None:
    old = '[snapshot]\nsetup = ["true"]\n'
    root = make_project(
        tmp_path / "demo",
        {"microbuild.toml": old, "pyproject.toml": PYPROJECT_TESTS_EXTRA, "tests/t.py": ""},
    )
    refused = init(str(root))
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: {root / 'microbuild.toml'} already exists; --force overwrites it\n"
    )
    assert (root / "microbuild.toml").read_text() == old

    forced = ok(init(str(root), "--force"))
    assert forced.stdout == f"wrote {root / 'microbuild.toml'}\n"
    raw, _ = generated(root)
    assert raw["snapshot"]["setup"] == [VENV, f"{PIP} -e '.[tests]'"]
    assert raw["check"] == [TESTS]


PYPROJECT_WITH_TABLE = """\
[project]
name = "demo"
version = "1"

# microbuild, by hand
[tool.microbuild.snapshot]
setup = ["true"]

[[tool.microbuild.check]]
name = "old"
command = "true"

[tool.ruff]
line-length = 90  # kept
"""


def test_existing_pyproject_table_needs_force(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo", {"pyproject.toml": PYPROJECT_WITH_TABLE, "tests/t.py": ""}
    )
    pyproject = root / "pyproject.toml"
    refused = init(str(root))
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: {pyproject} already has a [tool.microbuild] table; --force replaces it\n"
    )
    assert pyproject.read_text() == PYPROJECT_WITH_TABLE

    forced = ok(init(str(root), "--force", "--json"))
    out = json.loads(forced.stdout)
    assert out["path"] == str(pyproject) and out["written"] is True
    assert not (root / "microbuild.toml").exists()
    text = pyproject.read_text()
    assert "line-length = 90  # kept" in text and '"old"' not in text
    assert text.endswith(out["config"])
    data = tomllib.loads(text)
    assert data["project"] == {"name": "demo", "version": "1"}
    assert data["tool"]["ruff"] == {"line-length": 90}
    assert data["tool"]["microbuild"]["snapshot"]["setup"] == [VENV, f"{PIP} -e . ruff pytest"]
    assert data["tool"]["microbuild"]["check"] == [LINT, TESTS]
    project = find_project(root)
    assert project.config_path == pyproject
    assert [c.name for c in project.config.checks] == ["lint", "tests"]


def test_force_with_both_configurations_keeps_microbuild_toml(tmp_path: Path) -> None:
    """Both files configuring microbuild is refused by find_project; --force leaves one."""
    root = make_project(
        tmp_path / "demo",
        {"pyproject.toml": PYPROJECT_WITH_TABLE, "microbuild.toml": "", "tests/t.py": ""},
    )
    assert init(str(root)).exit_code == 2
    ok(init(str(root), "--force"))
    data = tomllib.loads((root / "pyproject.toml").read_text())
    assert "microbuild" not in data["tool"] and data["tool"]["ruff"] == {"line-length": 90}
    project = find_project(root)
    assert project.config_path == root / "microbuild.toml"
    assert [c.name for c in project.config.checks] == ["lint", "tests"]


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo", {"pyproject.toml": PYPROJECT_TESTS_EXTRA, "tests/t.py": ""}
    )
    before = realproject.git(root, "status", "--porcelain", "--ignored")
    result = ok(init(str(root), "--dry-run"))
    assert not (root / "microbuild.toml").exists()
    assert realproject.git(root, "status", "--porcelain", "--ignored") == before
    assert tomllib.loads(result.stdout)["snapshot"]["setup"] == [VENV, f"{PIP} -e '.[tests]'"]
    assert "kept    tests:" in result.stderr
    assert f"dry run: {root / 'microbuild.toml'} not written" in result.stderr
    # What a dry run prints is exactly what a real run writes.
    ok(init(str(root)))
    assert (root / "microbuild.toml").read_text() == result.stdout


def test_dry_run_with_existing_config_notes_it(tmp_path: Path) -> None:
    root = make_project(tmp_path / "demo", {"microbuild.toml": "", "tool.py": ""})
    result = ok(init(str(root), "--dry-run"))
    assert "note: " in result.stderr and "--force overwrites it" in result.stderr
    assert (root / "microbuild.toml").read_text() == ""


def test_json_shape(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo",
        {"pyproject.toml": PYPROJECT_TESTS_EXTRA + "\n[tool.ruff]\n", "tests/t.py": ""},
    )
    result = ok(init(str(root), "--json"))
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert set(out) == {"path", "written", "config", "decisions"}
    assert out["path"] == str(root / "microbuild.toml")
    assert out["written"] is True
    assert out["config"] == (root / "microbuild.toml").read_text()
    for decision in out["decisions"]:
        assert set(decision) == {"decision", "item", "reason", "file"}
        assert decision["decision"] in ("kept", "dropped")
    by_item = {d["item"]: d for d in out["decisions"]}
    assert by_item["lint"] == {
        "decision": "kept",
        "item": "lint",
        "reason": "`ruff check .`: pyproject.toml has [tool.ruff]; installs ruff",
        "file": "pyproject.toml",
    }
    assert by_item["tests"]["file"] == "tests/"
    assert by_item["types"]["decision"] == "dropped"

    dry = json.loads(ok(init(str(root), "--dry-run", "--json", "--force")).stdout)
    assert dry["written"] is False and dry["config"] == out["config"]


def test_not_a_git_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    root = tmp_path / "plain"
    root.mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT_TESTS_EXTRA)
    result = init(str(root))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {root} is not inside a git work tree; run `git init` there first "
        "(snapshots are built from git commits)\n"
    )
    assert not (root / "microbuild.toml").exists()

    # The real command, as a user runs it, in the current directory.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "microbuild", "init", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_missing_directory_and_invalid_pyproject(tmp_path: Path) -> None:
    missing = init(str(tmp_path / "nope"))
    assert missing.exit_code == 2
    assert missing.stderr == f"error: {tmp_path / 'nope'} is not a directory\n"

    root = make_project(tmp_path / "demo", {"pyproject.toml": "[project\n"})
    broken = init(str(root))
    assert broken.exit_code == 2
    assert broken.stderr.startswith("error: pyproject.toml: invalid TOML: ")
    assert len(broken.stderr.splitlines()) == 1


def test_default_path_is_the_project_dir(tmp_path: Path) -> None:
    root = make_project(tmp_path / "demo", {"tool.py": "", "tests/t.py": ""})
    (root / "sub").mkdir()
    result = CliRunner().invoke(cli, ["-C", str(root), "init", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert f"dry run: {root / 'microbuild.toml'} not written" in result.stderr
    # A relative PATH is relative to -C too.
    result = CliRunner().invoke(cli, ["-C", str(root), "init", "sub", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert f"dry run: {root / 'sub' / 'microbuild.toml'} not written" in result.stderr


def test_a_broken_rendering_is_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from microbuild.distill import plan as plan_module

    root = make_project(tmp_path / "demo", {"tool.py": "", "tests/t.py": ""})
    monkeypatch.setattr(plan_module.Plan, "render", lambda self, prefix="": "[[check]]\n")
    result = init(str(root))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the generated configuration does not load (")
    assert not (root / "microbuild.toml").exists()

    # Text that loads but says something else than the plan is refused as well.
    monkeypatch.setattr(plan_module.Plan, "render", lambda self, prefix="": "")
    result = init(str(root))
    assert result.exit_code == 1
    assert "not as planned" in result.stderr
    assert not (root / "microbuild.toml").exists()


def test_rendering_escapes_strings(tmp_path: Path) -> None:
    from microbuild.distill.plan import Check, Plan, validate_rendering

    odd = "echo \"quoted\" \\back\\slash 'single' tab\there ünï"
    plan = Plan(
        setup=(odd, "x" * 120),
        inputs=("req s/*.txt",),
        env=(("A B", 'va"l'),),
        checks=(Check("t.1-x", odd, 5),),
        decisions=(),
    )
    config = validate_rendering(plan, plan.render(), "microbuild.toml")
    assert config.snapshot.setup == (odd, "x" * 120)
    assert config.sidecar.env == {"A B": 'va"l'}
    assert config.checks[0].command == odd


# ---------------------------------------------------------------------------
# real projects


def installs_pytest(root: Path, install: str) -> bool:
    """Whether the install command brings pytest: by name, or through a declared extra."""
    words = shlex.split(install)
    if any(w.split("=")[0].split(">")[0] == "pytest" for w in words):
        return True
    extras = [w[2:-1] for w in words if w.startswith(".[") and w.endswith("]")]
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    pyproject = root / "pyproject.toml"
    optional = (
        tomllib.loads(pyproject.read_text()).get("project", {}).get("optional-dependencies", {})
    )
    for extra in extras:
        declared = cfg.get("options.extras_require", extra, fallback="").split()
        declared += optional.get(extra, [])
        if "pytest" in declared:
            return True
    return False


PLUGGY_CI_TESTS = (
    "export _PYTEST_SETUP_SKIP_PLUGGY_DEP=1 && export _PLUGGY_TOX_CMD='coverage run -m pytest'"
    " && python -m pytest"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "install", "version", "ci_tests", "ci_install"),
    [
        (
            "pluggy",
            f"{PIP} -e '.[testing]' ruff mypy",
            "1.5.0",
            PLUGGY_CI_TESTS,
            f"{PIP} -e '.[testing]' coverage",
        ),
        ("iniconfig", f"{PIP} -e . pytest", "1.1.1", "pytest", f"{PIP} -e . pytest"),
    ],
    ids=["pluggy", "iniconfig"],
)
def test_real_project(
    tmp_path: Path, name: str, install: str, version: str, ci_tests: str, ci_install: str
) -> None:
    """The detection alone (`--no-ci`), then what the project's CI (pluggy: its GitHub
    workflow through tox.ini; iniconfig: tox.ini) makes of it."""
    root = realproject.checkout(name, tmp_path)
    result = ok(init(str(root), "--json", "--no-ci"))
    out = json.loads(result.stdout)
    assert out["written"] is True
    config = load_config(Path(out["path"]))
    assert find_project(root).config == config
    tests = config.checks[-1]
    assert (tests.name, tests.command, tests.timeout_s) == ("tests", "python -m pytest -q", 900)
    assert config.snapshot.setup == (VENV, install)
    assert installs_pytest(root, install)
    # Both build their version with setuptools_scm; the sdist's PKG-INFO gives it.
    assert config.sidecar.env == {"SETUPTOOLS_SCM_PRETEND_VERSION": version}
    assert set(config.snapshot.inputs) == {"pyproject.toml", "setup.py", "setup.cfg"}

    out = json.loads(ok(init(str(root), "--json", "--force")).stdout)
    config = load_config(Path(out["path"]))
    assert [(c.name, c.command) for c in config.checks] == [("tests", ci_tests)]
    assert config.snapshot.setup == (VENV, ci_install)
    assert config.sidecar.env == {"SETUPTOOLS_SCM_PRETEND_VERSION": version}


# ---------------------------------------------------------------------------
# CI configs decide the checks

FIXTURES = Path(__file__).parent / "fixtures" / "ci"


def ci_project(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    realproject.init_repo(root)
    return root


def test_github_ci_decides_checks_and_completes_setup(tmp_path: Path) -> None:
    root = ci_project(tmp_path, "github")
    raw, config, stderr = init_and_load(root)
    assert [(c["name"], c["command"]) for c in raw["check"]][:2] == [
        ("pre-commit.ruff", "ruff check --no-fix --force-exclude ."),
        ("pre-commit.ruff-format", "ruff format --check --force-exclude ."),
    ]
    assert raw["check"][2]["name"] == "pre-commit.check-toml"
    assert [(c["name"], c["command"]) for c in raw["check"]][3:] == [
        ("types", "mypy src"),
        ("build", "pipx run build --no-isolation && pipx run twine check dist/*"),
        ("tests", "pytest --cov=demo tests"),
    ]
    # The CI's installs become one .venv install: the extra tox uses, the typing requirements,
    # the pinned mypy, the build backend (the build runs without isolation, offline), and the
    # tools the checks start that nothing installs yet.
    assert raw["snapshot"] == {
        "setup": [
            VENV,
            f"{PIP} -e '.[tests]' -r requirements-typing.txt mypy==1.11.2 ruff==0.6.9 "
            "pre-commit-hooks==4.6.0 'setuptools>=64' build twine",
        ],
        "inputs": ["pyproject.toml", "requirements*.txt", ".pre-commit-config.yaml"],
    }
    assert (
        "kept    checks: pre-commit.ruff, pre-commit.ruff-format, pre-commit.check-toml, types, "
        "build, tests, from .github/workflows/ci.yml"
    ) in stderr
    assert "dropped job publish: deploy, release or documentation job" in stderr
    assert "dropped job tests step 7: codecov/codecov-action@v4: coverage upload" in stderr
    assert len(config.checks) == 6


def test_node_project_without_ci_uses_package_json(tmp_path: Path) -> None:
    root = ci_project(tmp_path, "node")
    raw, _, stderr = init_and_load(root)
    assert raw["snapshot"] == {"setup": ["npm ci"], "inputs": ["package.json", "package-lock.json"]}
    assert [c["command"] for c in raw["check"]] == [
        "npm run lint",
        "npm run typecheck",
        "npm run build",
        "npm test",
    ]
    assert "dropped setup: no Python project here" in stderr


def test_broken_ci_yaml_exits_2_and_no_ci_falls_back(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo",
        {
            ".gitlab-ci.yml": "test:\n  script:\n    - pytest\n  bad: [\n",
            "pyproject.toml": PYPROJECT_TESTS_EXTRA,
            "tests/t.py": "",
        },
    )
    refused = init(str(root))
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: .gitlab-ci.yml:5: invalid YAML: ")
    assert "--no-ci" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (root / "microbuild.toml").exists()
    raw, _, _ = init_and_load_args(root, "--no-ci")
    assert raw["check"] == [TESTS]


def init_and_load_args(root: Path, *args: str) -> tuple[dict[str, Any], ProjectConfig, str]:
    result = ok(init(str(root), *args))
    raw, config = generated(root)
    return raw, config, result.stderr


def test_json_lists_ci_decisions(tmp_path: Path) -> None:
    root = ci_project(tmp_path, "circleci")
    out = json.loads(ok(init(str(root), "--json", "--dry-run")).stdout)
    items = {d["item"]: d for d in out["decisions"]}
    assert items["workflow main job python/test"]["decision"] == "dropped"
    assert items["workflow main job python/test"]["file"] == ".circleci/config.yml"
    config = tomllib.loads(out["config"])
    assert [c["name"] for c in config["check"]] == ["lint", "types", "tests"]
    assert config["snapshot"]["setup"] == [
        VENV,
        # pytest comes with the test extra, ruff and mypy with the lint extra
        f"{PIP} -e '.[lint,test]' -r requirements-dev.txt",
    ]


# ---------------------------------------------------------------------------
# init, then validate, on real projects


@pytest.mark.slow
@pytest.mark.isolation
@pytest.mark.parametrize("name", sorted(realproject.INIT_PROJECTS))
def test_init_then_validate_real_project(name: str) -> None:
    """`init` on attrs / packaging (pinned sdists), then `validate`: passes; a bug fails it.

    Deviations, both the projects' state on this host rather than microbuild's: only the
    `tests` check is validated (the projects' lint/type findings vary with tool versions), and
    for attrs `TestPipe::test_wrapped_annotation` is deselected (it fails on CPython 3.11 in a
    plain venv too) and tests/test_mypy.yml ignored (attrs pins mypy in uv.lock; the snapshot
    installs the newest mypy, whose revealed types are spelled differently).
    """
    from conftest import need_isolation, stop_local_host

    need_isolation()
    spec = realproject.INIT_PROJECTS[name]
    base = Path(tempfile.mkdtemp(prefix=f"mbi-{name[:4]}-", dir="/var/tmp"))
    state = base / "state"
    try:
        root = realproject.checkout(name, base / "src")
        realproject.check_index_reachable(spec)
        out = json.loads(ok(init(str(root), "--json")).stdout)
        config_path = Path(out["path"])
        config = load_config(config_path)
        tests = next(c for c in config.checks if c.name == "tests")
        command = tests.command
        if name == "attrs":
            assert command == "pytest -n auto"
            command += (
                " --deselect tests/test_converters.py::TestPipe::test_wrapped_annotation"
                " --ignore=tests/test_mypy.yml"
            )
        data = tomllib.loads(config_path.read_text())
        data["check"] = [{"name": "tests", "command": command, "timeout_s": 900}]
        config_path.write_text(_dump(data))

        def validate() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "microbuild", "--state-dir", str(state), "validate"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )

        first = validate()
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        bug = root / spec.bug_file
        original = bug.read_bytes()
        subprocess.run(["sed", "-i", spec.bug_sed, str(bug)], check=True)
        assert bug.read_bytes() != original
        failed = validate()
        assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
        assert spec.bug_file in failed.stdout, failed.stdout
    finally:
        stop_local_host(state)
        shutil.rmtree(base, ignore_errors=True)


def _dump(data: dict[str, Any]) -> str:
    """Enough TOML for a generated config: tables of strings, arrays and numbers."""

    def value(v: Any) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(i) for i in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return str(v).lower() if isinstance(v, bool) else str(v)

    lines: list[str] = []
    for table, body in data.items():
        if table == "check":
            for check in body:
                lines += ["[[check]]", *(f"{k} = {value(v)}" for k, v in check.items()), ""]
        else:
            lines += [f"[{table}]", *(f"{k} = {value(v)}" for k, v in body.items()), ""]
    return "\n".join(lines)


TOOL_TOX_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "demo"
version = "1.0"

[project.optional-dependencies]
tests = ["pytest>=8"]

[tool.tox]
env_list = ["py", "lint"]

[tool.tox.env_run_base]
extras = ["tests"]
change_dir = "build/run"
set_env = { PYTHONPATH = "{tox_root}", DEMO_LOCALE = "{tox_root}{/}locale" }
commands_pre = [["python", "-m", "demo.compile", { replace = "env", name = "DEMO_LOCALE" }]]
commands = [
  ["pytest", { replace = "posargs", default = ["-q", "{tox_root}{/}tests"], extend = true }],
]

[tool.tox.env.lint]
skip_install = true
deps = ["ruff"]
commands = [["ruff", "check", "{tox_root}"]]
"""

TOX_PY_WORKFLOW = """\
name: ci
on: [push]
jobs:
  tests:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with: {python-version: "3.12"}
      - run: python -m pip install tox
      - run: tox -e py
"""


def test_github_tox_env_from_pyproject_tool_tox(tmp_path: Path) -> None:
    """A workflow's `tox -e py` read through pyproject's [tool.tox]: the env's commands_pre
    (compiling translations the tests need) runs first, in change_dir (created, as tox does),
    with set_env's paths relative to it; the generated check passes when run."""
    root = make_project(
        tmp_path / "demo",
        {
            ".github/workflows/ci.yml": TOX_PY_WORKFLOW,
            "pyproject.toml": TOOL_TOX_PYPROJECT,
            "demo/__init__.py": "",
            "demo/compile.py": "import pathlib, sys\n"
            "pathlib.Path(sys.argv[1]).mkdir(exist_ok=True)\n"
            "(pathlib.Path(sys.argv[1]) / 'demo.mo').write_text('compiled')\n",
            "tests/test_i18n.py": "import os, pathlib\n\n\ndef test_messages_compiled():\n"
            "    assert pathlib.Path(os.environ['DEMO_LOCALE'], 'demo.mo').is_file()\n",
        },
    )
    raw, config, stderr = init_and_load(root)
    command = (
        "mkdir -p build/run && cd build/run && export PYTHONPATH=../.. && "
        "export DEMO_LOCALE=../../locale && python -m demo.compile ../../locale && "
        "pytest -q ../../tests"
    )
    assert raw["check"] == [{"name": "tests", "command": command, "timeout_s": 900}]
    assert raw["snapshot"]["setup"] == [VENV, f"{PIP} -e '.[tests]'"]
    assert "expanded through pyproject.toml: py" in stderr
    assert len(config.checks) == 1
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        ["sh", "-c", command],
        cwd=root,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


# ---------------------------------------------------------------------------
# files that link out of the project

SECRET = "SECRET-TOKEN-0451"
"""Stands for a host file's contents (/etc/passwd, a credentials file): never shown or copied."""

# What a file linked out of the project would yield if it were read: each a valid file of its
# kind whose contents would reach the config or a message.
REFUSED_LINKS = {
    "pyproject.toml": f'[project]\nname = "{SECRET}"\nversion = "1"\n[tool.ruff]\n',
    "setup.cfg": f"[options]\ninstall_requires =\n    {SECRET}\n[mypy]\nfiles = {SECRET}\n",
    "tox.ini": f"[pytest]\naddopts = {SECRET}\n",
    "setup.py": f"from setuptools import setup\nsetup(name='{SECRET}')\n",
    "mypy.ini": f"[mypy]\nfiles = {SECRET}\n",
    "requirements-dev.txt": f"{SECRET}\n",
    ".github/workflows/ci.yml": (
        f"on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n"
        f"      - run: pytest {SECRET}\n"
    ),
    ".gitlab-ci.yml": f"test:\n  script:\n    - pytest {SECRET}\n",
    ".circleci/config.yml": (
        f"version: 2.1\njobs:\n  t:\n    docker:\n      - image: python\n    steps:\n"
        f"      - run: pytest {SECRET}\nworkflows:\n  main:\n    jobs: [t]\n"
    ),
}


def linked_out(tmp_path: Path, rel: str, text: str, files: dict[str, str]) -> Path:
    """A project whose ``rel`` is a link to a file outside it holding ``text``."""
    outside = tmp_path / "host" / "secret"
    outside.parent.mkdir(parents=True)
    outside.write_text(text)
    root = make_project(tmp_path / "demo", files)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).symlink_to(outside)
    return root


@pytest.mark.parametrize("rel", sorted(REFUSED_LINKS))
def test_a_config_file_linking_out_of_the_project_is_refused(tmp_path: Path, rel: str) -> None:
    files = {"pyproject.toml": PYPROJECT_TESTS_EXTRA, "tests/t.py": ""}
    files.pop(rel, None)
    root = linked_out(tmp_path, rel, REFUSED_LINKS[rel], files)
    result = init(str(root), "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: {rel}: leads outside the project, so it is not read; "
        "make it a file of the project\n"
    )
    assert SECRET not in result.output


def test_a_requirements_include_leading_out_of_the_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(f"{SECRET}\n")
    files = {"pyproject.toml": PYPROJECT_TESTS_EXTRA, "requirements-dev.txt": "-r ../secret.txt\n"}
    root = make_project(tmp_path / "demo", files)
    result = init(str(root), "--dry-run")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: ../secret.txt: leads outside the project, so it is not read; "
        "make it a file of the project\n"
    )
    assert SECRET not in result.output


DROPPED_LINKS = {
    "Makefile": f"test:\n\tpytest {SECRET}\n",
    "noxfile.py": f"import nox\n@nox.session\ndef tests(s):\n    s.run('pytest', '{SECRET}')\n",
    "package.json": json.dumps({"scripts": {"test": f"jest {SECRET}"}}),
    ".pre-commit-config.yaml": f"ci:\n  autofix_prs: false\nrepos: []\n# {SECRET}\n",
}


@pytest.mark.parametrize("rel", sorted(DROPPED_LINKS))
def test_a_task_file_linking_out_of_the_project_is_dropped(tmp_path: Path, rel: str) -> None:
    """Task runners are read as tox configs are: a link out is a dropped decision, not a stop."""
    root = linked_out(tmp_path, rel, DROPPED_LINKS[rel], {"pyproject.toml": PYPROJECT_TESTS_EXTRA})
    result = ok(init(str(root), "--dry-run", "--json"))
    payload = json.loads(result.stdout)
    assert {
        "decision": "dropped",
        "item": rel,
        "reason": "leads outside the project, so it is not read",
        "file": rel,
    } in payload["decisions"]
    assert SECRET not in result.output


PLAIN_PYPROJECT = '[project]\nname = "demo"\nversion = "1"\n'
UNITTEST_MODULE = (
    "import unittest\n\n\nclass DocumentationTestCase(unittest.TestCase):\n"
    "    def test(self):\n        pass\n"
)


def test_tests_pytests_default_patterns_miss_are_named(tmp_path: Path) -> None:
    """decorator keeps its tests in tests/test.py: `python -m pytest` alone collects nothing
    there (exit 5), so init names the file, which pytest then runs whatever its name; and the
    check it writes really runs the test."""
    root = make_project(
        tmp_path / "demo",
        {"pyproject.toml": PLAIN_PYPROJECT, "tests/test.py": UNITTEST_MODULE, "demo.py": ""},
    )
    raw, _config, stderr = init_and_load(root)
    (tests,) = [c for c in raw["check"] if c["name"] == "tests"]
    assert tests["command"] == "python -m pytest -q tests/test.py"
    assert "tests/test.py named on the command line" in stderr
    done = subprocess.run(
        [sys.executable, *shlex.split(tests["command"])[1:], "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "files",
    [
        {"tests/test_x.py": "def test_x():\n    pass\n", "tests/test.py": UNITTEST_MODULE},
        {"tests/test.py": UNITTEST_MODULE, "pytest.ini": "[pytest]\npython_files = test.py\n"},
    ],
)
def test_a_tests_dir_pytest_collects_is_left_to_pytest(
    tmp_path: Path, files: dict[str, str]
) -> None:
    root = make_project(tmp_path / "demo", {"pyproject.toml": PLAIN_PYPROJECT, **files})
    raw, _config, _stderr = init_and_load(root)
    (tests,) = [c for c in raw["check"] if c["name"] == "tests"]
    assert tests["command"] == "python -m pytest -q"


def test_tests_inside_the_package_are_found(tmp_path: Path) -> None:
    """simplejson keeps its tests in simplejson/tests/: a tests check, which pytest collects."""
    root = make_project(
        tmp_path / "demo",
        {
            "pyproject.toml": PLAIN_PYPROJECT,
            "demo/__init__.py": "",
            "demo/tests/__init__.py": "",
            "demo/tests/test_speed.py": "def test_speed():\n    pass\n",
        },
    )
    raw, _config, stderr = init_and_load(root)
    (tests,) = [c for c in raw["check"] if c["name"] == "tests"]
    assert tests["command"] == "python -m pytest -q"
    assert "demo/tests/ holds the tests" in stderr
