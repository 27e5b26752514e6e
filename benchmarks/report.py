"""Benchmark of the agent-facing report on real failures, run by hand:

    .venv/bin/python benchmarks/report.py [--all] [--project NAME ...] [--quiet] [--json]
    .venv/bin/python benchmarks/report.py --init-corpus [--project NAME ...] [--json] [--reports]

The corpus of tests/test_report_corpus.py (tests/corpus.py): six pinned PyPI sdists (attrs,
pluggy, packaging, iniconfig, six, exceptiongroup), each committed to a git repository with a
hand-written microbuild.toml, validated clean, then for each injection of its plan (or, with
`--all`, every injection that applies to it) injected into the working tree, validated with
`microbuild validate --json`, and reverted. Per (project, injection): the raw log's tokens (every
log of the run), the report's tokens, their ratio, the failing test ids expected (the
injection's own plus every test pytest's summary lists in the raw log) and how many the report
names, the file:line shown, and whether the verdict's kind (code / environment) and the exit
code are right. Then the median and worst ratio (target >= 5x), the recall of failing ids
(target 100 %) and the report's size in tokens at the default budget (2000).

With `--init-corpus`, the corpus of tests/test_init_corpus.py instead (benchmarks/_init_corpus.py):
twelve sdists configured by the real `microbuild init`, one bug per runner family each.

Nothing here asserts: figures that miss a target are shown as not met. The sidecars are
destroyed, the host stopped and the temp dir under /var/tmp removed at the end, also on Ctrl-C
or SIGTERM; the exit code is 1 if something went wrong on the way, 130 if interrupted. Needs
root, namespaces and cgroups, and the network (pip, in the snapshot builds).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import _common
from _common import machine_facts, raise_interrupt, signals_ignored
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET = 2000
RECALL_TARGET = 1.0


def load_corpus() -> ModuleType:
    """tests/corpus.py: the same projects and injections as the corpus test."""
    sys.path.insert(0, str(REPO / "tests"))
    return importlib.import_module("corpus")


# Below this many raw-log tokens, a report (verdict, the failure named and located, where the
# full log is) cannot be 5x smaller; the corpus test holds those to an absolute size instead.
LONG_LOG_TOKENS = 600


@dataclass
class Report:
    plan: str
    projects: list[str]
    verbosity: str = "-v"
    machine: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, str] = field(default_factory=dict)
    """Per project: the baseline's status (it must be `passed`)."""
    cases: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        ratios = [c["ratio"] for c in self.cases if c["report_tokens"]]
        long_logs = [
            c["ratio"]
            for c in self.cases
            if c["report_tokens"] and c["raw_tokens"] >= LONG_LOG_TOKENS
        ]
        expected = sum(len(c["ids_expected"]) for c in self.cases)
        found = sum(len(c["ids_found"]) for c in self.cases)
        report_tokens = [c["report_tokens"] for c in self.cases]
        return {
            "cases": len(self.cases),
            "cases_right": sum(1 for c in self.cases if not c["problems"]),
            "ratio_median": round(statistics.median(ratios), 2) if ratios else None,
            "ratio_worst": round(min(ratios), 2) if ratios else None,
            "long_logs": len(long_logs),
            "long_log_ratio_median": round(statistics.median(long_logs), 2) if long_logs else None,
            "long_log_ratio_worst": round(min(long_logs), 2) if long_logs else None,
            "ids_expected": expected,
            "ids_found": found,
            "recall": round(found / expected, 4) if expected else None,
            "kind_right": sum(1 for c in self.cases if c["kind"] == c["kind_expected"]),
            "exit_right": sum(1 for c in self.cases if c["exit_code"] == c["exit_expected"]),
            "report_tokens_median": statistics.median(report_tokens) if report_tokens else None,
            "report_tokens_max": max(report_tokens) if report_tokens else None,
            "budget": DEFAULT_BUDGET,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "projects": self.projects,
            "pytest_verbosity": self.verbosity,
            "machine": self.machine,
            "baselines": self.baselines,
            "cases": self.cases,
            "summary": self.summary(),
            "errors": self.errors,
            "wall_s": round(self.wall_s, 1),
        }


def measure(corpus: ModuleType, report: Report, base: Path, err: Console) -> None:
    state = base / "state"
    for name in report.projects:
        project = corpus.PROJECTS[name]
        injections = project.plan if report.plan == "plan" else corpus.applicable(project)
        err.print(f"[dim]{name}: checkout, snapshot build and baseline validate[/dim]")
        root = corpus.prepare(project, base / "src", report.verbosity)
        try:
            baseline = corpus.validate(state, root, timeout=corpus.BUILD_TIMEOUT_S)
            report.baselines[name] = str(baseline.result.get("status"))
            if baseline.exit_code != 0:
                report.errors.append(
                    f"{name}: the baseline did not pass: {baseline.result.get('report', '')[:300]}"
                )
                continue
            for injection in injections:
                err.print(f"[dim]{name}: {injection}[/dim]")
                applied = corpus.inject(project, injection, root)
                try:
                    validated = corpus.validate(state, root)
                finally:
                    applied.revert()
                verdict = corpus.judge(applied, validated)
                report.cases.append(verdict.to_json())
        finally:
            corpus.destroy_sidecars(state, root)
            shutil.rmtree(root, ignore_errors=True)


def _met(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]not met[/red]"


def render(report: Report, console: Console) -> None:
    table = Table(title="report vs. raw log, per injected failure")
    for column in ("project", "injection", "check", "raw tok", "report tok", "ratio"):
        justify = "right" if "tok" in column or column == "ratio" else "left"
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for column in ("ids found/exp", "file:line", "kind", "exit", "problems"):
        table.add_column(column)
    for case in report.cases:
        kind_ok = case["kind"] == case["kind_expected"]
        located = f"{len(case['locations_found'])}/{len(case['locations_expected'])}"
        table.add_row(
            case["project"],
            case["injection"],
            case["check"],
            str(case["raw_tokens"]),
            str(case["report_tokens"]),
            f"{case['ratio']:.1f}x",
            f"{len(case['ids_found'])}/{len(case['ids_expected'])}",
            located if case["locations_expected"] else "-",
            f"{case['kind'] or '-'}" + ("" if kind_ok else f" (exp. {case['kind_expected']})"),
            f"{case['exit_code']}" + ("" if case["exit_code"] == case["exit_expected"] else "!"),
            "; ".join(case["problems"]) or "",
        )
    console.print(table)
    summary = report.summary()
    figures = Table(title="summary")
    for column in ("figure", "value", "target", ""):
        figures.add_column(column)
    median, worst, recall = summary["ratio_median"], summary["ratio_worst"], summary["recall"]
    figures.add_row("token ratio, median", f"{median}x" if median is not None else "-", ">= 5x", "")
    figures.add_row(
        "token ratio, worst",
        f"{worst}x" if worst is not None else "-",
        ">= 5x",
        _met(worst is not None and worst >= 5),
    )
    long_median, long_worst = summary["long_log_ratio_median"], summary["long_log_ratio_worst"]
    figures.add_row(
        f"token ratio where the raw log has >= {LONG_LOG_TOKENS} tokens "
        f"({summary['long_logs']} cases): median / worst",
        f"{long_median}x / {long_worst}x" if long_worst is not None else "-",
        ">= 5x",
        _met(long_worst is not None and long_worst >= 5),
    )
    figures.add_row(
        "recall of failing test ids",
        f"{summary['ids_found']}/{summary['ids_expected']}"
        + (f" ({recall:.0%})" if recall is not None else ""),
        "100 %",
        _met(recall is not None and recall >= RECALL_TARGET),
    )
    figures.add_row("kind right", f"{summary['kind_right']}/{summary['cases']}", "all", "")
    figures.add_row("exit code right", f"{summary['exit_right']}/{summary['cases']}", "all", "")
    figures.add_row(
        f"report tokens at the default budget ({summary['budget']})",
        f"median {summary['report_tokens_median']}, max {summary['report_tokens_max']}",
        f"<= {summary['budget']}",
        _met((summary["report_tokens_max"] or 0) <= summary["budget"]),
    )
    figures.add_row(
        "cases with every expectation met", f"{summary['cases_right']}/{summary['cases']}", "", ""
    )
    baselines = ", ".join(f"{k} {v}" for k, v in report.baselines.items())
    figures.add_row("baselines", baselines, "all passed", "")
    console.print(figures)
    console.print(
        f"[dim]plan {report.plan}; pytest {report.verbosity}; wall {report.wall_s:.0f} s; "
        f"{json.dumps(report.machine)}[/dim]"
    )
    for error in report.errors:
        console.print(f"[red]{error}[/red]")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--init-corpus" in argv:
        import _init_corpus

        return _init_corpus.main(argv)
    corpus = load_corpus()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--all", action="store_true", help="every applicable injection, not each project's plan"
    )
    parser.add_argument(
        "--project",
        action="append",
        choices=sorted(corpus.PROJECTS),
        help="only this project (repeatable; default: all six)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="run the tests check with pytest -q instead of -v (a smaller raw log)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    report = Report(
        plan="all" if args.all else "plan",
        projects=args.project or list(corpus.PROJECTS),
        verbosity="-q" if args.quiet else corpus.PYTEST_VERBOSITY,
    )
    out = Console(width=None if sys.stdout.isatty() else 180)
    err = Console(stderr=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report.machine = machine_facts()
    from microbuild.runtime.namespace import unavailable_reason

    reason = unavailable_reason()
    if reason:
        err.print(f"[yellow]namespace runtime unavailable: {reason}")
        return 0
    base = Path(tempfile.mkdtemp(prefix="mbr_", dir="/var/tmp"))
    started = time.monotonic()
    interrupted = False
    try:
        measure(corpus, report, base, err)
    except KeyboardInterrupt:
        interrupted = True
        err.print("[yellow]interrupted: cleaning up")
    except BaseException as exc:
        if isinstance(exc, SystemExit | GeneratorExit):
            raise
        # A project that cannot be downloaded makes realproject skip (a pytest outcome).
        report.errors.append(f"benchmark stopped: {type(exc).__name__}: {exc}")
        err.print(traceback.format_exc())
    finally:
        with signals_ignored():
            corpus.stop_host(base / "state", base)
            shutil.rmtree(base, ignore_errors=True)
            if base.exists():
                report.errors.append(f"could not remove {base}")
    report.wall_s = time.monotonic() - started
    return _common.finish(report, render, out, as_json=args.json, interrupted=interrupted)


if __name__ == "__main__":
    sys.exit(main())
