"""JUnit XML, as pytest, nextest, Maven Surefire, jest-junit and most test runners write it.

Reports come from untrusted code: defusedxml refuses DTDs, so neither entity expansion (billion
laughs) nor external entities (file reads) can happen.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import defusedxml.ElementTree as SafeET  # type: ignore[import-untyped]

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers import doctest
from microbuild.report.parsers._common import (
    MAX_FAILURES,
    excerpt,
    find_location,
    one_line,
    read_traceback,
    relpath,
    to_int,
)

MAX_XML_BYTES = 64 * 1024 * 1024
MAX_TEXT = 100_000
"""Characters of one failure's text kept: enough for any traceback, bounded for a runaway one."""


class JUnitError(ValueError):
    """The artifact is not JUnit XML we can read (malformed, truncated, hostile, too large)."""


@dataclass
class Case:
    classname: str
    name: str
    file: str | None
    line: int | None
    outcome: str
    """`passed`, `failure`, `error` or `skipped`."""
    message: str = ""
    type: str = ""
    text: str = ""
    time: float | None = None
    """Seconds, when the runner timed it."""


@dataclass
class Report:
    cases: list[Case] = field(default_factory=list)

    @property
    def failing(self) -> list[Case]:
        return [c for c in self.cases if c.outcome in ("failure", "error")]


def read(data: bytes) -> Report:
    """The test cases of a JUnit XML document; `JUnitError` when it cannot be read safely."""
    if len(data) > MAX_XML_BYTES:
        raise JUnitError(f"JUnit XML of {len(data)} bytes is larger than {MAX_XML_BYTES}")
    try:
        root: ET.Element = SafeET.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except Exception as exc:  # ParseError, DTDForbidden, EntitiesForbidden, ValueError
        raise JUnitError(f"unreadable JUnit XML: {type(exc).__name__}: {exc}") from None
    if root.tag not in ("testsuites", "testsuite", "testcase"):
        raise JUnitError(f"not JUnit XML: root element <{root.tag}>")
    report = Report()
    for case in root.iter("testcase"):
        report.cases.append(_case(case))
    return report


# pytest writes a terminal's colour codes (`--color=yes`) into the XML with the escape character
# spelled `#x1B` (it is not allowed in XML 1.0); other writers leave it raw.
_COLOUR = re.compile(r"(?:#x1B|\x1b)\[[0-9;?]*[A-Za-z]")


def _plain(text: str) -> str:
    return _COLOUR.sub("", text) if ("#x1B" in text or "\x1b" in text) else text


def _case(element: ET.Element) -> Case:
    case = Case(
        classname=element.get("classname", "") or "",
        name=element.get("name", "") or "",
        file=element.get("file") or None,
        line=to_int(element.get("line")),
        outcome="passed",
        time=_seconds(element.get("time")),
    )
    for child in element:
        tag = child.tag
        if tag in ("failure", "error") and case.outcome not in ("failure", "error"):
            case.outcome = tag
            case.message = _plain(child.get("message", "") or "")
            case.type = child.get("type", "") or ""
            case.text = _plain((child.text or "")[:MAX_TEXT])
        elif tag == "skipped" and case.outcome == "passed":
            case.outcome = "skipped"
    if case.outcome in ("failure", "error") and not case.text.strip():
        outputs = [
            (child.text or "") for child in element if child.tag in ("system-out", "system-err")
        ]
        case.text = "\n".join(o for o in outputs if o.strip())[:MAX_TEXT]
    return case


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 1e7 else None


def to_failure(case: Case, workspace: str) -> Failure:
    """A failing case as a Failure: its id, where it failed (the text's project frame before the
    case's own attributes, which name the test's definition), and why."""
    case_id = f"{case.classname}.{case.name}" if case.classname else case.name
    found = doctest.read(case.text, workspace) if case.text else None
    if found is not None:
        return Failure(
            id=case_id or "testcase",
            message=found.message,
            file=found.file or (relpath(case.file, workspace) if case.file else None),
            line=found.line if found.file else case.line,
            excerpt=found.excerpt,
        )
    file = relpath(case.file, workspace) if case.file else None
    line = case.line
    column: int | None = None
    located = find_location(case.text, workspace) if case.text else None
    if located is not None:
        file, line, column = located
    message = one_line(case.message) or one_line(case.text) or case.type or case.outcome
    if case.type and not message.startswith(case.type.rsplit(".", 1)[-1]) and ":" not in message:
        message = f"{case.type}: {message}"
    if "Traceback" in case.text or "\nE   " in case.text:
        tb = read_traceback(case.text, workspace)
        text_excerpt = tb.excerpt
    else:
        text_excerpt = excerpt(case.text.splitlines())
    return Failure(
        id=case_id or "testcase",
        message=message,
        file=file,
        line=line,
        column=column,
        excerpt=text_excerpt,
    )


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    """Failures from a JUnit XML artifact (the log itself when it is the XML)."""
    data = artifact if artifact is not None else log.encode("utf-8", "replace")
    report = read(data)
    failing = report.failing
    return ParseResult(
        parser="junit",
        failures=[to_failure(case, workspace) for case in failing[:MAX_FAILURES]],
        total=len(report.cases),
        failed=len(failing),
    )
