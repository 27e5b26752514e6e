"""What the parsers share: sidecar paths made relative, project frames told from library frames,
Python tracebacks read, environment failures recognised, and text kept short."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from microbuild.report.model import Failure

MAX_LINE = 300
"""Characters kept of one message or excerpt line: a minified bundle must not flood the report."""
MAX_EXCERPT_LINES = 15
MAX_FAILURES = 5000
"""Failures kept per check: past that the renderer would drop them anyway."""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]")

_LIBRARY_MARKERS = (
    "site-packages/",
    "dist-packages/",
    "node_modules/",
    ".venv/",
    "venv/lib/",
    "/.tox/",
    ".cargo/registry/",
    "/rustc/",
    "/go/pkg/mod/",
    "<frozen",
    "<string>",
    "<anonymous>",
    "node:internal",
)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text) if "\x1b" in text else text


def clip(text: str, limit: int = MAX_LINE) -> str:
    text = text.rstrip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str) -> str:
    """The first non-blank line of `text`, clipped."""
    for line in text.splitlines():
        if line.strip():
            return clip(line.strip())
    return ""


def excerpt(lines: Iterable[str], limit: int = MAX_EXCERPT_LINES) -> str:
    """At most `limit` clipped lines, without leading or trailing blank lines or a common indent."""
    kept = [clip(line.replace("\t", "    ")) for line in lines]
    while kept and not kept[0].strip():
        kept.pop(0)
    while kept and not kept[-1].strip():
        kept.pop()
    if len(kept) > limit:
        kept = [*kept[: limit - 1], f"… ({len(kept) - limit + 1} more lines)"]
    indents = [len(line) - len(line.lstrip()) for line in kept if line.strip()]
    cut = min(indents, default=0)
    return "\n".join(line[cut:] for line in kept)


def relpath(path: str, workspace: str) -> str:
    """A sidecar path made relative to the project root; other paths unchanged but for `./`."""
    path = path.strip()
    root = workspace.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) + 1 :] or "."
    while path.startswith("./"):
        path = path[2:]
    return path


def is_project_file(path: str) -> bool:
    """Whether a (relativized) path is one of the project's own files, not a library's or the
    interpreter's."""
    if not path or path.startswith(("/", "..", "<")) or path[1:3] == ":\\":
        return False
    probe = "/" + path
    return not any(marker in probe for marker in _LIBRARY_MARKERS)


def to_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def module_names(paths: Iterable[str]) -> set[str]:
    """Every directory and module name along the project's own Python paths: the names an import
    of the project's own code can start with."""
    names: set[str] = set()
    for path in paths:
        if not is_project_file(path):
            continue
        for part in path.split("/"):
            names.add(part.removesuffix(".py"))
    return names


# ---------------------------------------------------------------- environment failures

_ENV_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"^(?:.*?: )?(?:line \d+: )?([\w.+-]+): command not found\s*$"),
        "command-not-found",
    ),
    (
        re.compile(r"^(?:/bin/)?(?:ba|da)?sh: (?:\d+: )?([\w.+/-]+): (?:command )?not found\s*$"),
        "command-not-found",
    ),
    (re.compile(r"No space left on device"), "disk-full"),
    (
        re.compile(r"\bCannot allocate memory\b|\bMemoryError\b|\bout of memory\b", re.I),
        "out-of-memory",
    ),
    (
        re.compile(
            r"Temporary failure in name resolution|Network is unreachable|"
            r"Name or service not known|getaddrinfo (?:ENOTFOUND|EAI_AGAIN)"
        ),
        "network",
    ),
)


_ENV_HINTS = (
    "not found",
    "No space",
    "emory",
    "allocate",
    "resolution",
    "unreachable",
    "Name or service",
    "getaddrinfo",
)


def environment_failures(lines: Sequence[str]) -> list[Failure]:
    """Failures that say the environment, not the code, is at fault, as the log shows them."""
    found: dict[str, Failure] = {}
    for line in lines:
        if len(line) > 2000 or not any(hint in line for hint in _ENV_HINTS):
            continue
        for pattern, label in _ENV_PATTERNS:
            if pattern.search(line):
                text = one_line(line)
                key = f"{label}:{text}"
                if key in found:
                    found[key].count += 1
                else:
                    found[key] = Failure(id=label, message=text, kind="environment")
                break
    return list(found.values())[:50]


def environmental(message: str) -> bool:
    """Whether a failure's message alone shows an environment fault (disk full, no such command)."""
    return any(pattern.search(message) for pattern, _ in _ENV_PATTERNS)


# ---------------------------------------------------------------- Python tracebacks

# `path.py:12: in func` (short) / `path.py:12: ExcType` / `path.py:12: ` (long tracebacks).
_PYTEST_FRAME = re.compile(r"^(?P<path>[^\s>E][^:]*?\.pyw?):(?P<line>\d+):(?: (?P<rest>.*))?$")
_NATIVE_FRAME = re.compile(
    r'^\s*(?:E\s+)?File "(?P<path>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>.*))?'
)
_EXC_LINE = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failed|Failure|Timeout|"
    r"Iteration|Fault|Invalid|Missing|Denied|NotFound|Unavailable))(?::\s*(?P<msg>.*))?$"
)


@dataclass
class Frame:
    path: str
    line: int
    index: int
    """Line number within the traceback text, to find the frame's source lines."""
    style: str
    """`long` (location after its source), `short` (location before) or `native`."""
    exc: str = ""


@dataclass
class Traceback:
    """What a Python traceback (pytest's long/short/native styles or the interpreter's) says."""

    file: str | None
    line: int | None
    message: str
    exc_type: str
    excerpt: str


def exception_line(text: str) -> tuple[str, str] | None:
    match = _EXC_LINE.match(text.strip())
    if not match:
        return None
    return match.group("type"), text.strip()


def read_traceback(text: str, workspace: str) -> Traceback:
    """The deepest frame in a project file, the exception line and a short excerpt of a Python
    traceback as pytest or the interpreter prints it."""
    lines = text.splitlines()
    frames: list[Frame] = []
    e_lines: list[str] = []
    plain_exc: str | None = None
    for index, raw in enumerate(lines):
        line = raw.rstrip()
        if line.startswith("E ") or line == "E":
            e_lines.append(line[1:])
            native = _NATIVE_FRAME.match(line)
            if native:
                frames.append(
                    Frame(relpath(native["path"], workspace), int(native["line"]), index, "native")
                )
            continue
        native = _NATIVE_FRAME.match(line)
        if native:
            frames.append(
                Frame(relpath(native["path"], workspace), int(native["line"]), index, "native")
            )
            continue
        frame = _PYTEST_FRAME.match(line)
        if frame:
            rest = (frame["rest"] or "").strip()
            style = "short" if rest.startswith("in ") else "long"
            frames.append(
                Frame(
                    relpath(frame["path"], workspace),
                    int(frame["line"]),
                    index,
                    style,
                    "" if style == "short" else rest,
                )
            )
            continue
        if line and not line[0].isspace():
            found = exception_line(line)
            if found:
                plain_exc = found[1]

    e_text = [e.strip() for e in e_lines]
    exc_type = next((f.exc.split(":")[0] for f in reversed(frames) if f.exc), "")
    message = ""
    for candidate in e_text:
        found = exception_line(candidate)
        if found and not candidate.startswith("File "):
            message = candidate
            exc_type = exc_type or found[0]
    if not message:
        first = next((e for e in e_text if e), "")
        if first and not exc_type and first.startswith("assert "):
            exc_type = "AssertionError"
        if first:
            message = (
                f"{exc_type}: {first}" if exc_type and not first.startswith(exc_type) else first
            )
        elif plain_exc:
            message = plain_exc
            exc_type = plain_exc.split(":")[0]
        else:
            last_exc = next((f.exc for f in reversed(frames) if f.exc), "")
            message = last_exc
    project = [f for f in frames if is_project_file(f.path)]
    chosen = project[-1] if project else None
    source: list[str] = []
    if chosen is not None:
        source = _frame_source(lines, frames, chosen)
    trimmed_e = _dedent([e.rstrip() for e in e_lines])
    source = _dedent(source)
    body = [*source, *trimmed_e] if trimmed_e else source
    if not trimmed_e and plain_exc:
        body = [*source, plain_exc]
    return Traceback(
        file=chosen.path if chosen else None,
        line=chosen.line if chosen else None,
        message=clip(message),
        exc_type=exc_type,
        excerpt=excerpt(body),
    )


def _dedent(lines: list[str]) -> list[str]:
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return [line[indent:] for line in lines]


def _frame_source(lines: list[str], frames: list[Frame], chosen: Frame) -> list[str]:
    if chosen.style == "long":
        previous = max((f.index for f in frames if f.index < chosen.index), default=-1)
        block = lines[previous + 1 : chosen.index]
        marked = [line for line in block if line.startswith(">")]
        return [line[1:] for line in marked][-3:]
    if chosen.style in ("short", "native"):
        after = lines[chosen.index + 1 : chosen.index + 2]
        return [line for line in after if line.startswith(" ") and not line.strip().startswith("^")]
    return []


# ---------------------------------------------------------------- locations in any text

_LOCATIONS = (
    re.compile(r"panicked at (?:'.*?', )?(?P<path>[^\s:'\"]+\.rs):(?P<line>\d+):(?P<col>\d+)"),
    re.compile(r"-->\s*(?P<path>[^\s:]+):(?P<line>\d+):(?P<col>\d+)"),
    re.compile(
        r"(?P<path>[^\s()'\"]+\.(?:[cm]?[jt]sx?|go|rs|py|rb|java|kt|c|cc|cpp|h|hpp|cs|swift|php))"
        r"(?::(?P<line>\d+)(?::(?P<col>\d+))?|\((?P<pline>\d+),(?P<pcol>\d+)\))"
    ),
)


def find_location(text: str, workspace: str) -> tuple[str, int | None, int | None] | None:
    """The first place in `text` (a stack, a panic, a compiler message) that is a project file."""
    if "Traceback (most recent call last)" in text or re.search(r"^E   ", text, re.M):
        tb = read_traceback(text, workspace)
        if tb.file:
            return tb.file, tb.line, None
    best: tuple[int, tuple[str, int | None, int | None]] | None = None
    for pattern in _LOCATIONS:
        for match in pattern.finditer(text[:200_000]):
            path = relpath(match["path"], workspace)
            if not is_project_file(path):
                continue
            groups = match.groupdict()
            line = to_int(groups.get("line") or groups.get("pline"))
            col = to_int(groups.get("col") or groups.get("pcol"))
            if best is None or match.start() < best[0]:
                best = (match.start(), (path, line, col))
            break
    return best[1] if best else None
