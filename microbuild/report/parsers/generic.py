"""Any tool's output: compiler-style `file:line[:col]: error: msg` lines, rustc and tsc errors,
Python tracebacks (the last frame in a project file and the exception) and environment failures
(`command not found`, a full disk). Only strong signals, so passing output yields nothing."""

from __future__ import annotations

import re

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers._common import (
    MAX_FAILURES,
    clip,
    environment_failures,
    excerpt,
    read_traceback,
    relpath,
)

_COMPILER = re.compile(
    r"^(?P<path>[^\s:()'\"]+\.[A-Za-z0-9+]{1,6}):(?P<line>\d+)(?::(?P<col>\d+))?:\s*"
    r"(?:fatal )?(?:error|Error|ERROR)(?:\[(?P<bracket>[\w-]+)\])?"
    r"(?: (?P<code>[A-Z]+\d+))?\s*:?\s*(?P<msg>.*)$"
)
_PAREN = re.compile(
    r"^(?P<path>[^\s(]+?)\((?P<line>\d+),(?P<col>\d+)\): "
    r"(?:fatal )?error (?P<code>[A-Z]*\d+): (?P<msg>.*)$"
)
_RUSTC = re.compile(r"^error(?:\[(?P<code>E\d+)\])?: (?P<msg>.+)$")
_ARROW = re.compile(r"^\s*--> (?P<path>[^\s:]+):(?P<line>\d+):(?P<col>\d+)$")
_GO_BUILD = re.compile(r"^(?P<path>[\w./-]+\.go):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")
_TRACEBACK = "Traceback (most recent call last):"


def _traceback_end(lines: list[str], start: int) -> int:
    """The index just past a traceback's exception line (the first unindented line after it)."""
    index = start + 1
    while index < len(lines) and index - start < 500:
        line = lines[index]
        if line and not line[0].isspace():
            if line.startswith(("During handling", "The above exception")):
                index += 1
                continue
            return index + 1
        index += 1
    return index


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    lines = log.splitlines()
    failures: dict[tuple[str, str | None, int | None, str], Failure] = {}

    def add(failure: Failure) -> None:
        key = (failure.id, failure.file, failure.line, failure.message)
        if key in failures:
            failures[key].count += 1
        elif len(failures) < MAX_FAILURES:
            failures[key] = failure

    index = 0
    in_go_build = False
    while index < len(lines):
        line = lines[index]
        index += 1
        if len(line) > 4000:
            continue
        if line.startswith(_TRACEBACK) or line.endswith(_TRACEBACK):
            end = _traceback_end(lines, index - 1)
            block = lines[index - 1 : end]
            tb = read_traceback("\n".join(block), workspace)
            if tb.message:
                add(
                    Failure(
                        id=tb.exc_type or "traceback",
                        message=tb.message,
                        file=tb.file,
                        line=tb.line,
                        excerpt=tb.excerpt,
                    )
                )
            index = max(index, end)
            continue
        if line.startswith("# "):
            in_go_build = True
            continue
        if "rror" in line:
            match = _COMPILER.match(line) or _PAREN.match(line)
            if match:
                groups = match.groupdict()
                add(
                    Failure(
                        id=groups.get("code") or groups.get("bracket") or "error",
                        message=clip(match["msg"] or line.strip()),
                        file=relpath(match["path"], workspace),
                        line=int(match["line"]),
                        column=int(match["col"]) if match["col"] else None,
                    )
                )
                continue
            rustc = _RUSTC.match(line)
            arrow = _ARROW.match(lines[index]) if rustc and index < len(lines) else None
            if rustc and arrow:
                snippet = []
                for follow in lines[index + 1 : index + 12]:
                    if not follow.strip():
                        break
                    snippet.append(follow)
                add(
                    Failure(
                        id=rustc["code"] or "error",
                        message=clip(rustc["msg"]),
                        file=relpath(arrow["path"], workspace),
                        line=int(arrow["line"]),
                        column=int(arrow["col"]),
                        excerpt=excerpt(snippet, 10),
                    )
                )
                continue
        if in_go_build:
            go = _GO_BUILD.match(line)
            if go:
                add(
                    Failure(
                        id="build",
                        message=clip(go["msg"]),
                        file=relpath(go["path"], workspace),
                        line=int(go["line"]),
                        column=int(go["col"]),
                    )
                )
                continue
            if not line.startswith((" ", "\t")):
                in_go_build = False
    for failure in environment_failures(lines):
        add(failure)
    return ParseResult(parser="generic", failures=list(failures.values()))
