"""Reading the project's own files, never through a link that leads out of the project: a
``pyproject.toml`` linked to a host file must not end up, whole or in part, in a config or a
message."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from microbuild.errors import ConfigError

__all__ = ["leads_outside", "parse_toml", "read_project_file"]


def leads_outside(path: Path, project: Path) -> bool:
    """Whether ``path``, with every link followed, is outside ``project`` (a link loop counts
    as outside: it is not a file of the project either)."""
    try:
        return not path.resolve().is_relative_to(project.resolve())
    except (OSError, RuntimeError):
        return True


def read_project_file(path: Path, project: Path) -> str:
    """The text of ``path``, a file of ``project``; a one-line :class:`ConfigError` naming the
    file when it links outside the project (it is not read) or cannot be read."""
    if leads_outside(path, project):
        raise ConfigError(
            f"{os.path.relpath(path, project)}: leads outside the project, so it is not read; "
            "make it a file of the project"
        )
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ConfigError(f"cannot read the file: {err.strerror or err}", path=path) from None


def parse_toml(path: Path, text: str) -> dict[str, Any]:
    """``text`` (of ``path``) as TOML; a one-line :class:`ConfigError` when it is not."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}; fix it first", path=path) from None
