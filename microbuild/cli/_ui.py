"""Output helpers shared by the commands: JSON for scripts, rich for people, plain for agents."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.status import Status


def console(err: bool = False) -> Console:
    """rich is imported only when something is shown to a person: agents' calls stay fast."""
    from rich.console import Console

    return Console(stderr=err, highlight=False)


def show(renderable: RenderableType) -> None:
    console().print(renderable)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def interactive() -> bool:
    return sys.stderr.isatty()


def age(timestamp: float) -> str:
    seconds = max(0, int(time.time() - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def size(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class Progress:
    """Step messages: a live spinner on a terminal, one plain line per step otherwise."""

    def __init__(self, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self._status: Status | None = None

    def step(self, message: str) -> None:
        if self.quiet:
            return
        if self._status is not None:
            self._status.update(message)
            console(err=True).print(f"[dim]·[/dim] {message}")
        else:
            click.echo(f"microbuild: {message}", err=True)

    def output(self, data: bytes) -> None:
        if self.verbose and not self.quiet:
            sys.stderr.buffer.write(data)
            sys.stderr.flush()

    @contextmanager
    def live(self) -> Iterator[Progress]:
        if self.quiet or not interactive() or self.verbose:
            yield self
            return
        with console(err=True).status("working…") as status:
            self._status = status
            try:
                yield self
            finally:
                self._status = None
