"""What a tox environment runs, read from any of tox 4's config formats without running tox.

:class:`ToxEnv` is the one model both readers (``tox_ini``, ``tox_toml``) produce. Values are
substituted the way tox 4 does (``{posargs:...}`` with nested braces, ``{env:NAME:default}``,
``{[section]key}``, ``{tox_root}``, ...), with the paths tox would make absolute mapped to the
sidecar's layout: the project root (relative to the environment's ``change_dir``), its
``.venv``, and ``.tox/ENV/tmp`` for tox's scratch directories. Nothing reads the host: a variable
tox would take from the host's environment is left to the sidecar's shell (``${NAME}``).
"""

from __future__ import annotations

import itertools
import math
import posixpath
import re
import shlex
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

HOST_PY = f"py{sys.version_info.major}{sys.version_info.minor}"
_HOST_DOTTED = f"{sys.version_info.major}.{sys.version_info.minor}"
_HOST_FACTORS = {HOST_PY, _HOST_DOTTED, f"py{_HOST_DOTTED}"}
"""The names tox gives the host's Python as a factor: py311, 3.11, py3.11."""
MAX_DEPTH = 100
"""tox's own bound on nested substitutions."""
MAX_WORK = 20_000
"""Substitutions per environment: references that double at each level end here, not in a hang."""
MAX_ENVS = 10_000
"""Names one generative expression (``py3{1-99999999}``) may stand for."""

_PY_FACTOR_RE = re.compile(r"(py|pypy)?\d(\.?\d+)?t?|py|pypy|(py|pypy)\d\.\d+t?")
"""py311, 3.11, py3.11, 3.14t (free-threaded), pypy3: factors that name a Python."""
_FRAGMENT_RE = re.compile("\ue000(\\d+)\ue001")
_REFERENCE_RE = re.compile(
    r"(?:\[(?P<section>[^\]]*)\])?(?P<key>[-a-zA-Z0-9_]+)(?::(?P<default>.*))?", re.S
)
SITE_PACKAGES = '"$(python -c \'import sysconfig; print(sysconfig.get_paths()["purelib"])\')"'
"""The sidecar's ``.venv`` site-packages (``.venv/bin`` is first on PATH there)."""


class ToxConfigError(ValueError):
    """A tox configuration microbuild cannot read: one line, naming the file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class ToxCommand:
    words: tuple[str, ...]
    """Shell words: tox's arguments quoted, with sidecar-evaluated parts (``${HOME}``) left bare."""
    ignore_exit: bool = False
    """tox's ``- cmd``: the exit status does not count."""
    invert_exit: bool = False
    """tox's ``! cmd``: the command must fail."""

    def shell(self) -> str:
        return " ".join(("!", *self.words) if self.invert_exit else self.words)


@dataclass(frozen=True)
class ToxEnv:
    """One environment, substituted; paths in commands and set_env are relative to change_dir."""

    name: str
    deps: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    dependency_groups: tuple[str, ...] = ()
    skip_install: bool = False
    set_env: tuple[tuple[str, str], ...] = ()
    commands_pre: tuple[ToxCommand, ...] = ()
    commands: tuple[ToxCommand, ...] = ()
    commands_post: tuple[ToxCommand, ...] = ()
    change_dir: str | None = None
    """Relative to the project root; None for the root itself."""
    make_dirs: tuple[str, ...] = ()
    """Directories tox creates before running commands (a missing change_dir, env_tmp_dir)."""
    allowlist_externals: tuple[str, ...] = ()
    shell_env: tuple[tuple[str, str], ...] = ()
    """set_env values the sidecar's shell completes (``${PATH}``), as shell words."""


@dataclass
class Context:
    """One substitution: for which env, relative to which directory, and what is in progress."""

    env: str
    up: str = "."
    """The project root as seen from where the value is used."""
    chain: tuple[str, ...] = ()
    depth: int = 0
    make_dirs: list[str] = field(default_factory=list)

    def nested(self, link: str) -> Context:
        return Context(self.env, self.up, (*self.chain, link), self.depth + 1, self.make_dirs)


@dataclass(frozen=True)
class _Expr:
    args: tuple[tuple[str | _Expr, ...], ...]


class _Unmatched(Exception):
    pass


def parse(value: str) -> tuple[str | _Expr, ...]:
    """tox's tokenizer: ``{a:b:{c}}`` expressions, ``[]`` for posargs, ``\\{`` escapes; a
    ``{`` without its ``}`` is text."""
    args, _ = _tokens(value, 0, inner=False, depth=0)
    return args[0]


def _tokens(
    value: str, pos: int, *, inner: bool, depth: int
) -> tuple[tuple[tuple[str | _Expr, ...], ...], int]:
    if depth > MAX_DEPTH:
        raise ToxConfigError(f"braces nest more than {MAX_DEPTH} deep")
    args: list[tuple[str | _Expr, ...]] = []
    current: list[str | _Expr] = []
    text: list[str] = []

    def flush() -> None:
        if text:
            current.append("".join(text))
            text.clear()

    while pos < len(value):
        char = value[pos]
        if char == "\\" and pos + 1 < len(value) and value[pos + 1] in ":{}[]\\":
            text.append(value[pos : pos + 2] if value[pos + 1] == "\\" else value[pos + 1])
            pos += 2
            continue
        if inner and char == "}":
            flush()
            return (*args, tuple(current)), pos + 1
        if inner and char == ":":
            flush()
            args.append(tuple(current))
            current = []
            pos += 1
            continue
        if value.startswith("[]", pos):
            flush()
            current.append(_Expr((("posargs",),)))
            pos += 2
            continue
        if char == "{":
            try:
                sub, end = _tokens(value, pos + 1, inner=True, depth=depth + 1)
            except _Unmatched:
                text.append(char)
                pos += 1
                continue
            flush()
            current.append(_Expr(sub))
            pos = end
            continue
        text.append(char)
        pos += 1
    if inner:
        raise _Unmatched
    flush()
    return (*args, tuple(current)), pos


def _is_reference(expr: _Expr) -> bool:
    """``{[section]key}`` or ``{key}``, not ``{posargs:...}``, ``{env:...}`` and the like."""
    first = expr.args[0]
    kind = first[0] if len(first) == 1 and isinstance(first[0], str) else None
    return kind not in ("/", "", "posargs", "tty", "env", "glob")


def _shares_line(parts: tuple[str | _Expr, ...], at: int) -> bool:
    before = parts[at - 1] if at else ""
    after = parts[at + 1] if at + 1 < len(parts) else ""
    if isinstance(before, _Expr) or isinstance(after, _Expr):
        return True
    return bool(before.rpartition("\n")[2].strip() or after.partition("\n")[0].strip())


def expand_generative(name: str) -> list[str]:
    """``py3{9-11}-{a,b}`` → py39-a, py39-b, ...; ranges and comma lists."""
    parts = re.split(r"(\{[^{}]*\})", name)
    choices: list[list[str]] = []
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            items: list[str] = []
            for item in part[1:-1].split(","):
                item = item.strip()
                rng = re.fullmatch(r"(\d+)-(\d+)", item)
                if rng and abs(int(rng[2]) - int(rng[1])) < MAX_ENVS:
                    step = 1 if int(rng[1]) <= int(rng[2]) else -1
                    items += [str(n) for n in range(int(rng[1]), int(rng[2]) + step, step)]
                else:
                    items.append(item)
            choices.append(items)
        else:
            choices.append([part])
    if math.prod(len(c) for c in choices) > MAX_ENVS:
        raise ToxConfigError(f"{name!r} stands for more than {MAX_ENVS} environments")
    return ["".join(combo) for combo in itertools.product(*choices)]


def join(up: str, path: str) -> str:
    return path if up == "." else f"{up}/{path}"


def render_word(arg: str, fragments: list[str], *, quoted: bool = False) -> str:
    """One tox argument as a shell word: text quoted, sidecar-evaluated fragments bare (tox
    splits a substituted value into words; so does the shell), or double-quoted."""
    out: list[str] = []
    last = 0
    for match in _FRAGMENT_RE.finditer(arg):
        if match.start() > last:
            out.append(shlex.quote(arg[last : match.start()]))
        fragment = fragments[int(match[1])]
        out.append(f'"{fragment}"' if quoted and not fragment.startswith('"') else fragment)
        last = match.end()
    if last < len(arg) or not out:
        out.append(shlex.quote(arg[last:]))
    return "".join(out)


def has_fragment(text: str) -> bool:
    return _FRAGMENT_RE.search(text) is not None


def to_command(args: list[str], fragments: list[str]) -> ToxCommand | None:
    """tox's leading ``-`` (ignore the exit status) and ``!`` (invert it), then shell words."""
    if args and args[0] != "-" and args[0].startswith("-"):
        args = ["-", args[0][1:], *args[1:]]
    ignore = bool(args) and args[0] == "-"
    invert = bool(args) and args[0] == "!"
    if ignore or invert:
        args = args[1:]
    if not args:
        return None
    return ToxCommand(tuple(render_word(a, fragments) for a in args), ignore, invert)


def escape(text: str) -> str:
    """A substituted string as raw text that substitutes to itself."""
    return re.sub(r"([{}])", r"\\\1", text).replace("[]", "[\\]")


def dep_line(line: str) -> str:
    """tox's form of a requirement-file line: ``-rfile`` as ``-r file``."""
    match = re.fullmatch(r"(-[rc]|--requirement|--constraint)=?(\S.*)", line.strip())
    return f"{match[1]} {match[2]}" if match else line.strip()


def split_line(line: str) -> list[str]:
    """tox's command splitting (posix shlex, no comments); an unbalanced quote keeps the rest."""
    splitter = shlex.shlex(line, posix=True)
    splitter.whitespace_split = True
    splitter.commenters = ""
    args: list[str] = []
    try:
        for arg in splitter:
            args.append(arg)
    except ValueError:
        rest = line.split(None, len(args))[len(args) :] if args else [line]
        args += rest
    return args


def normal_dir(value: str, file: str, env: str) -> str | None:
    """A change_dir relative to the project root; None for the root itself."""
    path = posixpath.normpath(value.strip().replace("\\", "/"))
    if has_fragment(path) or path.startswith(("/", "../")) or path == "..":
        raise ToxConfigError(
            f"{file}: tox env {env}: change_dir {value.strip()!r} is outside the project"
        )
    return None if path == "." else path


class ToxConfig(ABC):
    """One tox configuration file; the readers fill in the raw lookups and the conversion."""

    root: Path
    file: str

    def __init__(self, root: Path, file: str) -> None:
        self.root = root
        self.file = file
        self.fragments: list[str] = []
        self.work = 0
        self.posargs: list[str] | None = None
        """What a CI line passes after ``--`` (``tox -e py -- -x``); None: the defaults."""
        self.change_dir: str | None = None
        """The change_dir of the env being read, once known."""

    def env(self, name: str) -> ToxEnv:
        """The environment ``name`` substituted; ToxConfigError when it cannot be read."""
        self.work = 0
        self.change_dir = None
        try:
            return self.read_env(name)
        except RecursionError:
            raise ToxConfigError(f"{self.file}: tox env {name} nests too deep to read") from None
        except ToxConfigError as err:
            if str(err).startswith(self.file):
                raise
            raise ToxConfigError(f"{self.file}: tox env {name}: {err}") from None

    @abstractmethod
    def declared_envs(self) -> list[str]:
        """The `env_list` alone: what `tox` with no `-e` runs."""

    @abstractmethod
    def defined_envs(self) -> list[str]:
        """Environments with a table or section of their own."""

    @abstractmethod
    def read_env(self, name: str) -> ToxEnv:
        """What :meth:`env` returns, read by the format's rules."""

    @abstractmethod
    def raw_reference(self, section: str | None, key: str, ctx: Context) -> str | None:
        """The unsubstituted text of ``{[section]key}`` (``{key}``: the env's own, or core)."""

    @abstractmethod
    def raw_set_env(self, env: str) -> dict[str, str]:
        """The env's set_env, unsubstituted."""

    @abstractmethod
    def core_labels(self) -> dict[str, list[str]]:
        """The core ``labels`` table: label → environments."""

    @abstractmethod
    def env_labels(self, env: str) -> list[str]:
        """The labels an environment gives itself."""

    def labelled(self, labels: list[str]) -> tuple[list[str], str | None]:
        """The environments of ``tox -m LABEL...``, or why there are none."""
        core = self.core_labels()
        out = [e for label in labels for e in core.get(label, [])]
        known = set(core)
        for env in self.env_list():
            own = self.env_labels(env)
            known.update(own)
            if set(own) & set(labels) and env not in out:
                out.append(env)
        unknown = [label for label in labels if label not in known]
        if unknown:
            return [], f"{self.file} defines no tox label {', '.join(map(repr, unknown))}"
        defined = self.env_list()
        return [e for e in defined if e in out] + [e for e in out if e not in defined], None

    def env_list(self) -> list[str]:
        """The declared environments, then those with a section of their own."""
        out = self.declared_envs()
        out += [name for name in self.defined_envs() if name not in out]
        return out

    def known_factors(self) -> set[str]:
        """Factors an ``-e`` name may combine (tox refuses others, except Python versions)."""
        return {f for env in self.env_list() for f in env.split("-")}

    # -- substitution

    def fragment(self, shell: str) -> str:
        """A marker for shell text evaluated in the sidecar, kept unquoted when rendered."""
        self.fragments.append(shell)
        return f"\ue000{len(self.fragments) - 1}\ue001"

    def plain(self, text: str) -> str:
        """Text with its sidecar-evaluated parts written out (``${NAME}``), for values that are
        not shell words: a dep tox would read from the host shows as ``${NAME}``."""
        return _FRAGMENT_RE.sub(lambda m: self.fragments[int(m[1])], text)

    def expand(self, value: str, ctx: Context) -> str:
        if ctx.depth > MAX_DEPTH:
            raise ToxConfigError(
                f"{self.file}: substitution in tox env {ctx.env} nests more than {MAX_DEPTH} deep"
            )
        return self._join(parse(value), ctx)

    def expand_lines(self, value: str, ctx: Context) -> list[str]:
        """A multi-line value (commands, deps) substituted as a whole, as tox does: a
        reference's lines stay lines when it stands alone on its line, else join with spaces;
        a default's (``{posargs:a\nb}``) stay lines."""
        if ctx.depth > MAX_DEPTH:
            raise ToxConfigError(
                f"{self.file}: substitution in tox env {ctx.env} nests more than {MAX_DEPTH} deep"
            )
        parts = parse(value)
        out: list[str] = []
        for at, part in enumerate(parts):
            if isinstance(part, str):
                out.append(part)
                continue
            text = self._resolve(part, ctx)
            if "\n" in text and _is_reference(part) and _shares_line(parts, at):
                text = " ".join(text.splitlines())
            out.append(text)
        return "".join(out).split("\n")

    def _join(self, parts: tuple[str | _Expr, ...], ctx: Context) -> str:
        return "".join(p if isinstance(p, str) else self._resolve(p, ctx) for p in parts)

    def _resolve(self, expr: _Expr, ctx: Context) -> str:
        self.work += 1
        if self.work > MAX_WORK:
            raise ToxConfigError(
                f"{self.file}: tox env {ctx.env} needs more than {MAX_WORK} substitutions"
            )
        args = [self._join(arg, ctx) for arg in expr.args]
        found = self._replace(args[0], args[1:], ctx)
        return "{" + ":".join(args) + "}" if found is None else found

    def _replace(self, kind: str, rest: list[str], ctx: Context) -> str | None:
        if kind == "/":
            return "/"
        if kind == "" and rest == [""]:
            return ":"
        if kind == "posargs":
            given = self.given_posargs(ctx)
            return ":".join(rest) if given is None else shlex.join(given)
        if kind == "tty":
            return rest[1] if len(rest) > 1 else ""
        if kind == "env" and rest and rest[0]:
            return self._env_var(rest[0], ":".join(rest[1:]) if len(rest) > 1 else None, ctx)
        if kind == "glob" and rest and rest[0]:
            return self._glob(rest[0], ":".join(rest[1:]), ctx)
        match = _REFERENCE_RE.fullmatch(":".join([kind, *rest]))
        if match is None:
            return None
        section, key, default = match["section"], match["key"], match["default"]
        if section is None or section == self.core_section():
            constant = self._constant(key, ctx)
            if constant is not None:
                return constant
        link = f"[{section or ''}]{key}"
        if link in ctx.chain:
            cycle = " -> ".join([*ctx.chain[ctx.chain.index(link) :], link])
            raise ToxConfigError(f"{self.file}: tox env {ctx.env}: {cycle} refers to itself")
        raw = self.raw_reference(section, key, ctx)
        if raw is None:
            return default
        return self.expand(raw, ctx.nested(link))

    def core_section(self) -> str:
        return "tox"

    def given_posargs(self, ctx: Context) -> list[str] | None:
        """The posargs, those naming project paths relative to change_dir (tox's
        ``args_are_paths``)."""
        if self.posargs is None:
            return None
        cwd = self.change_dir
        return [
            posixpath.relpath(arg, cwd)
            if cwd is not None and not arg.startswith("/") and (self.root / arg).exists()
            else arg
            for arg in self.posargs
        ]

    def _env_var(self, name: str, default: str | None, ctx: Context) -> str:
        link = f"env:{name}"
        set_env = self.raw_set_env(ctx.env)
        if name in set_env and link not in ctx.chain:
            return self.expand(set_env[name], ctx.nested(link))
        if link in ctx.chain and ctx.chain[-1] != link:
            cycle = " -> ".join([*ctx.chain[ctx.chain.index(link) :], link])
            raise ToxConfigError(f"{self.file}: tox env {ctx.env}: set_env {cycle} is circular")
        if default is not None:
            return default
        return self.fragment(f"${{{name}}}")

    def _glob(self, pattern: str, default: str, ctx: Context) -> str:
        """Files of the project only: an absolute or escaping pattern gets the default."""
        if pattern.startswith("/") or ".." in pattern.split("/") or has_fragment(pattern):
            return default
        found = sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.glob(pattern)
            if p.resolve().is_relative_to(self.root.resolve())
        )
        return " ".join(join(ctx.up, p) for p in found) if found else default

    def _constant(self, key: str, ctx: Context) -> str | None:
        env_dir = join(ctx.up, ".venv")
        scratch = f".tox/{ctx.env}"
        if key in ("env_tmp_dir", "envtmpdir", "env_log_dir", "envlogdir"):
            made = f"{scratch}/{'tmp' if 'tmp' in key else 'log'}"
            if made not in ctx.make_dirs:
                ctx.make_dirs.append(made)
            return join(ctx.up, made)
        values = {
            ("tox_root", "toxinidir"): ctx.up,
            ("work_dir", "toxworkdir"): join(ctx.up, ".tox"),
            ("temp_dir",): join(ctx.up, ".tox/.tmp"),
            ("env_name", "envname"): ctx.env,
            ("env_dir", "envdir"): env_dir,
            ("env_bin_dir", "envbindir"): f"{env_dir}/bin",
            ("env_python", "envpython"): f"{env_dir}/bin/python",
        }
        for keys, value in values.items():
            if key in keys:
                return value
        if key in ("env_site_packages_dir", "envsitepackagesdir"):
            return self.fragment(SITE_PACKAGES)
        return None

    def commands(self, lines: list[list[str]]) -> tuple[ToxCommand, ...]:
        out = [to_command(args, self.fragments) for args in lines]
        return tuple(c for c in out if c is not None)

    def set_env_values(
        self, env: str, up: str, make_dirs: list[str]
    ) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        """set_env substituted: plain values, then those the sidecar's shell completes
        (``PATH = {env:PATH}:...``) as shell words."""
        plain: list[tuple[str, str]] = []
        shell: list[tuple[str, str]] = []
        for key, raw in self.raw_set_env(env).items():
            value = self.expand(raw, Context(env, up, (f"env:{key}",), 1, make_dirs))
            if has_fragment(value):
                shell.append((key, render_word(value, self.fragments, quoted=True)))
            else:
                plain.append((key, value))
        return tuple(plain), tuple(shell)

    # -- choosing environments

    def select(self, args: list[str]) -> tuple[list[str], str | None]:
        """The environments a ``tox`` command line runs, or a reason it cannot be read."""
        names: list[str] = []
        factors: list[str] = []
        labels: list[str] = []
        it = iter(args)
        for arg in it:
            if arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")):
                labels += [arg[2:]] if len(arg) > 2 else []
                labels += list(itertools.takewhile(lambda a: not a.startswith("-"), it))
            elif arg in ("-e", "--env", "-f", "--factor") or arg.startswith(("-e", "-f")):
                value = arg[2:] if len(arg) > 2 and not arg.startswith("--") else next(it, "")
                value = value.lstrip("=")
                (factors if arg.startswith(("-f", "--factor")) else names).extend(
                    v.strip() for v in value.split(",") if v.strip()
                )
        known = self.env_list()
        labelled: list[str] = []
        if labels:
            labelled, why = self.labelled(labels)
            if why:
                return [], why
        elif not names and not factors:
            names = self.declared_envs() or known
        if "ALL" in names:
            names = [n for n in names if n != "ALL"] + [k for k in known if k not in names]
        chosen: list[str] = []
        known_factors = self.known_factors()
        for name in names:
            if "$" in name:
                pattern = re.compile(re.sub(r"\\\$\w+|\\\$\\\{\w+\\\}", ".*", re.escape(name)))
                matches = [k for k in known if pattern.fullmatch(k)]
                if not matches:
                    return [], f"no tox environment matches {name!r}"
                chosen.append(next((m for m in matches if _on_host(m)), matches[0]))
            elif name in known or all(
                _PY_FACTOR_RE.fullmatch(f) or f in known_factors for f in name.split("-")
            ):
                chosen.append(name)
            else:
                return [], f"{self.file} defines no tox environment {name!r}"
        chosen += [e for e in labelled if e not in chosen]
        for factor in factors:
            chosen += [k for k in known if factor in k.split("-") and k not in chosen]
        return self.one_python(chosen), None

    def one_python(self, envs: list[str]) -> list[str]:
        """One environment per family (``py39-tests`` … ``py314-tests``): the host's Python."""
        groups: dict[str, list[str]] = {}
        for env in envs:
            key = "-".join(f for f in env.split("-") if not _PY_FACTOR_RE.fullmatch(f))
            groups.setdefault(key, []).append(env)
        out: list[str] = []
        for members in groups.values():
            host = [m for m in members if _on_host(m)]
            plain = [
                m for m in members if not any(_PY_FACTOR_RE.fullmatch(f) for f in m.split("-"))
            ]
            cpython = [m for m in members if not m.startswith("pypy")]
            out.append((host or plain or cpython or members)[0])
        return out


def _on_host(env: str) -> bool:
    """``py311-lint``, ``3.11``: the env runs on the host's Python."""
    return bool(_HOST_FACTORS & set(env.split("-")))


def finish_dirs(root: Path, change_dir: str | None, made: list[str]) -> tuple[str, ...]:
    """tox creates change_dir when it is missing (and env_tmp_dir always)."""
    dirs = list(made)
    if change_dir is not None and not (root / change_dir).is_dir():
        dirs.insert(0, change_dir)
    return tuple(dirs)


def up_from(change_dir: str | None) -> str:
    """The project root as seen from ``change_dir``."""
    if change_dir is None:
        return "."
    return "/".join(".." for _ in change_dir.split("/"))


__all__ = [
    "Context",
    "ToxCommand",
    "ToxConfig",
    "ToxConfigError",
    "ToxEnv",
    "expand_generative",
    "parse",
    "render_word",
    "split_line",
]
