"""Writing the configuration: atomically, and into pyproject.toml by a textual edit of its
[tool.microbuild] tables that keeps the user's formatting and comments (and is verified)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from microbuild.distill.plan import InitError

__all__ = ["replace_microbuild_table", "write_atomic"]

_HEADER_RE = re.compile(r"\s*\[\[?\s*(?P<key>[^\[\]]+?)\s*\]\]?\s*(?:#.*)?")


def _header_path(line: str) -> tuple[str, ...] | None:
    """The key path of a ``[table]`` / ``[[array]]`` header line, or None if it is not one."""
    match = _HEADER_RE.fullmatch(line)
    if match is None:
        return None
    try:
        node: Any = tomllib.loads(f"[{match['key']}]")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key = next(iter(node))
        path.append(key)
        node = node[key]
    return tuple(path)


def _without_microbuild(data: dict[str, Any]) -> dict[str, Any]:
    tool = data.get("tool")
    if not isinstance(tool, dict) or "microbuild" not in tool:
        return data
    rest = {k: v for k, v in tool.items() if k != "microbuild"}
    out = {k: v for k, v in data.items() if k != "tool"}
    if rest:
        out["tool"] = rest
    return out


def replace_microbuild_table(path: Path, text: str, block: str) -> str:
    """``text`` without its [tool.microbuild...] tables, with ``block`` appended.

    The edit is textual (to keep the user's formatting and comments) and then verified: the
    rest of the document must parse to exactly what it was, or nothing is rewritten.
    """
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        header = _header_path(line)
        if header is not None:
            inside = header[:2] == ("tool", "microbuild")
        if not inside:
            kept.append(line)
    new = "".join(kept).rstrip("\n")
    new = f"{new}\n\n{block}" if new and block else (new + "\n" if new else block)
    try:
        same = _without_microbuild(tomllib.loads(new)) == _without_microbuild(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        same = False
    if not same:
        raise InitError(
            "cannot replace [tool.microbuild] automatically (it is written as dotted keys or "
            "inline tables); remove it by hand and run `microbuild init` again",
            path=path,
        )
    return new


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InitError(f"cannot write the file: {err.strerror or err}", path=path) from None
