"""Distilling CI configs and task runners into checks, setup and inputs (fast, no network).

The fixtures in tests/fixtures/ci/ are modelled on real projects' files: CircleCI 2.1 with orbs,
reusable commands, a matrix and test splitting; GitHub Actions with a Python matrix, tox, codecov
and publishing; GitLab with templates, extends, !reference and parallel:matrix; tox.ini,
noxfile.py (which raises if executed), a Makefile and package.json.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from microbuild.distill import Distilled, distill
from microbuild.distill.steps import classify, offline_build, split_script, without_coverage
from microbuild.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "ci"
HOST = f"{sys.version_info.major}.{sys.version_info.minor}"


def fixture(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    return root


def drops(result: Distilled) -> dict[str, str]:
    return {d.item: d.reason for d in result.dropped}


def test_circleci_commands_parameters_matrix_orbs_and_split(tmp_path: Path) -> None:
    result = distill(fixture("circleci", tmp_path))
    assert result.sources == (".circleci/config.yml",)
    assert result.checks == (
        ("lint", "ruff check src tests", 300),
        ("types", "export MYPY_FORCE_COLOR=1 && mypy src", 600),
        ("tests", "pytest --junitxml=test-results/junit.xml tests && pytest -q slow_tests", 900),
    )
    # The reusable command's parameter decides the extra: lint for one job, test (default).
    assert result.python.extras == ["lint", "test"]
    assert result.python.requirement_files == ["requirements-dev.txt"]
    assert result.python.project is True
    assert result.inputs == ("requirements-dev.txt",)
    dropped = drops(result)
    assert dropped["workflow main job python/test"].startswith("orb job python/test")
    assert dropped["job test step 3: python/install-packages"].startswith("orb command")
    assert dropped["job test step 8: slack/notify"].startswith("orb command")
    assert dropped["workflow main job deploy"] == "deploy, release or documentation job"
    assert dropped["job lint step 1: checkout"].startswith("the sidecar receives")
    assert dropped["job lint step 2 (install) step 1: restore_cache"].startswith("cache step")
    assert dropped["job test step 7: `bash <(curl -s https://codecov.io/bash)`"].startswith(
        "coverage upload"
    )
    kept = {item: reason for item, reason, _ in result.kept}
    assert kept["job test matrix cell"].startswith(f"python={HOST} ")
    assert "split only works inside CircleCI" in kept["job test step 5: circleci tests"]


def test_github_matrix_tox_codecov_publish(tmp_path: Path) -> None:
    result = distill(fixture("github", tmp_path))
    assert result.sources == (".github/workflows/ci.yml", ".github/workflows/docs.yml")
    checks = dict((name, cmd) for name, cmd, _ in result.checks)
    assert checks["pre-commit.check-toml"].endswith("| xargs -r -d '\\n' check-toml")
    toml_check = ("pre-commit.check-toml", checks["pre-commit.check-toml"], 300)
    # pre-commit's hooks replace `pre-commit run`, each a check in check-only form.
    assert result.checks == (
        ("pre-commit.ruff", "ruff check --no-fix --force-exclude .", 300),
        ("pre-commit.ruff-format", "ruff format --check --force-exclude .", 300),
        toml_check,
        ("types", "mypy src", 600),
        ("build", "pipx run build --no-isolation && pipx run twine check dist/*", 600),
        # tox -e py → [testenv]; the coverage flag stays (coverage is measured locally).
        ("tests", "pytest --cov=demo tests", 900),
    )
    assert result.python.extras == ["tests"]
    assert result.python.requirement_files == ["requirements-typing.txt"]
    assert result.python.packages == ["mypy==1.11.2"]
    assert result.python.tools == ["ruff==0.6.9", "pre-commit-hooks==4.6.0"]
    assert result.inputs == (".pre-commit-config.yaml", "requirements-typing.txt")
    dropped = drops(result)
    assert dropped["job tests step 7: codecov/codecov-action@v4"].startswith("coverage upload")
    assert dropped["job tests step 3: actions/cache@v4"].startswith("cache step")
    assert dropped["job build step 4: actions/upload-artifact@v4"] == "artifact storage"
    assert dropped["job publish"] == "deploy, release or documentation job"
    assert dropped["job tests step 8"] == "runs only when `failure()`"
    assert dropped[".github/workflows/docs.yml"] == "runs on release, not on a push"
    assert dropped["pre-commit hook trailing-whitespace"].startswith("rewrites files")
    kept = {item: reason for item, reason, _ in result.kept}
    cell = kept["job tests matrix cell"]
    assert cell.startswith(f"python-version={HOST}, os=ubuntu-latest")
    assert "expanded through tox.ini: py" in kept["job tests step 5: `python -m tox -e py`"]


def test_gitlab_extends_reference_matrix(tmp_path: Path) -> None:
    result = distill(fixture("gitlab", tmp_path))
    assert result.checks == (
        ("lint", "flake8 src tests && black --check .", 300),
        ("tests", 'pytest -q -m "not slow" --junitxml=report.xml', 900),
    )
    # `!reference [.setup_node, script]` brings npm ci; before_script comes through extends.
    assert result.setup == ("npm ci",)
    assert result.python.requirement_files == ["requirements/test.txt"]
    assert result.python.packages == []  # `pip install safety` belongs to a dropped scan
    assert result.inputs == ("requirements/test.txt",)
    dropped = drops(result)
    assert dropped["job pages"].startswith("deploy, release or documentation job")
    assert dropped["job release"].startswith("deploy, release or documentation job")
    assert dropped["job security script: `safety check`"].startswith("security scan")
    assert dropped[f'job unit script: `echo "ran unit on {HOST}"`'] == "prints information only"


def test_tox_generative_envs_and_factors(tmp_path: Path) -> None:
    result = distill(fixture("tox", tmp_path))
    assert result.sources == ("tox.ini",)
    assert result.checks == (
        ("lint", "ruff check src tests", 300),
        ("tests", "pytest tests/unit && pytest tests/integration", 900),
    )
    assert result.python.requirement_files == ["requirements-test.txt"]
    assert result.python.packages == ["ruff"]
    py = f"py{HOST.replace('.', '')}"
    assert f"setup tox.ini (tox env {py}-unit): `pip install . -r requirements-test.txt`" in {
        item for item, _, _ in result.kept
    }


def test_noxfile_is_read_not_run(tmp_path: Path) -> None:
    result = distill(fixture("nox", tmp_path))
    assert result.checks == (
        ("lint", "ruff check .", 300),
        ("types", "mypy src", 600),
        ("tests", "pytest -q", 900),
    )
    assert result.python.extras == ["test"]
    assert result.python.packages == ["ruff", "mypy", "types-setuptools"]
    assert drops(result)["nox session docs"].startswith("not a lint")


def test_makefile_targets(tmp_path: Path) -> None:
    result = distill(fixture("make", tmp_path))
    # `test: install` would reinstall with the network in every check: its recipe runs instead.
    assert result.checks == (("lint", "make lint", 300), ("tests", "pytest", 900))


def test_package_json_scripts(tmp_path: Path) -> None:
    result = distill(fixture("node", tmp_path))
    assert result.checks == (
        ("lint", "npm run lint", 300),
        ("types", "npm run typecheck", 600),
        ("build", "npm run build", 600),
        ("tests", "npm test", 900),
    )
    assert result.setup == ("npm ci",)
    assert result.inputs == ("package.json", "package-lock.json")


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(
        "on: push\njobs:\n  t:\n    steps: [\n      - run: pytest\n"
    )
    with pytest.raises(ConfigError) as err:
        distill(root)
    message = str(err.value)
    assert message.startswith(".github/workflows/ci.yml:5: invalid YAML: ")
    assert "microbuild init --no-ci" in message and "\n" not in message


def test_no_ci_and_no_tasks_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("hi\n")
    result = distill(tmp_path)
    assert result.checks == () and result.sources == ()


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("ruff check .", "lint"),
        ("uv run --frozen mypy src", "types"),
        ("python -m pytest -x", "tests"),
        ("coverage run -m pytest", "tests"),
        ("bandit -r src", "lint"),
        ("npm ci", "setup"),
        ("pip install -e .[test]", "python-setup"),
        ("twine upload dist/*", "drop"),
        ("npm publish", "drop"),
        ("sphinx-build docs out", "drop"),
        ("codecov -t x", "drop"),
        ("pip-audit", "drop"),
        ("sudo apt-get install -y libxml2", "drop"),
        ("docker push img", "drop"),
        ("echo done >> $GITHUB_ENV", "drop"),
        ("python -m build --sdist --wheel .", "build"),
        ("uv build --out-dir dist .", "build"),
        ("poetry build", "build"),
        ("pip wheel --no-deps -w dist .", "build"),
        ("pip wheel -r requirements.txt -w wheels", "python-setup"),
        ("twine check --strict dist/*", "build"),
        ("check-wheel-contents dist", "build"),
    ],
)
def test_classify(command: str, kind: str) -> None:
    assert classify(command).kind == kind


@pytest.mark.parametrize(
    ("command", "plain"),
    [
        ("coverage run -m pytest", "python -m pytest"),
        ("coverage run --branch --rcfile .cov -p -m pytest -x tests", "python -m pytest -x tests"),
        ("COV=1 A='b c' coverage run --source=src -m pytest", "COV=1 A='b c' python -m pytest"),
        ("python3.12 -m coverage run -m pytest -k 'a or b'", "python3.12 -m pytest -k 'a or b'"),
        ("coverage run tests/run.py --fast", "python tests/run.py --fast"),
        ("coverage run -m pytest && coverage report", None),
        ("coverage run", None),
        ("coverage report -m", None),
        ("pytest --cov=src", None),
    ],
)
def test_coverage_run_is_unwrapped(command: str, plain: str | None) -> None:
    """No coverage report or threshold survives distilling, so a test run is kept without
    coverage's tracing (pluggy's tests: 1.6 s under coverage, 0.9 s without)."""
    assert without_coverage(command) == plain
    verdict = classify(command)
    if plain is not None and "pytest" in plain:
        assert (verdict.kind, verdict.command) == ("tests", plain)


def test_split_script_chains_and_continuations() -> None:
    script = "pip install \\\n  -e .\ncd sub && pytest -q; echo 'a && b'  # note\n"
    assert list(split_script(script)) == [
        "pip install -e .",
        "cd sub && pytest -q",
        "echo 'a && b'",
    ]
    assert classify("cd sub && pytest -q").kind == "tests"


def test_tox_env_defaults_and_opt_in_envs(tmp_path: Path) -> None:
    """Modelled on pluggy 1.5.0's tox.ini: the command is `{env:_PLUGGY_TOX_CMD:pytest}` (tox
    runs the default when the variable is unset), and a `benchmark` env outside env_list runs
    only when asked for: the tests check is the plain pytest run, not the benchmark."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "1"\n')
    (root / "tox.ini").write_text(
        "[tox]\nenvlist=docs,py{38,39,310,311,py3},py{38}-pytest{main}\n\n"
        "[testenv]\ncommands=\n  {env:_PLUGGY_TOX_CMD:pytest} {posargs}\n"
        "  coverage: coverage report -m\nsetenv=\n  _PYTEST_SETUP_SKIP_PLUGGY_DEP=1\n"
        "  coverage: _PLUGGY_TOX_CMD=coverage run -m pytest\nextras=testing\n\n"
        "[testenv:benchmark]\ncommands=pytest {posargs:testing/benchmark.py}\ndeps=\n  pytest\n\n"
        "[testenv:lint]\ncommands={env:RUFF:{env:RUFF_BIN:ruff}} check src\n"
    )
    checks = {name: command for name, command, _timeout in distill(root).checks}
    assert checks["tests"].endswith("pytest")
    assert "benchmark" not in checks["tests"] and "{env" not in checks["tests"]


PLUGGY_LIKE_WORKFLOW = """\
name: main
on:
  push:
    branches: [main]
jobs:
  build:
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        name: ["windows-py38", "ubuntu-py38", "ubuntu-py311", "ubuntu-benchmark"]
        include:
          - {name: "windows-py38", python: "3.8", os: windows-latest, tox_env: "py38"}
          - {name: "ubuntu-py38", python: "3.8", os: ubuntu-latest, tox_env: "py38",
             use_coverage: true}
          - {name: "ubuntu-py311", python: "3.11", os: ubuntu-latest, tox_env: "py311",
             use_coverage: true}
          - {name: "ubuntu-benchmark", python: "3.8", os: ubuntu-latest, tox_env: "benchmark"}
    steps:
    - uses: actions/checkout@v3
    - uses: actions/setup-python@v4
      with: {python-version: "${{ matrix.python }}"}
    - run: python -m pip install tox coverage
    - name: Test without coverage
      if: "! matrix.use_coverage"
      run: "tox -e ${{ matrix.tox_env }}"
    - name: Test with coverage
      if: "matrix.use_coverage"
      run: "tox -e ${{ matrix.tox_env }}-coverage"
"""

PLUGGY_LIKE_TOX = """\
[tox]
envlist=py{38,39,310,311}

[testenv]
commands=
  {env:_TOX_CMD:pytest} {posargs}
  coverage: coverage report -m
setenv=
  coverage: _TOX_CMD=coverage run -m pytest
extras=testing
"""


def test_github_matrix_cell_and_its_if_conditions(tmp_path: Path) -> None:
    """Modelled on pluggy 1.5.0's workflow: of the cells (from `include`), the Linux one on
    the host's Python is chosen, and the step whose `if:` is false for it is dropped; the tox
    env's set_env gives `{env:_TOX_CMD:pytest}` its value."""
    root = tmp_path / "proj"
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "main.yml").write_text(PLUGGY_LIKE_WORKFLOW)
    (root / "tox.ini").write_text(PLUGGY_LIKE_TOX)
    (root / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "1"\n')
    result = distill(root)
    checks = {name: command for name, command, _timeout in result.checks}
    assert list(checks) == ["tests"]
    # The tox env's `{env:_TOX_CMD}` is `coverage run -m pytest`, run without coverage.
    assert checks["tests"] == "export _TOX_CMD='coverage run -m pytest' && python -m pytest"
    kept = {item: reason for item, reason, _file in result.kept}
    assert "name=ubuntu-py311" in kept["job build matrix cell"]
    assert "one of 4 cells" in kept["job build matrix cell"]
    dropped = {d.item: d.reason for d in result.dropped}
    assert "does not run in the chosen matrix cell" in dropped["job build step 4"]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("matrix.use_coverage", True),
        ("! matrix.use_coverage", False),
        ("${{ matrix.os == 'ubuntu-latest' && matrix.python != '3.8' }}", True),
        ("matrix.os == 'windows-latest' || matrix.missing", False),
        ("matrix.use_coverage && github.repository == 'x/y'", None),
        ("contains(matrix.os, 'ubuntu')", None),
        ("matrix.os == ", None),
    ],
)
def test_matrix_conditions(condition: str, expected: bool | None) -> None:
    from microbuild.distill.github import _matrix_condition

    cell = {"os": "ubuntu-latest", "python": "3.11", "use_coverage": "True"}
    assert _matrix_condition(condition, cell) is expected


@pytest.mark.parametrize(
    ("command", "checked"),
    [
        ("black .", "black --check ."),
        ("black --check src", "black --check src"),
        ("python -m black src tests", "python -m black --check src tests"),
        ("isort .", "isort --check-only ."),
        ("isort --diff --check-only .", "isort --diff --check-only ."),
        ("ruff check --fix .", "ruff check ."),
        ("ruff check --fix --exit-non-zero-on-fix", "ruff check"),
        ("ruff format", "ruff format --check"),
        ("uv run ruff format src", "uv run ruff format --check src"),
        ("ruff check .", "ruff check ."),
    ],
)
def test_linters_are_written_check_only(command: str, checked: str) -> None:
    verdict = classify(command)
    assert verdict.kind == "lint"
    assert (verdict.command or command) == checked


# Modelled on filelock's tox.toml pkg_meta env: `uv build` into the env's tmp dir, then checks
# of what it built.
PKG_META_TOML = """\
env_list = ["pkg_meta"]

[env.pkg_meta]
skip_install = true
deps = ["check-wheel-contents>=0.6.1", "twine>=6.1", "uv>=0.8.4"]
commands = [
  ["uv", "build", "--sdist", "--wheel", "--out-dir", "{env_tmp_dir}", "."],
  ["twine", "check", "{env_tmp_dir}{/}*"],
  ["check-wheel-contents", "--no-config", "{env_tmp_dir}"],
]
"""


def test_a_build_step_is_kept_before_the_checks_of_what_it_builds(tmp_path: Path) -> None:
    (tmp_path / "tox.toml").write_text(PKG_META_TOML)
    result = distill(tmp_path)
    assert result.checks == (
        (
            "build",
            "(mkdir -p .tox/pkg_meta/tmp && uv build --no-build-isolation --sdist --wheel"
            " --out-dir .tox/pkg_meta/tmp .)"
            " && (mkdir -p .tox/pkg_meta/tmp && twine check '.tox/pkg_meta/tmp/*')"
            " && (mkdir -p .tox/pkg_meta/tmp && check-wheel-contents --no-config"
            " .tox/pkg_meta/tmp)",
            600,
        ),
    )


def test_a_distribution_check_without_a_kept_build_is_dropped(tmp_path: Path) -> None:
    """A build the distiller does not keep (here one it does not recognise) leaves nothing to
    check: `twine check` alone would check an empty directory, so it goes, with a note."""
    (tmp_path / "tox.ini").write_text(
        "[tox]\nenv_list = pkg\n\n[testenv:pkg]\nskip_install = true\ndeps = twine\n"
        "commands =\n    python setup.py sdist\n    twine check dist/*\n"
    )
    result = distill(tmp_path)
    assert result.checks == ()
    reason = drops(result)["tox.ini (tox env pkg): `twine check 'dist/*'`"]
    assert reason.startswith("checks built distributions, but no kept step before it builds")


@pytest.mark.parametrize(
    ("command", "offline"),
    [
        (
            "python -m build . --outdir .nox/tmp",
            "python -m build --no-isolation . --outdir .nox/tmp",
        ),
        ("python -m build -nwx .", "python -m build -nwx ."),
        (
            "uv build --python 3.13 --python-preference only-managed --sdist . --out-dir dist",
            "uv build --no-build-isolation --sdist . --out-dir dist",
        ),
        ("pip wheel . -w dist", "pip wheel --no-build-isolation . -w dist"),
        ("hatch build", "hatch build"),
        ("ruff check .", None),
    ],
)
def test_builds_run_without_isolation(command: str, offline: str | None) -> None:
    """Checks have no network: an isolated build would download its backend (and uv its own
    Python), so builds use the snapshot's .venv, where init installs the backend."""
    assert offline_build(command) == offline


def test_an_offline_build_installs_the_projects_build_backend(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling>=1.25", "hatch-vcs"]\n'
        'build-backend = "hatchling.build"\n[project]\nname = "demo"\nversion = "1"\n'
    )
    workflow = tmp_path / ".github" / "workflows" / "ci.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        "on: [push]\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: uv build --python 3.13 --out-dir dist\n      - run: twine check dist/*\n"
    )
    result = distill(tmp_path)
    assert result.checks == (
        ("build", "uv build --no-build-isolation --out-dir dist && twine check dist/*", 600),
    )
    assert result.python.build_tools == ["hatchling>=1.25", "hatch-vcs", "uv"]
