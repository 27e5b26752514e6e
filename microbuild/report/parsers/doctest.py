"""Doctest failures, as pytest (`--doctest-modules`, `--doctest-glob`) and the stdlib `doctest`
runner print them: the example that failed, and what it expected and got. Without them a
doctest failure says only `DocTestFailure`, which names nothing an agent can fix."""

from __future__ import annotations

import re
from dataclasses import dataclass

from microbuild.report.parsers._common import clip, excerpt, read_traceback, relpath

_EXAMPLE = re.compile(r"^(?:\d{3,} )?\s*(?:>>>|\.\.\.) ?(?P<source>.*)$")
_WHERE = re.compile(r"^(?P<file>\S.*?):(?P<line>\d+): (?:DocTestFailure|UnexpectedException)\s*$")
_STDLIB_WHERE = re.compile(r'^File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>\S+)')
_UNEXPECTED = re.compile(r"^UNEXPECTED EXCEPTION: (?P<exc>.*)$")
MAX_SHOWN = 6
"""Lines of the expected and of the got output shown (each), enough for a small repr."""


@dataclass
class Doctest:
    message: str
    excerpt: str
    file: str | None
    line: int | None


def is_doctest(text: str) -> bool:
    return (
        "DocTestFailure" in text
        or "UnexpectedException" in text
        or "\nFailed example:\n" in text
        or ("\nExpected:\n" in text and "\nGot" in text)
    )


def read(text: str, workspace: str) -> Doctest | None:
    """The failed example, the expected and got output (or the exception), and where; None
    when `text` is not a doctest failure."""
    if not is_doctest(text):
        return None
    lines = text.splitlines()
    source = ""
    file: str | None = None
    line: int | None = None
    expected: list[str] = []
    got: list[str] = []
    unexpected = ""
    section: list[str] | None = None
    for index, raw in enumerate(lines):
        where = _WHERE.match(raw) or _STDLIB_WHERE.match(raw)
        if where:
            file, line = relpath(where["file"], workspace), int(where["line"])
            section = None
            continue
        if raw == "Failed example:" and index + 1 < len(lines):
            source = lines[index + 1].strip()
            section = None
            continue
        if raw == "Expected:":
            section = expected
            continue
        if raw.startswith("Got"):
            section = got
            if raw.strip() == "Got nothing":
                got.append("nothing")
                section = None
            continue
        if raw == "Exception raised:":
            raised = [line[4:] for line in lines[index + 1 :] if line.startswith("    ")]
            unexpected = read_traceback("\n".join(raised), workspace).message or "an exception"
            break
        bad = _UNEXPECTED.match(raw)
        if bad:
            unexpected = bad["exc"]
            tail = read_traceback("\n".join(lines[index + 1 :]), workspace)
            if tail.message:
                unexpected = tail.message
            for rest in lines[index + 1 :]:
                where = _WHERE.match(rest)
                if where:
                    file, line = relpath(where["file"], workspace), int(where["line"])
            break
        if section is not None:
            if raw.startswith("    ") or not raw.strip():
                section.append(raw[4:])
                continue
            section = None
        example = _EXAMPLE.match(raw)
        if example and ">>>" in raw and not source:
            source = example["source"].strip()
    while expected and not expected[-1].strip():
        expected.pop()
    while got and not got[-1].strip():
        got.pop()
    if not (expected or got or unexpected):
        return None
    shown = f">>> {source}" if source else ">>> (example)"
    if unexpected:
        message = f"doctest {source or 'example'} raised {unexpected}"
        body = [shown, f"raised {unexpected}"]
    else:
        message = f"doctest {source or 'example'}: expected {_short(expected)}, got {_short(got)}"
        one_each = len(expected) <= 1 and len(got) <= 1
        body = [] if one_each else [shown, "Expected:", *_indent(expected), "Got:", *_indent(got)]
    return Doctest(clip(message), excerpt(body), file, line)


def _short(lines: list[str]) -> str:
    text = " ".join(line.strip() for line in lines if line.strip())
    return clip(text, 80) if text else "nothing"


def _indent(lines: list[str]) -> list[str]:
    shown = [f"    {line}" for line in lines[:MAX_SHOWN]]
    if len(lines) > MAX_SHOWN:
        shown.append(f"    ... {len(lines) - MAX_SHOWN} more lines")
    return shown
