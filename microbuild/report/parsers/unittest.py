"""unittest (`python -m unittest`, `unittest.main()`, and runners built on its TextTestRunner):
the JUnit XML our shim writes (microbuild/report/unittest_shim.py), else the terminal output.

Every failing test is named by unittest's own id (`tests.test_x.TestFoo.test_bar`, a subtest's
parameters after it), with the project frame it failed in and its assertion."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers import doctest, junit
from microbuild.report.parsers._common import MAX_FAILURES, clip, read_traceback, relpath

_RULE = re.compile(r"^(?:={20,}|-{20,})$")
# 3.11+: `FAIL: test_bar (tests.test_x.TestFoo.test_bar)`; earlier: `(tests.test_x.TestFoo)`;
# a subtest adds ` (i=1)` or ` [message]`; a module that did not import is a `_FailedTest`.
_HEADER = re.compile(
    r"^(?P<kind>FAIL|ERROR|UNEXPECTED SUCCESS): (?P<name>\S+)"
    r"(?: \((?P<where>[\w.]+)\))?(?P<sub> .*)?$"
)
_RAN = re.compile(r"^Ran (?P<n>\d+) tests? in [\d.]+s$")
_VERDICT = re.compile(r"^(?P<ok>OK|FAILED)(?: \((?P<counts>[^)]*)\))?$")
_FAILED_TEST = "unittest.loader._FailedTest."
_FAILED_MODULE = re.compile(r"Failed to import test module: (?P<module>[\w.]+)")
_NO_MODULE = re.compile(r"No module named '(?P<name>[\w.]+)'")


@dataclass
class _Block:
    kind: str
    test_id: str
    lines: list[str] = field(default_factory=list)


def test_id(name: str, where: str | None, sub: str | None) -> str:
    """unittest's id for a header's parts: `module.Class.method`, with a subtest's parameters."""
    if where is None:
        base = name
    elif where.startswith(_FAILED_TEST):
        base = where[len(_FAILED_TEST) :]
    elif where.endswith("." + name) or where == name:
        base = where
    else:
        base = f"{where}.{name}"
    return f"{base}{sub}" if sub else base


def _read_text(log: str) -> tuple[list[_Block], int | None, dict[str, int] | None]:
    blocks: list[_Block] = []
    block: _Block | None = None
    ran: int | None = None
    counts: dict[str, int] | None = None
    lines = log.splitlines()
    for index, raw in enumerate(lines):
        line = raw.rstrip()
        if line.startswith("=" * 20) and index + 1 < len(lines):
            header = _HEADER.match(lines[index + 1].rstrip())
            if header:
                block = _Block(
                    header["kind"], test_id(header["name"], header["where"], header["sub"])
                )
                blocks.append(block)
                continue
        if block is not None and _HEADER.match(line) and block.lines == []:
            continue
        ran_match = _RAN.match(line)
        if ran_match:
            ran = int(ran_match["n"])
            block = None
            continue
        verdict = _VERDICT.match(line)
        if verdict and ran is not None:
            counts = {}
            for part in (verdict["counts"] or "").split(","):
                key, _, value = part.strip().partition("=")
                if value.isdigit():
                    counts[key] = int(value)
            continue
        if block is not None and len(block.lines) < 2000:
            if _RULE.match(line) and not block.lines:
                continue
            if line.startswith("-" * 20) and _ends_block(lines, index):
                block = None
                continue
            block.lines.append(line)
    return blocks, ran, counts


# Twisted trial's format, which virtue shares: `[FAIL]` / `[ERROR]` under a rule, the
# traceback, a blank line, then the ids of the tests that failed so.
_TRIAL_KIND = re.compile(r"^\[(?P<kind>FAIL|ERROR)\]$")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+$")


def _read_trial(log: str) -> list[_Block]:
    lines = log.splitlines()
    blocks: list[_Block] = []
    index = 0
    while index < len(lines):
        kind = _TRIAL_KIND.match(lines[index].strip()) if index else None
        if kind is None or not lines[index - 1].startswith("=" * 20):
            index += 1
            continue
        body: list[str] = []
        index += 1
        while index < len(lines) and not _RULE.match(lines[index].rstrip()):
            body.append(lines[index].rstrip())
            index += 1
        while body and not body[-1].strip():
            body.pop()
        ids: list[str] = []
        while body and _DOTTED.match(body[-1].strip()):
            ids.insert(0, body.pop().strip())
        for test in ids:
            blocks.append(_Block("FAIL" if kind["kind"] == "FAIL" else "ERROR", test, body))
    return blocks


def _ends_block(lines: list[str], index: int) -> bool:
    """Whether the rule at `index` is the one before `Ran N tests` (a doctest's report has
    rules of its own inside the block)."""
    for after in lines[index + 1 : index + 4]:
        if after.strip():
            return bool(_RAN.match(after.strip()))
    return True


def _failure(test: str, kind: str, text: str, file: str | None, workspace: str) -> Failure:
    found = doctest.read(text, workspace)
    if found is not None:
        return Failure(
            id=test, message=found.message, file=found.file, line=found.line, excerpt=found.excerpt
        )
    tb = read_traceback(text, workspace)
    message = tb.message
    if kind == "UNEXPECTED SUCCESS":
        message = "unexpected success: the test is marked expectedFailure but passed"
    failed_import = _FAILED_MODULE.search(text)
    if failed_import:
        missing = _NO_MODULE.search(text)
        message = tb.message or f"ImportError: {failed_import['module']} did not import"
        if missing:
            message = f"{failed_import['module']} did not import: {tb.message}"
    return Failure(
        id=test,
        message=clip(message or kind.lower()),
        file=tb.file or file,
        line=tb.line if tb.file else None,
        excerpt=tb.excerpt,
    )


def _module_file(test: str) -> str | None:
    """The file a dotted id most likely lives in (`tests.test_x.TestFoo.test` → tests/test_x.py)."""
    parts = test.split(" ", 1)[0].split(".")
    split = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts) - 1)
    return "/".join(parts[:split]) + ".py" if split > 0 else None


def _xml_failures(report: junit.Report, workspace: str) -> list[Failure]:
    failures: list[Failure] = []
    for case in report.failing[:MAX_FAILURES]:
        name = f"{case.classname}.{case.name}" if case.classname else case.name
        file = relpath(case.file, workspace) if case.file else _module_file(name)
        kind = "ERROR" if case.outcome == "error" else "FAIL"
        if case.type == "unexpectedSuccess":
            kind = "UNEXPECTED SUCCESS"
        failure = _failure(name, kind, case.text or case.message, file, workspace)
        if failure.line is None and case.file and failure.file == file:
            failure.line = case.line
        failures.append(failure)
    return failures


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    report: junit.Report | None = None
    if artifact is not None:
        try:
            report = junit.read(artifact)
        except junit.JUnitError:
            report = None
    blocks, ran, counts = _read_text(log)
    if not blocks:
        blocks = _read_trial(log)
    if report is not None and report.cases:
        failures = _xml_failures(report, workspace)
        return ParseResult(
            parser="unittest",
            failures=failures,
            total=len({(c.classname, c.name.split(" ", 1)[0]) for c in report.cases}),
            failed=len(report.failing),
            complete=ran is not None or counts is not None,
        )
    failures = [
        _failure(b.test_id, b.kind, "\n".join(b.lines), _module_file(b.test_id), workspace)
        for b in blocks[:MAX_FAILURES]
    ]
    failed: int | None = None
    if counts is not None:
        failed = sum(n for k, n in counts.items() if k in ("failures", "errors"))
        failed += counts.get("unexpected successes", 0)
    elif failures:
        failed = len(failures)
    return ParseResult(
        parser="unittest",
        failures=failures,
        total=ran,
        failed=failed,
        complete=ran is not None,
    )
