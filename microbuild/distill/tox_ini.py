"""tox's ini formats: ``tox.ini``, ``[tox:tox]`` in setup.cfg, ``legacy_tox_ini`` in pyproject.

Values are read as tox 4 reads them: comments stripped, factor-conditional lines (``py311,lint:
cmd``, ``!win: cmd``) kept only for the environments they name, ``\\`` continuations joined,
then substituted (:mod:`microbuild.distill.tox_env`) and split into arguments with shlex.
"""

from __future__ import annotations

import configparser
import platform
import re
import sys
from pathlib import Path

from microbuild.distill.tox_env import (
    Context,
    ToxConfig,
    ToxConfigError,
    ToxEnv,
    dep_line,
    escape,
    expand_generative,
    finish_dirs,
    normal_dir,
    split_line,
    up_from,
)

_COMMENT_RE = re.compile(r"(\s)*(?<!\\)#.*")
_MARKER_RE = re.compile(r":(\s|$)")
_FACTOR_RE = re.compile(r"!?[\w.*?\[\]][\w.*?\[\]-]*|")
_ERRORS = {
    configparser.MissingSectionHeaderError: "text before the first [section]",
    configparser.DuplicateSectionError: "a section twice",
    configparser.DuplicateOptionError: "a key twice in one section",
    configparser.ParsingError: "a line that is not `key = value`",
}
_ALIASES = {
    "set_env": ("set_env", "setenv"),
    "change_dir": ("change_dir", "changedir"),
    "allowlist_externals": ("allowlist_externals", "whitelist_externals"),
    "env_list": ("env_list", "envlist"),
    "skip_install": ("skip_install",),
    "dependency_groups": ("dependency_groups",),
}


def split_top(text: str) -> list[str]:
    """Split on commas outside ``{...}``: ``py{39,310}-a, lint`` is two entries."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def active_factors(env: str) -> set[str]:
    """tox's: the factors of the name, the platform and the machine."""
    return {*env.split("-"), sys.platform, platform.machine().lower()}


def _factor_groups(prefix: str) -> list[list[tuple[str, bool]]] | None:
    groups: list[list[tuple[str, bool]]] = []
    for entry in split_top(prefix):
        for variant in expand_generative(entry.strip()):
            factors = variant.split("-")
            if not all(_FACTOR_RE.fullmatch(f) for f in factors):
                return None
            groups.append([(f.removeprefix("!"), f.startswith("!")) for f in factors])
    return groups


def filter_for_env(value: str, env: str) -> str:
    """The lines of a value that apply to ``env`` (tox's ``filter_for_env``)."""
    current = active_factors(env)
    kept: list[str] = []
    continuation = False
    pending_skip = False
    for line in value.split("\n"):
        marker = _MARKER_RE.search(line)
        groups = _factor_groups(line[: marker.start()].strip()) if marker else None
        content = line[marker.start() + 1 :].strip() if marker and groups is not None else line
        if groups is None:
            if pending_skip and not continuation and not content.endswith("\\"):
                pending_skip = False
                continue
            if content:
                kept.append(content)
            continuation = content.endswith("\\") if content else continuation
            pending_skip = False
        elif any(all((name in current) ^ negate for name, negate in g) for g in groups):
            kept.append(content)
            continuation = content.endswith("\\")
            pending_skip = False
        else:
            pending_skip = content.endswith("\\")
    return "\n".join(kept)


def process_raw(value: str, env: str | None) -> str:
    """Comments out, factor lines filtered, continuations joined: tox's ``process_raw``."""
    lines = [
        _COMMENT_RE.sub("", line).replace("\\#", "#")
        for line in value.split("\n")
        if not line.startswith("#")
    ]
    text = "\n".join(lines).replace("\r", "")
    if env is not None:
        text = filter_for_env(text, env)
    return text.replace("\\\n", "")


class IniTox(ToxConfig):
    def __init__(
        self, root: Path, file: str = "tox.ini", text: str | None = None, core: str = "tox"
    ) -> None:
        super().__init__(root, file)
        self.core = core
        self.parser = configparser.ConfigParser(interpolation=None, strict=False)
        if text is None:
            text = (root / file).read_text(encoding="utf-8", errors="replace")
        try:
            self.parser.read_string(text)
        except configparser.Error as err:
            # configparser quotes the offending line: the message names only where and what.
            line = getattr(err, "lineno", None)
            if isinstance(err, configparser.ParsingError) and err.errors:
                line = err.errors[0][0]
            where = f" at line {line}" if line else ""
            raise ToxConfigError(
                f"{file} cannot be parsed{where}: {_ERRORS.get(type(err), 'invalid ini')}"
            ) from None

    def core_section(self) -> str:
        return self.core

    def declared_envs(self) -> list[str]:
        raw = self._get(self.core, "env_list")
        out: list[str] = []
        for line in split_top(process_raw(raw or "", None).replace("\n", ",")):
            line = line.strip()
            if line:
                out += [e for e in expand_generative(line) if e not in out]
        return out

    def core_labels(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for line in process_raw(self._get(self.core, "labels") or "", None).split("\n"):
            label, eq, envs = line.partition("=")
            if eq and label.strip():
                out[label.strip()] = [
                    e
                    for entry in split_top(envs)
                    if entry.strip()
                    for e in expand_generative(entry.strip())
                ]
        return out

    def env_labels(self, env: str) -> list[str]:
        return [w for w in re.split(r"[,\s]+", self._raw(env, "labels") or "") if w]

    def defined_envs(self) -> list[str]:
        out: list[str] = []
        for section in self.parser.sections():
            if section.startswith("testenv:"):
                out += [n for n in expand_generative(section[8:]) if n not in out]
        return out

    def known_factors(self) -> set[str]:
        """Also those of factor-conditional lines (``coverage: ...``), as tox registers them."""
        found = super().known_factors()
        for section in self.parser.sections():
            if section == self.core or section == "testenv" or section.startswith("testenv:"):
                for value in self.parser[section].values():
                    for line in value.split("\n"):
                        marker = _MARKER_RE.search(line)
                        groups = _factor_groups(line[: marker.start()].strip()) if marker else None
                        found.update(name for group in groups or [] for name, _ in group)
        return found

    def _get(self, section: str, key: str) -> str | None:
        if not self.parser.has_section(section):
            return None
        for name in _ALIASES.get(key, (key,)):
            if self.parser.has_option(section, name):
                return self.parser.get(section, name)
        return None

    def _sections(self, env: str) -> list[str]:
        """The env's own section, then its bases (``[testenv]`` unless it names others)."""
        own = next(
            (
                s
                for s in self.parser.sections()
                if s.startswith("testenv:") and env in expand_generative(s[8:])
            ),
            None,
        )
        base_raw = self._get(own, "base") if own else None
        bases = re.split(r"[,\s]+", base_raw.strip()) if base_raw else ["testenv"]
        chain = [own] if own else []
        for base in bases:
            chain += [s for s in (base, f"testenv:{base}") if s and s not in chain]
        return chain

    def _raw(self, env: str, key: str) -> str | None:
        for section in self._sections(env):
            raw = self._get(section, key)
            if raw is not None:
                return process_raw(raw, env)
        return None

    def raw_reference(self, section: str | None, key: str, ctx: Context) -> str | None:
        if section is None:
            raw = self._raw(ctx.env, key)
            if raw is not None:
                return raw
            section = self.core
        value = self._get(section, key)
        return None if value is None else process_raw(value, ctx.env)

    def raw_set_env(self, env: str) -> dict[str, str]:
        return self._set_env_lines(self._raw(env, "set_env") or "", env, 0)

    def _set_env_lines(self, text: str, env: str, depth: int) -> dict[str, str]:
        """``KEY=VALUE`` lines; a line whose key is a substitution (``{[base]set_env}``,
        ``{tty:FORCE_COLOR=1}``) is substituted first and read as lines, as tox does."""
        if depth > 10:
            raise ToxConfigError(f"{self.file}: tox env {env}: set_env refers to itself")
        out: dict[str, str] = {}
        for line in text.split("\n"):
            key, eq, value = line.partition("=")
            if "{" in key or (not eq and "{" in line):
                reference = re.fullmatch(r"\s*\{\[([^\]]*)\]([-\w]+)\}\s*", line)
                ctx = Context(env, ".", ("set_env",), 1, [])
                if reference:
                    got = self.raw_reference(reference[1], reference[2], ctx) or ""
                else:
                    got = escape(self.expand(line, ctx))
                out.update(self._set_env_lines(got, env, depth + 1))
            elif eq and key.strip() and not key.strip().startswith("file|"):
                out[key.strip()] = value.strip()
        return out

    def read_env(self, name: str) -> ToxEnv:
        made: list[str] = []
        root_ctx = Context(name, ".", (), 0, made)
        raw_dir = self._raw(name, "change_dir")
        change_dir = (
            normal_dir(self.expand(raw_dir, root_ctx), self.file, name) if raw_dir else None
        )
        self.change_dir = change_dir
        up = up_from(change_dir)

        def lines(key: str, at: str) -> list[str]:
            found = self.expand_lines(self._raw(name, key) or "", Context(name, at, (), 0, made))
            return [line.strip() for line in found if line.strip()]

        def values(key: str) -> list[str]:
            return [self.plain(line) for line in lines(key, ".")]

        def words(key: str) -> list[str]:
            return [w for line in values(key) for w in re.split(r"[,\s]+", line) if w]

        set_env, shell_env = self.set_env_values(name, up, made)
        skip = (self._raw(name, "skip_install") or "").strip().lower() == "true"
        package = (self._raw(name, "package") or "").strip().lower()
        return ToxEnv(
            name=name,
            deps=tuple(dep_line(d) for d in values("deps")),
            extras=tuple(words("extras")),
            dependency_groups=tuple(words("dependency_groups")),
            skip_install=skip or package == "skip",
            set_env=set_env,
            commands_pre=self.commands([split_line(c) for c in lines("commands_pre", up)]),
            commands=self.commands([split_line(c) for c in lines("commands", up)]),
            commands_post=self.commands([split_line(c) for c in lines("commands_post", up)]),
            change_dir=change_dir,
            make_dirs=finish_dirs(self.root, change_dir, made),
            allowlist_externals=tuple(words("allowlist_externals")),
            shell_env=shell_env,
        )


__all__ = ["IniTox", "filter_for_env", "process_raw", "split_top"]
