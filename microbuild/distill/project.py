"""Detect how to set up and check a Python project from its own files.

The detection reads only the project's files (``pyproject.toml``, ``setup.cfg``, ``setup.py``,
requirements files, ``tox.ini``, tool configurations), never through a link out of the project,
and asks git which tags there are; it never uses the network. The CI, when there is one (see
:func:`microbuild.distill.distill`), decides the checks and these files complete the setup.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from microbuild.config import PYPROJECT_FILENAME
from microbuild.distill import Distilled, PythonNeeds, distill
from microbuild.distill.files import parse_toml, read_project_file
from microbuild.distill.packaging import (
    REQUIREMENT_NAME_RE,
    Extra,
    SetupCall,
    canonical_name,
    cfg_list,
    comma_list,
    expand_group,
    read_setup_call,
    requirement_name,
    requirements_in_file,
    table_at,
)
from microbuild.distill.plan import PYTEST_COMMAND, Check, Decision, InitError, Plan
from microbuild.distill.steps import program, split_script
from microbuild.distill.worktree import git
from microbuild.errors import ConfigError

__all__ = ["ProjectDetector", "detect"]

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
_VERSION_RE = re.compile(r"\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?")


def detect(root: Path, *, use_ci: bool = True) -> Plan:
    """Read the project at ``root`` (no writes, no network) and plan its configuration.

    With ``use_ci`` the CI files (or, without CI, the task runners) decide the checks, and the
    project's own files complete the setup; :class:`InitError` if a CI file is broken.
    """
    root = root.resolve()
    detector = ProjectDetector(root)
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
    "twine": "twine",
    "check-wheel-contents": "check-wheel-contents",
    "virtue": "virtue",
    "uv": "uv",
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


# pytest's default `python_files`.
_COLLECTED_FILE = re.compile(r"test_.*\.py|.*_test\.py")
_TEST_CODE = re.compile(r"^\s*(?:def test|class \w*Test|class Test)|unittest\.TestCase", re.M)


def _has_tests(path: Path) -> bool:
    try:
        return _TEST_CODE.search(path.read_text(encoding="utf-8", errors="replace")) is not None
    except OSError:
        return False


class ProjectDetector:
    """Reads the project's files once, then plans; every choice it makes is kept as a
    :class:`Decision` (``decisions``), in the order made."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.decisions: list[Decision] = []
        pyproject = root / PYPROJECT_FILENAME
        self.pyproject: dict[str, Any] = (
            parse_toml(pyproject, read_project_file(pyproject, root)) if pyproject.is_file() else {}
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
            args += self._build_tool_args(ci.python.build_tools)
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
        missing = [tool for tool in tools if canonical_name(tool) not in self.provided]
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
            chosen = [e for e in needs.extras if canonical_name(e) in extras]
            for name in needs.extras:
                if canonical_name(name) not in extras:
                    self._drop(
                        f"extra [{name}]", "the CI installs it, but the project does not declare it"
                    )
            for name in chosen:
                extra = extras[canonical_name(name)]
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
            for requirement in requirements_in_file(self.root / name, self.root, set()):
                self._provide(requirement, name, name)
        groups = self.pyproject.get("dependency-groups")
        declared = {canonical_name(k): k for k in groups} if isinstance(groups, dict) else {}
        for name in needs.groups:
            if canonical_name(name) not in declared:
                self._drop(
                    f"dependency group {name}", "the CI asks for it; pyproject.toml has none"
                )
                continue
            assert isinstance(groups, dict)
            requirements = expand_group(groups, declared[canonical_name(name)], set())
            fresh = [r for r in requirements if requirement_name(r) not in self.provided]
            self._keep(
                f"dependency group {name}",
                f"the CI installs it ({len(requirements)} requirements)",
                "pyproject.toml",
            )
            for requirement in fresh:
                self._provide(requirement, f"dependency group '{name}'", "pyproject.toml")
            args += [shlex.quote(r) for r in fresh]
        for package in needs.packages:
            if requirement_name(package) not in self.provided:
                self._provide(package, "the CI's pip install", "CI")
                args.append(shlex.quote(package))
        return args

    def _build_tool_args(self, requirements: list[str]) -> list[str]:
        """The build backend and frontend a build without isolation uses (checks are offline:
        an isolated build would download them)."""
        args: list[str] = []
        for requirement in requirements:
            name = requirement_name(requirement)
            if name is None or name in self.provided:
                continue
            self._provide(requirement, "the build check", "pyproject.toml")
            self._keep(
                f"install {requirement}",
                "the build check builds without isolation (checks have no network)",
                "pyproject.toml",
            )
            args.append(shlex.quote(requirement))
        return args

    def _hook_tool_args(self, requirements: list[str]) -> list[str]:
        """The pinned tools of pre-commit hooks, unless the project's installs have them."""
        args: list[str] = []
        for requirement in requirements:
            name = requirement_name(requirement)
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
            requirements += cfg_list(self.setup_cfg.get("options", "install_requires", fallback=""))
        return requirements

    def _extras(self) -> dict[str, Extra]:
        """Declared extras by normalized name: pyproject.toml, then setup.cfg, then setup.py."""
        found: dict[str, Extra] = {}
        if self.setup_py is not None:
            for name, reqs in self.setup_py.extras.items():
                found[canonical_name(name)] = Extra(
                    name, tuple(reqs), "setup.py", "setup(extras_require)"
                )
        if self.setup_cfg is not None and self.setup_cfg.has_section("options.extras_require"):
            for name, value in self.setup_cfg.items("options.extras_require"):
                found[canonical_name(name)] = Extra(
                    name, tuple(cfg_list(value)), "setup.cfg", "[options.extras_require]"
                )
        project = self.pyproject.get("project")
        optional = project.get("optional-dependencies") if isinstance(project, dict) else None
        if isinstance(optional, dict):
            for name, reqs in optional.items():
                requirements = (
                    tuple(r for r in reqs if isinstance(r, str)) if isinstance(reqs, list) else ()
                )
                found[canonical_name(name)] = Extra(
                    name, requirements, "pyproject.toml", "[project.optional-dependencies]"
                )
        return found

    def _expand_extra(self, extra: Extra, extras: Mapping[str, Extra], seen: set[str]) -> list[str]:
        """An extra's requirements, following ``myproject[other]`` references to other extras."""
        seen.add(canonical_name(extra.name))
        own = self._project_name()
        out: list[str] = []
        for requirement in extra.requirements:
            match = REQUIREMENT_NAME_RE.match(requirement)
            if (
                own is not None
                and match is not None
                and canonical_name(match[1]) == own
                and match[2]
            ):
                for name in match[2].split(","):
                    other = extras.get(canonical_name(name.strip()))
                    if other is not None and canonical_name(other.name) not in seen:
                        out += self._expand_extra(other, extras, seen)
            else:
                out.append(requirement)
        return out

    def _project_name(self) -> str | None:
        project = self.pyproject.get("project")
        if isinstance(project, dict) and isinstance(project.get("name"), str):
            return canonical_name(project["name"])
        poetry = table_at(self.pyproject, "tool", "poetry")
        if poetry is not None and isinstance(poetry.get("name"), str):
            return canonical_name(poetry["name"])
        if self.setup_cfg is not None and self.setup_cfg.has_option("metadata", "name"):
            return canonical_name(self.setup_cfg.get("metadata", "name"))
        if self.setup_py is not None and self.setup_py.name:
            return canonical_name(self.setup_py.name)
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
            for requirement in requirements_in_file(self.root / name, self.root, set()):
                self._provide(requirement, name, name)
        return args

    def _group_args(self) -> list[str]:
        groups = self.pyproject.get("dependency-groups")
        if not isinstance(groups, dict):
            return []
        by_norm = {canonical_name(k): k for k in groups}
        name = next((by_norm[n] for n in TEST_EXTRAS if n in by_norm), None)
        if name is None:
            self._drop(
                "dependency group",
                f"[dependency-groups] has no {', '.join(TEST_EXTRAS[:-1])} or "
                f"{TEST_EXTRAS[-1]} group",
                "pyproject.toml",
            )
            return []
        requirements = expand_group(groups, name, set())
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
        elif table_at(self.pyproject, "tool", "ruff") is not None:
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
            files = comma_list(ini.get("mypy", "files", fallback="")) if ini else []
            why = f"{source} exists"
        elif (mypy := table_at(self.pyproject, "tool", "mypy")) is not None:
            source, why = "pyproject.toml", "pyproject.toml has [tool.mypy]"
            value = mypy.get("files")
            files = (
                comma_list(value)
                if isinstance(value, str)
                else [f for f in value if isinstance(f, str)]
                if isinstance(value, list)
                else []
            )
        elif self.setup_cfg is not None and self.setup_cfg.has_section("mypy"):
            source, why = "setup.cfg", "setup.cfg has [mypy]"
            files = comma_list(self.setup_cfg.get("mypy", "files", fallback=""))
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
            named = [c for c in candidates if canonical_name(c.rsplit("/", 1)[-1]) == own]
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
        command = PYTEST_COMMAND
        named = self._uncollected_test_files()
        if named:
            command = " ".join([PYTEST_COMMAND, *map(shlex.quote, named)])
            why += (
                f"; {', '.join(named)} named on the command line (pytest's default file "
                "patterns, test_*.py and *_test.py, collect none of its tests)"
            )
        self._keep("tests", f"`{command}`: {why}{self._installs('pytest')}", source)
        return Check("tests", command, TESTS_TIMEOUT_S), "pytest"

    def _uncollected_test_files(self) -> list[str]:
        """Test modules in a tests directory that pytest's default patterns miss (decorator's
        tests/test.py), when the directory has none it would collect; pytest runs a file named
        on its command line whatever its name."""
        if self._pytest_configured():
            return []
        for name in TEST_DIRS:
            directory = self.root / name
            if not directory.is_dir() or directory.is_symlink():
                continue
            modules = sorted(p for p in directory.glob("*.py") if p.is_file())
            if any(_COLLECTED_FILE.fullmatch(p.name) for p in directory.rglob("*.py")):
                return []
            named = [
                p.relative_to(self.root).as_posix()
                for p in modules
                if p.name.startswith("test") and _has_tests(p)
            ]
            if named:
                return named
        return []

    def _pytest_configured(self) -> bool:
        """Whether the project says which files pytest collects (then it knows best)."""
        return bool(
            table_at(self.pyproject, "tool", "pytest")
            or self._is_file("pytest.ini")
            or (self.tox_ini is not None and self.tox_ini.has_section("pytest"))
            or (self.setup_cfg is not None and self.setup_cfg.has_section("tool:pytest"))
        )

    def _pytest_signal(self) -> tuple[str, str] | None:
        """Why we think the project uses pytest, and the file (or directory) that says so."""
        if table_at(self.pyproject, "tool", "pytest") is not None:
            table = "[tool.pytest.ini_options]"
            if table_at(self.pyproject, "tool", "pytest", "ini_options") is None:
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
            r"\bpy\.?test\b", read_project_file(self.root / "tox.ini", self.root)
        ):
            return "tox.ini mentions pytest", "tox.ini"
        for name in TEST_DIRS:
            if (self.root / name).is_dir():
                return f"{name}/ exists (pytest also runs unittest tests)", f"{name}/"
        for package in self._package_dirs():
            for name in TEST_DIRS:
                inner = self.root / package / name
                if inner.is_dir() and any(
                    _COLLECTED_FILE.fullmatch(p.name) for p in inner.rglob("*.py")
                ):
                    where = f"{package}/{name}/"
                    return f"{where} holds the tests (pytest also runs unittest tests)", where
        if "pytest" in self.provided:
            source, file = self.provided["pytest"]
            return f"{source} installs pytest", file
        return None

    def _installs(self, tool: str) -> str:
        found = self.provided.get(canonical_name(tool))
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
            f"{why}: {backend} reads the version from git, and sidecars have no git history; "
            f"{how}{note}",
            source,
        )
        return ((SCM_ENV, version),)

    def _scm_backend(self) -> tuple[str, str, str] | None:
        """The git-versioning plugin the build uses, why we think so, and the file."""
        if table_at(self.pyproject, "tool", "setuptools_scm") is not None:
            return "setuptools_scm", "pyproject.toml has [tool.setuptools_scm]", "pyproject.toml"
        requires = table_at(self.pyproject, "build-system") or {}
        for requirement in requires.get("requires") or []:
            name = requirement_name(requirement) if isinstance(requirement, str) else None
            if name in ("setuptools-scm", "hatch-vcs", "versioningit"):
                return (
                    name.replace("setuptools-scm", "setuptools_scm"),
                    f"pyproject.toml [build-system] requires {requirement}",
                    "pyproject.toml",
                )
        hatch = table_at(self.pyproject, "tool", "hatch", "version")
        if hatch is not None and hatch.get("source") == "vcs":
            why = 'pyproject.toml has [tool.hatch.version] source = "vcs"'
            return "hatch-vcs", why, "pyproject.toml"
        if table_at(self.pyproject, "tool", "versioningit") is not None:
            return "versioningit", "pyproject.toml has [tool.versioningit]", "pyproject.toml"
        if self.setup_cfg is not None:
            for requirement in cfg_list(
                self.setup_cfg.get("options", "setup_requires", fallback="")
            ):
                if requirement_name(requirement) == "setuptools-scm":
                    return "setuptools_scm", "setup.cfg setup_requires setuptools_scm", "setup.cfg"
        if self.setup_py is not None:
            if self.setup_py.use_scm_version:
                return "setuptools_scm", "setup.py passes use_scm_version", "setup.py"
            if any(requirement_name(r) == "setuptools-scm" for r in self.setup_py.setup_requires):
                return "setuptools_scm", "setup.py setup_requires setuptools_scm", "setup.py"
        return None

    def _scm_fallback(self) -> str | None:
        """A fallback version the project configures itself (then no env is needed)."""
        scm = table_at(self.pyproject, "tool", "setuptools_scm") or {}
        if "fallback_version" in scm:
            return "[tool.setuptools_scm] sets fallback_version"
        raw = table_at(self.pyproject, "tool", "hatch", "version", "raw-options") or {}
        if "fallback_version" in raw:
            return "[tool.hatch.version.raw-options] sets fallback_version"
        versioningit = table_at(self.pyproject, "tool", "versioningit") or {}
        if "default-version" in versioningit:
            return "[tool.versioningit] sets default-version"
        return None

    def _pretend_version(self) -> tuple[str, str]:
        pkg_info = self.root / "PKG-INFO"
        if pkg_info.is_file():
            match = re.search(
                r"^Version:\s*(\S+)", read_project_file(pkg_info, self.root), re.MULTILINE
            )
            if match and _VERSION_RE.fullmatch(match[1]):
                return match[1], f"PKG-INFO says Version: {match[1]}"
        tags = git(self.root, "tag", "--list")
        if tags.returncode != 0 or not tags.stdout.strip():
            return "0.0.0", "the repository has no tags"
        nearest = git(self.root, "describe", "--tags", "--abbrev=0")
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
        name = requirement_name(requirement)
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
            parser.read_string(read_project_file(path, self.root), source=name)
        except configparser.Error as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._drop(name, f"cannot be parsed ({first}); its settings are not used", name)
            return None
        return parser

    def _setup_py(self) -> SetupCall | None:
        path = self.root / "setup.py"
        if not path.is_file():
            return None
        try:
            tree = ast.parse(read_project_file(path, self.root), filename="setup.py")
        except (SyntaxError, ValueError) as err:
            self._drop(
                "setup.py", f"cannot be parsed ({err}); its settings are not used", "setup.py"
            )
            return None
        return read_setup_call(tree)


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
