"""The init corpus: real projects from PyPI configured by the real `microbuild init` (no
hand-written microbuild.toml), validated clean, then given one bug per runner family they have
(a pytest or unittest assertion, a doctest Expected/Got mismatch, a ruff-fixable unused import,
a mypy type error) to see whether the report names, locates and classifies it.

Shared by tests/test_init_corpus.py and `benchmarks/report.py --init-corpus`. Where the report
corpus (tests/corpus.py) measures the report on checks we wrote, this one measures the whole
path an agent takes: init's distillation of the project's CI, tox, nox or pyproject files, then
validate. The expected checks and the expected report are what a correct microbuild does;
`defect` fields name the known defects of today's microbuild that make a case fail (the test
marks those cases strict xfail, so a fix turns them into failures to unmark).

The only edits to init's output are harness policy, not checks: the sidecar's memory limit, a
cap on each check's timeout (a hung check must not eat the corpus' time budget) and, where the
newest ruff or mypy fails the project's clean code, the tool pinned to a release of the
project's time. Every project's own tests pass in a sandbox without network: where a clean
tree fails, a microbuild defect is the cause, and `baseline_defect` names it.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__:  # tests/ became a package
    from . import corpus, realproject
else:
    import corpus
    import realproject

RealProject = realproject.RealProject
Expected = corpus.Expected

SIDECAR_MEMORY = corpus.SIDECAR_MEMORY
CHECK_TIMEOUT_CAP_S = 240
INIT_TIMEOUT_S = 120.0
DOCTEST_EXPECTED = "corpus-expected"
DOCTEST_GOT = "corpus-got"
UNUSED_MODULE = "colorsys"
"""A stdlib module none of the corpus imports: its import is F401 (unused), fixable by ruff."""

CHECK_OF = {"assertion": "tests", "doctest": "tests", "lint": "lint", "types": "types"}


@dataclass(frozen=True)
class Injection:
    """One bug for one runner family: where it goes, and the defect that hides it today."""

    kind: str
    """`assertion` (in a test), `doctest` (a new docstring example), `lint` (F401),
    `types` (a mypy return-value error)."""
    file: str
    target: str = ""
    in_check: str = ""
    """The check that must report it, when not the family's usual one (`pre-commit.ruff`)."""
    """assertion: the test (`test_name` or `Class.test_name`, a plain unparametrized test);
    doctest: the module's import name (doctest ids are `module.function`)."""
    defect: str = ""
    """Why today's microbuild gets this case wrong (the test's strict xfail reason): set only
    where the case fails today, so that a fix of the project's other defects leaves it be."""

    @property
    def check(self) -> str:
        return self.in_check or CHECK_OF[self.kind]


@dataclass(frozen=True)
class InitProject:
    """A pinned sdist, the checks a correct `init` gives it, and its injections."""

    spec: RealProject
    families: tuple[str, ...]
    """The runner and config families it is in the corpus for (the table's column)."""
    checks: dict[str, str]
    """Check name -> a regex its command must match (`re.search`), in init's order."""
    injections: tuple[Injection, ...]
    init_defect: str = ""
    """Why today's init writes other checks than `checks` (strict xfail of that case)."""
    baseline_defect: str = ""
    """Why today's validate of the clean tree does not pass."""
    pins: tuple[str, ...] = ()
    """Tool versions of the project's time, put in place of the bare `ruff` / `mypy` that
    init installs: the newest releases add rules and checks their code predates (a drift no
    init can know of without a lock file), which would fail the clean tree before any bug."""
    memory: str = SIDECAR_MEMORY
    """The sidecar's memory limit (the snapshot setup runs under it too)."""
    gitignore: tuple[str, ...] = ()
    """Files the sdist has and the project's repository ignores (generated at build time):
    written to a committed .gitignore, as the project's own checkout has it."""
    init_args: tuple[str, ...] = ()
    """Options of `microbuild init` (`--no-ci`: the project's files alone)."""
    label: str = ""
    """The corpus' name for it, where the same sdist is in twice (other `init_args`)."""

    @property
    def name(self) -> str:
        return self.label or self.spec.name


def _p(name: str, version: str) -> RealProject:
    return RealProject(name=name, version=version)


AS_ROOT = (
    "issue 13: commands in a namespace sidecar run as root (no user namespace): filelock's"
    " test_mtime_zero_exit_branch[UnixFileLock-PermissionError] expects a PermissionError that"
    " root never gets"
)

PYPROJECT_API_STDERR = (
    "not investigated: 1 of 59 tests fails in the sidecar, tests/test_frontend_setuptools.py::"
    "test_result_missing (`assert 'Traceback' in exc.err`: the backend's stderr comes back"
    " empty)"
)

PRE_COMMIT_CHECKS = {
    "pre-commit.ruff": r"^ruff check --no-fix\b",
    "pre-commit.black": r"^black --check\b",
    "pre-commit.check-json": r"\bcheck-json$",
    "pre-commit.check-toml": r"\bcheck-toml$",
    "pre-commit.check-yaml": r"\bcheck-yaml$",
    "pre-commit.debug-statements": r"\bdebug-statement-hook$",
}
"""The hooks of termcolor's and humanize's .pre-commit-config.yaml that run offline."""

PROJECTS: dict[str, InitProject] = {
    "pluggy": InitProject(
        spec=_p("pluggy", "1.5.0"),
        families=("GitHub Actions", "tox.ini", "pytest"),
        checks={"tests": r"\bpytest\b"},
        injections=(Injection("assertion", "testing/test_helpers.py", "test_varnames_default"),),
    ),
    "termcolor": InitProject(
        spec=_p("termcolor", "2.5.0"),
        families=("GitHub Actions", "tox.ini", "pre-commit", "ruff fix=true", "pytest"),
        checks={
            **PRE_COMMIT_CHECKS,
            "pre-commit.mypy": r"^mypy --strict\b",
            "tests": r"\bpytest\b",
        },
        injections=(
            Injection("assertion", "tests/test_termcolor.py", "test_sanity"),
            Injection("lint", "src/termcolor/termcolor.py", in_check="pre-commit.ruff"),
        ),
    ),
    # The same sdist, init told to ignore its CI: ruff from [tool.ruff], which says `fix = true`.
    "termcolor-no-ci": InitProject(
        spec=_p("termcolor", "2.5.0"),
        families=("pyproject only (init --no-ci)", "ruff fix=true", "pytest"),
        checks={"lint": r"\bruff check\b", "tests": r"\bpytest\b"},
        injections=(Injection("lint", "src/termcolor/termcolor.py"),),
        init_args=("--no-ci",),
        label="termcolor-no-ci",
        # The ruff of its .pre-commit-config.yaml.
        pins=("ruff==0.6.9",),
    ),
    "humanize": InitProject(
        spec=_p("humanize", "4.12.3"),
        families=("GitHub Actions", "tox.ini", "pre-commit", "mypy pretty", "pytest"),
        checks={**PRE_COMMIT_CHECKS, "types": r"\bmypy \.$", "tests": r"\bpytest\b"},
        injections=(
            Injection("assertion", "tests/test_number.py", "test_intword_powers"),
            Injection("lint", "src/humanize/number.py", in_check="pre-commit.ruff"),
            Injection("types", "src/humanize/number.py"),
        ),
        # hatch-vcs writes it at build time; the project's .gitignore has it.
        gitignore=("src/humanize/_version.py",),
    ),
    "filelock": InitProject(
        spec=_p("filelock", "3.20.0"),
        families=("tox.toml", "dependency groups", "mypy", "pytest"),
        # tox.toml's env_list: type, pkg_meta, 3.x (the host's Python).
        checks={
            "types": r"\bmypy src/filelock\b.*\bmypy tests\b",
            "build": r"\buv build\b.*\btwine check\b",
            "tests": r"\bpytest\b.*--cov-config \./pyproject\.toml",
        },
        injections=(
            Injection("assertion", "tests/test_error.py", "test_timeout_str"),
            Injection("types", "src/filelock/_util.py"),
        ),
        baseline_defect=AS_ROOT,
        # hatch-vcs writes it at build time; the project's .gitignore (not in the sdist) has it.
        gitignore=("src/filelock/version.py",),
        # pip backtracks through a dozen virtualenv releases (the newest need a newer
        # filelock than this one) and holds them in memory: 512 MiB kills it.
        memory="1GiB",
    ),
    "tabulate": InitProject(
        spec=_p("tabulate", "0.9.0"),
        families=("CircleCI", "tox.ini", "pytest", "doctest (--doctest-modules)"),
        checks={"build": r"\bbuild\b", "tests": r"\bpytest\b.*--doctest-modules"},
        # setuptools-scm writes it at build time; the project's .gitignore has it.
        gitignore=("tabulate/version.py",),
        injections=(
            Injection("assertion", "test/test_api.py", "test_tabulate_formats"),
            Injection(
                "doctest",
                "tabulate/__init__.py",
                "tabulate",
            ),
        ),
    ),
    "decorator": InitProject(
        spec=_p("decorator", "5.2.1"),
        families=("pyproject only", "unittest TestCase in tests/test.py"),
        checks={"tests": r"tests/test\.py|\bunittest\b"},
        injections=(Injection("assertion", "tests/test.py", "DocumentationTestCase.test"),),
    ),
    "simplejson": InitProject(
        spec=_p("simplejson", "3.20.1"),
        families=("setup.py only", "unittest in the package (simplejson/tests)"),
        checks={"tests": r"\bunittest\b|\bpytest\b"},
        injections=(
            Injection(
                "assertion",
                "simplejson/tests/test_decode.py",
                "TestDecode.test_decimal",
            ),
        ),
    ),
    "more-itertools": InitProject(
        spec=_p("more-itertools", "10.5.0"),
        families=("GitHub Actions", "Makefile", "tox.ini", "unittest", "doctest (DocTestSuite)"),
        checks={"tests": r"\bunittest\b"},
        injections=(
            Injection(
                "assertion",
                "tests/test_more.py",
                "ChunkedTests.test_even",
            ),
            Injection(
                "doctest",
                "more_itertools/more.py",
                "more_itertools.more",
            ),
        ),
    ),
    "pyproject_api": InitProject(
        spec=_p("pyproject_api", "1.9.1"),
        families=("GitHub Actions", "tox.ini {posargs}/{work_dir}", "pytest"),
        # tox.ini's env_list: the host's Python's env and `build` (uv build, then twine).
        checks={"build": r"\buv build\b", "tests": r"^(?!.*[{}]).*\bpytest\b"},
        injections=(Injection("assertion", "tests/test_version.py", "test_version"),),
        # hatch-vcs writes it at build time; the project's .gitignore has it.
        gitignore=("src/pyproject_api/_version.py",),
        baseline_defect=PYPROJECT_API_STDERR,
    ),
    "exceptiongroup": InitProject(
        spec=_p("exceptiongroup", "1.2.2"),
        families=("pyproject [tool.tox] legacy_tox_ini", "pytest"),
        # The legacy ini's envlist runs `python -m pytest` (its typing envs are a label only).
        checks={"tests": r"^python -m pytest$"},
        injections=(Injection("assertion", "tests/test_catch.py", "test_catch_ungrouped"),),
    ),
    "six": InitProject(
        spec=_p("six", "1.17.0"),
        families=("setup.cfg [tool:pytest]", "pytest"),
        checks={"tests": r"\bpytest\b"},
        injections=(Injection("assertion", "test_six.py", "test_integer_types"),),
    ),
    "jsonschema": InitProject(
        spec=_p("jsonschema", "4.23.0"),
        families=("GitHub Actions", "noxfile.py", "ruff", "mypy", "virtue (unittest)"),
        # The workflow's nox sessions (style, typing, build, tests) and its pre-commit hooks.
        checks={
            "lint": r"^ruff check \.$",
            "pre-commit.check-ast": r"\bcheck-ast$",
            "pre-commit.check-json": r"\bcheck-json$",
            "pre-commit.check-toml": r"\bcheck-toml$",
            "pre-commit.check-vcs-permalinks": r"\bcheck-vcs-permalinks$",
            "pre-commit.check-yaml": r"\bcheck-yaml$",
            "pre-commit.debug-statements": r"\bdebug-statement-hook$",
            "pre-commit.ruff": r"\bruff check --no-fix\b",
            "pre-commit.isort": r"\bisort --check-only\b",
            "types": r"^mypy --config pyproject\.toml jsonschema$",
            "build": r"^python -m build --no-isolation \. --outdir \.nox/tmp && twine check",
            "tests": r"^virtue jsonschema$",
        },
        injections=(
            Injection(
                "assertion",
                "jsonschema/tests/test_validators.py",
                "TestCreateAndExtend.test_attrs",
            ),
            Injection("lint", "jsonschema/_utils.py"),
        ),
        # mypy 1.11 (its time); today's finds a return-value error in validators.py.
        pins=("ruff==0.5.0", "mypy==1.11.0"),
    ),
}


def cases() -> list[tuple[str, Injection]]:
    return [(name, inj) for name, project in PROJECTS.items() for inj in project.injections]


# -- checkout, init, baseline ----------------------------------------------------------------


@dataclass
class Prepared:
    """A checkout configured by init, and the clean tree's validate."""

    project: InitProject
    root: Path
    state: Path
    init: dict[str, Any]
    """`microbuild init --json`'s document (empty when init failed: see `error`)."""
    checks: dict[str, str] = field(default_factory=dict)
    """The written configuration's checks: name -> command."""
    baseline: corpus.Validated | None = None
    error: str = ""


def _harness_policy(text: str, project: InitProject) -> str:
    """init's microbuild.toml with the corpus' sidecar memory, timeout cap and tool pins (not
    checks)."""
    lines = text.splitlines(keepends=True)
    for pin in project.pins:
        tool = re.escape(re.split(r"[=<>]", pin, maxsplit=1)[0])
        count = 0
        for i, line in enumerate(lines):
            if "pip install" in line:  # the setup's installs, never a check's command
                lines[i], n = re.subn(rf"(?<= ){tool}(?=[ \"])", pin, line)
                count += n
        if count != 1:
            raise AssertionError(f"init's setup installs {pin} {count} times, not once:\n{text}")
    text = "".join(lines)

    def cap(match: re.Match[str]) -> str:
        return f"timeout_s = {min(int(match[1]), CHECK_TIMEOUT_CAP_S)}"

    text = re.sub(r"^timeout_s = (\d+)$", cap, text, flags=re.M)
    memory = f"memory = {json.dumps(project.memory)}"
    if re.search(r"^\[sidecar\]$", text, flags=re.M):
        text = re.sub(r"^\[sidecar\]$", f"[sidecar]\n{memory}", text, count=1, flags=re.M)
    else:
        text += f"\n[sidecar]\n{memory}\n"
    tomllib.loads(text)  # still valid TOML
    return text


def prepare(project: InitProject, base: Path) -> Prepared:
    """Checkout, `microbuild init --json`, the harness policy, commit, validate the clean tree.

    Never raises for what microbuild does (an init or validate that fails is recorded in
    `error`): the tests judge that; it raises only for the harness (download, git)."""
    root = realproject.checkout_spec(project.spec, base / "src" / project.name)
    realproject.check_index_reachable(project.spec)
    if project.gitignore:
        (root / ".gitignore").write_text("".join(f"/{p}\n" for p in project.gitignore))
        realproject.git(root, "rm", "-q", "--cached", "--ignore-unmatch", "--", *project.gitignore)
        realproject.git(root, "add", ".gitignore")
        realproject.git(root, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "ignore")
    state = base / "state"
    prepared = Prepared(project, root, state, {})
    args = ("init", "--json", *project.init_args)
    proc = corpus.microbuild(state, root, *args, timeout=INIT_TIMEOUT_S)
    if proc.returncode != 0:
        prepared.error = f"init exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        return prepared
    prepared.init = json.loads(proc.stdout)
    path = root / "microbuild.toml"
    path.write_text(_harness_policy(path.read_text(), project))
    config = tomllib.loads(path.read_text())
    prepared.checks = {c["name"]: c["command"] for c in config.get("check", [])}
    realproject.git(root, "add", "microbuild.toml")
    realproject.git(root, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "microbuild init")
    try:
        prepared.baseline = corpus.validate(state, root, timeout=corpus.BUILD_TIMEOUT_S)
    except AssertionError as exc:  # validate without a JSON document
        prepared.error = str(exc)
    return prepared


def cleanup(prepared: Prepared) -> None:
    corpus.destroy_sidecars(prepared.state, prepared.root)
    shutil.rmtree(prepared.root, ignore_errors=True)


# -- injections ------------------------------------------------------------------------------


def _module_of(rel: str) -> str:
    """`a/b/c.py` -> `a.b.c` (what unittest names a test module by)."""
    return rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _runner(prepared: Prepared) -> str:
    """The tests check's runner: `unittest` where its command says so, else `pytest` (also
    when init wrote no tests check: a correct init for the unittest-only projects may write
    either, and their ids are then unittest's)."""
    command = prepared.checks.get("tests", "")
    if not command:
        return "unittest"
    return "unittest" if re.search(r"\bunittest\b|\bvirtue\b|\btrial\b", command) else "pytest"


def _assertion(prepared: Prepared, inj: Injection, originals: dict[Path, bytes]) -> Expected:
    path = prepared.root / inj.file
    line, indent = corpus._body_start(path.read_text(), inj.target)
    if "." in inj.target:  # a TestCase method: unittest's assertion
        # Double quotes: the quote style most linters ask for (the message is repr's).
        statement = f"self.assertEqual({json.dumps(DOCTEST_GOT)}, {json.dumps(DOCTEST_EXPECTED)})"
        message = f"{DOCTEST_GOT!r} != {DOCTEST_EXPECTED!r}"
    else:
        statement = "assert [1, 2, 3] == [1, 2, 4]"
        message = "At index 2 diff: 3 != 4"  # pytest's explanation, as CI's log shows it
    corpus._insert(path, line, [indent + statement], originals)
    if _runner(prepared) == "unittest":
        test_id = f"{_module_of(inj.file)}.{inj.target}"
    else:
        test_id = f"{inj.file}::{inj.target.replace('.', '::')}"
    words = (message,) if "." in inj.target else (statement, message)
    return Expected(
        inj.check, "code", ids=(test_id,), locations=(f"{inj.file}:{line}",), words=words
    )


def _doctest(prepared: Prepared, inj: Injection, originals: dict[Path, bytes]) -> Expected:
    path = prepared.root / inj.file
    first = corpus._append(
        path,
        [
            "def _corpus_doctest() -> None:",
            '    """Injected by the init corpus.',
            "",
            f"    >>> print({json.dumps(DOCTEST_GOT)})",
            f"    {DOCTEST_EXPECTED}",
            '    """',
        ],
        originals,
    )
    example = first + 3
    name = f"{inj.target}._corpus_doctest"
    test_id = name if _runner(prepared) == "unittest" else f"{inj.file}::{name}"
    return Expected(
        inj.check,
        "code",
        ids=(test_id,),
        locations=(f"{inj.file}:{example}",),
        words=(DOCTEST_EXPECTED, DOCTEST_GOT),
    )


def _lint(prepared: Prepared, inj: Injection, originals: dict[Path, bytes]) -> Expected:
    path = prepared.root / inj.file
    where = corpus._after_imports(path.read_text())
    line = corpus._insert(path, where, [f"import {UNUSED_MODULE}"], originals)
    return Expected(inj.check, "code", ids=("F401",), locations=(f"{inj.file}:{line}",))


def _types(prepared: Prepared, inj: Injection, originals: dict[Path, bytes]) -> Expected:
    path = prepared.root / inj.file
    lines = ["def _corpus_type_error() -> int:", f"    return {json.dumps(corpus.MARK)}"]
    first = corpus._append(path, lines, originals)
    return Expected(
        inj.check,
        "code",
        ids=("return-value",),
        locations=(f"{inj.file}:{first + 1}",),
        words=('"str"', '"int"'),
    )


INJECT = {"assertion": _assertion, "doctest": _doctest, "lint": _lint, "types": _types}


def inject(prepared: Prepared, inj: Injection) -> corpus.Applied:
    """Apply `inj` to the working tree (reverted with `Applied.revert`)."""
    applied = corpus.Applied(prepared.project.name, inj.kind, Expected(inj.check, "code"))
    try:
        applied.expected = INJECT[inj.kind](prepared, inj, applied.originals)
    except BaseException:
        applied.revert()
        raise
    return applied


# -- judging ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One injection's validate, judged, with the token figures of `validate --json`."""

    project: str
    injection: Injection
    verdict: corpus.Verdict
    tokens: dict[str, Any]

    @property
    def check_tokens(self) -> int | None:
        """`tokens.checks` (the checks' own output), where this microbuild reports it."""
        value = self.tokens.get("checks")
        return int(value) if value is not None else None

    def to_json(self) -> dict[str, Any]:
        data = self.verdict.to_json()
        data["kind_injected"] = self.injection.kind
        data["file"] = self.injection.file
        data["defect"] = self.injection.defect
        data["check_tokens"] = self.check_tokens
        data["families"] = list(PROJECTS[self.project].families)
        return data


def run_case(prepared: Prepared, inj: Injection) -> Case:
    """Inject, validate, revert (the tree is clean again), and judge the report."""
    applied = inject(prepared, inj)
    try:
        validated = corpus.validate(prepared.state, prepared.root)
    finally:
        applied.revert()
    status = realproject.git(prepared.root, "status", "--porcelain")
    if status:
        raise AssertionError(f"the injection was not reverted: {status}")
    verdict = corpus.judge(applied, validated)
    return Case(prepared.project.name, inj, verdict, dict(validated.result.get("tokens") or {}))


def init_problems(prepared: Prepared) -> list[str]:
    """How init's checks differ from what a correct init writes for the project."""
    expected = prepared.project.checks
    problems = []
    if prepared.error and not prepared.init:
        return [prepared.error]
    if list(prepared.checks) != list(expected):
        problems.append(f"checks {list(prepared.checks)}, expected {list(expected)}")
    for name, pattern in expected.items():
        command = prepared.checks.get(name)
        if command is not None and not re.search(pattern, command):
            problems.append(f"{name}: {command!r} does not match {pattern!r}")
    return problems


def baseline_problems(prepared: Prepared) -> list[str]:
    """Why the clean tree's validate is not a pass of every check."""
    if prepared.baseline is None:
        return [prepared.error or "no validate"]
    result = prepared.baseline.result
    report = str(result.get("report", ""))
    problems = []
    if not prepared.checks:
        problems.append("no checks to validate")
    if prepared.baseline.exit_code != 0 or result.get("status") != "passed":
        problems.append(f"exit {prepared.baseline.exit_code}, status {result.get('status')}")
    failed = [c["name"] for c in result.get("checks", []) if c.get("status") != "passed"]
    if failed:
        problems.append(f"checks that did not pass: {failed}")
    if problems:
        problems.append("--- report\n" + report)
    return problems
