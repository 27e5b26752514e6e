"""jest: the `--json --outputFile=F` result (injected when the command runs jest) and its text
report (`FAIL file`, `● suite > test` blocks, `Tests: N failed, M total`)."""

from __future__ import annotations

import json
import re
from typing import Any

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers._common import (
    MAX_FAILURES,
    clip,
    excerpt,
    find_location,
    relpath,
    strip_ansi,
    to_int,
)

_FILE = re.compile(r"^\s*FAIL (?P<path>\S+)")
_PASS = re.compile(r"^\s*PASS \S+")
_TITLE = re.compile(r"^\s+● (?P<title>.+)$")
_TESTS = re.compile(r"^Tests:\s+(?P<counts>.+?)(?:, )?(?P<total>\d+) total")
_FRAME = re.compile(r"^\s*at ")
_SUITE = "Test suite failed to run"
_SEP = "\u203a"
"""The separator jest prints between describe blocks and the test's title."""
_CODE_FRAME = re.compile(r"^\s*>?\s*\d+ \|")
_CARET = re.compile(r"^\s+\|(?:\s|\^)*$")


def _message(lines: list[str]) -> str:
    """A failure message's first line, with the matcher's Expected/Received when it has them."""
    body = [line.strip() for line in lines if line.strip()]
    if not body:
        return "failed"
    first = body[0]
    if first.startswith("Error: "):
        first = first[len("Error: ") :]
    wanted = [entry for entry in body[1:6] if entry.startswith(("Expected", "Received"))]
    return clip(" ".join([first, *wanted]) if wanted else first)


def _summary(lines: list[str], workspace: str) -> str:
    """The message, the code frame's failing line and the first project frame of the stack."""
    kept: list[str] = []
    frame_done = False
    prefix = workspace.rstrip("/") + "/"
    previous_marked = False
    for line in (raw.replace(prefix, "") for raw in lines):
        if _CODE_FRAME.match(line):
            previous_marked = line.lstrip().startswith(">")
            if previous_marked:
                kept.append(line)
            continue
        if _CARET.match(line):
            if previous_marked:
                kept.append(line)
            previous_marked = False
            continue
        if _FRAME.match(line):
            located = find_location(line, workspace)
            if located and not frame_done:
                kept.append(line)
                frame_done = True
            continue
        kept.append(line)
    return excerpt(kept, 12)


def _from_json(data: Any, workspace: str) -> ParseResult | None:
    if not isinstance(data, dict) or not isinstance(data.get("testResults"), list):
        return None
    failures: list[Failure] = []
    for result in data["testResults"]:
        if not isinstance(result, dict):
            continue
        name = result.get("name") if isinstance(result.get("name"), str) else ""
        file = relpath(str(name), workspace) if name else None
        assertions = [a for a in result.get("assertionResults") or [] if isinstance(a, dict)]
        failed = [a for a in assertions if a.get("status") == "failed"]
        for assertion in failed:
            titles = [str(t) for t in assertion.get("ancestorTitles") or []]
            titles.append(str(assertion.get("title", "")))
            text = strip_ansi("\n".join(str(m) for m in assertion.get("failureMessages") or []))
            lines = text.splitlines()
            located = find_location(text, workspace)
            location = assertion.get("location")
            failures.append(
                Failure(
                    id=f" {_SEP} ".join([file or "", *titles])
                    if file
                    else f" {_SEP} ".join(titles),
                    message=_message(lines),
                    file=located[0] if located else file,
                    line=located[1]
                    if located
                    else (to_int(location.get("line")) if isinstance(location, dict) else None),
                    column=located[2] if located else None,
                    excerpt=_summary(lines, workspace),
                )
            )
        message = result.get("message") or result.get("failureMessage")
        if not failed and result.get("status") == "failed" and isinstance(message, str):
            text = strip_ansi(message)
            lines = [entry for entry in text.splitlines() if _SUITE not in entry]
            located = find_location(text, workspace)
            failures.append(
                Failure(
                    id=file or "test suite",
                    message=_message(lines),
                    file=located[0] if located else file,
                    line=located[1] if located else None,
                    column=located[2] if located else None,
                    excerpt=_summary(lines, workspace),
                )
            )
    return ParseResult(
        parser="jest",
        failures=failures[:MAX_FAILURES],
        total=to_int(data.get("numTotalTests")),
        failed=to_int(data.get("numFailedTests")),
    )


def _from_text(log: str, workspace: str) -> ParseResult:
    failures: list[Failure] = []
    file: str | None = None
    blocks: list[tuple[str | None, str, list[str]]] = []
    current: list[str] | None = None
    total: int | None = None
    failed: int | None = None
    for line in log.splitlines():
        failing = _FILE.match(line)
        if failing:
            file, current = relpath(failing["path"], workspace), None
            continue
        if _PASS.match(line):
            file, current = None, None
            continue
        tests = _TESTS.match(line)
        if tests:
            total = int(tests["total"])
            numbers = dict((w, int(n)) for n, w in re.findall(r"(\d+) (\w+)", tests["counts"]))
            failed = numbers.get("failed", 0)
            current = None
            continue
        if line.startswith(("Test Suites:", "Snapshots:", "Time:", "Ran all")):
            current = None
            continue
        heading = _TITLE.match(line)
        if heading and file is not None:
            current = []
            blocks.append((file, heading["title"].strip(), current))
            continue
        if current is not None and len(current) < 300:
            current.append(line)
    for block_file, title, lines in blocks[:MAX_FAILURES]:
        text = "\n".join(lines)
        located = find_location(text, workspace)
        suite = title == _SUITE
        failures.append(
            Failure(
                id=(block_file or "test suite") if suite else f"{block_file} {_SEP} {title}",
                message=_message(lines),
                file=located[0] if located else block_file,
                line=located[1] if located else None,
                column=located[2] if located else None,
                excerpt=_summary(lines, workspace),
            )
        )
    return ParseResult(parser="jest", failures=failures, total=total, failed=failed)


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    for source in (artifact, log.strip()):
        if source and source[:1] in (b"{", "{"):
            try:
                result = _from_json(json.loads(source), workspace)
            except ValueError:
                result = None
            if result is not None:
                return result
    return _from_text(strip_ansi(log), workspace)
