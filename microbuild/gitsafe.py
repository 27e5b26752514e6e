"""git on the host with the repository's executable configuration switched off.

A repository's `.git/config` is the repository's, not the user's: an agent (or whoever made the
checkout) can write `core.fsmonitor = ./evil`, a `filter.x.clean` that `.gitattributes` applies,
a `core.hooksPath` whose `post-index-change` fires on `read-tree`, or an `include.path` that
brings any of those in. microbuild runs git on the host for every validate (the stop hook does it
unasked), so every git command it runs goes through `argv()`, which puts `-c` overrides first:
they beat every config file. Filters defined by the user's own (global or system) config, such
as git-lfs, are the user's choice and stay; those defined by the repository's config, or a file it
includes, are emptied, which git takes as no filter.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

__all__ = ["ALWAYS", "argv", "overrides"]

ALWAYS: tuple[str, ...] = (
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.pager=cat",
    "core.editor=false",
    "sequence.editor=false",
    "protocol.allow=never",
    "credential.helper=",
    "diff.external=",
)
"""Overrides for every call: no fsmonitor, no hooks (a hook under /dev/null cannot exist), no
pager or editor, no transport of any kind (microbuild never fetches), no credential helper."""

_TRUSTED_SCOPES = frozenset({"global", "system"})
_DRIVER_KEY = re.compile(r"^(?P<kind>filter|diff|merge)\.(?P<name>.+)\.(?P<key>[^.]+)$")
# The keys that name a program to run, per driver kind.
_PROGRAM_KEYS = {
    "filter": ("clean", "smudge", "process"),
    "diff": ("textconv", "command"),
    "merge": ("driver",),
}

_cache: dict[tuple[str, str], tuple[str, ...]] = {}
_cache_lock = threading.Lock()


def argv(root: Path | str, *args: str) -> list[str]:
    """`git -C root <overrides> args…`: a git command line that runs nothing the repository
    configured."""
    return ["git", "-C", str(root), *overrides(root), *args]


def overrides(root: Path | str) -> list[str]:
    """The `-c` options for a git call in `root`."""
    flags: list[str] = []
    for setting in (*ALWAYS, *_driver_overrides(Path(root))):
        flags += ["-c", setting]
    return flags


def _driver_overrides(root: Path) -> tuple[str, ...]:
    """Empty programs for every filter, diff and merge driver the repository's own config
    defines (through includes too), and `required = false` for its filters."""
    stamp = _stamp(root)
    key = (str(root), stamp)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    found = _repository_drivers(root)
    settings: list[str] = []
    for kind, name in sorted(found):
        if any(c in name for c in "\n\0="):
            continue
        settings += [f"{kind}.{name}.{program}=" for program in _PROGRAM_KEYS[kind]]
        if kind == "filter":
            settings.append(f"filter.{name}.required=false")
    result = tuple(settings)
    with _cache_lock:
        if len(_cache) > 64:
            _cache.clear()
        _cache[key] = result
    return result


def _repository_drivers(root: Path) -> set[tuple[str, str]]:
    """(kind, name) of the drivers whose programs come from a config the user did not write.
    `git config` itself runs no program, whatever the config says."""
    try:
        proc = subprocess.run(
            [
                *("git", "-C", str(root), "-c", "core.fsmonitor=false", "config"),
                *("-z", "--show-scope", "--name-only", "--get-regexp"),
                r"^(filter|diff|merge)\.",
            ],
            capture_output=True,
            check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except FileNotFoundError:
        return set()
    found: set[tuple[str, str]] = set()
    fields = proc.stdout.decode(errors="replace").split("\0")
    for scope, name in zip(fields[::2], fields[1::2], strict=False):
        match = _DRIVER_KEY.match(name.strip())
        if match is None or scope.strip() in _TRUSTED_SCOPES:
            continue
        if match["key"] in _PROGRAM_KEYS[match["kind"]]:
            found.add((match["kind"], match["name"]))
    return found


def _stamp(root: Path) -> str:
    """What the repository's drivers depend on: its config files and the files they include,
    by size and times. An unknown git dir gives a fresh stamp, so nothing stale is used."""
    git_dir = root / ".git"
    paths = [git_dir / "config", git_dir / "config.worktree"]
    try:
        if git_dir.is_file():
            text = git_dir.read_text(errors="replace")
            target = Path(text.partition("gitdir:")[2].strip() or ".")
            real = target if target.is_absolute() else root / target
            paths += [real / "config", real / "config.worktree"]
            common = real / "commondir"
            if common.is_file():
                shared = Path(common.read_text().strip())
                paths.append((shared if shared.is_absolute() else real / shared) / "config")
    except OSError:
        return f"unknown {os.getpid()} {id(paths)}"
    parts = []
    for path in paths:
        parts.append(_stat(path))
        parts += [_stat(included) for included in _includes(path)]
    return "\n".join(parts)


_INCLUDE = re.compile(r"^\s*path\s*=\s*(?P<path>.+?)\s*$", re.M)


def _includes(config: Path, depth: int = 0) -> list[Path]:
    """The files `config` includes (`[include]`/`[includeIf]` paths), followed a few levels."""
    if depth > 4:
        return []
    try:
        text = config.read_text(errors="replace")
    except OSError:
        return []
    out: list[Path] = []
    for match in _INCLUDE.finditer(text):
        raw = match["path"].strip().strip('"')
        path = Path(os.path.expanduser(raw))
        if not path.is_absolute():
            path = config.parent / path
        out += [path, *_includes(path, depth + 1)]
    return out


def _stat(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path} -"
    return f"{path} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"
