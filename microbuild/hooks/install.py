"""Hook installers: merge our stop hook into each agent's project settings file.

Other entries are never touched: the file is parsed, our entry added (or updated in place) or
removed, and written back with the file's own indentation and key order, so that an uninstall
gives back the bytes the file had before the install. A file that does not parse is an
`InstallError` and stays as it is.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microbuild.hooks import ADAPTERS

AIDER_LINE = 'aider --test-cmd "microbuild validate --plain" --auto-test'
# The agent's own hook timeout is set this far above ours, so that we always answer first.
TIMEOUT_HEADROOM_S = 60
GEMINI_HOOK_NAME = "microbuild"
# Gemini needs tools.enableHooks; when the install turned it on, the entry says so, so that the
# uninstall turns it off again only then.
GEMINI_DESCRIPTION = "microbuild: validate the working tree before the agent finishes"
GEMINI_ENABLED_NOTE = " (this install set tools.enableHooks)"


class InstallError(Exception):
    """A settings file we cannot merge into (corrupt JSON, unexpected shape)."""


@dataclass(frozen=True)
class Change:
    agent: str
    path: Path
    action: str
    """installed / updated / unchanged / removed / absent."""

    def to_json(self) -> dict[str, str]:
        return {"agent": self.agent, "path": str(self.path), "action": self.action}


def microbuild_command(state_dir: Path | None = None) -> str:
    """An absolute command line for microbuild that works from the agent's environment, which
    may not have our virtualenv on its PATH."""
    candidates = [Path(sys.argv[0]), Path(sys.executable).parent / "microbuild"]
    words: list[str] | None = None
    for candidate in candidates:
        if candidate.name == "microbuild" and candidate.is_file() and os.access(candidate, os.X_OK):
            words = [str(candidate.absolute())]
            break
    if words is None:
        words = [sys.executable, "-m", "microbuild"]
    if state_dir is not None:
        words += ["--state-dir", str(state_dir.absolute())]
    return shlex.join(words)


def _is_ours(command: object, agent: str) -> bool:
    return (
        isinstance(command, str)
        and re.search(rf"microbuild\S*\s.*\bhook {agent}\b", command) is not None
    )


# -- reading and writing with the file's own formatting ---------------------------------------


def _indent_of(text: str) -> int | str:
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" \t")
        if stripped and len(stripped) < len(line):
            lead = line[: len(line) - len(stripped)]
            return lead if "\t" in lead else len(lead)
    return 2


def _load(path: Path) -> tuple[dict[str, Any], str | None]:
    if not path.exists():
        return {}, None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError(f"cannot read {path}: {exc}") from exc
    if not text.strip():
        return {}, text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InstallError(
            f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or move it, then retry"
        ) from exc
    if not isinstance(data, dict):
        raise InstallError(f"{path} holds a JSON {type(data).__name__}, not an object; fix it")
    return data, text


def _dump(data: dict[str, Any], original: str | None) -> str:
    indent = _indent_of(original) if original else 2
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    newline = original is None or original.endswith("\n")
    return text + "\n" if newline else text


def _section(data: dict[str, Any], key: str, path: Path, where: str) -> dict[str, Any]:
    value = data.setdefault(key, {})
    if not isinstance(value, dict):
        raise InstallError(f"{path}: {where}{key!r} is not an object; fix it by hand")
    return value


def _list(data: dict[str, Any], key: str, path: Path, where: str) -> list[Any]:
    value = data.setdefault(key, [])
    if not isinstance(value, list):
        raise InstallError(f"{path}: {where}{key!r} is not a list; fix it by hand")
    return value


# -- entries per agent -------------------------------------------------------------------------


def _entry(agent: str, command: str, timeout_s: float, max_attempts: int) -> dict[str, Any]:
    seconds = int(timeout_s) + TIMEOUT_HEADROOM_S
    if agent == "cursor":
        return {"command": command, "loop_limit": max_attempts, "timeout": seconds}
    if agent == "gemini":
        hook = {"name": GEMINI_HOOK_NAME, "type": "command", "command": command}
        return {"hooks": [{**hook, "timeout": seconds * 1000}]}
    return {"hooks": [{"type": "command", "command": command, "timeout": seconds}]}


def _events(agent: str) -> tuple[str, ...]:
    return {"claude": ("Stop", "SubagentStop"), "codex": ("Stop",), "cursor": ("stop",)}.get(
        agent, ("AfterAgent",)
    )


def _entry_is_ours(entry: object, agent: str) -> bool:
    if not isinstance(entry, dict):
        return False
    if agent == "cursor":
        return _is_ours(entry.get("command"), agent)
    hooks = entry.get("hooks")
    return isinstance(hooks, list) and any(
        isinstance(h, dict) and _is_ours(h.get("command"), agent) for h in hooks
    )


def _set_gemini_flag(entries: list[Any]) -> bool:
    """Whether our existing entry records having turned tools.enableHooks on."""
    for entry in entries:
        for hook in entry.get("hooks", []) if isinstance(entry, dict) else []:
            if isinstance(hook, dict) and str(hook.get("description", "")).endswith(
                GEMINI_ENABLED_NOTE
            ):
                return True
    return False


def _merge(data: dict[str, Any], agent: str, entry: dict[str, Any], path: Path) -> None:
    if agent == "cursor":
        data.setdefault("version", 1)
    if agent == "gemini":
        tools = _section(data, "tools", path, "")
        hooks = data.get("hooks")
        previous = hooks.get("AfterAgent") if isinstance(hooks, dict) else None
        ours = (
            [e for e in previous if _entry_is_ours(e, agent)] if isinstance(previous, list) else []
        )
        we_set = _set_gemini_flag(ours) or tools.get("enableHooks") is not True
        entry["hooks"][0]["description"] = GEMINI_DESCRIPTION + (
            GEMINI_ENABLED_NOTE if we_set else ""
        )
        tools["enableHooks"] = True
    hooks = _section(data, "hooks", path, "")
    for event in _events(agent):
        entries = _list(hooks, event, path, "hooks.")
        ours = [i for i, e in enumerate(entries) if _entry_is_ours(e, agent)]
        if ours:
            entries[ours[0]] = entry
            for i in reversed(ours[1:]):
                del entries[i]
        else:
            entries.append(entry)


def _remove(data: dict[str, Any], agent: str) -> bool:
    """Drop our entries, and the containers only they filled; True if anything was ours."""
    hooks = data.get("hooks")
    if not isinstance(hooks, dict):
        return False
    found = we_set = False
    for event in _events(agent):
        entries = hooks.get(event)
        if not isinstance(entries, list):
            continue
        we_set = we_set or _set_gemini_flag([e for e in entries if _entry_is_ours(e, agent)])
        kept = [e for e in entries if not _entry_is_ours(e, agent)]
        if len(kept) != len(entries):
            found = True
            if kept:
                hooks[event] = kept
            else:
                del hooks[event]
    if not found:
        return False
    if not hooks:
        del data["hooks"]
    tools = data.get("tools")
    if agent == "gemini" and we_set and isinstance(tools, dict):
        tools.pop("enableHooks", None)
        if not tools:
            del data["tools"]
    return True


def _is_empty(data: dict[str, Any], agent: str) -> bool:
    return not data or (agent == "cursor" and set(data) == {"version"})


def install(
    agent: str, project: Path, *, command: str, timeout_s: float, max_attempts: int
) -> Change:
    path = project / ADAPTERS[agent].settings_path
    data, original = _load(path)
    hooks = data.get("hooks")
    had = isinstance(hooks, dict) and any(
        isinstance(hooks.get(event), list) and any(_entry_is_ours(e, agent) for e in hooks[event])
        for event in _events(agent)
    )
    _merge(data, agent, _entry(agent, f"{command} hook {agent}", timeout_s, max_attempts), path)
    text = _dump(data, original)
    if text == original:
        return Change(agent, path, "unchanged")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return Change(agent, path, "updated" if had else "installed")


def uninstall(agent: str, project: Path) -> Change:
    path = project / ADAPTERS[agent].settings_path
    data, original = _load(path)
    if original is None or not _remove(data, agent):
        return Change(agent, path, "absent")
    if _is_empty(data, agent):
        path.unlink()
    else:
        path.write_text(_dump(data, original), encoding="utf-8")
    return Change(agent, path, "removed")
