"""Pieces every benchmark needs: percentiles, signal handling around cleanup, mount counting,
and how a run ends (exit status, JSON or table)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

from rich.console import Console


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[94]


def machine_facts() -> dict[str, Any]:
    """What a table's figures depend on: cores, kernel, Python and the load when it began."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": round(os.getloadavg()[0], 2),
    }


def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    """A SIGTERM handler: clean up exactly as on Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let cleanup finish even if Ctrl-C is pressed again."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def mounts_under(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if str(path) in line)


class Figures(Protocol):
    errors: list[str]

    def to_json(self) -> dict[str, Any]: ...


F = TypeVar("F", bound=Figures)


def finish(
    report: F,
    render: Callable[[F, Console], None],
    out: Console,
    *,
    as_json: bool,
    interrupted: bool,
) -> int:
    """The end of every benchmark: 130 when interrupted; else the figures as JSON or as the
    benchmark's tables, and 1 when something went wrong on the way."""
    if interrupted:
        return 130
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render(report, out)
    return 1 if report.errors else 0
