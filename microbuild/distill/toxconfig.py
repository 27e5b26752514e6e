"""Find a project's tox configuration as tox 4 does, and turn an environment into steps.

tox 4 looks for, in order: ``tox.ini``; ``setup.cfg`` with ``[tox:tox]``; ``pyproject.toml``
with a native ``[tool.tox]`` table; ``pyproject.toml`` with ``legacy_tox_ini``; ``tox.toml``.
"""

from __future__ import annotations

import configparser
import posixpath
import shlex
import tomllib
from pathlib import Path
from typing import Any

from microbuild.distill.files import leads_outside
from microbuild.distill.steps import Distiller, Step, classify, program
from microbuild.distill.tox_env import ToxConfig, ToxConfigError, ToxEnv
from microbuild.distill.tox_ini import IniTox
from microbuild.distill.tox_toml import TomlTox

__all__ = [
    "ToxConfigError",
    "check_envs",
    "env_steps",
    "expand_tox",
    "find_tox",
    "load_tox",
    "tox_steps",
    "tox_with_envs",
]

_TOX_RUN = ("run", "r", "run-parallel", "p")
"""tox's subcommands that run environments, as `tox` alone does."""


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig", errors="replace"))
    except tomllib.TOMLDecodeError as err:
        raise ToxConfigError(f"{path.name}: invalid TOML: {err}") from None
    except RecursionError:
        raise ToxConfigError(f"{path.name}: invalid TOML: nested too deep") from None


def _file(root: Path, name: str, project: Path) -> Path | None:
    """``root/name`` if it is a file of the project: a link out of it (to a host file) is
    refused, never read."""
    path = root / name
    if not path.is_file():
        return None
    if leads_outside(path, project):
        raise ToxConfigError(f"{name} links outside the project; not read")
    return path


def load_tox(root: Path, project: Path | None = None) -> ToxConfig | None:
    """The tox configuration tox would use at ``root`` (inside ``project``, by default
    ``root``); None when there is none.

    Raises ToxConfigError (one line) when the file tox would read cannot be parsed."""
    project = project or root
    if _file(root, "tox.ini", project):
        return IniTox(root)
    setup_cfg = _file(root, "setup.cfg", project)
    if setup_cfg is not None:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(setup_cfg.read_text(encoding="utf-8", errors="replace"))
        except configparser.Error:
            parser = configparser.ConfigParser()
        if parser.has_section("tox:tox"):
            return IniTox(root, "setup.cfg", core="tox:tox")
    pyproject = _file(root, "pyproject.toml", project)
    if pyproject is not None:
        data = _toml(pyproject)
        tool = data.get("tool")
        table = tool.get("tox") if isinstance(tool, dict) else None
        if isinstance(table, dict) and set(table) - {"legacy_tox_ini"}:
            return TomlTox(root, "pyproject.toml", table)
        if isinstance(table, dict) and isinstance(table.get("legacy_tox_ini"), str):
            return IniTox(root, "pyproject.toml", text=table["legacy_tox_ini"])
    tox_toml = _file(root, "tox.toml", project)
    return None if tox_toml is None else TomlTox(root, "tox.toml", _toml(tox_toml))


def find_tox(root: Path, start: str | None) -> tuple[ToxConfig | None, str | None]:
    """The config a ``tox`` run in ``start`` (relative to ``root``) reads, found upwards as tox
    does, and its directory relative to ``root`` (None: the root). ToxConfigError when
    ``start`` is outside the project."""
    relative = posixpath.normpath(start or ".")
    if relative.startswith("/") or relative == ".." or relative.startswith("../"):
        raise ToxConfigError(f"tox runs in {start!r}, outside the project")
    parts = [] if relative == "." else relative.split("/")
    while True:
        base = "/".join(parts) or None
        tox = load_tox(root / base if base else root, root)
        if tox is not None:
            if base:
                tox.file = f"{base}/{tox.file}"
            return tox, base
        if not parts:
            return None, None
        parts.pop()


def env_steps(env: ToxEnv, where: str, file: str, base: str | None = None) -> list[Step]:
    """The install, then each command with the env's change_dir, set_env (those the sidecar's
    shell completes exported before commands_pre) and commands_pre.

    commands_pre (compiling translations, say) runs before every command it prepares, in the
    same check, because each check runs on its own."""
    label = f"{where} (tox env {env.name})"
    out: list[Step] = []
    install: list[str] = []
    if not env.skip_install:
        install.append(".[" + ",".join(env.extras) + "]" if env.extras else ".")
    for dep in env.deps:
        install += _tidy_files(shlex.split(dep)) if dep.startswith("-") else [dep]
    for group in env.dependency_groups:
        install += ["--group", group]
    if install:
        words = " ".join(shlex.quote(a) for a in install)
        out.append(Step(f"pip install {words}", file, label, base))
    cwd = "/".join(p for p in (base, env.change_dir) if p) or None
    made = tuple("/".join(p for p in (base, d) if p) for d in env.make_dirs)
    before = [f"export {key}={word}" for key, word in env.shell_env]
    for pre in env.commands_pre:
        if classify(pre.shell()).kind == "python-setup":
            out.append(Step(pre.shell(), file, f"{label} commands_pre", cwd))
        else:
            before.append(f"{{ {pre.shell()} || true; }}" if pre.ignore_exit else pre.shell())
    for command in (*env.commands, *env.commands_post):
        out.append(
            Step(
                command.shell(),
                file,
                label,
                cwd,
                env.set_env,
                before=tuple(before),
                make_dirs=made,
                ignore_exit=command.ignore_exit,
            )
        )
    return out


def _tidy_files(words: list[str]) -> list[str]:
    """``-r ./req.txt`` (from ``{tox_root}/req.txt``) as ``-r req.txt``: a project path."""
    out: list[str] = []
    for word in words:
        if out and out[-1] in ("-r", "-c", "--requirement", "--constraint"):
            word = posixpath.normpath(word)
        elif word[:2] in ("-r", "-c") and word[2:].startswith("./"):
            word = word[:2] + posixpath.normpath(word[2:])
        out.append(word)
    return out


# ---------------------------------------------------------------------------
# tox in CI lines, and projects without CI


def expand_tox(root: Path, step: Step, out: Distiller) -> list[Step]:
    """A CI line ``tox ...`` as the steps of the environments it runs, read through the config
    tox would find from the step's directory; the line itself when there is none."""
    _, args = program(step.command)
    try:
        args, start = _tox_start(step, args)
        tox, base = find_tox(root, start)
        if tox is None:
            return [step]
        if "--" in args:
            args, tox.posargs = args[: args.index("--")], args[args.index("--") + 1 :]
        chosen = [a for a in args if a not in _TOX_RUN]
        toxenv = dict(step.env).get("TOXENV")
        if toxenv and not any(a.startswith(("-e", "--env", "-m", "-f")) for a in chosen):
            chosen += ["-e", toxenv]
        envs, why = tox.select(chosen)
    except ToxConfigError as err:
        out.drop(f"{step.where}: `{step.command}`", str(err), None)
        return []
    if why:
        out.drop(f"{step.where}: `{step.command}`", why, step.file)
        return []
    out.kept.append(
        (
            f"{step.where}: `{step.command}`",
            f"expanded through {tox.file}: {', '.join(envs)}",
            tox.file,
        )
    )
    return [s for env in envs for s in tox_steps(tox, env, step.where, out, base)]


def tox_steps(
    tox: ToxConfig, env: str, where: str, out: Distiller, base: str | None = None
) -> list[Step]:
    """The steps of one tox environment; none (and a note) when it cannot be read."""
    try:
        found = tox.env(env)
    except ToxConfigError as err:
        out.drop(f"{where} (tox env {env})", str(err), tox.file)
        return []
    return env_steps(found, where, tox.file, base)


def _tox_start(step: Step, args: list[str]) -> tuple[list[str], str | None]:
    """The arguments without ``-c CONFIG``, and where tox starts looking for its config: the
    step's directory, or the ``-c`` file's (relative to it)."""
    rest: list[str] = []
    start = step.cwd
    it = iter(args)
    for arg in it:
        if arg in ("-c", "--conf"):
            value = next(it, "")
        elif arg.startswith("--conf="):
            value = arg.removeprefix("--conf=")
        elif arg.startswith("-c"):
            value = arg.removeprefix("-c")
        else:
            rest.append(arg)
            continue
        path = posixpath.normpath(posixpath.join(step.cwd or ".", value))
        start = posixpath.dirname(path) if path.endswith((".ini", ".cfg", ".toml")) else path
    return rest, start


def tox_with_envs(root: Path, out: Distiller) -> ToxConfig | None:
    """The project's tox config if it lists environments; a note when it cannot be read."""
    try:
        tox = load_tox(root)
        return tox if tox is not None and tox.env_list() else None
    except ToxConfigError as err:
        out.drop("tox", str(err), None)
        return None


def check_envs(tox: ToxConfig) -> list[str]:
    """The environments a plain ``tox`` runs that check something (a benchmark env, say, only
    when none does), one Python's of each factor group."""
    checks = [e for e in tox.env_list() if _env_is_check(tox, e)]
    declared = [e for e in checks if e in tox.declared_envs()]
    return tox.one_python(declared or checks)


def _env_is_check(tox: ToxConfig, env: str) -> bool:
    try:
        commands = tox.env(env).commands
    except ToxConfigError:
        return True
    return any(classify(c.shell()).kind in ("lint", "types", "tests", "build") for c in commands)
