"""The plain report of a run: what an agent reads instead of the whole log.

Stable plain text, no colour. Line 1 is the verdict (`PASSED 3 checks in 4.1 s`, `FAILED tests
(exit 1) in 4.1 s`, `ERROR tests timed out after 600 s — environment`); then, per check that did
not pass, its exit status and the last meaningful lines of its log; the last line says how to
see a full log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from microbuild.store import CheckResult, RunRecord

__all__ = ["TAIL_CHARS", "TAIL_LINES", "log_tail", "plain_report", "verdict"]

TAIL_LINES = 25
TAIL_CHARS = 3000
LINE_CHARS = 400
# Only the end of a log is read: a check may write gigabytes.
READ_BYTES = 256 * 1024

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
# A line that only shows progress: pytest's `....F.. [ 42%]` (optionally after a file name),
# a bare run of dots, or a percentage / counter on its own.
_PROGRESS = re.compile(
    r"(?:\S+\s+)?[.sFEXxfpP]+\s*\[\s*\d+%\]"
    r"|[.]{3,}"
    r"|\[?\s*\d+(?:\.\d+)?\s*%\s*\]?"
    r"|\[?\s*\d+\s*/\s*\d+\s*\]?"
)
_FIXES = {
    "timed_out": "raise the check's timeout_s, or find what hangs",
    "oom": "raise [sidecar] memory in microbuild.toml",
    "not_found": "install the command in the snapshot's setup, then `microbuild snapshot build`",
    "died": "`microbuild sidecar reset` (a fresh layer from the snapshot), then run again",
}


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _environment_failure(check: CheckResult) -> tuple[str, str]:
    """(what happened, the fix) for a check that failed because of its environment."""
    reason = check.reason or ""
    if check.status == "timed_out":
        what = reason if reason.startswith("timed out") else "timed out"
        return f"{check.name} {what}", _FIXES["timed_out"]
    if reason.startswith("out of memory"):
        return f"{check.name} was killed: out of memory", _FIXES["oom"]
    if check.exit_code == 127 or reason.startswith("command not found"):
        return f"{check.name}: command not found (exit 127)", _FIXES["not_found"]
    if "sidecar died" in reason:
        return f"{check.name}: the sidecar died", _FIXES["died"]
    return f"{check.name}: {reason or 'environment error'}", ""


def verdict(run: RunRecord, *, cached: bool | None = None) -> str:
    """Line 1 of the report."""
    is_cached = run.cached if cached is None else cached
    note = " (cached)" if is_cached else ""
    # A cache answer cost nothing itself: show how long the checks took when they ran.
    took = sum(c.duration_s for c in run.checks) if run.cached else run.wall_s
    ran = [c for c in run.checks if c.status != "skipped"]
    if run.status == "running":
        return f"RUNNING {len(ran)} of {_plural(len(run.checks), 'check')} started"
    if run.status == "passed":
        return f"PASSED {_plural(len(run.checks), 'check')} in {_seconds(took)}{note}"
    if run.status == "failed":
        failed = [c for c in run.checks if c.status == "failed"]
        names = ", ".join(f"{c.name} (exit {c.exit_code})" for c in failed) or "?"
        return f"FAILED {names} in {_seconds(took)}{note}"
    broken = next((c for c in run.checks if c.status in ("timed_out", "error")), None)
    if broken is None:
        what = run.error or "the run did not finish (the host stopped)"
    else:
        what = _environment_failure(broken)[0]
    return f"ERROR {what} — environment"


def _meaningful(line: str) -> bool:
    text = line.strip()
    return bool(text) and not _PROGRESS.fullmatch(text)


def _read_end(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - READ_BYTES))
        data = f.read()
    if size > READ_BYTES:
        data = data.split(b"\n", 1)[-1]  # a partial first line is not worth showing
    return data.decode("utf-8", errors="replace")


def log_tail(
    path: str | Path | None, lines: int = TAIL_LINES, chars: int = TAIL_CHARS
) -> list[str]:
    """The last meaningful lines of a log: no colour codes, no blank or progress-only lines,
    only what a carriage return left visible, at most `lines` lines and `chars` characters."""
    if not path:
        return []
    try:
        text = _read_end(Path(path))
    except OSError:
        return []
    kept: list[str] = []
    for raw in text.split("\n"):
        # What a terminal would show: the text after the last carriage return.
        line = _ANSI.sub("", raw).rstrip("\r").split("\r")[-1].rstrip().expandtabs(4)
        if not _meaningful(line):
            continue
        if len(line) > LINE_CHARS:
            line = line[: LINE_CHARS - 1] + "…"
        kept.append(line)
    kept = kept[-lines:]
    while kept and sum(len(line) + 1 for line in kept) > chars:
        kept.pop(0)
    return kept


def _section(check: CheckResult) -> list[str]:
    if check.status == "failed":
        head = f"{check.name}: exit {check.exit_code} after {_seconds(check.duration_s)}"
        fix = ""
    else:
        what, fix = _environment_failure(check)
        head = f"{what} (after {_seconds(check.duration_s)})"
    lines = ["", head]
    tail = log_tail(check.log_path)
    if tail:
        lines.extend(f"  | {line}" for line in tail)
    elif check.log_path:
        lines.append("  (no output)")
    if fix:
        lines.append(f"fix: {fix}")
    return lines


def _skipped(checks: Sequence[CheckResult]) -> list[str]:
    names = [c.name for c in checks if c.status == "skipped"]
    return [f"skipped: {', '.join(names)}"] if names else []


def plain_report(run: RunRecord, *, cached: bool | None = None) -> str:
    """The run as plain text for an agent; ends with a newline."""
    lines = [verdict(run, cached=cached)]
    bad = [c for c in run.checks if c.status in ("failed", "timed_out", "error")]
    for check in bad:
        lines.extend(_section(check))
    if bad or run.status == "error":
        ending = _skipped(run.checks)
        with_log = [c.name for c in bad if c.log_path]
        if with_log:
            also = "".join(f" (also --log {name})" for name in with_log[1:])
            ending.append(f"full log: microbuild runs show {run.id} --log {with_log[0]}{also}")
        if ending:
            lines.extend(["", *ending])
    return "\n".join(lines) + "\n"
