"""The report corpus: real projects from PyPI, each with a hand-written `microbuild.toml`, and the
failures injected into their working trees at test time to see what the report makes of them.

Shared by tests/test_report_corpus.py and benchmarks/report.py. A project is checked out once
(`prepare`), validated clean, then for each injection of its plan: `inject` edits the working
tree (never committed) and says what the report must contain (`Expected`), `microbuild validate
--json` runs, `judge` compares, and `Applied.revert` puts the files back byte for byte.

Lines are computed from the project's source with `ast` when injecting, never hard-coded, so a
new pin of a project moves them with it.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__:  # tests/ became a package
    from . import realproject
else:
    import realproject

RealProject = realproject.RealProject

CALL_TIMEOUT_S = 300.0
BUILD_TIMEOUT_S = 900.0
# The host the CLI starts must outlive the gaps between calls; `shutdown` stops it.
HOST_IDLE_EXIT_S = "300"
SIDECAR_MEMORY = "512MiB"
# attrs' 216 tests took 17 s on a loaded 2-core machine: 20 s was too close.
TESTS_TIMEOUT_S = 30
RATIO_TARGET = 5.0
# The tests check's verbosity: `-v`, as CI jobs usually run pytest (one line per test), so the
# raw log is the log an agent would otherwise be handed; `-q` shrinks it to a line of dots.
PYTEST_VERBOSITY = "-v"
MISSING_MODULE = "corpus_missing_dependency"
MARK = "injected by the report corpus"

EXIT_CODE = {"code": 1, "environment": 3}


@dataclass(frozen=True)
class Targets:
    """Where a project's injections go (paths relative to its root)."""

    test_file: str
    test: str
    """A plain test in `test_file` (`Class::test_name` or `test_name`): no parameters, so its
    id is exactly `test_file::test`."""
    library: str
    """A library module the tests import: syntax errors, imports, lint and type findings."""
    function: str
    """A function (`name` or `Class.name`) in `function_file` that the tests call."""
    function_file: str
    import_into: str = ""
    """Where the import of a missing module goes: the library module by default; a test file
    for projects whose lint or types check would flag the import before the tests run."""


@dataclass(frozen=True)
class CorpusProject:
    """A pinned sdist, how its snapshot installs it, its checks and its injection plan."""

    spec: RealProject
    deps: tuple[str, ...]
    tests: str
    """What `python -m pytest -v` runs: the project's test files (a fast subset for the
    big suites, so the check's small timeout holds). No `-x`: a CI job runs the whole suite,
    and its log is what an agent would otherwise be handed."""
    targets: Targets
    plan: tuple[str, ...]
    lint: str | None = None
    """The ruff pin when the project configures ruff (its config passes with that version)."""
    types: str | None = None
    """The mypy pin when the project configures mypy (its config passes with that version)."""

    @property
    def name(self) -> str:
        return self.spec.name

    def commands(self, verbosity: str = PYTEST_VERBOSITY) -> dict[str, str]:
        checks = {}
        if self.lint:
            checks["lint"] = ".venv/bin/ruff check src"
        if self.types:
            checks["types"] = ".venv/bin/mypy src"
        checks["tests"] = f".venv/bin/python -m pytest {verbosity} {self.tests}"
        return checks


def _spec(name: str) -> RealProject:
    return realproject.spec_of(name)


PROJECTS: dict[str, CorpusProject] = {
    "attrs": CorpusProject(
        spec=_spec("attrs"),
        deps=("hypothesis==6.112.1",),
        tests="tests/test_funcs.py tests/test_validators.py",
        targets=Targets(
            test_file="tests/test_funcs.py",
            test="TestAsDict::test_tuple_keys",
            library="src/attr/_funcs.py",
            function="asdict",
            function_file="src/attr/_funcs.py",
        ),
        # No "exception" here: without -x every hypothesis test that hits it shrinks its
        # example, and the run outlasts the small timeout (an environment verdict).
        plan=("assertion", "missing_module", "syntax", "timeout"),
    ),
    "pluggy": CorpusProject(
        spec=_spec("pluggy"),
        deps=(),
        tests="testing",
        targets=Targets(
            test_file="testing/test_helpers.py",
            test="test_varnames_default",
            library="src/pluggy/_hooks.py",
            function="varnames",
            function_file="src/pluggy/_hooks.py",
            import_into="testing/test_helpers.py",
        ),
        plan=("assertion", "types", "missing_module", "memory"),
        types="mypy==1.11.2",
    ),
    "packaging": CorpusProject(
        spec=_spec("packaging"),
        deps=("pretend==1.0.9",),
        tests="tests/test_utils.py tests/test_requirements.py",
        targets=Targets(
            test_file="tests/test_requirements.py",
            test="test_requirement_specifiers_are_independent",
            library="src/packaging/utils.py",
            function="parse_sdist_filename",
            function_file="src/packaging/utils.py",
            import_into="tests/test_utils.py",
        ),
        plan=("lint", "types", "exception", "timeout"),
        lint="ruff==0.17.6",
        types="mypy==2.4.1",
    ),
    "iniconfig": CorpusProject(
        spec=_spec("iniconfig"),
        # Its tests use `py.test.mark`, which only the real `py` library has.
        deps=("py==1.11.0",),
        tests="testing",
        targets=Targets(
            test_file="testing/test_iniconfig.py",
            test="test_parse_empty",
            library="src/iniconfig/__init__.py",
            function="IniConfig.lineof",
            function_file="src/iniconfig/__init__.py",
        ),
        plan=("assertion", "syntax", "missing_module"),
    ),
    "six": CorpusProject(
        spec=RealProject(name="six", version="1.17.0"),
        deps=(),
        tests="test_six.py",
        targets=Targets(
            test_file="test_six.py",
            test="test_integer_types",
            library="six.py",
            function="add_metaclass",
            function_file="six.py",
        ),
        plan=("exception", "syntax", "memory"),
    ),
    # The project of our choice: ruff configured in its pyproject.toml ([tool.ruff.lint]).
    "exceptiongroup": CorpusProject(
        spec=RealProject(name="exceptiongroup", version="1.2.2", scm_version=True),
        deps=(),
        tests="tests",
        targets=Targets(
            test_file="tests/test_catch.py",
            test="test_catch_ungrouped",
            library="src/exceptiongroup/_catch.py",
            function="catch",
            function_file="src/exceptiongroup/_catch.py",
            import_into="tests/test_catch.py",
        ),
        plan=("assertion", "lint", "missing_module"),
        lint="ruff==0.6.9",
    ),
}


# -- checkout and configuration --------------------------------------------------------------


def checkout(project: CorpusProject, dest: Path) -> Path:
    """The pinned sdist unpacked into `dest`/<name>-<version> and committed to a fresh git
    repository (realproject's download cache and git settings; any pin, not only its own)."""
    return realproject.checkout_spec(project.spec, dest)


def _toml(value: str) -> str:
    return json.dumps(value)


def config_text(project: CorpusProject, verbosity: str = PYTEST_VERBOSITY) -> str:
    """The project's microbuild.toml: a venv with the project, its test dependencies and the
    pinned tools of its checks; a modest memory limit and a small tests timeout."""
    spec = project.spec
    tools = [pin for pin in (project.lint, project.types) if pin]
    install = " ".join(
        [
            ".venv/bin/pip install -q --disable-pip-version-check -e .",
            realproject.PYTEST_PIN,
            *project.deps,
            *tools,
        ]
    )
    inputs = ", ".join(_toml(p) for p in realproject.INPUTS)
    lines = [
        "[snapshot]",
        f"setup = [{_toml('python3 -m venv .venv')}, {_toml(install)}]",
        f"inputs = [{inputs}]",
        "",
        "[sidecar]",
        f"memory = {_toml(SIDECAR_MEMORY)}",
    ]
    if spec.scm_version:
        lines.append(f"env = {{ SETUPTOOLS_SCM_PRETEND_VERSION = {_toml(spec.version)} }}")
    for name, command in project.commands(verbosity).items():
        timeout = TESTS_TIMEOUT_S if name == "tests" else 180
        lines += ["", "[[check]]", f"name = {_toml(name)}", f"command = {_toml(command)}"]
        lines.append(f"timeout_s = {timeout}")
    return "\n".join(lines) + "\n"


def prepare(project: CorpusProject, dest: Path, verbosity: str = PYTEST_VERBOSITY) -> Path:
    """A committed checkout with its committed microbuild.toml, ready to validate."""
    root = checkout(project, dest)
    realproject.check_index_reachable(project.spec)
    (root / "microbuild.toml").write_text(config_text(project, verbosity))
    realproject.git(root, "add", "microbuild.toml")
    realproject.git(root, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "microbuild")
    return root


# -- injections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What the report of an injected failure must say."""

    check: str
    kind: str
    ids: tuple[str, ...] = ()
    """Test ids or rules the report must name (the failing tests pytest lists are added from
    the raw log)."""
    locations: tuple[str, ...] = ()
    """`file:line` the report must show."""
    words: tuple[str, ...] = ()
    """Other text it must contain (the cause of an environment failure)."""

    @property
    def exit_code(self) -> int:
        return EXIT_CODE[self.kind]


@dataclass
class Applied:
    """An injection in a working tree: what it expects, and the files' bytes before it."""

    project: str
    injection: str
    expected: Expected
    originals: dict[Path, bytes] = field(default_factory=dict)

    def revert(self) -> None:
        for path, data in self.originals.items():
            path.write_bytes(data)


def _qualified(body: list[ast.stmt], names: list[str]) -> ast.FunctionDef | ast.AsyncFunctionDef:
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name != names[0]:
                continue
            if len(names) == 1 and not isinstance(node, ast.ClassDef):
                return node
            if len(names) > 1 and isinstance(node, ast.ClassDef):
                return _qualified(node.body, names[1:])
    raise LookupError(".".join(names))


def _body_start(source: str, qualname: str) -> tuple[int, str]:
    """The 1-based line of the first statement of a function's body, and its indentation."""
    try:
        node = _qualified(ast.parse(source).body, re.split(r"::|\.", qualname))
    except LookupError:
        raise AssertionError(f"no function {qualname} to inject into") from None
    first = node.body[0]
    line = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))])
    text = source.splitlines()[line - 1]
    return line, text[: len(text) - len(text.lstrip())]


def _after_imports(source: str) -> int:
    """The 1-based line just after the module's last top-level import (or its docstring)."""
    body = ast.parse(source).body
    imports = [n for n in body if isinstance(n, ast.Import | ast.ImportFrom)]
    if imports:
        return (imports[-1].end_lineno or imports[-1].lineno) + 1
    docstring = body[0] if body and isinstance(body[0], ast.Expr) else None
    return (docstring.end_lineno or 1) + 1 if docstring else 1


def _insert(path: Path, line: int, lines: list[str], originals: dict[Path, bytes]) -> int:
    """Insert `lines` before line `line` (1-based) of `path`; returns `line`."""
    data = path.read_bytes()
    originals.setdefault(path, data)
    text = data.decode()
    kept = text.splitlines(keepends=True)
    newline = "\r\n" if kept and kept[0].endswith("\r\n") else "\n"
    if kept and not kept[-1].endswith(("\n", "\r")):
        kept[-1] += newline
    kept[line - 1 : line - 1] = [f"{item}{newline}" for item in lines]
    path.write_text("".join(kept))
    return line


def _append(path: Path, lines: list[str], originals: dict[Path, bytes]) -> int:
    """Append `lines` after two blank lines; returns the 1-based line of the first one."""
    text = path.read_text()
    count = len(text.splitlines())
    return _insert(path, count + 1, ["", "", *lines], originals) + 2


def _test_id(project: CorpusProject) -> str:
    return f"{project.targets.test_file}::{project.targets.test}"


def _in_test(
    project: CorpusProject, root: Path, statements: list[str], originals: dict[Path, bytes]
) -> int:
    """Put `statements` at the top of the target test's body; the line of the first one."""
    path = root / project.targets.test_file
    line, indent = _body_start(path.read_text(), project.targets.test)
    return _insert(path, line, [indent + s for s in statements], originals)


def _assertion(project: CorpusProject, root: Path, originals: dict[Path, bytes]) -> Expected:
    line = _in_test(project, root, ["assert [1, 2, 3] == [1, 2, 4]"], originals)
    where = f"{project.targets.test_file}:{line}"
    return Expected("tests", "code", ids=(_test_id(project),), locations=(where,))


def _exception(project: CorpusProject, root: Path, originals: dict[Path, bytes]) -> Expected:
    target = project.targets
    path = root / target.function_file
    line, indent = _body_start(path.read_text(), target.function)
    # The message in a name (linters forbid literal messages in `raise`), behind an `if` that
    # is always true (type checkers see the rest of the body as reachable).
    statements = [
        f"corpus_message = {json.dumps(MARK)}",
        "if corpus_message:",
        "    raise RuntimeError(corpus_message)",
    ]
    _insert(path, line, [indent + s for s in statements], originals)
    where = f"{target.function_file}:{line + 2}"
    return Expected("tests", "code", locations=(where,), words=("RuntimeError",))


def _syntax(project: CorpusProject, root: Path, originals: dict[Path, bytes]) -> Expected:
    path = root / project.targets.library
    line = _append(path, ["def corpus_broken(:", "    pass"], originals)
    where = f"{project.targets.library}:{line}"
    return Expected("tests", "code", locations=(where,), words=("SyntaxError",))


def _missing_module(project: CorpusProject, root: Path, originals: dict[Path, bytes]) -> Expected:
    rel = project.targets.import_into or project.targets.library
    path = root / rel
    line = _insert(path, _after_imports(path.read_text()), [f"import {MISSING_MODULE}"], originals)
    where = f"{rel}:{line}"
    return Expected("tests", "environment", locations=(where,), words=(MISSING_MODULE,))


def _lint(project: CorpusProject, root: Path, originals: dict[Path, bytes]) -> Expected:
    path = root / project.targets.library
    first = _append(path, ["def _corpus_lint_finding() -> None:", "    unused = 1"], originals)
    where = f"{project.targets.library}:{first + 1}"
    return Expected("lint", "code", ids=("F841",), locations=(where,))


def _types(project: CorpusProject, root: Path, originals: dict[Path, bytes]) -> Expected:
    path = root / project.targets.library
    first = _append(
        path, ["def _corpus_type_error() -> int:", f"    return {json.dumps(MARK)}"], originals
    )
    where = f"{project.targets.library}:{first + 1}"
    return Expected("types", "code", ids=("return-value",), locations=(where,))


def _timeout(project: CorpusProject, root: Path, originals: dict[Path, bytes]) -> Expected:
    _in_test(project, root, ["while True:", "    pass"], originals)
    return Expected("tests", "environment", words=("timed out",))


def _memory(project: CorpusProject, root: Path, originals: dict[Path, bytes]) -> Expected:
    # 64 MiB at a time, zero-filled (so really resident), up to 4 GiB: far past the limit.
    _in_test(project, root, ["hog = [bytearray(64 << 20) for _ in range(64)]"], originals)
    return Expected("tests", "environment", words=("out of memory",))


Inject = Callable[[CorpusProject, Path, dict[Path, bytes]], Expected]
INJECTIONS: dict[str, Inject] = {
    "assertion": _assertion,
    "exception": _exception,
    "syntax": _syntax,
    "missing_module": _missing_module,
    "lint": _lint,
    "types": _types,
    "timeout": _timeout,
    "memory": _memory,
}


def applicable(project: CorpusProject) -> tuple[str, ...]:
    """Every injection the project can take: lint and types only where it has the check, and
    the syntax error only where no lint or types check would report it first."""
    names = [name for name in INJECTIONS if name not in ("lint", "types", "syntax")]
    if project.lint:
        names.append("lint")
    if project.types:
        names.append("types")
    if not (project.lint or project.types):
        names.append("syntax")
    return tuple(names)


def inject(project: CorpusProject, injection: str, root: Path) -> Applied:
    """Apply `injection` to the working tree at `root` (reverted with `Applied.revert`)."""
    applied = Applied(project.name, injection, Expected("tests", "code"))
    try:
        applied.expected = INJECTIONS[injection](project, root, applied.originals)
    except BaseException:
        applied.revert()
        raise
    return applied


def cases(plan: str = "plan") -> list[tuple[str, str]]:
    """(project, injection) pairs: each project's plan, or with `all` every applicable one."""
    return [
        (name, injection)
        for name, project in PROJECTS.items()
        for injection in (project.plan if plan == "plan" else applicable(project))
    ]


# -- running microbuild ----------------------------------------------------------------------


def microbuild(
    state: Path, cwd: Path, *args: str, timeout: float = CALL_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, against the host of `state` (started on demand)."""
    return realproject.run_microbuild(
        state, cwd, *args, timeout=timeout, host_idle_exit=HOST_IDLE_EXIT_S
    )


@dataclass
class Validated:
    """One `validate --json`: its exit code, its document and the raw log of the failed check."""

    exit_code: int
    result: dict[str, Any]
    raw_log: str = ""
    stderr: str = ""


def validate(state: Path, root: Path, timeout: float = CALL_TIMEOUT_S) -> Validated:
    proc = microbuild(state, root, "validate", "--json", timeout=timeout)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            f"validate exited {proc.returncode} without JSON\n--- stdout\n{proc.stdout[-3000:]}"
            f"\n--- stderr\n{proc.stderr[-3000:]}"
        ) from None
    validated = Validated(proc.returncode, result, stderr=proc.stderr)
    logs = []
    for check in result.get("checks", []):
        if check.get("status") not in _NOT_FAILED:
            shown = microbuild(state, root, "runs", "show", result["run"], "--log", check["name"])
            logs.append(shown.stdout)
    validated.raw_log = "\n".join(logs)
    return validated


def destroy_sidecars(state: Path, cwd: Path) -> None:
    listed = microbuild(state, cwd, "sidecar", "list", "-a", "--json")
    if listed.returncode != 0:
        return
    for record in json.loads(listed.stdout):
        microbuild(state, cwd, "sidecar", "destroy", record["id"])


def stop_host(state: Path, cwd: Path, timeout: float = 10) -> None:
    """Stop the host the CLI started for `state`: `host stop`, then its pid from host.json."""
    try:
        pid: int | None = int(json.loads((state / "host.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        pid = None
    if (state / "host.sock").exists():
        microbuild(state, cwd, "host", "stop", timeout=60)
    if pid is None:
        return
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


# -- judging a report ------------------------------------------------------------------------

_PYTEST_SUMMARY = re.compile(r"^(?:FAILED|ERROR) (?P<id>\S+?)(?: - .*)?$", re.M)


def failing_ids(raw_log: str) -> list[str]:
    """The tests pytest itself lists as failed or errored in its short summary."""
    return list(dict.fromkeys(m["id"] for m in _PYTEST_SUMMARY.finditer(raw_log)))


@dataclass
class Verdict:
    """How one report measures up to what its injection expects."""

    project: str
    injection: str
    expected: Expected
    exit_code: int
    kind: str
    ids_expected: list[str]
    ids_found: list[str]
    locations_found: list[str]
    raw_tokens: int
    report_tokens: int
    report: str
    problems: list[str]

    @property
    def ratio(self) -> float:
        return self.raw_tokens / self.report_tokens if self.report_tokens else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "injection": self.injection,
            "check": self.expected.check,
            "kind_expected": self.expected.kind,
            "kind": self.kind,
            "exit_expected": self.expected.exit_code,
            "exit_code": self.exit_code,
            "ids_expected": self.ids_expected,
            "ids_found": self.ids_found,
            "locations_expected": list(self.expected.locations),
            "locations_found": self.locations_found,
            "raw_tokens": self.raw_tokens,
            "report_tokens": self.report_tokens,
            "ratio": round(self.ratio, 2),
            "problems": self.problems,
            "report": self.report,
        }


_NOT_FAILED = ("passed", "skipped")


def _verdict_kind(report: str) -> str:
    first = report.splitlines()[0] if report else ""
    match = re.search(r"— (code|environment)\s*$", first)
    return match.group(1) if match else ""


def _shown_as_group(failure: dict[str, object], report: str) -> bool:
    """Whether a deduplicated entry of the report stands for `failure`: an entry with a count
    at its location, saying the same kind of error."""
    location = str(failure.get("location") or "")
    error = str(failure.get("message") or "").split(":", 1)[0]
    return (
        any(location in line and "\N{MULTIPLICATION SIGN}" in line for line in report.splitlines())
        and bool(location)
        and bool(error)
        and error in report
    )


def judge(applied: Applied, validated: Validated) -> Verdict:
    """Compare a validate of an injected tree with what the injection expects."""
    expected = applied.expected
    result = validated.result
    report = str(result.get("report", ""))
    failures = [f for f in result.get("failures") or [] if f.get("check") == expected.check]
    ids = list(dict.fromkeys([*expected.ids, *failing_ids(validated.raw_log)]))
    # `validate --json` gives the report's entries: each with the ids it stands for (a few,
    # and how many more: variants of one parametrized test past those count in `more_ids`).
    by_id: dict[str, dict[str, Any]] = {}
    for failure in failures:
        for test_id in failure.get("ids") or [failure.get("id")]:
            by_id.setdefault(str(test_id), failure)
    for i in ids:
        family = re.split(r"[\[ ]", i, maxsplit=1)[0]
        for failure in failures:
            if failure.get("more_ids") and str(failure.get("id", "")).startswith(family + "["):
                by_id.setdefault(i, failure)
    # Named: in the report's text, or one of the failures a deduplicated entry of the report
    # stands for (`x40`: the same error at the same place).
    found = [
        i
        for i in ids
        if (i in report and (i in by_id or i in expected.ids))
        or (i in by_id and _shown_as_group(by_id[i], report))
    ]
    locations = [where for where in expected.locations if where in report]
    tokens = result.get("tokens") or {}
    raw, shown = int(tokens.get("raw") or 0), int(tokens.get("report") or 0)
    kind = _verdict_kind(report)
    problems = []
    if validated.exit_code != expected.exit_code:
        problems.append(f"exit {validated.exit_code}, expected {expected.exit_code}")
    failed = [c["name"] for c in result.get("checks", []) if c["status"] not in _NOT_FAILED]
    if failed != [expected.check]:
        problems.append(f"checks that did not pass: {failed}, expected [{expected.check!r}]")
    if kind != expected.kind:
        problems.append(f"verdict kind {kind or '(none)'!r}, expected {expected.kind!r}")
    wrong = sorted({str(f.get("id")) for f in failures if f.get("kind") != expected.kind})
    if wrong:
        problems.append(f"failures classified other than {expected.kind!r}: {wrong}")
    if missed := [i for i in ids if i not in found]:
        problems.append(f"failing ids not named: {missed}")
    if missed := [w for w in expected.locations if w not in locations]:
        problems.append(f"locations not shown: {missed}")
    if missed := [w for w in expected.words if w not in report]:
        problems.append(f"words not in the report: {missed}")
    return Verdict(
        project=applied.project,
        injection=applied.injection,
        expected=expected,
        exit_code=validated.exit_code,
        kind=kind,
        ids_expected=ids,
        ids_found=found,
        locations_found=locations,
        raw_tokens=raw,
        report_tokens=shown,
        report=report,
        problems=problems,
    )
