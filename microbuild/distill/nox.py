"""noxfile.py, read with ``ast`` and never run: each session's ``session.install`` and
``session.run`` calls with literal arguments become steps."""

from __future__ import annotations

import ast
import posixpath
import shlex
from collections.abc import Iterator
from pathlib import Path

from microbuild.distill.files import leads_outside, read_project_file
from microbuild.distill.steps import Distiller, Step, classify, program, target_kind

__all__ = ["FILE", "check_sessions", "expand_nox", "nox_sessions", "nox_steps"]

FILE = "noxfile.py"

NoxSessions = dict[str, list[tuple[str, list[str]]]]


def nox_sessions(root: Path) -> NoxSessions:
    """Session name → ("install" | "run", arguments), read with ``ast`` (never run).

    Arguments are literals, or module-level constants built from them (``ROOT =
    Path(__file__).parent``, ``PACKAGE = ROOT / "pkg"``, f-strings, ``str()``), with no
    posargs (microbuild passes none, so an ``if session.posargs:`` branch is not taken), and a
    ``TemporaryDirectory()`` as ``.nox/tmp``. A ``run`` with an argument that cannot be known
    without running the file is left out rather than run short of it (``mypy --config``
    without its file); an install keeps its known arguments.

    Raises SyntaxError or ValueError for a noxfile that does not parse (ConfigError for one
    that links outside the project: callers check first, with :func:`leads_outside`)."""
    tree = ast.parse(read_project_file(root / FILE, root))
    constants: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            value = _value(node.value, constants)
            if value is not None:
                constants[node.targets[0].id] = value
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
        _session_calls(node.body, dict(constants), calls)
        sessions[name] = calls
    return sessions


NOX_TMP = ".nox/tmp"


def _session_calls(
    body: list[ast.stmt], names: dict[str, str], calls: list[tuple[str, list[str]]]
) -> None:
    for stmt in body:
        if isinstance(stmt, ast.If):
            if _posargs_test(stmt.test):
                _session_calls(stmt.orelse, names, calls)
            else:
                _session_calls(stmt.body, names, calls)
                _session_calls(stmt.orelse, names, calls)
            continue
        if isinstance(stmt, ast.With):
            for item in stmt.items:
                made = item.context_expr
                if (
                    isinstance(made, ast.Call)
                    and ast.unparse(made.func).endswith("TemporaryDirectory")
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    names[item.optional_vars.id] = NOX_TMP
            _session_calls(stmt.body, names, calls)
            continue
        if isinstance(stmt, ast.For | ast.While | ast.Try):
            _session_calls(stmt.body, names, calls)
            continue
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            value = _value(stmt.value, names)
            if isinstance(target, ast.Name) and value is not None:
                names[target.id] = value
            continue
        for sub in ast.walk(stmt):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr in ("install", "run", "run_always")
            ):
                kind = "install" if sub.func.attr == "install" else "run"
                args: list[str] = []
                known = True
                for arg in sub.args:
                    if isinstance(arg, ast.Starred) and ast.unparse(arg.value).endswith("posargs"):
                        continue
                    value = _value(arg, names)
                    if value is None:
                        known = False
                    else:
                        args.append(value)
                if args and (known or kind == "install"):
                    calls.append((kind, args))


def _posargs_test(test: ast.expr) -> bool:
    """Whether a branch runs only with posargs (`if session.posargs and ...:`)."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_posargs_test(v) for v in test.values)
    return ast.unparse(test).endswith("posargs")


def _value(node: ast.expr, names: dict[str, str]) -> str | None:
    """A string argument's value when the file says it without running: None otherwise."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.Name):
        return names.get(node.id)
    text = ast.unparse(node)
    if text == "os.devnull":
        return "/dev/null"
    bare = text.replace(".resolve()", "").replace(".absolute()", "")
    if bare in ("Path(__file__).parent", "pathlib.Path(__file__).parent"):
        return "."
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = _value(node.left, names), _value(node.right, names)
        if left is None or right is None:
            return None
        return posixpath.normpath(posixpath.join(left, right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _value(node.left, names), _value(node.right, names)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "str" and len(node.args) == 1:
        return _value(node.args[0], names)
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        for part in node.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                parts.append(part.value)
            elif isinstance(part, ast.FormattedValue) and part.format_spec is None:
                value = _value(part.value, names)
                if value is None:
                    return None
                parts.append(value)
            else:
                return None
        return "".join(parts)
    return None


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
