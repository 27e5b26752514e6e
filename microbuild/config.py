"""Load and validate a project's microbuild configuration.

The configuration lives in ``microbuild.toml`` or in the ``[tool.microbuild]`` table of
``pyproject.toml``. Every problem is reported as a single :class:`ConfigError` line that names
the file, the line and the key, because users (and agents) fix configs from the message alone.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from microbuild.errors import ConfigError

__all__ = [
    "CONFIG_FILENAME",
    "PYPROJECT_FILENAME",
    "CheckConfig",
    "ConfigError",
    "Project",
    "ProjectConfig",
    "SidecarConfig",
    "SnapshotConfig",
    "config_hash",
    "find_project",
    "load_config",
    "parse_size",
]

CONFIG_FILENAME = "microbuild.toml"
PYPROJECT_FILENAME = "pyproject.toml"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


# ---------------------------------------------------------------------------
# sizes

_SIZE_RE = re.compile(
    r"\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?:(?P<unit>[kmgt])(?:ib|i|b)?|b)?\s*",
    re.IGNORECASE,
)
_UNIT = {"k": KiB, "m": MiB, "g": GiB, "t": TiB}


def parse_size(value: str | int) -> int:
    """Convert ``4GiB``, ``512M``, ``100k``, ``1.5GiB`` or plain bytes to bytes.

    K, M, G and T are 1024-based with or without the ``i``/``iB``/``B`` suffix, case-insensitive.
    Binary for both spellings, because memory and tmpfs limits are page-based and
    ``4G`` meaning 4,000,000,000 would be off by 7% for every limit.
    """
    return _size_bytes(value)


def _size_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a size like '4GiB' or a number of bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value!r}")
        return value
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"invalid size {value!r}: expected a number of bytes or a number with a unit "
            "K, M, G or T (e.g. '512MiB', '4GiB', '100k')"
        )
    unit = match["unit"]
    multiplier = _UNIT[unit.lower()] if unit else 1
    whole, _, frac = match["num"].partition(".")
    frac = frac.rstrip("0")
    scaled = int(whole or "0") * multiplier
    if frac:
        scaled += int(frac) * multiplier // 10 ** len(frac)
    return scaled


def _format_size(size: int) -> str:
    for name, unit in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


# ---------------------------------------------------------------------------
# schema

_CHECK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FROZEN = ConfigDict(extra="forbid", frozen=True)


def _require_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _require_absolute(value: str) -> str:
    _require_plain(value)
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value


def _require_plain(value: str) -> str:
    """No NUL bytes and no lone surrogates: such text cannot reach the kernel or JSON."""
    if "\0" in value:
        raise ValueError(f"must not contain a NUL byte, got {value!r}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"must be valid UTF-8 text, got {value!r}") from None
    return value


class SnapshotConfig(BaseModel):
    """How to build the dependency snapshot that sidecars start from."""

    model_config = _FROZEN

    setup: tuple[str, ...] = ()
    """Shell commands that install dependencies, run in order in the workspace."""
    inputs: tuple[str, ...] = ()
    """Glob patterns (relative to the project root, ``**`` allowed) whose content keys the
    snapshot."""
    timeout_s: float = Field(default=1800, gt=0, strict=True, allow_inf_nan=False)

    @field_validator("setup")
    @classmethod
    def _commands_not_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for command in value:
            _require_text(command)
        return value

    @field_validator("inputs")
    @classmethod
    def _patterns_relative(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            _require_text(pattern)
            if PurePosixPath(pattern).is_absolute():
                raise ValueError(
                    f"patterns are relative to the project root, got absolute {pattern!r}"
                )
        return value


_SIZE_MINIMUM = {"memory": 16 * MiB, "tmp_size": 1 * MiB, "disk": 16 * MiB}


class SidecarConfig(BaseModel):
    """Limits and environment of the isolated sidecar that runs the checks."""

    model_config = _FROZEN

    runtime: Literal["auto", "namespace", "process"] = "auto"
    memory: int = Field(default=4 * GiB, strict=True)
    """Memory limit in bytes; the config may say ``"4GiB"``."""
    pids: int = Field(default=1024, ge=8, le=4_194_304, strict=True)
    cpus: float | None = Field(default=2.0, gt=0, le=4096, strict=True, allow_inf_nan=False)
    """CPU limit; ``None`` (``"none"`` in TOML, which has no null) means unlimited."""
    network: Literal["none", "host"] = "none"
    idle_suspend_s: float = Field(default=300, ge=0, strict=True, allow_inf_nan=False)
    """Seconds of inactivity before the sidecar is suspended; 0 never suspends."""
    expose: tuple[Annotated[str, AfterValidator(_require_absolute)], ...] = ()
    """Extra absolute host paths made visible read-only in the sidecar."""
    rootfs: str | None = None
    """Absolute path of a root filesystem directory used instead of the host's."""
    env: dict[str, str] = Field(default_factory=dict)
    tmp_size: int = Field(default=1 * GiB, strict=True)
    """Size of the sidecar's ``/tmp`` tmpfs in bytes; a size of 0 would mean unlimited."""
    disk: int | None = Field(default=10 * GiB, strict=True)
    """Size of the sidecar's writable layer (everything it writes outside ``/tmp``): a
    filesystem of its own, so a runaway write fills it and not the host's disk. ``"none"``
    means unlimited: the layer shares the state dir's filesystem. That is for machines with
    no loop devices (some containers), where a limited sidecar cannot be made at all; the
    `process` runtime never limits the disk."""

    @field_validator("disk", mode="before")
    @classmethod
    def _disk_none_means_unlimited(cls, value: object, info: ValidationInfo) -> int | None:
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        return cls._to_bytes(value, info)

    @field_validator("memory", "tmp_size", mode="before")
    @classmethod
    def _to_bytes(cls, value: object, info: ValidationInfo) -> int:
        size = _size_bytes(value)
        minimum = _SIZE_MINIMUM[info.field_name or ""]
        if size < minimum:
            raise ValueError(f"must be at least {_format_size(minimum)}, got {value!r}")
        if size > 1 << 50:
            raise ValueError(f"must be at most 1PiB, got {value!r}")
        return size

    @field_validator("cpus", mode="before")
    @classmethod
    def _none_means_unlimited(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        return value

    @field_validator("rootfs")
    @classmethod
    def _rootfs_absolute(cls, value: str | None) -> str | None:
        return None if value is None else _require_absolute(value)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"invalid environment variable name {name!r}")
            _require_plain(name)
            _require_plain(text)
        return value


class CheckConfig(BaseModel):
    """One named validation command, run in the sidecar."""

    model_config = _FROZEN

    name: str
    command: str
    timeout_s: float = Field(default=600, gt=0, strict=True, allow_inf_nan=False)
    network: Literal["none", "host"] = "none"
    parser: str = "auto"
    """Identifier of the output parser that turns the command's output into findings."""

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        if not _CHECK_NAME_RE.fullmatch(value):
            raise ValueError(
                f"must start with a letter or digit and use only letters, digits, '_', '.' "
                f"and '-', got {value!r}"
            )
        return value

    @field_validator("command", "parser")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return _require_text(value)


class HooksConfig(BaseModel):
    """How agent stop hooks behave (`[hooks]`)."""

    model_config = _FROZEN

    max_attempts: int = Field(default=5, ge=1, le=100, strict=True)
    """Times in a row a session's stop may be blocked before the agent is let go anyway."""
    timeout_s: float = Field(default=240, ge=5, le=3600, strict=True, allow_inf_nan=False)
    """The hook's own time budget; keep it below the agent's hook timeout."""


class ProjectConfig(BaseModel):
    """The whole microbuild configuration of a project.

    The TOML key for checks is ``check`` (so each one is a ``[[check]]`` table); in Python
    the field is ``checks``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    snapshot: SnapshotConfig = SnapshotConfig()
    sidecar: SidecarConfig = SidecarConfig()
    checks: tuple[CheckConfig, ...] = Field(default=(), validation_alias="check")
    hooks: HooksConfig = HooksConfig()
    report_tokens: int = Field(default=2000, ge=200, le=200_000, strict=True)
    """The report's budget in tokens (o200k); what does not fit is counted and left out."""

    @field_validator("checks")
    @classmethod
    def _names_unique(cls, value: tuple[CheckConfig, ...]) -> tuple[CheckConfig, ...]:
        seen: dict[str, int] = {}
        for index, check in enumerate(value):
            if check.name in seen:
                raise PydanticCustomError(
                    "duplicate_check_name",
                    f"duplicate check name {check.name!r} (already used by check "
                    f"#{seen[check.name] + 1}); check names must be unique",
                    {"index": index},
                )
            seen[check.name] = index
        return value


_ROOT_KEYS = ("snapshot", "sidecar", "check", "hooks", "report_tokens")
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "snapshot": SnapshotConfig,
    "sidecar": SidecarConfig,
    "check": CheckConfig,
    "hooks": HooksConfig,
}


@dataclass(frozen=True)
class Project:
    """A located project: where it lives, where its config came from, and the config."""

    root: Path
    config_path: Path
    config: ProjectConfig


# ---------------------------------------------------------------------------
# loading

_Loc = tuple[str | int, ...]
_PYPROJECT_PREFIX: _Loc = ("tool", "microbuild")


def load_config(path: Path) -> ProjectConfig:
    """Read and validate ``microbuild.toml``, or ``[tool.microbuild]`` of a ``pyproject.toml``."""
    text, data = _read_toml(path)
    prefix: _Loc = ()
    if path.name == PYPROJECT_FILENAME:
        prefix = _PYPROJECT_PREFIX
        section = _pyproject_section(data)
        if section is None:
            raise ConfigError(
                "no [tool.microbuild] table; add one, or put the configuration in "
                f"{CONFIG_FILENAME}",
                path=path,
                key="tool.microbuild",
            )
        if not isinstance(section, dict):
            line = _KeyLines(text).find(prefix)
            raise ConfigError(
                f"[tool] microbuild: expected a table, got {_show(section)}",
                path=path,
                line=line,
                key="tool.microbuild",
            )
        data = section
    _check_root_keys(data, text, path, prefix)
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as err:
        raise _to_config_error(err, text, path, prefix) from None


def find_project(start: Path) -> Project:
    """Find the nearest directory at or above ``start`` that configures microbuild.

    In each directory ``microbuild.toml`` is looked for first, then a ``pyproject.toml`` with a
    ``[tool.microbuild]`` table; a ``pyproject.toml`` without one is not a project marker.
    """
    start = start.resolve()
    if start.is_file():
        start = start.parent
    for directory in (start, *start.parents):
        config_file = directory / CONFIG_FILENAME
        pyproject = directory / PYPROJECT_FILENAME
        pyproject_configures = pyproject.is_file() and _configures_microbuild(pyproject)
        if config_file.is_file():
            if pyproject_configures:
                line = _KeyLines(_read_toml(pyproject)[0]).find(_PYPROJECT_PREFIX)
                where = f" (line {line})" if line is not None else ""
                raise ConfigError(
                    f"{PYPROJECT_FILENAME} in {directory} also has a [tool.microbuild] "
                    f"table{where}; keep only one of the two configurations",
                    path=config_file,
                )
            return Project(directory, config_file, load_config(config_file))
        if pyproject_configures:
            return Project(directory, pyproject, load_config(pyproject))
    raise ConfigError(
        f"no {CONFIG_FILENAME} found in {start} or its parents; run `microbuild init` to create one"
    )


def config_hash(config: ProjectConfig) -> str:
    """Hash the checks (what a cached check result depends on) into a stable hex digest."""
    payload = [check.model_dump(mode="json") for check in config.checks]
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_TOML_ERROR_RE = re.compile(
    r"(?P<msg>.*?)\s*\(at (?:line (?P<line>\d+), column \d+|end of document)\)"
)


def _read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read the file: {err.strerror or err}", path=path) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"not valid UTF-8 (byte {err.start}); save the file as UTF-8", path=path
        ) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        line: int | None = None
        match = _TOML_ERROR_RE.fullmatch(message)
        if match is not None:
            message = match["msg"]
            line = int(match["line"]) if match["line"] else text.rstrip("\r\n").count("\n") + 1
        raise ConfigError(f"invalid TOML: {message}", path=path, line=line) from None


def _pyproject_section(data: Mapping[str, object]) -> object | None:
    tool = data.get("tool")
    return tool.get("microbuild") if isinstance(tool, dict) else None


def _configures_microbuild(pyproject: Path) -> bool:
    return _pyproject_section(_read_toml(pyproject)[1]) is not None


def _check_root_keys(data: Mapping[str, object], text: str, path: Path, prefix: _Loc) -> None:
    """Reject unknown top-level keys (including the Python-only spelling ``checks``)."""
    for key, value in data.items():
        if key in _ROOT_KEYS:
            continue
        is_table = isinstance(value, dict) or (
            isinstance(value, list) and bool(value) and isinstance(value[0], dict)
        )
        kind = "table" if is_table else "key"
        raise ConfigError(
            _where(prefix) + f"unknown {kind} {key!r}{_suggest(key, _ROOT_KEYS)}",
            path=path,
            line=_KeyLines(text).find((*prefix, key)),
            key=key,
        )


def _to_config_error(err: ValidationError, text: str, path: Path, prefix: _Loc) -> ConfigError:
    """Turn pydantic's first error into a one-line message pointing at the offending line."""
    error = err.errors(include_url=False)[0]
    loc: _Loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")

    if kind == "duplicate_check_name":
        loc = (*loc, ctx["index"], "name")

    if kind in ("extra_forbidden", "missing"):
        table, key = loc[:-1], str(loc[-1])
        if kind == "missing":
            detail = f"missing required key {key!r}"
        else:
            detail = f"unknown key {key!r}{_suggest(key, _valid_keys(table))}"
        message = _where(prefix + table) + detail
    else:
        table, rest = _split(loc)
        label = _label(rest)
        message = _where(prefix + table) + (f"{label}: " if label else "")
        message += _describe(kind, error["msg"], ctx, value, (*prefix, *loc))

    return ConfigError(
        message,
        path=path,
        line=_KeyLines(text).find((*prefix, *loc)),
        key=_dotted(loc) or None,
    )


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "tuple_type": "an array",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def _describe(kind: str, msg: str, ctx: Mapping[str, Any], value: object, loc: _Loc) -> str:
    """Say what was expected and what was found, in TOML terms."""
    got = f"got {_show(value)}"
    if loc[-1:] == ("check",) and kind == "tuple_type" and isinstance(value, dict):
        header = ".".join(map(str, loc))
        return f"expected an array of tables: write each check as [[{header}]], not [{header}]"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, {got}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}, {got}"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx['gt'])}, {got}"
    if kind == "greater_than_equal":
        return f"must be at least {_number(ctx['ge'])}, {got}"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "duplicate_check_name":
        return msg
    return f"{msg[:1].lower()}{msg[1:]}, {got}"


def _number(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _split(loc: _Loc) -> tuple[_Loc, _Loc]:
    """Split a location into its table (``sidecar``, ``check #2``) and the key inside it."""
    if loc and loc[0] == "check" and len(loc) >= 2 and isinstance(loc[1], int):
        return loc[:2], loc[2:]
    if loc and loc[0] in ("snapshot", "sidecar") and len(loc) >= 2:
        return loc[:1], loc[1:]
    return (), loc


def _label(loc: _Loc) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f" #{part + 1}")
        else:
            parts.append(f".{part}" if parts else part)
    return "".join(parts)


def _where(table: _Loc) -> str:
    return f"[{_label(table)}] " if table else ""


def _dotted(loc: _Loc) -> str:
    parts: list[str] = []
    for part in loc:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}" if parts else part)
    return "".join(parts)


def _valid_keys(table: _Loc) -> tuple[str, ...]:
    if not table:
        return _ROOT_KEYS
    model = _SECTION_MODELS.get(str(table[0]))
    depth = 2 if table[0] == "check" else 1
    return tuple(model.model_fields) if model is not None and len(table) == depth else ()


def _suggest(key: str, valid: tuple[str, ...]) -> str:
    if not valid:
        return ""
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return " (expected one of: " + ", ".join(valid) + ")"


# ---------------------------------------------------------------------------
# locating keys in the TOML source

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class _KeyLines:
    """Map key paths of an already-valid TOML document to the 1-based line they are written on.

    tomllib returns plain dicts without positions, so this walks the source itself: headers,
    dotted and quoted keys, inline tables and arrays (element paths get their index), arrays of
    tables (``[[check]]`` number N is path ``("check", N - 1)``), and multi-line strings.
    """

    def __init__(self, text: str) -> None:
        self._s = text
        self._i = 0
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._array_tables: dict[_Loc, int] = {}
        self.lines: dict[_Loc, int] = {}
        with contextlib.suppress(IndexError, ValueError):  # a line is a hint; keep what we have
            self._document()

    def find(self, loc: _Loc) -> int | None:
        """Line of ``loc``, or of its nearest written ancestor (a missing key -> its table)."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def _record(self, loc: _Loc, pos: int) -> None:
        self.lines.setdefault(loc, bisect.bisect_right(self._line_starts, pos))

    def _document(self) -> None:
        table: _Loc = ()
        while True:
            self._skip(newlines=True)
            if self._i >= len(self._s):
                return
            pos = self._i
            if self._s.startswith("[[", pos):
                self._i += 2
                table = self._header(self._key(), pos, new_element=True)
                self._skip()
                self._expect("]]")
            elif self._s[pos] == "[":
                self._i += 1
                table = self._header(self._key(), pos, new_element=False)
                self._skip()
                self._expect("]")
            else:
                self._key_value(table)

    def _header(self, keys: list[str], pos: int, *, new_element: bool) -> _Loc:
        loc: _Loc = ()
        for n, key in enumerate(keys):
            loc = (*loc, key)
            self._record(loc, pos)
            if new_element and n == len(keys) - 1:
                index = self._array_tables.get(loc, 0)
                self._array_tables[loc] = index + 1
                loc = (*loc, index)
                self._record(loc, pos)
            elif loc in self._array_tables:
                loc = (*loc, self._array_tables[loc] - 1)
        return loc

    def _key_value(self, table: _Loc) -> None:
        pos = self._i
        loc = table
        for key in self._key():
            loc = (*loc, key)
            self._record(loc, pos)
        self._skip()
        self._expect("=")
        self._skip()
        self._value(loc)

    def _key(self) -> list[str]:
        keys: list[str] = []
        while True:
            self._skip()
            char = self._s[self._i]
            if char == '"':
                start = self._i
                self._basic_string()
                keys.append(tomllib.loads("k = " + self._s[start : self._i])["k"])
            elif char == "'":
                end = self._s.index("'", self._i + 1)
                keys.append(self._s[self._i + 1 : end])
                self._i = end + 1
            else:
                match = _BARE_KEY_RE.match(self._s, self._i)
                if match is None:
                    raise ValueError("expected a key")
                keys.append(match.group())
                self._i = match.end()
            self._skip()
            if self._s.startswith(".", self._i):
                self._i += 1
                continue
            return keys

    def _value(self, loc: _Loc) -> None:
        s = self._s
        if s.startswith('"""', self._i) or s.startswith("'''", self._i):
            self._multiline_string(s[self._i])
        elif s[self._i] == '"':
            self._basic_string()
        elif s[self._i] == "'":
            self._i = s.index("'", self._i + 1) + 1
        elif s[self._i] == "[":
            self._i += 1
            self._items(loc, "]", indexed=True)
        elif s[self._i] == "{":
            self._i += 1
            self._items(loc, "}", indexed=False)
        else:
            start = self._i
            while self._i < len(s) and s[self._i] not in ",]}#\r\n":
                self._i += 1
            if self._i == start:
                raise ValueError("expected a value")

    def _items(self, loc: _Loc, close: str, *, indexed: bool) -> None:
        index = 0
        while True:
            self._skip(newlines=True)
            if self._s[self._i] == close:
                self._i += 1
                return
            if indexed:
                item = (*loc, index)
                self._record(item, self._i)
                self._value(item)
            else:
                self._key_value(loc)
            self._skip(newlines=True)
            if self._s[self._i] == ",":
                self._i += 1
                index += 1

    def _basic_string(self) -> None:
        self._i += 1
        while self._s[self._i] != '"':
            self._i += 2 if self._s[self._i] == "\\" else 1
        self._i += 1

    def _multiline_string(self, quote: str) -> None:
        self._i += 3
        while not self._s.startswith(quote * 3, self._i):
            self._i += 2 if quote == '"' and self._s[self._i] == "\\" else 1
        while self._i < len(self._s) and self._s[self._i] == quote:
            self._i += 1

    def _skip(self, *, newlines: bool = False) -> None:
        """Skip spaces and tabs, plus newlines and comments when ``newlines`` is set."""
        s = self._s
        while self._i < len(s):
            char = s[self._i]
            if char in " \t" or (newlines and char in "\r\n"):
                self._i += 1
            elif char == "#" and newlines:
                end = s.find("\n", self._i)
                self._i = len(s) if end < 0 else end
            else:
                return

    def _expect(self, token: str) -> None:
        if not self._s.startswith(token, self._i):
            raise ValueError(f"expected {token!r}")
        self._i += len(token)
