"""`benchmarks/report.py --init-corpus`: the init corpus (tests/init_corpus.py) as a table.

Per project: `microbuild init` on the pinned sdist, the clean tree validated, then each
injection (one bug per runner family) injected, validated and reverted. Per case: the runner
families, init's checks, the bug, whether the report names it (test id or rule) and locates it
(file:line), the classification and exit code, the tokens of the report, of the checks' own
output (`tokens.checks`, where microbuild reports it) and of the CI-style log (`tokens.raw`),
and raw / report. Then median and p95 over the cases, and the known defects behind the cases
that are wrong. Nothing asserts: the test (tests/test_init_corpus.py) does.
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
from rich.markup import escape
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def load() -> ModuleType:
    """tests/init_corpus.py: the same projects and injections as the test."""
    sys.path.insert(0, str(REPO / "tests"))
    return importlib.import_module("init_corpus")


@dataclass
class Report:
    projects: list[str]
    machine: dict[str, Any] = field(default_factory=dict)
    inits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per project: its families, init's checks, init's problems, the baseline's problems."""
    cases: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        def spread(key: str) -> dict[str, float | None]:
            values = [float(c[key]) for c in self.cases if c.get(key) is not None]
            if not values:
                return {"median": None, "p95": None}
            return {
                "median": round(statistics.median(values), 2),
                "p95": round(_common.p95(values), 2),
            }

        return {
            "projects": len(self.inits),
            "inits_right": sum(1 for i in self.inits.values() if not i["init_problems"]),
            "baselines_right": sum(1 for i in self.inits.values() if not i["baseline_problems"]),
            "cases": len(self.cases),
            "cases_right": sum(1 for c in self.cases if not c["problems"]),
            "report_tokens": spread("report_tokens"),
            "check_tokens": spread("check_tokens"),
            "raw_tokens": spread("raw_tokens"),
            "ratio": spread("ratio"),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "projects": self.projects,
            "machine": self.machine,
            "inits": self.inits,
            "cases": self.cases,
            "summary": self.summary(),
            "errors": self.errors,
            "wall_s": round(self.wall_s, 1),
        }


def measure(corpus: ModuleType, report: Report, base: Path, err: Console) -> None:
    for name in report.projects:
        project = corpus.PROJECTS[name]
        err.print(f"[dim]{name}: checkout, init, snapshot build and baseline validate[/dim]")
        started = time.monotonic()
        prepared = corpus.prepare(project, base)
        try:
            baseline = corpus.baseline_problems(prepared)
            report.inits[name] = {
                "families": list(project.families),
                "checks": prepared.checks,
                "init_problems": corpus.init_problems(prepared),
                "init_defect": project.init_defect,
                "baseline_problems": baseline,
                "baseline_defect": project.baseline_defect,
                "prepare_s": round(time.monotonic() - started, 1),
            }
            for injection in project.injections:
                err.print(f"[dim]{name}: {injection.kind} in {injection.file}[/dim]")
                started = time.monotonic()
                try:
                    case = corpus.run_case(prepared, injection).to_json()
                except AssertionError as exc:  # validate without JSON: what the test fails on
                    report.errors.append(f"{name}: {injection.kind}: {str(exc)[:500]}")
                    continue
                case["validate_s"] = round(time.monotonic() - started, 1)
                report.cases.append(case)
        finally:
            corpus.cleanup(prepared)


def _tokens(value: object) -> str:
    return "-" if value is None else str(value)


def render(report: Report, console: Console) -> None:
    inits = Table(title="init per project")
    for column in ("project", "families", "init's checks", "init", "clean tree"):
        inits.add_column(column)
    for name, init in report.inits.items():
        problems = "; ".join(init["init_problems"]) or "[green]as expected[/green]"
        baseline = init["baseline_problems"]
        inits.add_row(
            name,
            escape(", ".join(init["families"])),
            "\n".join(f"{k}: {v[:70]}" for k, v in init["checks"].items()) or "(none)",
            problems if not init["init_problems"] else f"[red]{problems}[/red]",
            "[green]passed[/green]" if not baseline else f"[red]{baseline[0][:80]}[/red]",
        )
    console.print(inits)
    table = Table(title="injected bugs: init's checks, validate's report")
    for column in ("project", "bug", "check", "named (id)", "located", "kind / exit"):
        table.add_column(column)
    for column in ("report tok", "checks tok", "CI log tok", "raw/report"):
        table.add_column(column, justify="right")
    table.add_column("problems / defect")
    for case in report.cases:
        ids = f"{len(case['ids_found'])}/{len(case['ids_expected'])}"
        located = f"{len(case['locations_found'])}/{len(case['locations_expected'])}"
        kind = f"{case['kind'] or '-'} / {case['exit_code']}"
        if (case["kind"], case["exit_code"]) != (case["kind_expected"], case["exit_expected"]):
            kind = f"[red]{kind}[/red] (exp. {case['kind_expected']} / {case['exit_expected']})"
        problems = "; ".join(case["problems"])
        if problems and case["defect"]:
            problems = f"{problems} [dim](known: {case['defect']})[/dim]"
        table.add_row(
            case["project"],
            f"{case['kind_injected']} in {case['file']}",
            case["check"],
            ids,
            located,
            kind,
            str(case["report_tokens"]),
            _tokens(case["check_tokens"]),
            str(case["raw_tokens"]),
            f"{case['ratio']:.1f}x",
            f"[red]{problems}[/red]" if problems else "[green]ok[/green]",
        )
    console.print(table)
    summary = report.summary()
    figures = Table(title="summary over the cases")
    for column in ("figure", "median", "p95"):
        figures.add_column(column)
    for key, label in (
        ("report_tokens", "report tokens"),
        ("check_tokens", "checks' output tokens"),
        ("raw_tokens", "CI-style log tokens"),
        ("ratio", "raw / report"),
    ):
        spread = summary[key]
        figures.add_row(label, _tokens(spread["median"]), _tokens(spread["p95"]))
    console.print(figures)
    console.print(
        f"init as expected: {summary['inits_right']}/{summary['projects']}; clean tree passed: "
        f"{summary['baselines_right']}/{summary['projects']}; cases right: "
        f"{summary['cases_right']}/{summary['cases']}"
    )
    console.print(f"[dim]wall {report.wall_s:.0f} s; {json.dumps(report.machine)}[/dim]")
    for error in report.errors:
        console.print(f"[red]{error}[/red]")


def main(argv: list[str]) -> int:
    corpus = load()
    parser = argparse.ArgumentParser(prog="report.py --init-corpus", description=__doc__)
    parser.add_argument("--init-corpus", action="store_true", help="(this mode)")
    parser.add_argument(
        "--project",
        action="append",
        choices=sorted(corpus.PROJECTS),
        help="only this project (repeatable; default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--reports", action="store_true", help="also print each case's report (to stderr)"
    )
    args = parser.parse_args(argv)
    report = Report(projects=args.project or list(corpus.PROJECTS))
    out = Console(width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report.machine = machine_facts()
    from microbuild.runtime.namespace import unavailable_reason

    reason = unavailable_reason()
    if reason:
        err.print(f"[yellow]namespace runtime unavailable: {reason}")
        return 0
    base = Path(tempfile.mkdtemp(prefix="mbi_", dir="/var/tmp"))
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
        report.errors.append(f"benchmark stopped: {type(exc).__name__}: {exc}")
        err.print(traceback.format_exc())
    finally:
        with signals_ignored():
            corpus.corpus.stop_host(base / "state", base)
            shutil.rmtree(base, ignore_errors=True)
            if base.exists():
                report.errors.append(f"could not remove {base}")
    report.wall_s = time.monotonic() - started
    if args.reports:
        for case in report.cases:
            err.rule(f"{case['project']}: {case['kind_injected']} in {case['file']}")
            err.print(case["report"], markup=False, highlight=False)
    return _common.finish(report, render, out, as_json=args.json, interrupted=interrupted)
