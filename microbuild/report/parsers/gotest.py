"""go test: `-json` events and the plain text (`--- FAIL: TestX`, indented `file.go:12: msg`,
panics with their goroutine stacks, `FAIL pkg [build failed]` with the compiler's errors)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers._common import (
    MAX_FAILURES,
    clip,
    excerpt,
    is_project_file,
    relpath,
)

_FAIL = re.compile(r"^(?P<indent>\s*)--- FAIL: (?P<name>\S+) \([\d.]+s\)$")
_OTHER = re.compile(r"^\s*--- (?:PASS|SKIP): ")
_PACKAGE = re.compile(r"^(?P<status>FAIL|ok)\s+(?P<pkg>\S+)(?:\s+(?P<rest>.*))?$")
_OUTPUT = re.compile(r"^\s+(?P<path>[\w./-]+\.go):(?P<line>\d+): (?P<msg>.*)$")
_STACK = re.compile(r"^\t(?P<path>/\S+\.go):(?P<line>\d+)(?: \+0x[0-9a-f]+)?$")
_NOISE = re.compile(r"^\s*(?:--- FAIL: |=== (?:RUN|PAUSE|CONT|NAME)\b|FAIL$|PASS$|ok\s)")
_BUILD = re.compile(r"^(?P<path>[\w./-]+\.go):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


@dataclass
class _Test:
    name: str
    lines: list[str] = field(default_factory=list)
    package: str = ""


def _test_failure(test: _Test, workspace: str) -> Failure:
    file: str | None = None
    line: int | None = None
    message = ""
    body: list[str] = []
    panic = next((entry.strip() for entry in test.lines if entry.startswith("panic: ")), None)
    for text in test.lines:
        output = _OUTPUT.match(text)
        if output and file is None:
            file, line, message = output["path"], int(output["line"]), output["msg"]
    if panic is not None:
        message = panic.removesuffix(" [recovered]")
        frames = [m for m in map(_STACK.match, test.lines) if m]
        project = [m for m in frames if is_project_file(relpath(m["path"], workspace))]
        if project:
            file, line = relpath(project[0]["path"], workspace), int(project[0]["line"])
        body = [message, *(f"at {relpath(m['path'], workspace)}:{m['line']}" for m in project[:3])]
    else:
        body = [t for t in test.lines if t.strip() and not _NOISE.match(t)]
    test_id = f"{test.package}.{test.name}" if test.package else test.name
    return Failure(
        id=test_id,
        message=clip(message or "failed"),
        file=file,
        line=line,
        excerpt=excerpt(body, 12),
    )


def _build_failures(lines: list[str], workspace: str) -> list[Failure]:
    failures: list[Failure] = []
    in_build = False
    for text in lines:
        if text.startswith("# "):
            in_build = True
            continue
        build = _BUILD.match(text) if in_build else None
        if build:
            failures.append(
                Failure(
                    id="build",
                    message=clip(build["msg"]),
                    file=relpath(build["path"], workspace),
                    line=int(build["line"]),
                    column=int(build["col"]),
                )
            )
            continue
        if not text.startswith(("\t", " ")):
            in_build = False
    return failures


def _from_text(lines: list[str], workspace: str) -> tuple[list[Failure], bool, bool]:
    tests: list[_Test] = []
    pending: list[_Test] = []
    current: _Test | None = None
    packages_seen = False
    panicked = False
    build_failed: list[str] = []
    for text in lines:
        failing = _FAIL.match(text)
        if failing:
            current = _Test(failing["name"])
            tests.append(current)
            pending.append(current)
            continue
        if _OTHER.match(text):
            current = None
            continue
        package = _PACKAGE.match(text)
        if package:
            packages_seen = True
            for test in pending:
                test.package = package["pkg"]
            pending = []
            current = None
            if package["rest"] and "build failed" in package["rest"]:
                build_failed.append(package["pkg"])
            continue
        if text.startswith("panic: "):
            panicked = True
        if current is not None and len(current.lines) < 200:
            current.lines.append(text)
    names = {t.name for t in tests}
    leaves = [t for t in tests if not any(n.startswith(t.name + "/") for n in names)]
    failures = [_test_failure(t, workspace) for t in leaves[:MAX_FAILURES]]
    failures.extend(_build_failures(lines, workspace))
    complete = not panicked and (packages_seen or not tests)
    return failures, complete, packages_seen


def _from_json(lines: list[str], workspace: str) -> tuple[ParseResult, list[str]] | None:
    outputs: dict[tuple[str, str], list[str]] = {}
    failed: list[tuple[str, str]] = []
    failed_packages: list[str] = []
    counted = 0
    events = 0
    plain: list[str] = []
    for text in lines:
        if not text.startswith("{"):
            plain.append(text)
            continue
        try:
            event = json.loads(text)
        except ValueError:
            plain.append(text)
            continue
        if not isinstance(event, dict) or "Action" not in event:
            continue
        events += 1
        package, test = str(event.get("Package", "")), str(event.get("Test", "") or "")
        action = event.get("Action")
        if action == "output":
            bucket = outputs.setdefault((package, test), [])
            if len(bucket) < 200:
                bucket.extend(str(event.get("Output", "")).rstrip("\n").split("\n"))
        elif action in ("pass", "fail", "skip") and test:
            counted += 1
            if action == "fail":
                failed.append((package, test))
        elif action == "fail" and not test:
            failed_packages.append(package)
    if not events:
        return None
    names = {t for _, t in failed}
    leaves = [(p, t) for p, t in failed if not any(n.startswith(t + "/") for n in names)]
    failures = []
    for package, test in leaves[:MAX_FAILURES]:
        body = [
            entry
            for entry in outputs.get((package, test), [])
            if not entry.startswith(("=== RUN", "=== PAUSE", "=== CONT", "--- FAIL"))
        ]
        failures.append(_test_failure(_Test(test, body, package), workspace))
    panicked = any(entry.startswith("panic: ") for lines_ in outputs.values() for entry in lines_)
    for package in failed_packages:
        if not any(p == package for p, _ in failed):
            body = [
                entry
                for entry in outputs.get((package, ""), [])
                if entry.strip() and not entry.startswith("FAIL")
            ]
            failures.append(_test_failure(_Test("", body, package), workspace))
            failures[-1].id = package
    result = ParseResult(
        parser="gotest", failures=failures, total=counted, failed=len(failed), complete=not panicked
    )
    return result, plain


def parse(log: str, artifact: bytes | None, *, workspace: str = "/workspace") -> ParseResult:
    lines = (artifact.decode("utf-8", "replace") if artifact is not None else log).splitlines()
    parsed = _from_json(lines, workspace)
    if parsed is not None:
        result, plain = parsed
        builds = _build_failures(plain, workspace)
        result.failures.extend(builds)
        return result
    failures, complete, recognised = _from_text(lines, workspace)
    return ParseResult(
        parser="gotest",
        failures=failures,
        failed=len(failures) if (failures or recognised) else None,
        complete=complete,
    )
