"""cargo test: libtest's text (`test x ... FAILED`, `---- x stdout ----` with the panic, `test
result:`), rustc's `error[E…]` diagnostics when the build fails, and nextest's JUnit when given."""

from __future__ import annotations

import re

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers import junit
from microbuild.report.parsers._common import (
    MAX_FAILURES,
    clip,
    excerpt,
    find_location,
    is_project_file,
    relpath,
)

_TEST = re.compile(r"^test (?P<name>\S+) \.\.\. (?P<outcome>ok|FAILED|ignored)")
_BLOCK = re.compile(r"^---- (?P<name>\S+) std(?:out|err) ----$")
_PANIC = re.compile(
    r"^thread '(?P<thread>[^']*)'(?: \(\d+\))? panicked at "
    r"(?:'(?P<oldmsg>.*)', )?(?P<path>[^\s:]+):(?P<line>\d+):(?P<col>\d+):?$"
)
_RESULT = re.compile(
    r"^test result: (?:ok|FAILED)\. (?P<passed>\d+) passed; (?P<failed>\d+) failed; "
    r"(?P<ignored>\d+) ignored"
)
_RUNNING = re.compile(r"^running (\d+) tests?$")
_DIAG = re.compile(r"^error(?:\[(?P<code>E\d+)\])?: (?P<msg>.+)$")
_ARROW = re.compile(r"^\s*--> (?P<path>[^\s:]+):(?P<line>\d+):(?P<col>\d+)$")
_BACKTRACE_AT = re.compile(r"^\s+at (?P<path>[^\s:]+):(?P<line>\d+):(?P<col>\d+)$")


def _panic(name: str, lines: list[str], workspace: str) -> Failure:
    file: str | None = None
    line: int | None = None
    column: int | None = None
    message = ""
    body: list[str] = []
    frames: list[str] = []
    state = "before"
    for text in lines:
        panic = _PANIC.match(text)
        if panic and state == "before":
            file, line, column = (
                relpath(panic["path"], workspace),
                int(panic["line"]),
                int(panic["col"]),
            )
            if panic["oldmsg"]:
                message, state = panic["oldmsg"], "after"
            else:
                state = "message"
            continue
        if state == "message":
            if text.startswith(("note: ", "stack backtrace:")) or not text.strip():
                state = "after"
            else:
                body.append(text)
                message = message or text.strip()
            continue
        at = _BACKTRACE_AT.match(text)
        if at and is_project_file(relpath(at["path"], workspace)) and len(frames) < 3:
            frames.append(f"at {relpath(at['path'], workspace)}:{at['line']}:{at['col']}")
    if state == "before":
        located = find_location("\n".join(lines), workspace)
        if located:
            file, line, column = located
        body = [text for text in lines if text.strip()][:10]
        message = body[0].strip() if body else "failed"
    return Failure(
        id=name,
        message=clip(message or "panicked"),
        file=file,
        line=line,
        column=column,
        excerpt=excerpt([*body, *frames], 12),
    )


def _diagnostics(lines: list[str], workspace: str) -> list[Failure]:
    failures: list[Failure] = []
    for index, text in enumerate(lines):
        diag = _DIAG.match(text)
        if not diag or index + 1 >= len(lines):
            continue
        arrow = _ARROW.match(lines[index + 1])
        if not arrow:
            continue
        snippet: list[str] = []
        for follow in lines[index + 2 : index + 14]:
            if not follow.strip():
                break
            snippet.append(follow)
        failures.append(
            Failure(
                id=diag["code"] or "error",
                message=clip(diag["msg"]),
                file=relpath(arrow["path"], workspace),
                line=int(arrow["line"]),
                column=int(arrow["col"]),
                excerpt=excerpt(snippet, 10),
            )
        )
    return failures


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    if artifact is not None:
        try:
            report = junit.read(artifact)
        except junit.JUnitError:
            report = None
        if report is not None:
            failures = []
            for case in report.failing[:MAX_FAILURES]:
                failure = junit.to_failure(case, workspace)
                failure.id = case.name or failure.id
                failures.append(failure)
            return ParseResult(
                parser="cargo",
                failures=failures,
                total=len(report.cases),
                failed=len(report.failing),
            )
    lines = log.splitlines()
    blocks: dict[str, list[str]] = {}
    failed_names: list[str] = []
    current: list[str] | None = None
    passed = failed = ignored = 0
    results = runs = 0
    for text in lines:
        test = _TEST.match(text)
        if test:
            if test["outcome"] == "FAILED" and test["name"] not in failed_names:
                failed_names.append(test["name"])
            continue
        block = _BLOCK.match(text)
        if block:
            current = blocks.setdefault(block["name"], [])
            continue
        result = _RESULT.match(text)
        if result:
            results += 1
            passed += int(result["passed"])
            failed += int(result["failed"])
            ignored += int(result["ignored"])
            current = None
            continue
        if _RUNNING.match(text):
            runs += 1
            current = None
            continue
        if current is not None:
            if text == "failures:":
                current = None
            elif len(current) < 400:
                current.append(text)
    failures = [_panic(name, blocks.get(name, []), workspace) for name in failed_names]
    failures.extend(_diagnostics(lines, workspace))
    return ParseResult(
        parser="cargo",
        failures=failures[:MAX_FAILURES],
        total=passed + failed + ignored if results else None,
        failed=failed if results else (len(failures) or None),
        complete=results >= runs,
    )
