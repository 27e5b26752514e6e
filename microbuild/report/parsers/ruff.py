"""ruff check: its JSON (`--output-format=json`) or its text formats (`full`, the default since
0.12 with the rule first and a `-->` line, the older `path:row:col: CODE msg`, and `concise`)."""

from __future__ import annotations

import json
import re
from typing import Any

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers._common import MAX_FAILURES, clip, excerpt, relpath, to_int

_CODE = r"(?P<code>[A-Z]+[0-9]+|[A-Za-z][\w-]*)"
_CONCISE = re.compile(
    r"^(?P<path>[^\s:][^:]*?):(?P<line>\d+):(?P<col>\d+): " + _CODE + r":? (?:\[\*\] )?(?P<msg>.+)$"
)
_HEADER = re.compile(r"^" + _CODE + r":? (?:\[\*\] )?(?P<msg>.+)$")
_ARROW = re.compile(r"^\s*-->\s*(?P<path>.+?):(?P<line>\d+):(?P<col>\d+)\s*$")
_FOUND = re.compile(r"^Found (\d+) errors?\b")


def _from_json(data: Any, workspace: str) -> list[Failure] | None:
    if not isinstance(data, list):
        return None
    failures: list[Failure] = []
    for item in data[:MAX_FAILURES]:
        if not isinstance(item, dict):
            continue
        location = item.get("location")
        location = location if isinstance(location, dict) else {}
        fix = item.get("fix")
        fix = fix if isinstance(fix, dict) else {}
        message = str(item.get("message", ""))
        code = item.get("code") or ("invalid-syntax" if "syntax" in message.lower() else "ruff")
        filename = item.get("filename")
        failures.append(
            Failure(
                id=str(code),
                message=clip(str(item.get("message", ""))),
                file=relpath(filename, workspace) if isinstance(filename, str) else None,
                line=to_int(location.get("row")),
                column=to_int(location.get("column")),
                excerpt=clip(f"fix: {fix['message']}") if fix and fix.get("message") else "",
            )
        )
    return failures


def _from_text(log: str, workspace: str) -> tuple[list[Failure], int | None]:
    failures: list[Failure] = []
    found: int | None = None
    lines = log.splitlines()
    current: Failure | None = None
    snippet: list[str] = []

    def close() -> None:
        if current is not None and snippet:
            current.excerpt = excerpt(snippet, 8)

    for index, line in enumerate(lines):
        counted = _FOUND.match(line)
        if counted:
            found = int(counted[1])
            continue
        concise = _CONCISE.match(line)
        if concise and not line.startswith(" "):
            close()
            current, snippet = _finding(concise, workspace), []
            failures.append(current)
            continue
        header = _HEADER.match(line) if line and not line[0].isspace() else None
        arrow = _ARROW.match(lines[index + 1]) if header and index + 1 < len(lines) else None
        if header and arrow:
            close()
            current = Failure(
                id=header["code"],
                message=clip(header["msg"]),
                file=relpath(arrow["path"], workspace),
                line=int(arrow["line"]),
                column=int(arrow["col"]),
            )
            snippet = []
            failures.append(current)
            continue
        if current is not None and line.startswith("help:"):
            if not any(s.startswith("help:") for s in snippet):
                snippet.append(line)
            continue
        if current is not None and re.match(r"^\s*\d* \|", line):
            if line.strip() != "|" and not any(s.startswith("help:") for s in snippet):
                snippet.append(line)
        elif not line.strip():
            close()
            current, snippet = None, []
    close()
    return failures[:MAX_FAILURES], found


def _finding(match: re.Match[str], workspace: str) -> Failure:
    return Failure(
        id=match["code"],
        message=clip(match["msg"]),
        file=relpath(match["path"], workspace),
        line=int(match["line"]),
        column=int(match["col"]),
    )


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    source = artifact if artifact is not None else log.strip()
    failures: list[Failure] | None = None
    if source[:1] in (b"[", "["):
        try:
            failures = _from_json(json.loads(source), workspace)
        except ValueError:
            failures = None
    found: int | None = None
    if failures is None:
        failures, found = _from_text(log, workspace)
        if found is None and "All checks passed!" in log:
            found = 0
    elif not failures:
        found = 0
    failed_files = len({f.file for f in failures})
    return ParseResult(
        parser="ruff",
        failures=failures,
        failed=failed_files if (failures or found is not None) else None,
    )
