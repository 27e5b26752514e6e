"""noxfile.py, read with ``ast`` and never run: each session's ``session.install`` and
``session.run`` calls with literal arguments become steps."""

from __future__ import annotations

import ast
import shlex
from collections.abc import Iterator
from pathlib import Path

from microbuild.distill.files import leads_outside, read_project_file
from microbuild.distill.steps import Distiller, Step, classify, program, target_kind

__all__ = ["FILE", "check_sessions", "expand_nox", "nox_sessions", "nox_steps"]

FILE = "noxfile.py"

NoxSessions = dict[str, list[tuple[str, list[str]]]]


def nox_sessions(root: Path) -> NoxSessions:
    """Session name → ("install" | "run", literal arguments), read with ``ast`` (never run).

    Raises SyntaxError or ValueError for a noxfile that does not parse (ConfigError for one
    that links outside the project: callers check first, with :func:`leads_outside`)."""
    tree = ast.parse(read_project_file(root / FILE, root))
    sessions: NoxSessions = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        name: str | None = None
        for deco in node.decorator_list:
            call = deco if isinstance(deco, ast.Call) else None
            target = call.func if call else deco
            text = ast.unparse(target)
            if text in ("nox.session", "session", "nox.parametrize") or text.endswith(".session"):
                name = node.name
                for kw in call.keywords if call else []:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        name = str(kw.value.value)
        if name is None:
            continue
        calls: list[tuple[str, list[str]]] = []
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr in ("install", "run", "run_always")
            ):
                args = [
                    str(a.value)
                    for a in sub.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ]
                if args:
                    kind = "install" if sub.func.attr == "install" else "run"
                    calls.append((kind, args))
        sessions[name] = calls
    return sessions


def nox_steps(root: Path, names: list[str] | None, where: str) -> list[Step]:
    """The steps of the named sessions (all, for None), installs as ``pip install``."""
    sessions = nox_sessions(root)
    out: list[Step] = []
    for name in names if names is not None else list(sessions):
        for kind, args in sessions.get(name, []):
            words = ["pip", "install", *args] if kind == "install" else args
            out.append(Step(shlex.join(words), FILE, f"{where} (nox session {name})"))
    return out


def expand_nox(root: Path, step: Step, out: Distiller) -> list[Step]:
    """A CI line ``nox -s NAME`` as the steps of the sessions it runs (all, without ``-s``)."""
    _, args = program(step.command)
    names: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in ("-s", "--session", "--sessions", "-e"):
            names += [n for n in next(it, "").split(",") if n]
        elif arg.startswith("--session="):
            names.append(arg.split("=", 1)[1])
    if leads_outside(root / FILE, root):
        out.drop(
            f"{step.where}: `{step.command}`", f"{FILE} leads outside the project; not read", FILE
        )
        return []
    try:
        found = nox_steps(root, names or None, step.where)
    except (SyntaxError, ValueError) as err:
        out.drop(f"{step.where}: `{step.command}`", f"{FILE} cannot be parsed ({err})", FILE)
        return []
    out.kept.append(
        (f"{step.where}: `{step.command}`", f"expanded through {FILE} (read, not run)", FILE)
    )
    return found


def check_sessions(root: Path, out: Distiller) -> Iterator[str]:
    """The sessions that lint, type-check, build or test, in file order; each other one is
    dropped with a note as the iteration reaches it (so notes and steps keep the file's
    order)."""
    if leads_outside(root / FILE, root):
        out.drop(FILE, "leads outside the project, so it is not read", FILE)
        return
    try:
        sessions = nox_sessions(root)
    except (SyntaxError, ValueError) as err:
        out.drop(FILE, f"cannot be parsed ({err})", FILE)
        return
    for name, calls in sessions.items():
        if target_kind(name) is None and not any(
            classify(" ".join(args)).kind in ("lint", "types", "tests", "build")
            for kind, args in calls
            if kind == "run"
        ):
            out.drop(f"nox session {name}", "not a lint, type-check, build or test session", FILE)
            continue
        yield name
