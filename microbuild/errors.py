"""Errors every layer may raise, kept free of heavy imports so the CLI can catch them cheaply."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """One-line, human error: names the file, the line (when known) and the key, and what to do.

    ``key`` is the dotted path of the offending key inside the microbuild config, with
    0-based array indices in brackets (``"sidecar.memory"``, ``"check[1].command"``).
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        super().__init__(_prefix(path, line) + message)


def _prefix(path: Path | None, line: int | None) -> str:
    if path is None:
        return ""
    return f"{path.name}:{line}: " if line is not None else f"{path.name}: "


class SnapshotError(Exception):
    """A snapshot cannot be built; the message says why and what to do."""


class SetupFailed(SnapshotError):
    """A setup command exited non-zero (or timed out); carries its last output lines."""

    def __init__(self, command: str, exit_code: int, tail: list[str], timed_out: bool) -> None:
        self.command = command
        self.exit_code = exit_code
        self.tail = tail
        self.timed_out = timed_out
        what = "timed out" if timed_out else f"exited {exit_code}"
        super().__init__(f"snapshot setup command `{command}` {what}")

    def details(self) -> str:
        lines = [str(self), *(f"  | {line}" for line in self.tail)]
        return "\n".join(lines)
