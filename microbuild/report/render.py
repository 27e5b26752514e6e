"""The plain report of a run: what an agent reads instead of the whole log.

Stable plain text, no colour, within a token budget (`report_tokens`). Line 1 is the verdict:

    PASSED 3 checks in 4.1 s
    FAILED tests (2 of 318) in 4.1 s — code
    ERROR tests: out of memory — environment

then, per check that did not pass, its failures — deduplicated (the same message at the same
place in 40 tests is one entry, counted 40 times, naming a few of them), each with its id,
`file:line`, a one-line message and a trimmed excerpt — or, when no parser found anything, the
last meaningful lines of its log; an environment failure gets a `fix:` line. What does not fit
the budget is left out in priority order (the first failure of each check stays whole, then the
others without excerpts, then fewer of them) and counted (`… 12 more failures not shown`). The
last line is the command that prints the full log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microbuild.report.classify import RESET, classify_check, classify_failure, remedy
from microbuild.report.model import Failure, ParseResult
from microbuild.report.tokens import count_tokens
from microbuild.store import CheckResult, RunRecord

__all__ = [
    "DEFAULT_BUDGET",
    "TAIL_CHARS",
    "TAIL_LINES",
    "Entry",
    "ParseSummary",
    "check_failures",
    "dedupe",
    "log_tail",
    "plain_report",
    "read_summary",
    "record_summary",
    "report_json_failures",
    "verdict",
]

DEFAULT_BUDGET = 2000
TAIL_LINES = 25
TAIL_CHARS = 3000
LINE_CHARS = 400
MESSAGE_CHARS = 300
EXCERPT_LINES = 15
EXCERPT_CHARS = 1500
IDS_SHOWN = 3
TIMES = "\N{MULTIPLICATION SIGN}"
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
_BAD = ("failed", "timed_out", "error")


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    line = " ".join(_ANSI.sub("", text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- what the parser said about a check -------------------------------------------------------


@dataclass(frozen=True)
class ParseSummary:
    """The counts a parser found (the failures themselves are on the check)."""

    parser: str
    total: int | None = None
    failed: int | None = None
    complete: bool = True


def record_summary(check: CheckResult, result: ParseResult) -> None:
    """Keep the parser's counts on the check (stored with it, cached copies included)."""
    check.parser = result.parser
    check.total = result.total
    check.failed = result.failed
    check.complete = result.complete
    check.stopped_after = result.stopped_after
    check.not_run = result.not_run


def read_summary(check: CheckResult) -> ParseSummary | None:
    if check.parser is None:
        return None
    return ParseSummary(
        parser=check.parser, total=check.total, failed=check.failed, complete=check.complete
    )


# -- the log tail (when no parser found anything) ----------------------------------------------


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


# -- failures, deduplicated --------------------------------------------------------------------


@dataclass
class Entry:
    """One line item of the report: failures with the same message at the same place."""

    check: str
    ids: list[str]
    message: str
    location: str | None
    excerpt: str
    kind: str
    count: int
    fix: str | None = None
    extra_ids: int = field(default=0)
    """Ids of merged failures beyond those kept in `ids`."""
    finding: bool = False
    """A linter's or type checker's finding: one line says it all (the agent opens the file)."""

    def head(self) -> str:
        first = self.ids[0] if self.ids else "(unnamed)"
        # A failure named by its file (a collection error) is named by its location instead.
        named_by_file = bool(self.location) and f"{self.location}:".startswith(f"{first}:")
        text = self.location if named_by_file and self.location else first
        if self.count > 1:
            text += f" {TIMES}{self.count}"
        if self.location and not named_by_file and self.location not in first:
            text += f"  {self.location}"
        if self.kind == "environment":
            text += " — environment"
        return text

    def render(self, *, excerpt: bool) -> list[str]:
        if self.finding:
            return self._render_finding()
        lines = [self.head()]
        if self.message:
            lines.append(f"  {self.message}")
        others = self.ids[1:]
        family = _PARAMETRIZED.fullmatch(self.ids[0]) if self.ids else None
        if family is not None:
            # Variants of the first test: their parameters say it all.
            others = [
                o.removeprefix(family[1]).lstrip()
                if o.startswith((f"{family[1]}[", f"{family[1]} "))
                else o
                for o in others
            ]
        if others:
            more = self.extra_ids
            tail = f", … {more} more" if more else ""
            lines.append(f"  also: {', '.join(others)}{tail}")
        if excerpt and self.excerpt:
            shown = [line for line in _excerpt_lines(self.excerpt) if not self._repeats(line)]
            lines.extend(f"  | {line}" for line in shown)
        return lines

    def _repeats(self, line: str) -> bool:
        """An excerpt line that only says the message again (pytest's `E   AssertionError…`)."""
        core = _EXCERPT_MARK.sub("", line).strip()
        if _NOISE.search(core):
            return True
        if not core or not self.message:
            return False
        bare = self.message.split(": ", 1)[-1]
        return core in (self.message, bare) or _one_line(core) in (self.message, bare)

    def _render_finding(self) -> list[str]:
        where = self.location or "?"
        text = f"{where} {' '.join(self.ids[:1])} {self.message}".rstrip()
        if self.count > 1:
            text += f" {TIMES}{self.count}"
        return [text]


# pytest's hints about its own verbosity say nothing about the failure.
_NOISE = re.compile(r"Full output truncated|use '-vv?' to show|Use -v to get more diff")
_EXCERPT_MARK = re.compile(r"^\s*(?:E\s|>\s|\|\s)?")


def _excerpt_lines(excerpt: str) -> list[str]:
    lines = [
        line[: LINE_CHARS - 1] + "…" if len(line) > LINE_CHARS else line
        for line in (_ANSI.sub("", raw).rstrip().expandtabs(4) for raw in excerpt.splitlines())
        if line.strip()
    ]
    if len(lines) > EXCERPT_LINES:
        cut = len(lines) - EXCERPT_LINES
        lines = [
            *lines[: EXCERPT_LINES // 3],
            f"… {cut} lines",
            *lines[-(EXCERPT_LINES * 2 // 3) :],
        ]
    while len(lines) > 1 and sum(len(line) + 1 for line in lines) > EXCERPT_CHARS:
        lines.pop(0)
    return lines


def check_failures(check: CheckResult) -> list[Failure]:
    """The stored failures of a check as `Failure`s (entries that do not load are skipped)."""
    found = []
    for data in check.failures:
        try:
            failure = Failure.from_json(data)
        except TypeError:
            continue
        failure.check = failure.check or check.name
        found.append(failure)
    return found


# pytest's `test_x[1]` and unittest's subtests, `tests.T.test_x (i=1)`.
_PARAMETRIZED = re.compile(r"(.+?)(?:\[.*\]| \(.*\)| \[.*\])", re.S)


def dedupe(failures: Iterable[Failure]) -> list[Entry]:
    """Merge failures with the same check, kind, message and location into one entry (in the
    order of their first occurrence), keeping the first excerpt and a few ids. Variants of one
    parametrized test (`test_x[1]`, `test_x[2]`) failing at the same place with the same kind
    of error merge too, even when their messages differ: the first one stands for them."""
    entries: dict[tuple[str, str, str, str | None], Entry] = {}
    for failure in failures:
        message = _one_line(failure.message)
        key = (failure.check, failure.kind, message, failure.location)
        family = _PARAMETRIZED.fullmatch(failure.id)
        if family is not None:
            error_type = message.split(":", 1)[0]
            key = (failure.check, failure.kind, f"{family[1]}[…] {error_type}", failure.location)
        count = max(1, failure.count)
        entry = entries.get(key)
        if entry is None:
            fix = None
            if failure.kind == "environment":
                fix = classify_failure(failure).fix
            entries[key] = Entry(
                check=failure.check,
                ids=[failure.id],
                message=message,
                location=failure.location,
                excerpt=failure.excerpt,
                kind=failure.kind,
                count=count,
                fix=fix,
            )
            continue
        entry.count += count
        if failure.id in entry.ids:
            continue
        if len(entry.ids) < IDS_SHOWN + 1:
            entry.ids.append(failure.id)
        else:
            entry.extra_ids += 1
    return list(entries.values())


# -- the verdict -------------------------------------------------------------------------------


def _tail_text(check: CheckResult) -> str:
    return "\n".join(log_tail(check.log_path))


def _cause(check: CheckResult) -> str:
    """Why a check that is the environment's fault failed, in a few words."""
    return classify_check(
        check.status, check.reason, check.exit_code, check_failures(check), _tail_text(check)
    ).cause


_FINDING_PARSERS = ("ruff", "mypy", "eslint", "tsc")


def _failed_count(check: CheckResult, summary: ParseSummary | None) -> str:
    found = sum(max(1, int(f.get("count") or 1)) for f in check.failures)
    if summary is not None and summary.parser in _FINDING_PARSERS and found:
        # A linter's counts are of files; what the agent fixes is findings.
        return _plural(found, "finding")
    failed = summary.failed if summary is not None and summary.failed is not None else found
    total = summary.total if summary is not None else None
    if check.stopped_after is not None:
        first = (
            "the first failure" if check.stopped_after == 1 else f"{check.stopped_after} failures"
        )
        not_run = (
            f"{check.not_run} of {total} tests not run"
            if check.not_run is not None and total
            else "the tests after it not run"
        )
        return f"{failed or found} failed; stopped after {first}, {not_run}"
    if failed and total:
        return f"{failed} of {total}"
    if failed:
        return f"{failed} failed"
    return f"exit {check.exit_code}"


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
        names = ", ".join(f"{c.name} ({_failed_count(c, read_summary(c))})" for c in failed)
        return f"FAILED {names or '?'} in {_seconds(took)}{note} — code"
    broken = next((c for c in run.checks if c.status in ("timed_out", "error")), None)
    if broken is None:
        what = run.error or "the run did not finish (the host stopped)"
    else:
        what = f"{broken.name}: {_cause(broken)}"
    return f"ERROR {what} — environment"


# -- the body, within the budget ---------------------------------------------------------------


@dataclass
class _Section:
    check: CheckResult
    head: str
    entries: list[Entry]
    tail: list[str]
    fixes: list[str]
    incomplete: bool
    not_parsed: int
    """Failures the tool counted that no entry stands for (e.g. the parser saw fewer)."""
    shown: list[int] = field(default_factory=list)
    """Per entry: 2 whole, 1 without excerpt, 0 left out."""
    show_head: bool = True
    """False when this is the only check to report on: the verdict already names it."""

    def lines(self) -> list[str]:
        out = ["", self.head] if self.show_head else [""]
        for entry, level in zip(self.entries, self.shown, strict=True):
            if level:
                out.extend(entry.render(excerpt=level == 2))
        if not self.entries:
            if self.tail:
                out.extend(f"  | {line}" for line in self.tail)
            elif self.check.log_path:
                out.append("  (no output)")
        left = sum(e.count for e, level in zip(self.entries, self.shown, strict=True) if not level)
        left += self.not_parsed
        if left:
            out.append(f"… {_plural(left, 'more failure')} not shown")
        bare = sum(
            1 for e, level in zip(self.entries, self.shown, strict=True) if level == 1 and e.excerpt
        )
        if bare:
            out.append(f"… excerpts of {_plural(bare, 'failure')} left out")
        if self.check.stopped_after is not None and self.check.status == "failed":
            out.append(
                "… the tool stopped early (-x, --maxfail, a fail-fast option): drop it from "
                "the check's command in microbuild.toml to see every failure"
            )
        if self.incomplete and self.check.status != "failed":
            # A tool that stopped by itself (pytest -x) was not cut short.
            out.append("… the output was cut short: more may have failed")
        out.extend(f"fix: {fix}" for fix in self.fixes)
        return out


def _section(check: CheckResult) -> _Section:
    summary = read_summary(check)
    entries = dedupe(check_failures(check))
    if summary is not None and summary.parser in _FINDING_PARSERS:
        for entry in entries:
            entry.finding = True
    if check.status == "failed":
        head = f"{check.name}: exit {check.exit_code} after {_seconds(check.duration_s)}"
        fixes: list[str] = []
    else:
        cause = _cause(check)
        head = f"{check.name}: {cause} (after {_seconds(check.duration_s)})"
        fixes = [fix] if (fix := remedy(cause)) else []
    for entry in entries:
        if entry.fix and entry.fix not in fixes:
            fixes.append(entry.fix)
    parsed = sum(e.count for e in entries)
    not_parsed = 0
    if summary is not None and summary.failed is not None and entries:
        not_parsed = max(0, summary.failed - parsed)
    return _Section(
        check=check,
        head=head,
        entries=entries,
        # A killed or timed-out command: what it was doing last is what matters.
        tail=[]
        if entries
        else log_tail(check.log_path, lines=TAIL_LINES if check.status == "failed" else 3),
        fixes=fixes,
        incomplete=summary is not None and not summary.complete and bool(entries),
        not_parsed=not_parsed,
        shown=[2] * len(entries),
    )


def _cost(lines: Sequence[str]) -> int:
    return count_tokens("\n".join(lines)) + 1 if lines else 0


def _fit(sections: list[_Section], fixed: int, budget: int) -> None:
    """Choose what each entry shows: the first of each check whole; then as many others as
    fit, without excerpts; then their excerpts, in order; then trim tails."""
    for section in sections:
        section.shown = [0] * len(section.entries)
    used = fixed
    firsts = [(s, 0) for s in sections if s.entries]
    rest = [(s, i) for s in sections for i in range(1, len(s.entries))]
    for section, index in firsts:
        entry = section.entries[index]
        whole = _cost(entry.render(excerpt=True))
        if used + whole <= budget or not entry.excerpt:
            section.shown[index] = 2
            used += whole
        else:
            section.shown[index] = 1
            used += _cost(entry.render(excerpt=False))
    added: list[tuple[_Section, int]] = []
    for section, index in rest:
        short = _cost(section.entries[index].render(excerpt=False))
        if used + short > budget:
            break
        section.shown[index] = 1
        used += short
        added.append((section, index))
    for section, index in added:
        entry = section.entries[index]
        if not entry.excerpt:
            continue
        extra = _cost(entry.render(excerpt=True)) - _cost(entry.render(excerpt=False))
        if used + extra <= budget:
            section.shown[index] = 2
            used += extra
    for section in sections:
        if section.entries or not section.tail:
            continue
        cost = _cost([f"  | {line}" for line in section.tail])
        while len(section.tail) > 3 and used + cost > budget:
            section.tail.pop(0)
            cost = _cost([f"  | {line}" for line in section.tail])
        used += cost


def _ending(run: RunRecord, bad: Sequence[CheckResult]) -> list[str]:
    names = [c.name for c in run.checks if c.status == "skipped"]
    ending = [f"skipped: {', '.join(names)}"] if names else []
    with_log = [c.name for c in bad if c.log_path]
    if with_log:
        also = "".join(f" (also --log {name})" for name in with_log[1:])
        ending.append(f"full log: microbuild runs show {run.id} --log {with_log[0]}{also}")
    return ending


def plain_report(
    run: RunRecord, *, cached: bool | None = None, budget: int = DEFAULT_BUDGET
) -> str:
    """The run as plain text for an agent, within about `budget` tokens; ends with a newline."""
    first = verdict(run, cached=cached)
    bad = [c for c in run.checks if c.status in _BAD]
    if not bad and run.status != "error":
        return first + "\n"
    sections = [_section(c) for c in bad]
    for section in sections:  # a command to copy: with the sidecar's id
        section.fixes = [
            f.replace(f"`{RESET}`", f"`{RESET} {run.sidecar_id}`") for f in section.fixes
        ]
    if len(sections) == 1:
        sections[0].show_head = False
    ending = _ending(run, bad)
    fixed_lines = [first, *(["", *ending] if ending else [])]
    for section in sections:
        head = [section.head] if section.show_head else []
        fixed_lines.extend(["", *head, *(f"fix: {f}" for f in section.fixes)])
    # Room for the `… N more` lines each section may add.
    fixed = _cost(fixed_lines) + 16 * len(sections)
    _fit(sections, fixed, budget)
    text = _join(first, sections, ending)
    # The parts were counted one by one; the whole may differ a little: shrink until it fits.
    while count_tokens(text) > budget and _shrink(sections):
        text = _join(first, sections, ending)
    return text


def _join(first: str, sections: Sequence[_Section], ending: Sequence[str]) -> str:
    lines = [first]
    for section in sections:
        lines.extend(section.lines())
    if ending:
        lines.extend(["", *ending])
    return "\n".join(lines) + "\n"


def _shrink(sections: Sequence[_Section]) -> bool:
    """Leave out one more thing, least important first; False when nothing is left to cut."""
    rest = [(s, i) for s in sections for i in range(1, len(s.entries)) if s.shown[i]]
    if rest:
        section, index = rest[-1]
        section.shown[index] -= 1
        return True
    for section in reversed(sections):
        if section.shown and section.shown[0] == 2 and section.entries[0].excerpt:
            section.shown[0] = 1
            return True
        if len(section.tail) > 3:
            section.tail.pop(0)
            return True
    return False


def report_json_failures(run: RunRecord) -> list[dict[str, Any]]:
    """The run's failures as `validate --json` shows them: the report's own entries (the same
    grouping as the text: identical failures and variants of one parametrized test are one
    entry with a count and the ids it stands for)."""
    out = []
    for check in run.checks:
        for entry in dedupe(check_failures(check)):
            out.append(
                {
                    "check": entry.check,
                    "id": entry.ids[0] if entry.ids else "",
                    "ids": list(entry.ids),
                    "more_ids": entry.extra_ids,
                    "location": entry.location,
                    "message": entry.message,
                    "kind": "environment" if entry.kind == "environment" else "code",
                    "count": entry.count,
                }
            )
    return out
