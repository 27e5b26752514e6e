"""Parsers that turn a check's output into failures as data: which one a check uses, how to run
its command so the tool also writes a machine-readable result, and the parse itself, which never
raises (a hostile or broken artifact falls back to the text, then to the generic parser)."""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from microbuild.report.model import ParseResult
from microbuild.report.parsers import (
    cargo,
    eslint,
    generic,
    gotest,
    jest,
    junit,
    mypy,
    pytest,
    ruff,
    tsc,
    unittest,
)
from microbuild.report.parsers._common import environmental, strip_ansi

__all__ = [
    "PARSER_NAMES",
    "Instrumentation",
    "choose_parser",
    "instrument",
    "parse_output",
    "test_durations",
]

MAX_DURATIONS = 100_000

PARSER_NAMES: tuple[str, ...] = (
    "pytest",
    "unittest",
    "junit",
    "ruff",
    "mypy",
    "gotest",
    "jest",
    "eslint",
    "tsc",
    "cargo",
    "generic",
)

_Parse = Callable[..., ParseResult]
_PARSERS: dict[str, _Parse] = {
    "pytest": pytest.parse,
    "unittest": unittest.parse,
    "junit": junit.parse,
    "ruff": ruff.parse,
    "mypy": mypy.parse,
    "gotest": gotest.parse,
    "jest": jest.parse,
    "eslint": eslint.parse,
    "tsc": tsc.parse,
    "cargo": cargo.parse,
    "generic": generic.parse,
}

_W = r"(?:^|[\s/;&|(=])"
_E = r"(?=$|[\s;&|)])"
_DETECT: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("pytest", re.compile(_W + r"(?:py\.test|pytest)" + _E + r"|-m\s+pytest" + _E)),
    ("unittest", re.compile(r"-m\s+unittest" + _E + r"|" + _W + r"(?:virtue|trial)" + _E)),
    ("ruff", re.compile(_W + r"ruff\s+check" + _E)),
    ("mypy", re.compile(_W + r"d?mypy" + _E + r"|-m\s+mypy" + _E)),
    ("gotest", re.compile(_W + r"go\s+test" + _E + r"|" + _W + r"gotestsum" + _E)),
    ("jest", re.compile(_W + r"jest" + _E)),
    ("eslint", re.compile(_W + r"eslint" + _E)),
    ("tsc", re.compile(_W + r"(?:vue-)?tsc" + _E)),
    ("cargo", re.compile(_W + r"cargo\s+(?:\+\S+\s+)?(?:test|nextest)" + _E)),
)

_MAX_LOG = 64 * 1024 * 1024


@dataclass(frozen=True)
class Instrumentation:
    """How to run a check's command so the tool also writes a machine-readable result."""

    command: str
    env: dict[str, str] = field(default_factory=dict)
    artifact: str | None = None
    """Absolute path inside the sidecar where the tool writes its result, or None."""
    set_env: dict[str, str] = field(default_factory=dict)
    """Variables of microbuild's own, set as they are (`env` holds option lists, appended to
    the check's own value)."""


def choose_parser(command: str, configured: str = "auto") -> str:
    """The configured parser, or the one the command's tool calls for; `generic` when the command
    runs none we know, or several (their outputs would be mixed)."""
    if configured != "auto":
        if configured not in PARSER_NAMES:
            raise ValueError(
                f"unknown parser {configured!r}: use one of auto, {', '.join(PARSER_NAMES)}"
            )
        return configured
    found = [name for name, pattern in _DETECT if pattern.search(command)]
    if found == ["pytest", "mypy"] and re.search(r"--mypy\b", command):
        return "pytest"
    return found[0] if len(found) == 1 else "generic"


def instrument(parser: str, command: str, artifact_dir: str) -> Instrumentation:
    """The command, environment and artifact path for `parser`. Only additions that leave the
    human-readable output as it was and cannot break the command: an environment variable for
    pytest, an output file for a plain jest invocation; otherwise the command runs unchanged."""
    if parser not in PARSER_NAMES:
        raise ValueError(f"unknown parser {parser!r}: use one of {', '.join(PARSER_NAMES)}")
    base = artifact_dir.rstrip("/") or "/"
    if parser == "pytest":
        path = f"{base}/junit.xml"
        addopts = f"--junitxml={shlex.quote(path)} -o junit_family=xunit1"
        return Instrumentation(command=command, env={"PYTEST_ADDOPTS": addopts}, artifact=path)
    if parser == "ruff":
        return Instrumentation(command=_RUFF_CHECK.sub(_no_fix, command))
    if parser == "mypy":
        return Instrumentation(command=_MYPY.sub(_unwrapped, command))
    if parser == "unittest":
        shimmed = _UNITTEST_MAIN.sub(r'\g<python> -c "$MICROBUILD_UNITTEST_SHIM"', command)
        if shimmed != command:
            path = f"{base}/unittest.xml"
            return Instrumentation(
                command=shimmed,
                artifact=path,
                set_env={
                    "MICROBUILD_UNITTEST_SHIM": unittest_shim(),
                    "MICROBUILD_UNITTEST_XML": path,
                },
            )
    if parser == "jest" and _plain_jest(command):
        path = f"{base}/jest.json"
        return Instrumentation(
            command=f"{command} --json --outputFile={shlex.quote(path)}", env={}, artifact=path
        )
    return Instrumentation(command=command, env={}, artifact=None)


# A linter's check never rewrites the tree: `fix = true` in the project's config, or `--fix` on
# the line, would make a lint failure pass. ruff takes the last of --fix/--no-fix.
_RUFF_CHECK = re.compile(r"(?:^|(?<=[\s;&|(/]))ruff\s+check(?P<args>(?:\s+(?!--\s)[^\s;&|()]+)*)")
_FIX_FLAGS = re.compile(r"\s+--(?:fix|no-fix|unsafe-fixes|fix-only)(?=\s|$)")
# mypy's `pretty = true` wraps messages and hides error codes; flags on the line beat config,
# and a `--pretty` of the line's own is dropped (the last flag would win).
_MYPY = re.compile(
    r"(?P<mypy>(?:^|(?<=[\s;&|(/]))mypy|(?:^|(?<=\s))-m\s+mypy)(?=$|\s)"
    r"(?P<args>(?:\s+(?!--\s)[^\s;&|()]+)*)"
)
_PRETTY = re.compile(r"\s+--pretty(?=\s|$)")


def _unwrapped(match: re.Match[str]) -> str:
    return f"{match['mypy']} --no-pretty --show-error-codes{_PRETTY.sub('', match['args'])}"


def _no_fix(match: re.Match[str]) -> str:
    return "ruff check --no-fix" + _FIX_FLAGS.sub("", match["args"])


# `python -m unittest`, the interpreter's own flags between (`python3 -W error -m unittest`);
# never another tool's `-m` (`coverage run -m unittest`).
_UNITTEST_MAIN = re.compile(
    r"(?P<python>(?:^|(?<=[\s;&|(]))(?:[\w.+-]*/)*(?:python|pypy)[\d.]*"
    r"(?:\s+-[bBdEiIOqsSuvR]+|\s+-[WX]\s*[^\s;&|()]+)*)\s+-m\s+unittest(?=$|[\s;&|)])"
)


@functools.cache
def unittest_shim() -> str:
    """The source of microbuild/report/unittest_shim.py, run by the check's own interpreter."""
    return (Path(__file__).parent.parent / "unittest_shim.py").read_text(encoding="utf-8")


def _plain_jest(command: str) -> bool:
    """Whether flags appended to `command` reach jest: one simple command that runs jest itself,
    not a script, a pipeline, or a jest already told where to write JSON."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return False
    if not tokens or any(t and set(t) <= set(";&|()<>") for t in tokens):
        return False
    if any(t.startswith(("--json", "--outputFile", "--watch")) for t in tokens):
        return False
    while tokens and re.fullmatch(r"\w+=.*", tokens[0]):
        tokens.pop(0)
    if tokens and tokens[0] in ("npx", "yarn", "pnpm", "bunx"):
        tokens.pop(0)
        while tokens and tokens[0].startswith("-"):
            tokens.pop(0)
    if tokens and tokens[0] == "node" and len(tokens) > 1:
        tokens.pop(0)
    return bool(tokens) and (tokens[0] == "jest" or tokens[0].endswith("/jest"))


def parse_output(
    parser: str, log: str, artifact: bytes | None, *, workspace: str = "/workspace"
) -> ParseResult:
    """Failures in a check's output. Never raises: a parser that cannot read the artifact reads
    the log; one that cannot read the log (or finds nothing it recognises) yields to `generic`."""
    if isinstance(log, bytes | bytearray):
        log = bytes(log).decode("utf-8", "replace")
    elif not isinstance(log, str):
        log = ""
    if len(log) > _MAX_LOG:
        log = log[: _MAX_LOG // 2] + "\n" + log[-_MAX_LOG // 2 :]
    log = strip_ansi(log).replace("\r\n", "\n")
    if artifact is not None and not isinstance(artifact, bytes | bytearray):
        artifact = None
    parse = _PARSERS.get(parser, generic.parse)
    result: ParseResult | None = None
    for given in (artifact, None) if artifact is not None else (None,):
        try:
            result = parse(log, bytes(given) if given is not None else None, workspace=workspace)
            break
        except Exception:
            result = None
    recognised = result is not None and bool(
        result.failures or result.total is not None or result.failed is not None
    )
    if result is None or (not recognised and parse is not generic.parse):
        try:
            fallback = generic.parse(log, None, workspace=workspace)
        except Exception:
            fallback = ParseResult(parser="generic", complete=False)
        if result is None or fallback.failures:
            fallback.complete = fallback.complete and result is not None and result.complete
            result = fallback
    elif not result.failures and parse is not generic.parse:
        try:
            environment = [
                f
                for f in generic.parse(log, None, workspace=workspace).failures
                if f.kind == "environment"
            ]
        except Exception:
            environment = []
        result.failures.extend(environment)
    for failure in result.failures:
        if failure.kind == "code" and environmental(failure.message):
            failure.kind = "environment"
    return result


def test_durations(
    parser: str, artifact: bytes, *, workspace: str = "/workspace"
) -> dict[str, float]:
    """Seconds per test id (the ids the report uses) from a JUnit artifact; empty when the
    artifact cannot be read. Sharding uses them to balance shards."""
    try:
        report = junit.read(artifact)
    except junit.JUnitError:
        return {}
    out: dict[str, float] = {}
    for case in report.cases[:MAX_DURATIONS]:
        if case.time is None or case.outcome == "skipped":
            continue
        if parser == "pytest":
            test = pytest.node_id(case, workspace)[0]
        else:
            test = f"{case.classname}.{case.name}" if case.classname else case.name
        out[test] = out.get(test, 0.0) + case.time
    return out
