"""Distil a project's CI (CircleCI, GitHub Actions, GitLab) or task runners into checks.

The CI systems are read first; when none yields a check, tox / noxfile.py / Makefile /
package.json are; then a .pre-commit-config.yaml that pre-commit.ci runs (one with a ``ci:``
table) and no CI step did. Python installs are not copied literally (CI installs into a throw-away
machine's system Python): they are read into :class:`PythonNeeds`, which `microbuild init`
writes as one install into the snapshot's ``.venv``.

One module per dialect: :mod:`.circleci`, :mod:`.github`, :mod:`.gitlab`, :mod:`.precommit`,
tox (:mod:`.toxconfig` finds the config and expands environments; :mod:`.tox_ini` and
:mod:`.tox_toml` read its two syntaxes, :mod:`.tox_env` their shared model), :mod:`.nox`,
:mod:`.make`, :mod:`.npm`; :mod:`.tasks` orders the task runners, :mod:`.steps` classifies
commands. `microbuild init` itself: :mod:`.project` detects the Python project from its files
(:mod:`.packaging` reads their metadata), :mod:`.plan` is the configuration it plans and its
TOML, :mod:`.write` writes it, :mod:`.configure` does all of it (``init_project``). A file that
links out of the project is never read (:mod:`.files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from microbuild.distill import circleci, github, gitlab, precommit
from microbuild.distill.files import parse_toml, read_project_file
from microbuild.distill.packaging import requirement_name
from microbuild.distill.steps import Distiller, Drop, PythonNeeds, python_needs
from microbuild.distill.tasks import distill_tasks
from microbuild.errors import ConfigError

__all__ = ["Distilled", "PythonNeeds", "distill"]


@dataclass(frozen=True)
class Distilled:
    sources: tuple[str, ...]
    """The files the checks came from (CI files, or task files when there is no CI)."""
    checks: tuple[tuple[str, str, int], ...]
    """(name, command, timeout_s), fast first."""
    setup: tuple[str, ...]
    """Non-Python setup commands (``npm ci``, ...), in order."""
    inputs: tuple[str, ...]
    python: PythonNeeds
    kept: tuple[tuple[str, str, str | None], ...]
    dropped: tuple[Drop, ...]


def distill(root: Path) -> Distilled:
    """Read the CI of ``root``; raises ConfigError for a CI file that is not valid YAML."""
    out = Distiller()
    out.intercept = lambda step: precommit.distil(root, step, out)
    sources: list[str] = []
    for reader in (circleci.distill, github.distill, gitlab.distill):
        sources += reader(root, out)
    if not out.checks:
        if sources:
            out.drop("CI", f"{', '.join(sources)} yield no check; reading task runners", None)
        sources = distill_tasks(root, out)
    sources += precommit.pre_commit_ci(root, out)
    return _result(root, out, sources)


def _build_tools(root: Path, builders: set[str]) -> list[str]:
    """The build backend from ``[build-system] requires`` (setuptools and wheel without one),
    and the frontend the builds run (``build``, ``uv``)."""
    requires: list[str] = ["setuptools>=40.8", "wheel"]
    try:
        data = parse_toml(root / "pyproject.toml", read_project_file(root / "pyproject.toml", root))
        given = (data.get("build-system") or {}).get("requires")
        if isinstance(given, list) and all(isinstance(r, str) for r in given):
            requires = [r for r in given if requirement_name(r) is not None]
    except (OSError, ConfigError):
        pass
    frontends = [f for f in ("build", "uv") if f in builders]
    return [*requires, *frontends]


def _result(root: Path, out: Distiller, sources: list[str]) -> Distilled:
    checks = tuple((name, cmd, out.timeout(name)) for name, cmd in out.check_commands())
    needs = python_needs(out.python_setup)
    needs.tools = list(out.tools)
    if out.offline_builders:
        needs.build_tools = _build_tools(root, out.offline_builders)
    for rel in needs.requirement_files:
        if (root / rel).is_file():
            out.input(rel)
        else:
            out.drop(f"-r {rel}", "the requirements file does not exist", None)
    needs.requirement_files = [r for r in needs.requirement_files if (root / r).is_file()]
    return Distilled(
        tuple(sources),
        checks,
        tuple(out.setup),
        tuple(out.inputs),
        needs,
        tuple(out.kept),
        tuple(out.dropped),
    )
