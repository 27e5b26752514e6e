"""tsc: `path(line,col): error TSnnnn: msg` (`--pretty false`, the default off a terminal) and the
pretty `path:line:col - error TSnnnn: msg` with its code frame."""

from __future__ import annotations

import re

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers._common import MAX_FAILURES, clip, excerpt, relpath

_PLAIN = re.compile(
    r"^(?P<path>[^\s(][^(]*?)\((?P<line>\d+),(?P<col>\d+)\): (?P<sev>error|warning) "
    r"(?P<code>TS\d+): (?P<msg>.*)$"
)
_PRETTY = re.compile(
    r"^(?P<path>\S[^:]*?):(?P<line>\d+):(?P<col>\d+) - (?P<sev>error|warning) "
    r"(?P<code>TS\d+): (?P<msg>.*)$"
)
_GLOBAL = re.compile(r"^(?P<sev>error|warning) (?P<code>TS\d+): (?P<msg>.*)$")
_FOUND = re.compile(r"^Found (\d+) errors?(?: in (?:(\d+) files|the same file))?")


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    failures: list[Failure] = []
    details: list[str] = []
    current: Failure | None = None
    found = False

    def close() -> None:
        if current is not None and details:
            current.excerpt = excerpt(details, 8)

    for line in log.splitlines():
        match = _PLAIN.match(line) or _PRETTY.match(line)
        if match:
            close()
            details = []
            current = None
            if match["sev"] != "error" or len(failures) >= MAX_FAILURES:
                continue
            current = Failure(
                id=match["code"],
                message=clip(match["msg"]),
                file=relpath(match["path"], workspace),
                line=int(match["line"]),
                column=int(match["col"]),
            )
            failures.append(current)
            continue
        glob = _GLOBAL.match(line)
        if glob and glob["sev"] == "error":
            close()
            details, current = [], Failure(id=glob["code"], message=clip(glob["msg"]))
            failures.append(current)
            continue
        if _FOUND.match(line):
            found = True
            close()
            current = None
            continue
        continued = line.startswith(" ") or (line.strip() and line[:1].isdigit())
        if current is not None and continued and len(details) < 30:
            details.append(line)
    close()
    failed = len({f.file for f in failures})
    return ParseResult(
        parser="tsc", failures=failures, failed=failed if (failures or found) else None
    )
