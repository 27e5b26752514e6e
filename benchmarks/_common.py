"""Pieces every benchmark needs: percentiles, signal handling around cleanup, mount counting."""

from __future__ import annotations

import contextlib
import signal
import statistics
from collections.abc import Iterator
from pathlib import Path
from types import FrameType


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[94]


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
