"""eslint: `-f json` and the default `stylish` text. Errors are failures; warnings only when there
are no errors (a `--max-warnings` run fails on them)."""

from __future__ import annotations

import json
import re
from typing import Any

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers._common import MAX_FAILURES, clip, relpath, to_int

_FILE = re.compile(r"^(?P<path>\S.*\.(?:[cm]?[jt]sx?|vue|svelte|json|md|html|astro))$")
_MESSAGE = re.compile(
    r"^\s+(?P<line>\d+):(?P<col>\d+)\s+(?P<sev>error|warning)\s+(?P<msg>.+?)"
    r"(?:\s{2,}(?P<rule>[@\w][\w/@.-]*))?\s*$"
)
_SUMMARY = re.compile(r"^\W*(\d+) problems? \((\d+) errors?, (\d+) warnings?\)")


def _rule(rule: object, fatal: bool) -> str:
    if isinstance(rule, str) and rule:
        return rule
    return "parse-error" if fatal else "eslint"


def _from_json(data: Any, workspace: str) -> tuple[list[Failure], list[Failure], int] | None:
    if not isinstance(data, list):
        return None
    errors: list[Failure] = []
    warnings: list[Failure] = []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("messages"), list):
            continue
        path = entry.get("filePath")
        file = relpath(path, workspace) if isinstance(path, str) else None
        for message in entry["messages"]:
            if not isinstance(message, dict):
                continue
            fatal = bool(message.get("fatal"))
            failure = Failure(
                id=_rule(message.get("ruleId"), fatal),
                message=clip(str(message.get("message", ""))),
                file=file,
                line=to_int(message.get("line")),
                column=to_int(message.get("column")),
            )
            (errors if message.get("severity") == 2 or fatal else warnings).append(failure)
    return errors, warnings, len(data)


def _from_text(log: str, workspace: str) -> tuple[list[Failure], list[Failure], bool]:
    errors: list[Failure] = []
    warnings: list[Failure] = []
    file: str | None = None
    summary = False
    for line in log.splitlines():
        path = _FILE.match(line)
        if path:
            file = relpath(path["path"], workspace)
            continue
        message = _MESSAGE.match(line) if file else None
        if message:
            text = message["msg"]
            fatal = text.startswith("Parsing error")
            failure = Failure(
                id=_rule(message["rule"], fatal),
                message=clip(text),
                file=file,
                line=int(message["line"]),
                column=int(message["col"]),
            )
            (errors if message["sev"] == "error" else warnings).append(failure)
            continue
        if _SUMMARY.match(line):
            summary = True
        elif not line.strip():
            continue
        elif not line.startswith(" "):
            file = None
    return errors, warnings, summary


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    source = artifact if artifact is not None else log.strip()
    total: int | None = None
    parsed = None
    if source[:1] in (b"[", "["):
        try:
            parsed = _from_json(json.loads(source), workspace)
        except ValueError:
            parsed = None
    if parsed is not None:
        errors, warnings, total = parsed
        recognised = True
    else:
        errors, warnings, recognised = _from_text(log, workspace)
    failures = (errors or warnings)[:MAX_FAILURES]
    recognised = recognised or bool(failures)
    return ParseResult(
        parser="eslint",
        failures=failures,
        total=total,
        failed=len({f.file for f in failures}) if recognised else None,
    )
