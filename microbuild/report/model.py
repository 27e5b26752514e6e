"""What the report's parsers find in a check's output: failures as data.

A parser turns one check's output (its log text and, where the tool wrote one, a machine-readable
artifact such as JUnit XML) into a `ParseResult`. The renderer then deduplicates, classifies and
trims the failures into the agent-facing report within a token budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Failure", "FailureKind", "ParseResult"]

FailureKind = Literal["code", "environment"]


@dataclass
class Failure:
    """One thing that went wrong: a failing test, a lint finding, a type error, a crash."""

    id: str
    """The test id (`tests/test_a.py::test_b`), the rule (`F401`, `TS2322`, `arg-type`) or, when
    nothing names it, a short label (`SyntaxError`, `traceback`)."""
    message: str
    """One line saying what is wrong."""
    file: str | None = None
    """Relative to the project root when the tool says where (sidecar paths made relative)."""
    line: int | None = None
    column: int | None = None
    excerpt: str = ""
    """A trimmed excerpt (assertion diff, the project's own traceback frames), may be empty."""
    kind: FailureKind = "code"
    count: int = 1
    """How many identical failures (same message and location) this entry stands for."""
    check: str = ""

    @property
    def location(self) -> str | None:
        if self.file is None:
            return None
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["location"] = self.location
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Failure:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ParseResult:
    """What a parser made of one check's output."""

    parser: str
    failures: list[Failure] = field(default_factory=list)
    total: int | None = None
    """How many tests (or files, for linters) ran, when the tool says; None when unknown."""
    failed: int | None = None
    """How many of them failed, when the tool says (may exceed len(failures) after dedupe)."""
    complete: bool = True
    """False when the output was cut short (a timeout, a crash): more may have failed."""
    stopped_after: int | None = None
    """The tool stopped by itself after this many failures (pytest -x, --maxfail)."""
    not_run: int | None = None
    """With `stopped_after`: how many selected tests did not run, when the tool said."""
