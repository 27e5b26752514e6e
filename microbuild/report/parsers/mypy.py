"""mypy: `--output json` lines and the text format (`file:line[:col]: error: msg  [code]`), which
syntax errors keep even in JSON mode."""

from __future__ import annotations

import json
import re

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers._common import MAX_FAILURES, clip, excerpt, relpath, to_int

_TEXT = re.compile(
    r"^(?P<path>[^\s:][^:]*?):(?P<line>\d+)(?::(?P<col>\d+))?(?::\d+:\d+)?: "
    r"(?P<sev>error|note|warning): (?P<msg>.*?)(?:  \[(?P<code>[\w-]+)\])?$"
)
_FOUND = re.compile(
    r"^Found (?P<errors>\d+) errors? in (?P<files>\d+) files?"
    r"(?: \(checked (?P<checked>\d+) source files?\)"
    r"| \((?P<blocked>errors prevented further checking)\))?"
)
_SUCCESS = re.compile(r"^Success: no issues found in (\d+) source files?")
_TOOL_ERROR = re.compile(r"^(?:mypy: )?error: (?P<msg>.+)$|^mypy: (?P<other>.+)$")


def _add(failures: list[Failure], failure: Failure, notes: list[list[str]]) -> None:
    failures.append(failure)
    notes.append([])


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    failures: list[Failure] = []
    notes: list[list[str]] = []
    total: int | None = None
    failed: int | None = None
    complete = True
    tool_errors: list[str] = []
    text = artifact.decode("utf-8", "replace") + "\n" + log if artifact is not None else log
    for line in text.splitlines():
        if len(failures) >= MAX_FAILURES:
            break
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except ValueError:
                item = None
            if isinstance(item, dict) and "severity" in item:
                hint = item.get("hint")
                message = clip(str(item.get("message", "")))
                if item.get("severity") == "note":
                    if notes:
                        notes[-1].append(message)
                    continue
                file = item.get("file")
                _add(
                    failures,
                    Failure(
                        id=str(item.get("code") or "error"),
                        message=message,
                        file=relpath(file, workspace) if isinstance(file, str) else None,
                        line=to_int(item.get("line")),
                        column=(to_int(item.get("column")) or 0) + 1
                        if to_int(item.get("column")) is not None
                        else None,
                    ),
                    notes,
                )
                if isinstance(hint, str) and hint:
                    notes[-1].extend(hint.splitlines())
                continue
        match = _TEXT.match(line)
        if match:
            if match["sev"] == "note":
                if notes:
                    notes[-1].append(match["msg"])
                continue
            _add(
                failures,
                Failure(
                    id=match["code"] or ("syntax" if "syntax" in match["msg"].lower() else "error"),
                    message=clip(match["msg"]),
                    file=relpath(match["path"], workspace),
                    line=int(match["line"]),
                    column=to_int(match["col"]),
                ),
                notes,
            )
            continue
        found = _FOUND.match(line)
        if found:
            failed = int(found["files"])
            total = to_int(found["checked"])
            complete = not found["blocked"]
            continue
        success = _SUCCESS.match(line)
        if success:
            total, failed = int(success[1]), 0
            continue
        tool = _TOOL_ERROR.match(line)
        if tool:
            tool_errors.append(tool["msg"] or tool["other"])
    for failure, extra in zip(failures, notes, strict=True):
        if extra:
            failure.excerpt = excerpt(extra, 6)
    if not failures:
        failures = [Failure(id="mypy", message=clip(m)) for m in tool_errors[:10]]
    if failed is None and failures:
        failed = len({f.file for f in failures})
    return ParseResult(
        parser="mypy", failures=failures, total=total, failed=failed, complete=complete
    )
