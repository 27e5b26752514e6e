"""Detect how to set up and check a Python project, and write its ``microbuild.toml``.

`microbuild init` reads only the project's own files (``pyproject.toml``, ``setup.cfg``,
``setup.py``, requirements files, ``tox.ini``, tool configurations) and asks git two questions
(is this a work tree, which tags are there); it never uses the network. Every choice is a
:class:`Decision`, kept or dropped, that names the file which decided it. The generated text is
loaded back with :func:`microbuild.config.load_config` and compared with the plan before
anything is written, so a bug here cannot leave a broken configuration behind.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import json
import os
import re
import shlex
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microbuild import gitsafe
from microbuild.config import CONFIG_FILENAME, PYPROJECT_FILENAME, ProjectConfig, load_config
from microbuild.distill import Distilled, PythonNeeds, distill
from microbuild.distill.steps import program, split_script
from microbuild.errors import ConfigError

__all__ = [
    "Check",
    "Decision",
    "GeneratedConfigError",
    "InitError",
    "InitResult",
    "Plan",
    "detect",
    "init_project",
]

TEST_EXTRAS = ("test", "tests", "testing", "dev")
"""Extras and dependency groups that install test tools, most specific first."""
TEST_DIRS = ("tests", "test", "testing")
INPUT_PATTERNS = (
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "requirements*.txt",
    "requirements/*.txt",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
)
VENV_COMMAND = "python3 -m venv .venv"
PIP_INSTALL = ".venv/bin/pip install"
LINT_COMMAND = "ruff check ."
PYTEST_COMMAND = "python -m pytest -q"
SCM_ENV = "SETUPTOOLS_SCM_PRETEND_VERSION"
LINT_TIMEOUT_S = 300
TYPES_TIMEOUT_S = 600
TESTS_TIMEOUT_S = 900

# A requirements file for tests or development, by its name: requirements-dev.txt,
# requirements/test.txt, test-requirements.txt, requirements_ci.txt, ...
_TEST_REQ_RE = re.compile(
    r"(?:^|[-_./])(?:tests?|testing|dev|develop|development|ci|lint|typing|checks?)(?:[-_.]|$)"
)
_RUNTIME_REQ_FILES = ("requirements.txt", "requirements/base.txt", "requirements/common.txt")
_NOT_PACKAGES = {*TEST_DIRS, "docs", "doc", "examples", "example", "scripts", "benchmarks"}
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "build", "dist", "__pycache__"}
_REQ_NAME_RE = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[([^\]]*)\])?")
_VERSION_RE = re.compile(r"\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class InitError(ConfigError):
    """A usage error of `microbuild init` (exit status 2): one line that says what to do."""


class GeneratedConfigError(Exception):
    """The generated configuration does not load: a bug in `microbuild init`; nothing written."""


@dataclass(frozen=True)
class Decision:
    """One detection result: something kept in (or dropped from) the config, and why."""

    kept: bool
    item: str
    reason: str
    file: str | None = None
    """The file that told us (relative to the project root), if one did."""

    def line(self) -> str:
        return f"{'kept' if self.kept else 'dropped':<7} {self.item}: {self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": "kept" if self.kept else "dropped",
            "item": self.item,
            "reason": self.reason,
            "file": self.file,
        }


@dataclass(frozen=True)
class Check:
    name: str
    command: str
    timeout_s: int


@dataclass(frozen=True)
class Plan:
    """What `init` detected: the config to write, plus the decisions that led to it."""

    setup: tuple[str, ...]
    inputs: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    checks: tuple[Check, ...]
    decisions: tuple[Decision, ...]

    def render(self, table_prefix: str = "") -> str:
        """The TOML text of a ``microbuild.toml`` (or, prefixed, of pyproject.toml tables)."""
        p = f"{table_prefix}." if table_prefix else ""
        lines = [
            "# Written by `microbuild init` from this project's files; edit freely.",
            f"[{p}snapshot]",
            _toml_array("setup", self.setup),
            _toml_array("inputs", self.inputs),
        ]
        if self.env:
            pairs = ", ".join(f"{_toml_key(k)} = {_toml_str(v)}" for k, v in self.env)
            lines += ["", f"[{p}sidecar]", f"env = {{ {pairs} }}"]
        for check in self.checks:
            lines += [
                "",
                f"[[{p}check]]",
                f"name = {_toml_str(check.name)}",
                f"command = {_toml_str(check.command)}",
                f"timeout_s = {check.timeout_s}",
            ]
        if not self.checks:
            lines += [
                "",
                "# No checks detected. Add one per command, e.g.:",
                f"# [[{p}check]]",
                '# name = "tests"',
                f"# command = {_toml_str(PYTEST_COMMAND)}",
            ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class InitResult:
    path: Path
    """The file written (or that would be): ``microbuild.toml`` or ``pyproject.toml``."""
    written: bool
    config: str
    """The microbuild configuration text (for pyproject.toml, its [tool.microbuild] tables)."""
    decisions: tuple[Decision, ...]
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# entry point


def init_project(
    root: Path, *, force: bool = False, dry_run: bool = False, use_ci: bool = True
) -> InitResult:
    """Detect the project at ``root`` and write its configuration (unless ``dry_run``).

    Raises :class:`InitError` when ``root`` is not a directory inside a git work tree, or when
    a configuration exists and ``force`` is not set (a dry run only notes it).
    """
    root = root.resolve()
    if not root.is_dir():
        raise InitError(f"{root} is not a directory")
    _require_work_tree(root)

    config_file = root / CONFIG_FILENAME
    pyproject = root / PYPROJECT_FILENAME
    pyproject_text = _read_text(pyproject) if pyproject.is_file() else None
    pyproject_data = _parse_toml(pyproject, pyproject_text) if pyproject_text is not None else {}
    has_table = isinstance(pyproject_data.get("tool"), dict) and (
        "microbuild" in pyproject_data["tool"]
    )
    existing: list[tuple[Path, str]] = []
    if config_file.exists():
        existing.append((config_file, f"{config_file} already exists; --force overwrites it"))
    if has_table:
        existing.append(
            (pyproject, f"{pyproject} already has a [tool.microbuild] table; --force replaces it")
        )
    if existing and not force and not dry_run:
        raise InitError(existing[0][1])
    notes = tuple(message for _, message in existing if not force)

    plan = detect(root, use_ci=use_ci)
    writes: dict[Path, str] = {}
    if has_table and not config_file.exists():
        # The project keeps its configuration in pyproject.toml: replace the table there.
        assert pyproject_text is not None
        target = pyproject
        config_text = plan.render("tool.microbuild")
        writes[pyproject] = _replace_microbuild_table(pyproject, pyproject_text, config_text)
        _validate(plan, writes[pyproject], PYPROJECT_FILENAME)
    else:
        target = config_file
        config_text = plan.render()
        _validate(plan, config_text, CONFIG_FILENAME)
        writes[config_file] = config_text
        if has_table:  # both existed (which find_project refuses): keep only microbuild.toml
            assert pyproject_text is not None
            writes[pyproject] = _replace_microbuild_table(pyproject, pyproject_text, "")

    if not dry_run:
        for path, text in writes.items():
            _write_atomic(path, text)
    return InitResult(target, not dry_run, config_text, plan.decisions, notes)


def detect(root: Path, *, use_ci: bool = True) -> Plan:
    """Read the project at ``root`` (no writes, no network) and plan its configuration.

    With ``use_ci`` the CI files (or, without CI, the task runners) decide the checks, and the
    project's own files complete the setup; :class:`InitError` if a CI file is broken.
    """
    root = root.resolve()
    detector = _Detector(root)
    if not use_ci:
        return detector.plan()
    try:
        distilled = distill(root)
    except ConfigError as err:
        raise InitError(str(err)) from None
    return detector.plan(distilled)


_PY_TOOLS = {
    "ruff": "ruff",
    "mypy": "mypy",
    "pytest": "pytest",
    "py.test": "pytest",
    "flake8": "flake8",
    "black": "black",
    "isort": "isort",
    "pylint": "pylint",
    "pyright": "pyright",
    "pre-commit": "pre-commit",
    "codespell": "codespell",
    "bandit": "bandit",
    "build": "build",
}


def _tools_of(checks: Iterable[Check]) -> list[str]:
    """The Python tools the checks' commands start, as pip names (for the .venv install)."""
    tools: list[str] = []
    for check in checks:
        for part in split_script(check.command):
            name, args = program(part.strip("()"))
            tool = _PY_TOOLS.get(name)
            if tool and tool not in tools:
                tools.append(tool)
            if tool == "pytest":
                if any(
                    a in ("-n", "--numprocesses") or (a.startswith("-n") and a[2:].isalnum())
                    for a in args
                ):
                    tools.append("pytest-xdist")
                if any(a.startswith("--cov") for a in args):
                    tools.append("pytest-cov")
    return tools


# ---------------------------------------------------------------------------
# detection


@dataclass
class _SetupPy:
    """What a ``setup(...)`` call in setup.py says with literals (anything computed is unknown)."""

    name: str | None = None
    extras: dict[str, list[str]] = field(default_factory=dict)
    install_requires: list[str] = field(default_factory=list)
    setup_requires: list[str] = field(default_factory=list)
    use_scm_version: bool = False


@dataclass(frozen=True)
class _Extra:
    name: str
    requirements: tuple[str, ...]
    file: str
    table: str


class _Detector:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.decisions: list[Decision] = []
        pyproject = root / PYPROJECT_FILENAME
        self.pyproject: dict[str, Any] = (
            _parse_toml(pyproject, _read_text(pyproject)) if pyproject.is_file() else {}
        )
        self.setup_cfg = self._ini("setup.cfg")
        self.tox_ini = self._ini("tox.ini")
        self.setup_py = self._setup_py()
        # requirement name -> (where it is installed from, the file), for "already installed"
        self.provided: dict[str, tuple[str, str]] = {}

    # -- the plan

    def plan(self, ci: Distilled | None = None) -> Plan:
        manifests = [n for n in ("pyproject.toml", "setup.py", "setup.cfg") if self._is_file(n)]
        requirement_files = self._requirement_files()
        is_python = bool(manifests or requirement_files) or _has_python_files(self.root)
        use_ci = ci is not None and bool(ci.checks)
        if not is_python and ci is not None and use_ci and ci.python.tools:
            is_python = True  # pre-commit hooks' tools are Python packages: they need the .venv
            self._keep("setup", "no Python project here, but the pre-commit hooks' tools are")
        if ci is not None:
            self._ci_decisions(ci)
        if not is_python:
            self._drop(
                "setup",
                "no Python project here (no pyproject.toml, setup.py, setup.cfg, "
                "requirements*.txt or *.py files); no Python setup",
            )
            if ci is not None and use_ci:
                kept = tuple(Check(n, c, t) for n, c, t in ci.checks)
                return Plan(ci.setup, ci.inputs, (), kept, tuple(self.decisions))
            self._drop("checks", "nothing to check was found; add [[check]] tables by hand")
            return Plan((), (), (), (), tuple(self.decisions))

        self._keep("setup", f"`{VENV_COMMAND}` (sidecars put .venv/bin first on PATH)")
        args: list[str] = []
        installable = self._installable()
        checks: list[Check] = []
        tools: list[str] = []
        if ci is not None and use_ci and not ci.python.empty():
            args += self._ci_args(ci.python, installable)
        else:
            if ci is not None and use_ci:
                self._keep(
                    "install",
                    f"{', '.join(ci.sources)} install nothing a .venv can reproduce; "
                    "what to install is read from the project's files",
                )
            if installable is not None:
                args += self._package_args(installable)
            args += self._requirement_args(requirement_files, installable is not None)
            args += self._group_args()
        if ci is not None and use_ci:
            args += self._hook_tool_args(ci.python.tools)
            checks = [Check(n, c, t) for n, c, t in ci.checks]
            tools = _tools_of(checks)
        else:
            for found in (self._lint(), self._types(), self._tests()):
                if found is not None:
                    check, tool = found
                    checks.append(check)
                    tools.append(tool)
            if not checks:
                self._drop(
                    "checks",
                    "no ruff or mypy configuration, pytest use or tests directory found; "
                    "add [[check]] tables by hand",
                )
        missing = [tool for tool in tools if _norm(tool) not in self.provided]
        if ci is not None and use_ci and missing:
            self._keep("install " + " ".join(missing), "the checks run them")
        args += missing

        setup = [VENV_COMMAND]
        if args:
            setup.append(" ".join([PIP_INSTALL, *args]))
        inputs = list(self._inputs(requirement_files))
        if ci is not None and use_ci:
            setup += [c for c in ci.setup if c not in setup]
            inputs += [i for i in ci.inputs if not any(fnmatch.fnmatch(i, p) for p in inputs)]
        env = self._scm_env()
        return Plan(tuple(setup), tuple(inputs), env, tuple(checks), tuple(self.decisions))

    def _ci_decisions(self, ci: Distilled) -> None:
        for item, reason, file in ci.kept:
            self._keep(item, reason, file)
        for drop in ci.dropped:
            self._drop(drop.item, drop.reason, drop.file)
        if ci.checks:
            names = ", ".join(name for name, _, _ in ci.checks)
            self._keep("checks", f"{names}, from {', '.join(ci.sources)}", ci.sources[0])
        elif ci.sources:
            self._drop(
                "CI", f"{', '.join(ci.sources)} yield no check; detected from the project files"
            )

    def _ci_args(self, needs: PythonNeeds, installable: str | None) -> list[str]:
        """The CI's Python installs as arguments of one ``.venv`` pip install."""
        args: list[str] = []
        if installable is not None:
            for requirement in self._project_dependencies():
                self._provide(
                    requirement, f"the project's dependencies ({installable})", installable
                )
            extras = self._extras()
            chosen = [e for e in needs.extras if _norm(e) in extras]
            for name in needs.extras:
                if _norm(name) not in extras:
                    self._drop(
                        f"extra [{name}]", "the CI installs it, but the project does not declare it"
                    )
            for name in chosen:
                extra = extras[_norm(name)]
                for requirement in self._expand_extra(extra, extras, set()):
                    self._provide(requirement, f"extra '{name}' ({extra.file})", extra.file)
            target = f".[{','.join(chosen)}]" if chosen else "."
            self._keep(f"install -e {target}", "the CI installs the project", installable)
            args += ["-e", shlex.quote(target)]
        elif needs.project:
            self._drop(
                "install -e .", "the CI installs the project, but nothing here is installable"
            )
        for name in needs.requirement_files:
            self._keep(f"-r {name}", "the CI installs it", name)
            args += ["-r", shlex.quote(name)]
            for requirement in _requirements_in_file(self.root / name, set()):
                self._provide(requirement, name, name)
        groups = self.pyproject.get("dependency-groups")
        declared = {_norm(k): k for k in groups} if isinstance(groups, dict) else {}
        for name in needs.groups:
            if _norm(name) not in declared:
                self._drop(
                    f"dependency group {name}", "the CI asks for it; pyproject.toml has none"
                )
                continue
            assert isinstance(groups, dict)
            requirements = _expand_group(groups, declared[_norm(name)], set())
            fresh = [r for r in requirements if _req_name(r) not in self.provided]
            self._keep(
                f"dependency group {name}",
                f"the CI installs it ({len(requirements)} requirements)",
                "pyproject.toml",
            )
            for requirement in fresh:
                self._provide(requirement, f"dependency group '{name}'", "pyproject.toml")
            args += [shlex.quote(r) for r in fresh]
        for package in needs.packages:
            if _req_name(package) not in self.provided:
                self._provide(package, "the CI's pip install", "CI")
                args.append(shlex.quote(package))
        return args

    def _hook_tool_args(self, requirements: list[str]) -> list[str]:
        """The pinned tools of pre-commit hooks, unless the project's installs have them."""
        args: list[str] = []
        for requirement in requirements:
            name = _req_name(requirement)
            if name is None:
                continue
            if name in self.provided:
                source, file = self.provided[name]
                self._drop(
                    f"install {requirement}",
                    f"a pre-commit hook runs {name}, which {source} installs already",
                    file,
                )
                continue
            self._provide(requirement, "the pre-commit hooks", ".pre-commit-config.yaml")
            self._keep(
                f"install {requirement}", "a pre-commit hook's tool", ".pre-commit-config.yaml"
            )
            args.append(shlex.quote(requirement))
        return args

    # -- installing the project

    def _installable(self) -> str | None:
        """The file that makes ``pip install -e .`` work, or None (with the reason noted)."""
        if self._is_file("pyproject.toml") and (
            isinstance(self.pyproject.get("project"), dict)
            or isinstance(self.pyproject.get("build-system"), dict)
        ):
            table = "[project]" if "project" in self.pyproject else "[build-system]"
            self._keep("install -e .", f"pyproject.toml has {table}", "pyproject.toml")
            return "pyproject.toml"
        if self._is_file("setup.py"):
            self._keep("install -e .", "setup.py exists", "setup.py")
            return "setup.py"
        if self._is_file("pyproject.toml"):
            self._drop(
                "install -e .",
                "pyproject.toml has no [project] or [build-system] table (tool settings only)",
                "pyproject.toml",
            )
        elif self._is_file("setup.cfg"):
            self._drop(
                "install -e .",
                "setup.cfg alone is not installable by pip (no setup.py or pyproject.toml)",
                "setup.cfg",
            )
        return None

    def _package_args(self, manifest: str) -> list[str]:
        for requirement in self._project_dependencies():
            self._provide(requirement, f"the project's dependencies ({manifest})", manifest)
        extras = self._extras()
        chosen = next((extras[n] for n in TEST_EXTRAS if n in extras), None)
        if chosen is None:
            wanted = f"{', '.join(TEST_EXTRAS[:-1])} or {TEST_EXTRAS[-1]}"
            if extras:
                names = ", ".join(sorted(e.name for e in extras.values()))
                where = sorted({e.file for e in extras.values()})
                why = f"no {wanted} extra among {names} ({', '.join(where)})"
                self._drop("extras", why, where[0])
            else:
                self._drop("extras", f"the project declares no extras (looked for {wanted})")
            return ["-e", "."]
        self._keep(
            f"extra [{chosen.name}]",
            f"{chosen.file} declares it in {chosen.table}",
            chosen.file,
        )
        for requirement in self._expand_extra(chosen, extras, set()):
            self._provide(requirement, f"extra '{chosen.name}' ({chosen.file})", chosen.file)
        return ["-e", shlex.quote(f".[{chosen.name}]")]

    def _project_dependencies(self) -> list[str]:
        project = self.pyproject.get("project")
        if isinstance(project, dict) and isinstance(project.get("dependencies"), list):
            return [r for r in project["dependencies"] if isinstance(r, str)]
        requirements = list(self.setup_py.install_requires) if self.setup_py else []
        if self.setup_cfg is not None:
            requirements += _cfg_list(
                self.setup_cfg.get("options", "install_requires", fallback="")
            )
        return requirements

    def _extras(self) -> dict[str, _Extra]:
        """Declared extras by normalized name: pyproject.toml, then setup.cfg, then setup.py."""
        found: dict[str, _Extra] = {}
        if self.setup_py is not None:
            for name, reqs in self.setup_py.extras.items():
                found[_norm(name)] = _Extra(name, tuple(reqs), "setup.py", "setup(extras_require)")
        if self.setup_cfg is not None and self.setup_cfg.has_section("options.extras_require"):
            for name, value in self.setup_cfg.items("options.extras_require"):
                found[_norm(name)] = _Extra(
                    name, tuple(_cfg_list(value)), "setup.cfg", "[options.extras_require]"
                )
        project = self.pyproject.get("project")
        optional = project.get("optional-dependencies") if isinstance(project, dict) else None
        if isinstance(optional, dict):
            for name, reqs in optional.items():
                requirements = (
                    tuple(r for r in reqs if isinstance(r, str)) if isinstance(reqs, list) else ()
                )
                found[_norm(name)] = _Extra(
                    name, requirements, "pyproject.toml", "[project.optional-dependencies]"
                )
        return found

    def _expand_extra(
        self, extra: _Extra, extras: Mapping[str, _Extra], seen: set[str]
    ) -> list[str]:
        """An extra's requirements, following ``myproject[other]`` references to other extras."""
        seen.add(_norm(extra.name))
        own = self._project_name()
        out: list[str] = []
        for requirement in extra.requirements:
            match = _REQ_NAME_RE.match(requirement)
            if own is not None and match is not None and _norm(match[1]) == own and match[2]:
                for name in match[2].split(","):
                    other = extras.get(_norm(name.strip()))
                    if other is not None and _norm(other.name) not in seen:
                        out += self._expand_extra(other, extras, seen)
            else:
                out.append(requirement)
        return out

    def _project_name(self) -> str | None:
        project = self.pyproject.get("project")
        if isinstance(project, dict) and isinstance(project.get("name"), str):
            return _norm(project["name"])
        poetry = _table(self.pyproject, "tool", "poetry")
        if poetry is not None and isinstance(poetry.get("name"), str):
            return _norm(poetry["name"])
        if self.setup_cfg is not None and self.setup_cfg.has_option("metadata", "name"):
            return _norm(self.setup_cfg.get("metadata", "name"))
        if self.setup_py is not None and self.setup_py.name:
            return _norm(self.setup_py.name)
        return None

    def _requirement_files(self) -> list[str]:
        found = {
            p.relative_to(self.root).as_posix()
            for pattern in ("*requirements*.txt", "requirements/*.txt")
            for p in self.root.glob(pattern)
            if p.is_file()
        }
        return sorted(found)

    def _requirement_args(self, files: list[str], installable: bool) -> list[str]:
        args: list[str] = []
        for name in files:
            stem = name.lower().removesuffix(".txt")
            if _TEST_REQ_RE.search(stem):
                self._keep(f"-r {name}", "test/development requirements, by its name", name)
            elif name in _RUNTIME_REQ_FILES and not installable:
                self._keep(
                    f"-r {name}", "the project's requirements (no installable package)", name
                )
            elif name in _RUNTIME_REQ_FILES:
                self._drop(
                    f"-r {name}",
                    "runtime requirements; `pip install -e .` installs the package's own",
                    name,
                )
                continue
            else:
                self._drop(f"-r {name}", "not test or development requirements, by its name", name)
                continue
            args += ["-r", shlex.quote(name)]
            for requirement in _requirements_in_file(self.root / name, set()):
                self._provide(requirement, name, name)
        return args

    def _group_args(self) -> list[str]:
        groups = self.pyproject.get("dependency-groups")
        if not isinstance(groups, dict):
            return []
        by_norm = {_norm(k): k for k in groups}
        name = next((by_norm[n] for n in TEST_EXTRAS if n in by_norm), None)
        if name is None:
            self._drop(
                "dependency group",
                f"[dependency-groups] has no {', '.join(TEST_EXTRAS[:-1])} or "
                f"{TEST_EXTRAS[-1]} group",
                "pyproject.toml",
            )
            return []
        requirements = _expand_group(groups, name, set())
        self._keep(
            f"dependency group {name}",
            f"pyproject.toml [dependency-groups] ({len(requirements)} requirements)",
            "pyproject.toml",
        )
        for requirement in requirements:
            self._provide(
                requirement, f"dependency group '{name}' (pyproject.toml)", "pyproject.toml"
            )
        return [shlex.quote(r) for r in requirements]

    def _inputs(self, requirement_files: list[str]) -> tuple[str, ...]:
        inputs = [
            pattern
            for pattern in INPUT_PATTERNS
            if any(p.is_file() for p in self.root.glob(pattern))
        ]
        covered = {
            p.relative_to(self.root).as_posix()
            for pattern in inputs
            for p in self.root.glob(pattern)
        }
        inputs += [name for name in requirement_files if name not in covered]
        return tuple(inputs)

    # -- checks

    def _lint(self) -> tuple[Check, str] | None:
        if self._is_file(".ruff.toml"):
            source, why = ".ruff.toml", ".ruff.toml exists"
        elif self._is_file("ruff.toml"):
            source, why = "ruff.toml", "ruff.toml exists"
        elif _table(self.pyproject, "tool", "ruff") is not None:
            source, why = "pyproject.toml", "pyproject.toml has [tool.ruff]"
        else:
            self._drop("lint", "ruff is not configured (no [tool.ruff], ruff.toml or .ruff.toml)")
            return None
        self._keep("lint", f"`{LINT_COMMAND}`: {why}{self._installs('ruff')}", source)
        return Check("lint", LINT_COMMAND, LINT_TIMEOUT_S), "ruff"

    def _types(self) -> tuple[Check, str] | None:
        files: list[str] | None = None
        if self._is_file("mypy.ini") or self._is_file(".mypy.ini"):
            source = "mypy.ini" if self._is_file("mypy.ini") else ".mypy.ini"
            ini = self._ini(source)
            files = _comma_list(ini.get("mypy", "files", fallback="")) if ini else []
            why = f"{source} exists"
        elif (mypy := _table(self.pyproject, "tool", "mypy")) is not None:
            source, why = "pyproject.toml", "pyproject.toml has [tool.mypy]"
            value = mypy.get("files")
            files = (
                _comma_list(value)
                if isinstance(value, str)
                else [f for f in value if isinstance(f, str)]
                if isinstance(value, list)
                else []
            )
        elif self.setup_cfg is not None and self.setup_cfg.has_section("mypy"):
            source, why = "setup.cfg", "setup.cfg has [mypy]"
            files = _comma_list(self.setup_cfg.get("mypy", "files", fallback=""))
        else:
            self._drop(
                "types",
                "mypy is not configured (no [tool.mypy], mypy.ini, .mypy.ini or [mypy] in "
                "setup.cfg)",
            )
            return None
        if files:
            command = "mypy"
            what = f"{why}, with files = {', '.join(files)}"
        else:
            packages = self._package_dirs()
            if not packages:
                self._drop(
                    "types",
                    f"{why} but it sets no files and no package directory was found; "
                    "set files in the mypy configuration",
                    source,
                )
                return None
            command = " ".join(["mypy", *map(shlex.quote, packages)])
            what = f"{why}; no files set, so the package directory"
        self._keep("types", f"`{command}`: {what}{self._installs('mypy')}", source)
        return Check("types", command, TYPES_TIMEOUT_S), "mypy"

    def _package_dirs(self) -> list[str]:
        candidates: list[str] = []
        for base in (self.root / "src", self.root):
            if not base.is_dir():
                continue
            for child in sorted(base.iterdir()):
                if (
                    child.name.isidentifier()
                    and child.name not in _NOT_PACKAGES
                    and (child / "__init__.py").is_file()
                ):
                    candidates.append(child.relative_to(self.root).as_posix())
            if candidates:
                break
        own = self._project_name()
        if own is not None:
            named = [c for c in candidates if _norm(c.rsplit("/", 1)[-1]) == own]
            if named:
                return named
        return candidates

    def _tests(self) -> tuple[Check, str] | None:
        found = self._pytest_signal()
        if found is None:
            self._drop(
                "tests",
                "no pytest configuration, conftest.py or tests directory "
                f"({', '.join(d + '/' for d in TEST_DIRS)})",
            )
            return None
        why, source = found
        self._keep("tests", f"`{PYTEST_COMMAND}`: {why}{self._installs('pytest')}", source)
        return Check("tests", PYTEST_COMMAND, TESTS_TIMEOUT_S), "pytest"

    def _pytest_signal(self) -> tuple[str, str] | None:
        """Why we think the project uses pytest, and the file (or directory) that says so."""
        if _table(self.pyproject, "tool", "pytest") is not None:
            table = "[tool.pytest.ini_options]"
            if _table(self.pyproject, "tool", "pytest", "ini_options") is None:
                table = "[tool.pytest]"
            return f"pyproject.toml has {table}", "pyproject.toml"
        for name in ("pytest.ini", ".pytest.ini"):
            if self._is_file(name):
                return f"{name} exists", name
        if self.tox_ini is not None and self.tox_ini.has_section("pytest"):
            return "tox.ini has a [pytest] section", "tox.ini"
        if self.setup_cfg is not None and self.setup_cfg.has_section("tool:pytest"):
            return "setup.cfg has [tool:pytest]", "setup.cfg"
        if self._is_file("conftest.py"):
            return "conftest.py exists", "conftest.py"
        if self._is_file("tox.ini") and re.search(
            r"\bpy\.?test\b", _read_text(self.root / "tox.ini")
        ):
            return "tox.ini mentions pytest", "tox.ini"
        for name in TEST_DIRS:
            if (self.root / name).is_dir():
                return f"{name}/ exists (pytest also runs unittest tests)", f"{name}/"
        if "pytest" in self.provided:
            source, file = self.provided["pytest"]
            return f"{source} installs pytest", file
        return None

    def _installs(self, tool: str) -> str:
        found = self.provided.get(_norm(tool))
        return f"; {tool} comes from {found[0]}" if found else f"; installs {tool}"

    # -- setuptools_scm and friends

    def _scm_env(self) -> tuple[tuple[str, str], ...]:
        found = self._scm_backend()
        if found is None:
            return ()
        backend, why, source = found
        fallback = self._scm_fallback()
        if fallback is not None:
            self._drop(f"sidecar.env {SCM_ENV}", f"{why}, but {fallback}", source)
            return ()
        version, how = self._pretend_version()
        note = " (versioningit may ignore it: set its default-version)" * (
            backend == "versioningit"
        )
        self._keep(
            f"sidecar.env {SCM_ENV}={version}",
            f"{why}: {backend} reads the version from git, and sidecars have no .git; {how}{note}",
            source,
        )
        return ((SCM_ENV, version),)

    def _scm_backend(self) -> tuple[str, str, str] | None:
        """The git-versioning plugin the build uses, why we think so, and the file."""
        if _table(self.pyproject, "tool", "setuptools_scm") is not None:
            return "setuptools_scm", "pyproject.toml has [tool.setuptools_scm]", "pyproject.toml"
        requires = _table(self.pyproject, "build-system") or {}
        for requirement in requires.get("requires") or []:
            name = _req_name(requirement) if isinstance(requirement, str) else None
            if name in ("setuptools-scm", "hatch-vcs", "versioningit"):
                return (
                    name.replace("setuptools-scm", "setuptools_scm"),
                    f"pyproject.toml [build-system] requires {requirement}",
                    "pyproject.toml",
                )
        hatch = _table(self.pyproject, "tool", "hatch", "version")
        if hatch is not None and hatch.get("source") == "vcs":
            why = 'pyproject.toml has [tool.hatch.version] source = "vcs"'
            return "hatch-vcs", why, "pyproject.toml"
        if _table(self.pyproject, "tool", "versioningit") is not None:
            return "versioningit", "pyproject.toml has [tool.versioningit]", "pyproject.toml"
        if self.setup_cfg is not None:
            for requirement in _cfg_list(
                self.setup_cfg.get("options", "setup_requires", fallback="")
            ):
                if _req_name(requirement) == "setuptools-scm":
                    return "setuptools_scm", "setup.cfg setup_requires setuptools_scm", "setup.cfg"
        if self.setup_py is not None:
            if self.setup_py.use_scm_version:
                return "setuptools_scm", "setup.py passes use_scm_version", "setup.py"
            if any(_req_name(r) == "setuptools-scm" for r in self.setup_py.setup_requires):
                return "setuptools_scm", "setup.py setup_requires setuptools_scm", "setup.py"
        return None

    def _scm_fallback(self) -> str | None:
        """A fallback version the project configures itself (then no env is needed)."""
        scm = _table(self.pyproject, "tool", "setuptools_scm") or {}
        if "fallback_version" in scm:
            return "[tool.setuptools_scm] sets fallback_version"
        raw = _table(self.pyproject, "tool", "hatch", "version", "raw-options") or {}
        if "fallback_version" in raw:
            return "[tool.hatch.version.raw-options] sets fallback_version"
        versioningit = _table(self.pyproject, "tool", "versioningit") or {}
        if "default-version" in versioningit:
            return "[tool.versioningit] sets default-version"
        return None

    def _pretend_version(self) -> tuple[str, str]:
        pkg_info = self.root / "PKG-INFO"
        if pkg_info.is_file():
            match = re.search(r"^Version:\s*(\S+)", _read_text(pkg_info), re.MULTILINE)
            if match and _VERSION_RE.fullmatch(match[1]):
                return match[1], f"PKG-INFO says Version: {match[1]}"
        tags = _git(self.root, "tag", "--list")
        if tags.returncode != 0 or not tags.stdout.strip():
            return "0.0.0", "the repository has no tags"
        nearest = _git(self.root, "describe", "--tags", "--abbrev=0")
        tag = nearest.stdout.strip()
        version = tag.removeprefix("v").removeprefix("V")
        if nearest.returncode == 0 and _VERSION_RE.fullmatch(version):
            return version, f"the nearest tag is {tag}"
        return "0.0.0", "no tag reachable from HEAD is a version"

    # -- helpers

    def _keep(self, item: str, reason: str, file: str | None = None) -> None:
        self.decisions.append(Decision(True, item, reason, file))

    def _drop(self, item: str, reason: str, file: str | None = None) -> None:
        self.decisions.append(Decision(False, item, reason, file))

    def _provide(self, requirement: str, source: str, file: str) -> None:
        name = _req_name(requirement)
        if name is not None:
            self.provided.setdefault(name, (source, file))

    def _is_file(self, name: str) -> bool:
        return (self.root / name).is_file()

    def _ini(self, name: str) -> configparser.ConfigParser | None:
        path = self.root / name
        if not path.is_file():
            return None
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(_read_text(path), source=name)
        except configparser.Error as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._drop(name, f"cannot be parsed ({first}); its settings are not used", name)
            return None
        return parser

    def _setup_py(self) -> _SetupPy | None:
        path = self.root / "setup.py"
        if not path.is_file():
            return None
        try:
            tree = ast.parse(_read_text(path), filename="setup.py")
        except (SyntaxError, ValueError) as err:
            self._drop(
                "setup.py", f"cannot be parsed ({err}); its settings are not used", "setup.py"
            )
            return None
        return _read_setup_call(tree)


# ---------------------------------------------------------------------------
# reading files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InitError(f"cannot read the file: {err.strerror or err}", path=path) from None


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InitError(f"invalid TOML: {err}; fix it first", path=path) from None


def _table(data: Mapping[str, Any], *keys: str) -> dict[str, Any] | None:
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _norm(name: str) -> str:
    """PEP 503/685 normalized project or extra name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(requirement: str) -> str | None:
    match = _REQ_NAME_RE.match(requirement)
    return _norm(match[1]) if match else None


def _cfg_list(value: str) -> list[str]:
    """A setup.cfg list: one item a line, or comma-separated on one line."""
    items: list[str] = []
    for line in value.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        # "pytest, pytest-cov" is two requirements; "pytest>=7,<9" is one.
        parts = [part.strip() for part in line.split(",")]
        if all(part and part[0].isalnum() for part in parts):
            items += parts
        else:
            items.append(line)
    return items


def _comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]


def _requirements_in_file(path: Path, seen: set[Path]) -> list[str]:
    """Requirement lines of a requirements file, following ``-r`` includes (not constraints)."""
    resolved = path.resolve()
    if resolved in seen or not path.is_file():
        return []
    seen.add(resolved)
    out: list[str] = []
    for raw in _read_text(path).splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line.startswith("#") or not line:
            continue
        include = re.fullmatch(r"(?:-r|--requirement)(?:\s*=\s*|\s+)?(\S+)", line)
        if include:
            out += _requirements_in_file(path.parent / include[1], seen)
        elif not line.startswith("-"):
            out.append(line)
    return out


def _expand_group(groups: Mapping[str, Any], name: str, seen: set[str]) -> list[str]:
    """A PEP 735 dependency group's requirements, with ``{include-group = ...}`` resolved."""
    seen.add(_norm(name))
    by_norm = {_norm(k): v for k, v in groups.items()}
    out: list[str] = []
    for item in by_norm.get(_norm(name)) or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("include-group"), str):
            included = item["include-group"]
            if _norm(included) not in seen:
                out += _expand_group(groups, included, seen)
    return out


_UNKNOWN = object()


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNKNOWN


def _str_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    return []


def _read_setup_call(tree: ast.Module) -> _SetupPy:
    info = _SetupPy()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if called != "setup":
            continue
        for keyword in node.keywords:
            value = _literal(keyword.value)
            if keyword.arg == "name" and isinstance(value, str):
                info.name = value
            elif keyword.arg == "extras_require" and isinstance(value, dict):
                info.extras = {str(k): _str_list(v) for k, v in value.items()}
            elif keyword.arg == "install_requires":
                info.install_requires = _str_list(value)
            elif keyword.arg == "setup_requires":
                info.setup_requires = _str_list(value)
            elif keyword.arg == "use_scm_version":
                info.use_scm_version = value is not False and value is not None
    return info


def _has_python_files(root: Path, depth: int = 3) -> bool:
    """Any ``*.py`` file in the top ``depth`` directory levels (skipping venvs and the like)."""
    level = [root]
    for _ in range(depth):
        following: list[Path] = []
        for directory in level:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if entry.is_file() and entry.name.endswith(".py"):
                    return True
                if (
                    entry.is_dir(follow_symlinks=False)
                    and entry.name not in _SKIP_DIRS
                    and not entry.name.startswith(".")
                ):
                    following.append(Path(entry.path))
        level = following
    return False


# ---------------------------------------------------------------------------
# git


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            gitsafe.argv(root, *args),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError:
        raise InitError("git is not installed; install git (apt-get install git)") from None
    except subprocess.TimeoutExpired:
        raise InitError(f"git {args[0]} in {root} did not answer within 60s") from None


def _require_work_tree(root: Path) -> None:
    proc = _git(root, "rev-parse", "--is-inside-work-tree")
    if proc.returncode == 0 and proc.stdout.strip() == "true":
        return
    detail = (proc.stderr.strip().splitlines() or [""])[0]
    if proc.returncode == 0 or "not a git repository" in detail:
        raise InitError(
            f"{root} is not inside a git work tree; run `git init` there first "
            "(snapshots are built from git commits)"
        )
    if "dubious ownership" in detail:
        detail += f"; if you trust it: git config --global --add safe.directory {root}"
    raise InitError(f"git cannot read the repository at {root}: {detail}")


# ---------------------------------------------------------------------------
# TOML out, validation and writing


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes; \uXXXX for control characters).
    return json.dumps(value, ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else _toml_str(key)


def _toml_array(key: str, values: Iterable[str]) -> str:
    items = [_toml_str(v) for v in values]
    one_line = f"{key} = [{', '.join(items)}]"
    if len(one_line) <= 100:
        return one_line
    return "\n".join([f"{key} = [", *(f"  {item}," for item in items), "]"])


def _validate(plan: Plan, text: str, filename: str) -> ProjectConfig:
    """Load the generated text as microbuild would, and check it says what the plan says."""
    with tempfile.TemporaryDirectory(prefix="microbuild-init-") as tmp:
        path = Path(tmp) / filename
        path.write_text(text, encoding="utf-8")
        try:
            config = load_config(path)
        except ConfigError as err:
            raise GeneratedConfigError(
                f"the generated configuration does not load ({err}); nothing was written "
                "(a microbuild bug: please report it)"
            ) from err
    expected = (
        plan.setup,
        plan.inputs,
        dict(plan.env),
        [(c.name, c.command, float(c.timeout_s)) for c in plan.checks],
    )
    loaded = (
        config.snapshot.setup,
        config.snapshot.inputs,
        config.sidecar.env,
        [(c.name, c.command, c.timeout_s) for c in config.checks],
    )
    if loaded != expected:
        raise GeneratedConfigError(
            f"the generated configuration loads as {loaded!r}, not as planned {expected!r}; "
            "nothing was written (a microbuild bug: please report it)"
        )
    return config


_HEADER_RE = re.compile(r"\s*\[\[?\s*(?P<key>[^\[\]]+?)\s*\]\]?\s*(?:#.*)?")


def _header_path(line: str) -> tuple[str, ...] | None:
    """The key path of a ``[table]`` / ``[[array]]`` header line, or None if it is not one."""
    match = _HEADER_RE.fullmatch(line)
    if match is None:
        return None
    try:
        node: Any = tomllib.loads(f"[{match['key']}]")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key = next(iter(node))
        path.append(key)
        node = node[key]
    return tuple(path)


def _without_microbuild(data: dict[str, Any]) -> dict[str, Any]:
    tool = data.get("tool")
    if not isinstance(tool, dict) or "microbuild" not in tool:
        return data
    rest = {k: v for k, v in tool.items() if k != "microbuild"}
    out = {k: v for k, v in data.items() if k != "tool"}
    if rest:
        out["tool"] = rest
    return out


def _replace_microbuild_table(path: Path, text: str, block: str) -> str:
    """``text`` without its [tool.microbuild...] tables, with ``block`` appended.

    The edit is textual (to keep the user's formatting and comments) and then verified: the
    rest of the document must parse to exactly what it was, or nothing is rewritten.
    """
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        header = _header_path(line)
        if header is not None:
            inside = header[:2] == ("tool", "microbuild")
        if not inside:
            kept.append(line)
    new = "".join(kept).rstrip("\n")
    new = f"{new}\n\n{block}" if new and block else (new + "\n" if new else block)
    try:
        same = _without_microbuild(tomllib.loads(new)) == _without_microbuild(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        same = False
    if not same:
        raise InitError(
            "cannot replace [tool.microbuild] automatically (it is written as dotted keys or "
            "inline tables); remove it by hand and run `microbuild init` again",
            path=path,
        )
    return new


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InitError(f"cannot write the file: {err.strerror or err}", path=path) from None
