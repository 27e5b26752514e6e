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
from microbuild.distill.steps import classify, split_script
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
    assert result.checks == (
        ("lint", "pre-commit run --all-files --show-diff-on-failure", 300),
        ("types", "mypy src", 600),
        ("build", "pipx run build && pipx run twine check dist/*", 600),
        # tox -e py → [testenv]; the coverage flag stays (coverage is measured locally).
        ("tests", "pytest --cov=demo tests", 900),
    )
    assert result.python.extras == ["tests"]
    assert result.python.requirement_files == ["requirements-typing.txt"]
    assert result.python.packages == ["mypy==1.11.2"]
    assert result.inputs == ("requirements-typing.txt",)
    dropped = drops(result)
    assert dropped["job tests step 7: codecov/codecov-action@v4"].startswith("coverage upload")
    assert dropped["job tests step 3: actions/cache@v4"].startswith("cache step")
    assert dropped["job build step 4: actions/upload-artifact@v4"] == "artifact storage"
    assert dropped["job publish"] == "deploy, release or documentation job"
    assert dropped["job tests step 8"] == "runs only when `failure()`"
    assert dropped[".github/workflows/docs.yml"] == "runs on release, not on a push"
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
    ],
)
def test_classify(command: str, kind: str) -> None:
    assert classify(command).kind == kind


def test_split_script_chains_and_continuations() -> None:
    script = "pip install \\\n  -e .\ncd sub && pytest -q; echo 'a && b'  # note\n"
    assert list(split_script(script)) == [
        "pip install -e .",
        "cd sub && pytest -q",
        "echo 'a && b'",
    ]
    assert classify("cd sub && pytest -q").kind == "tests"
