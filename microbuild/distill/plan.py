"""The plan `microbuild init` makes: the checks, setup and env to write, each choice a
:class:`Decision` that names the file behind it; rendered as TOML and loaded back before anything
is written, so a bug in the detection cannot leave a broken configuration behind."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microbuild.config import ProjectConfig, load_config
from microbuild.errors import ConfigError

__all__ = [
    "PYTEST_COMMAND",
    "Check",
    "Decision",
    "GeneratedConfigError",
    "InitError",
    "Plan",
    "validate_rendering",
]

PYTEST_COMMAND = "python -m pytest -q"
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class InitError(ConfigError):
    """A usage error of `microbuild init` (exit status 2): one line that says what to do."""


class GeneratedConfigError(Exception):
    """The generated configuration does not load: a bug in `microbuild init`; nothing written."""


@dataclass(frozen=True)
class Decision:
    """One detection result: something kept in (or dropped from) the config, and why."""

    kept: bool
    item: str
    reason: str
    file: str | None = None
    """The file that told us (relative to the project root), if one did."""

    def line(self) -> str:
        return f"{'kept' if self.kept else 'dropped':<7} {self.item}: {self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": "kept" if self.kept else "dropped",
            "item": self.item,
            "reason": self.reason,
            "file": self.file,
        }


@dataclass(frozen=True)
class Check:
    """One planned [[check]] table."""

    name: str
    command: str
    timeout_s: int


@dataclass(frozen=True)
class Plan:
    """What `init` detected: the config to write, plus the decisions that led to it."""

    setup: tuple[str, ...]
    inputs: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    checks: tuple[Check, ...]
    decisions: tuple[Decision, ...]

    def render(self, table_prefix: str = "") -> str:
        """The TOML text of a ``microbuild.toml`` (or, prefixed, of pyproject.toml tables)."""
        p = f"{table_prefix}." if table_prefix else ""
        lines = [
            "# Written by `microbuild init` from this project's files; edit freely.",
            f"[{p}snapshot]",
            _toml_array("setup", self.setup),
            _toml_array("inputs", self.inputs),
        ]
        if self.env:
            pairs = ", ".join(f"{_toml_key(k)} = {_toml_str(v)}" for k, v in self.env)
            lines += ["", f"[{p}sidecar]", f"env = {{ {pairs} }}"]
        for check in self.checks:
            lines += [
                "",
                f"[[{p}check]]",
                f"name = {_toml_str(check.name)}",
                f"command = {_toml_str(check.command)}",
                f"timeout_s = {check.timeout_s}",
            ]
        if not self.checks:
            lines += [
                "",
                "# No checks detected. Add one per command, e.g.:",
                f"# [[{p}check]]",
                '# name = "tests"',
                f"# command = {_toml_str(PYTEST_COMMAND)}",
            ]
        return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes; \uXXXX for control characters).
    return json.dumps(value, ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else _toml_str(key)


def _toml_array(key: str, values: Iterable[str]) -> str:
    items = [_toml_str(v) for v in values]
    one_line = f"{key} = [{', '.join(items)}]"
    if len(one_line) <= 100:
        return one_line
    return "\n".join([f"{key} = [", *(f"  {item}," for item in items), "]"])


def validate_rendering(plan: Plan, text: str, filename: str) -> ProjectConfig:
    """Load the generated text as microbuild would, and check it says what the plan says."""
    with tempfile.TemporaryDirectory(prefix="microbuild-init-") as tmp:
        path = Path(tmp) / filename
        path.write_text(text, encoding="utf-8")
        try:
            config = load_config(path)
        except ConfigError as err:
            raise GeneratedConfigError(
                f"the generated configuration does not load ({err}); nothing was written "
                "(a microbuild bug: please report it)"
            ) from err
    expected = (
        plan.setup,
        plan.inputs,
        dict(plan.env),
        [(c.name, c.command, float(c.timeout_s)) for c in plan.checks],
    )
    loaded = (
        config.snapshot.setup,
        config.snapshot.inputs,
        config.sidecar.env,
        [(c.name, c.command, c.timeout_s) for c in config.checks],
    )
    if loaded != expected:
        raise GeneratedConfigError(
            f"the generated configuration loads as {loaded!r}, not as planned {expected!r}; "
            "nothing was written (a microbuild bug: please report it)"
        )
    return config
