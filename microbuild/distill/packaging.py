"""Python packaging metadata read without running anything: requirement names, setup.cfg
lists, requirements files (with their ``-r`` includes), PEP 735 dependency groups, and the
literal arguments of a ``setup(...)`` call in setup.py."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from microbuild.distill.files import read_project_file

__all__ = [
    "REQUIREMENT_NAME_RE",
    "Extra",
    "SetupCall",
    "canonical_name",
    "cfg_list",
    "comma_list",
    "expand_group",
    "read_setup_call",
    "requirement_name",
    "requirements_in_file",
    "table_at",
]

REQUIREMENT_NAME_RE = re.compile(
    r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[([^\]]*)\])?"
)


@dataclass
class SetupCall:
    """What a ``setup(...)`` call in setup.py says with literals (anything computed is unknown)."""

    name: str | None = None
    extras: dict[str, list[str]] = field(default_factory=dict)
    install_requires: list[str] = field(default_factory=list)
    setup_requires: list[str] = field(default_factory=list)
    use_scm_version: bool = False


@dataclass(frozen=True)
class Extra:
    """An optional-dependency group as declared, and where (file and table), for the notes."""

    name: str
    requirements: tuple[str, ...]
    file: str
    table: str


def table_at(data: Mapping[str, Any], *keys: str) -> dict[str, Any] | None:
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def canonical_name(name: str) -> str:
    """PEP 503/685 normalized project or extra name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str | None:
    match = REQUIREMENT_NAME_RE.match(requirement)
    return canonical_name(match[1]) if match else None


def cfg_list(value: str) -> list[str]:
    """A setup.cfg list: one item a line, or comma-separated on one line."""
    items: list[str] = []
    for line in value.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        # "pytest, pytest-cov" is two requirements; "pytest>=7,<9" is one.
        parts = [part.strip() for part in line.split(",")]
        if all(part and part[0].isalnum() for part in parts):
            items += parts
        else:
            items.append(line)
    return items


def comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.replace("\n", ",").split(",") if part.strip()]


def requirements_in_file(path: Path, project: Path, seen: set[Path]) -> list[str]:
    """Requirement lines of a requirements file, following ``-r`` includes (not constraints)."""
    resolved = path.resolve()
    if resolved in seen or not path.is_file():
        return []
    seen.add(resolved)
    out: list[str] = []
    for raw in read_project_file(path, project).splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line.startswith("#") or not line:
            continue
        include = re.fullmatch(r"(?:-r|--requirement)(?:\s*=\s*|\s+)?(\S+)", line)
        if include:
            out += requirements_in_file(path.parent / include[1], project, seen)
        elif not line.startswith("-"):
            out.append(line)
    return out


def expand_group(groups: Mapping[str, Any], name: str, seen: set[str]) -> list[str]:
    """A PEP 735 dependency group's requirements, with ``{include-group = ...}`` resolved."""
    seen.add(canonical_name(name))
    by_norm = {canonical_name(k): v for k, v in groups.items()}
    out: list[str] = []
    for item in by_norm.get(canonical_name(name)) or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("include-group"), str):
            included = item["include-group"]
            if canonical_name(included) not in seen:
                out += expand_group(groups, included, seen)
    return out


_UNKNOWN = object()


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNKNOWN


def _str_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    return []


def read_setup_call(tree: ast.Module) -> SetupCall:
    info = SetupCall()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if called != "setup":
            continue
        for keyword in node.keywords:
            value = _literal(keyword.value)
            if keyword.arg == "name" and isinstance(value, str):
                info.name = value
            elif keyword.arg == "extras_require" and isinstance(value, dict):
                info.extras = {str(k): _str_list(v) for k, v in value.items()}
            elif keyword.arg == "install_requires":
                info.install_requires = _str_list(value)
            elif keyword.arg == "setup_requires":
                info.setup_requires = _str_list(value)
            elif keyword.arg == "use_scm_version":
                info.use_scm_version = value is not False and value is not None
    return info
