"""pytest: the JUnit XML it was told to write (`--junitxml`, injected through PYTEST_ADDOPTS) plus
its terminal output, which alone tells about runs cut short (`-x`, an interrupted collection, a
timeout that killed it before it wrote the XML)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers import doctest, junit
from microbuild.report.parsers._common import (
    MAX_FAILURES,
    clip,
    module_names,
    one_line,
    read_traceback,
    relpath,
)

_SESSION = re.compile(r"^=+ test session starts =+$")
_SECTION = re.compile(r"^=+ (?P<title>.*?) =+$")
_BLOCK = re.compile(r"^_{3,} (?P<title>.+?) _{3,}$")
_CAPTURED = re.compile(r"^-{3,} (?:Captured|generated xml file|Logs) .*-{3,}$")
_SUMMARY = re.compile(r"^(?P<kind>FAILED|ERROR) (?P<id>.+?)(?: - (?P<msg>.*))?$")
_COUNTS = re.compile(
    r"^(?:=+ )?(?P<counts>(?:\d+ [a-z]+(?:, )?)+|no tests ran) in [\d.]+s(?: \([^)]*\))?(?: =+)?$"
)
_COUNT = re.compile(r"(\d+) ([a-z]+)")
_COLLECTED = re.compile(r"^collected (?P<n>\d+) items?(?: / (?P<deselected>\d+) deselected)?")
_STOPPING = re.compile(r"stopping after (?P<n>\d+) failures?")
_PROGRESS = re.compile(
    r"^(?P<id>[^\s:]+\.py::\S+?)(?: (?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS))?"
    r"(?:\s+\[\s*\d+%\])?\s*$"
)
_NO_MODULE = re.compile(r"ModuleNotFoundError: No module named '(?P<name>[\w.]+)'")
_USAGE = re.compile(r"^(?:[\w./-]+\.py|(?:\S*python[\d.]* -m )?pytest): error: (?P<msg>.+)$")
_PY_PATH = re.compile(r"[\w./-]+\.py\b")

_TEST_OUTCOMES = {"passed", "failed", "error", "errors", "skipped", "xfailed", "xpassed"}


@dataclass
class _Block:
    title: str
    lines: list[str] = field(default_factory=list)
    used: bool = False


@dataclass
class _Text:
    """What pytest's terminal output says."""

    started: bool = False
    finished: bool = False
    cut_short: bool = False
    blocks: list[_Block] = field(default_factory=list)
    summary: list[tuple[str, str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    progress_failed: list[str] = field(default_factory=list)
    running: str | None = None
    usage_errors: list[str] = field(default_factory=list)
    conftest_error: list[str] = field(default_factory=list)
    selected: int | None = None
    stopped_after: int | None = None


def _read_text(log: str) -> _Text:
    text = _Text()
    in_sections = False
    in_summary = False
    block: _Block | None = None
    conftest: list[str] | None = None
    for raw in log.splitlines():
        line = raw.rstrip()
        if _SESSION.match(line):
            text.started = True
            continue
        section = _SECTION.match(line) if line.startswith("=") else None
        if section:
            title = section["title"]
            block = None
            in_sections = title in ("ERRORS", "FAILURES")
            in_summary = title == "short test summary info"
            counts = _COUNTS.match(line)
            if counts:
                text.finished = True
                text.counts = _counts(counts["counts"])
            continue
        if in_sections:
            header = _BLOCK.match(line)
            if header:
                block = _Block(header["title"])
                text.blocks.append(block)
                continue
            if _CAPTURED.match(line):
                block = None
                continue
            if block is not None and len(block.lines) < 2000:
                block.lines.append(line)
            continue
        if line.startswith("!"):
            stopping = _STOPPING.search(line)
            if stopping:
                text.stopped_after = int(stopping["n"])
                text.cut_short = True  # more may have failed
            elif "Interrupted" in line or "KeyboardInterrupt" in line:
                text.cut_short = True
            continue
        collected = _COLLECTED.match(line) if line.startswith("collected ") else None
        if collected:
            text.selected = int(collected["n"]) - int(collected["deselected"] or 0)
            continue
        if in_summary:
            summary = _SUMMARY.match(line)
            if summary:
                text.summary.append((summary["kind"], summary["id"], summary["msg"] or ""))
                continue
        counts = _COUNTS.match(line)
        if counts:
            text.finished = True
            text.counts = _counts(counts["counts"])
            continue
        if line.startswith("ImportError while loading conftest"):
            conftest = [line]
            text.conftest_error = conftest
            continue
        if conftest is not None and len(conftest) < 200:
            conftest.append(line)
            continue
        if line.startswith("ERROR: ") and not text.started:
            if not line.startswith("ERROR: usage: "):
                text.usage_errors.append(line[len("ERROR: ") :])
            continue
        usage = _USAGE.match(line) if not text.started else None
        if usage:
            text.usage_errors.append(f"pytest: error: {usage['msg']}")
            continue
        progress = _PROGRESS.match(line) if "::" in line else None
        if progress:
            if progress["outcome"] in ("FAILED", "ERROR"):
                text.progress_failed.append(progress["id"])
            text.running = None if progress["outcome"] else progress["id"]
    return text


def _counts(counts: str) -> dict[str, int]:
    return {word: int(number) for number, word in _COUNT.findall(counts)}


def _keys(test_id: str) -> set[str]:
    """The block titles pytest would print for a test id."""
    keys = {test_id}
    if "::" in test_id:
        rest = test_id.split("::", 1)[1]
        keys.add(rest.replace("::", "."))
        keys.add(rest.rsplit("::", 1)[-1])
    return keys


def _title_key(title: str) -> str:
    for prefix in (
        "[doctest] ",
        "ERROR collecting ",
        "ERROR at setup of ",
        "ERROR at teardown of ",
    ):
        if title.startswith(prefix):
            return title[len(prefix) :]
    return title


def _from_block(test_id: str, short: str, block: _Block | None, workspace: str) -> Failure:
    file: str | None = None
    line: int | None = None
    message = short
    body = ""
    if block is not None:
        text = "\n".join(block.lines)
        found = doctest.read(text, workspace)
        if found is not None:
            file, line, body, message = found.file, found.line, found.excerpt, found.message
        else:
            tb = read_traceback(text, workspace)
            file, line, body = tb.file, tb.line, tb.excerpt
            message = tb.message or short
    if file is None:
        path = test_id.split("::", 1)[0]
        if path.endswith(".py"):
            file = relpath(path, workspace)
    return Failure(
        id=test_id, message=clip(message) or "failed", file=file, line=line, excerpt=body
    )


def _text_failures(text: _Text, workspace: str) -> list[Failure]:
    failures: list[Failure] = []
    for _kind, test_id, short in text.summary[:MAX_FAILURES]:
        keys = _keys(test_id)
        block = next((b for b in text.blocks if not b.used and _title_key(b.title) in keys), None)
        if block is not None:
            block.used = True
        failures.append(_from_block(test_id, short, block, workspace))
    if not text.summary:
        for block in text.blocks[:MAX_FAILURES]:
            failures.append(_from_block(_title_key(block.title), "", block, workspace))
        named = {f.id for f in failures}
        for test_id in text.progress_failed:
            if not (_keys(test_id) & named):
                failures.append(_from_block(test_id, "failed", None, workspace))
    if text.conftest_error:
        tb = read_traceback("\n".join(text.conftest_error), workspace)
        where = re.search(r"conftest '([^']+)'", text.conftest_error[0])
        conftest = relpath(where[1], workspace) if where else "conftest.py"
        failures.append(
            Failure(
                id=conftest,
                message=tb.message or one_line(text.conftest_error[0]),
                file=tb.file or conftest,
                line=tb.line,
                excerpt=tb.excerpt,
            )
        )
    for usage in text.usage_errors[:20]:
        failures.append(Failure(id="pytest", message=clip(usage)))
    if text.started and not text.finished and text.running:
        failures.append(
            Failure(
                id=text.running,
                message="did not finish: the run was cut short while this test ran",
                file=relpath(text.running.split("::", 1)[0], workspace),
            )
        )
    return failures


def node_id(case: junit.Case, workspace: str) -> tuple[str, str | None]:
    """pytest's node id for a JUnit case, and the test's file."""
    file = relpath(case.file, workspace) if case.file else None
    parts = [p for p in case.classname.split(".") if p]
    if file is None:
        if not parts:
            path = "/".join(case.name.split(".")) + ".py"
            return path, path
        split = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts))
        file = "/".join(parts[:split]) + ".py"
        classes = parts[split:]
    else:
        module = file.removesuffix(".py").replace("/", ".")
        qualified = ".".join(parts)
        if not parts:
            return file, file
        if qualified.startswith(module + "."):
            classes = qualified[len(module) + 1 :].split(".")
        else:
            classes = []
    return "::".join([file, *classes, case.name]), file


def _xml_failures(report: junit.Report, workspace: str) -> list[Failure]:
    failures: list[Failure] = []
    for case in report.failing[:MAX_FAILURES]:
        test_id, file = node_id(case, workspace)
        found = doctest.read(case.text, workspace)
        if found is not None:
            failures.append(
                Failure(
                    id=test_id,
                    message=found.message,
                    file=found.file or file,
                    line=found.line,
                    excerpt=found.excerpt,
                )
            )
            continue
        tb = read_traceback(case.text, workspace)
        message = tb.message or one_line(case.message) or case.type or case.outcome
        failures.append(
            Failure(
                id=test_id,
                message=message,
                file=tb.file or file,
                line=tb.line if tb.file else None,
                excerpt=tb.excerpt,
            )
        )
    return failures


def _classify(failures: list[Failure], log: str) -> None:
    """A collection error importing a module the project does not have is the environment's
    fault (the snapshot lacks a dependency); one of the project's own modules is the code's."""
    paths = [f.file for f in failures if f.file] + [f.id.split("::")[0] for f in failures]
    paths += _PY_PATH.findall(log[:1_000_000])
    own = module_names(paths)
    for failure in failures:
        missing = _NO_MODULE.search(failure.message)
        if missing and "::" not in failure.id and missing["name"].split(".")[0] not in own:
            failure.kind = "environment"


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    text = _read_text(log)
    failures = _text_failures(text, workspace)
    total: int | None = sum(n for w, n in text.counts.items() if w in _TEST_OUTCOMES)
    failed: int | None = text.counts.get("failed", 0) + text.counts.get(
        "error", text.counts.get("errors", 0)
    )
    if not text.finished:
        total, failed = None, len(failures) or None
    report: junit.Report | None = None
    if artifact is not None:
        try:
            report = junit.read(artifact)
        except junit.JUnitError:
            report = None
        if report is not None and (report.cases or not failures):
            xml_failures = _xml_failures(report, workspace)
            seen = {f.id for f in xml_failures}
            extra = [f for f in failures if f.id not in seen and "::" not in f.id]
            extra = [f for f in extra if not any(s.startswith(f.id) for s in seen)]
            failures = xml_failures + extra
            total, failed = len(report.cases), len(report.failing) + len(extra)
    _classify(failures, log)
    complete = not text.cut_short and (text.finished or report is not None)
    not_run: int | None = None
    if text.stopped_after is not None and text.selected is not None:
        ran = sum(n for w, n in text.counts.items() if w in _TEST_OUTCOMES and w != "deselected")
        not_run = max(0, text.selected - ran) if text.finished else None
        total = text.selected
    return ParseResult(
        parser="pytest",
        failures=failures,
        total=total,
        failed=failed,
        complete=complete,
        stopped_after=text.stopped_after,
        not_run=not_run,
    )
