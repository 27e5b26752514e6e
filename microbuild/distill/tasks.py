"""Task runners a project declares without (or inside) CI: tox (tox.ini, setup.cfg, tox.toml or
pyproject.toml), noxfile.py, Makefile, package.json. A CI line ``tox -e py311-tests`` is expanded
through the tox config the same way, so the sidecar runs the environment's commands rather than
tox (which would need the network)."""

from __future__ import annotations

import ast
import json
import posixpath
import re
import shlex
from pathlib import Path

from microbuild.distill.steps import (
    Distiller,
    Step,
    Verdict,
    classify,
    program,
    python_needs,
    target_kind,
)
from microbuild.distill.tox_env import ToxConfig, ToxConfigError
from microbuild.distill.toxconfig import env_steps, find_tox, load_tox

_MAKE_TARGETS = ("lint", "check", "typecheck", "type-check", "types", "mypy", "test", "tests")
_TOX_RUN = ("run", "r", "run-parallel", "p")
"""tox's subcommands that run environments, as `tox` alone does."""


# ---------------------------------------------------------------------------
# nox


def _nox_sessions(root: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """Session name → ("install" | "run", literal arguments), read with ``ast`` (never run)."""
    tree = ast.parse((root / "noxfile.py").read_text(encoding="utf-8", errors="replace"))
    sessions: dict[str, list[tuple[str, list[str]]]] = {}
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
    sessions = _nox_sessions(root)
    out: list[Step] = []
    for name in names if names is not None else list(sessions):
        for kind, args in sessions.get(name, []):
            words = ["pip", "install", *args] if kind == "install" else args
            out.append(Step(shlex.join(words), "noxfile.py", f"{where} (nox session {name})"))
    return out


# ---------------------------------------------------------------------------
# expanding CI lines, and projects without CI


def expand(root: Path, step: Step, out: Distiller) -> list[Step]:
    """``tox``/``nox`` lines as the commands they run; other lines unchanged."""
    name, args = program(step.command)
    if name == "tox":
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
    if name == "nox" and (root / "noxfile.py").is_file():
        names: list[str] = []
        it = iter(args)
        for arg in it:
            if arg in ("-s", "--session", "--sessions", "-e"):
                names += [n for n in next(it, "").split(",") if n]
            elif arg.startswith("--session="):
                names.append(arg.split("=", 1)[1])
        try:
            found = nox_steps(root, names or None, step.where)
        except (SyntaxError, ValueError) as err:
            out.drop(
                f"{step.where}: `{step.command}`",
                f"noxfile.py cannot be parsed ({err})",
                "noxfile.py",
            )
            return []
        out.kept.append(
            (
                f"{step.where}: `{step.command}`",
                "expanded through noxfile.py (read, not run)",
                "noxfile.py",
            )
        )
        return found
    return [step]


def add_all(root: Path, out: Distiller, steps: list[Step]) -> None:
    for step in steps:
        for expanded in expand(root, step, out):
            out.add(expanded)


def distill_tasks(root: Path, out: Distiller) -> list[str]:
    """Read tox.ini, else noxfile.py, else Makefile; and package.json. Returns files read."""
    read: list[str] = []
    tox = _tox_with_envs(root, out)
    if tox is not None:
        read.append(tox.file)
        before = len(out.checks)
        # The environments a plain `tox` runs; the others (a benchmark, say) only when none is.
        checks = [e for e in tox.env_list() if _tox_env_is_check(tox, e)]
        declared = [e for e in checks if e in tox.declared_envs()]
        for env in tox.one_python(declared or checks):
            add_all(root, out, tox_steps(tox, env, tox.file, out))
        if len(out.checks) > before:
            _package_json(root, out, read)
            return read
    if (root / "noxfile.py").is_file():
        read.append("noxfile.py")
        try:
            sessions = _nox_sessions(root)
        except (SyntaxError, ValueError) as err:
            out.drop("noxfile.py", f"cannot be parsed ({err})", "noxfile.py")
            sessions = {}
        for name in sessions:
            if target_kind(name) is None and not any(
                classify(" ".join(a)).kind in ("lint", "types", "tests", "build")
                for k, a in sessions[name]
                if k == "run"
            ):
                out.drop(
                    f"nox session {name}",
                    "not a lint, type-check, build or test session",
                    "noxfile.py",
                )
                continue
            add_all(root, out, nox_steps(root, [name], "noxfile.py"))
        if out.checks:
            _package_json(root, out, read)
            return read
    if (root / "Makefile").is_file():
        read.append("Makefile")
        text = (root / "Makefile").read_text(encoding="utf-8", errors="replace")
        targets = re.findall(r"^([A-Za-z][A-Za-z0-9_-]*)\s*:(?!=)", text, re.MULTILINE)
        for target in _MAKE_TARGETS:
            if target in targets:
                kind = target_kind(target)
                if kind is not None and kind not in out.checks:
                    _make_target(text, target, out)
    _package_json(root, out, read)
    return read


def _make_target(text: str, target: str, out: Distiller) -> None:
    """``make TARGET`` when its recipe stands alone; its recipe lines when it has prerequisites
    (``test: install`` would reinstall, with the network, inside every check)."""
    match = re.search(rf"^{re.escape(target)}\s*:([^=\n]*)\n((?:\t.*\n?)*)", text, re.MULTILINE)
    prerequisites = match[1].split() if match else []
    recipe = [
        line.strip().lstrip("@-").strip() for line in (match[2] if match else "").splitlines()
    ]
    where = f"target {target}"
    if not prerequisites or any("$(" in line or "${" in line for line in recipe):
        out.add(
            Step(f"make {target}", "Makefile", where),
            Verdict(target_kind(target) or "tests", f"make target {target!r}"),
        )
        return
    out.kept.append(
        (where, f"its recipe, without its prerequisites ({', '.join(prerequisites)})", "Makefile")
    )
    for line in recipe:
        if line:
            out.add(Step(line, "Makefile", where))


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


def _tox_with_envs(root: Path, out: Distiller) -> ToxConfig | None:
    try:
        tox = load_tox(root)
        return tox if tox is not None and tox.env_list() else None
    except ToxConfigError as err:
        out.drop("tox", str(err), None)
        return None


def _tox_env_is_check(tox: ToxConfig, env: str) -> bool:
    try:
        commands = tox.env(env).commands
    except ToxConfigError:
        return True
    return any(classify(c.shell()).kind in ("lint", "types", "tests", "build") for c in commands)


def _package_json(root: Path, out: Distiller, read: list[str]) -> None:
    path = root / "package.json"
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        out.drop("package.json", f"cannot be parsed ({err})", "package.json")
        return
    scripts = data.get("scripts") if isinstance(data, dict) else None
    if not isinstance(scripts, dict):
        return
    read.append("package.json")
    manager = "npm"
    if (root / "pnpm-lock.yaml").is_file():
        manager, setup, lock = "pnpm", "pnpm install --frozen-lockfile", "pnpm-lock.yaml"
    elif (root / "yarn.lock").is_file():
        manager, setup, lock = "yarn", "yarn install --frozen-lockfile", "yarn.lock"
    elif (root / "package-lock.json").is_file():
        setup, lock = "npm ci", "package-lock.json"
    else:
        setup, lock = "npm install", "package.json"
    wanted = {
        "lint": ("lint", "eslint"),
        "types": ("typecheck", "type-check", "types", "tsc", "check-types"),
        "build": ("build",),
        "tests": ("test", "tests", "test:unit"),
    }
    found_any = False
    for kind, names in wanted.items():
        name = next((n for n in names if isinstance(scripts.get(n), str)), None)
        if name is None:
            continue
        body = scripts[name]
        if "no test specified" in body:
            out.drop(f"package.json script {name}", "npm's placeholder (`exit 1`)", "package.json")
            continue
        run = f"{manager} test" if name == "test" else f"{manager} run {name}"
        out.add(Step(run, "package.json", f"script {name}"), _verdict(kind, body))
        found_any = True
    if found_any:
        out.add(Step(setup, "package.json", "dependencies"))
        out.input("package.json")
        out.input(lock)


def _verdict(kind: str, body: str) -> Verdict:
    return Verdict(kind, f"package.json script: {body}")  # type: ignore[arg-type]


__all__ = [
    "add_all",
    "distill_tasks",
    "expand",
    "nox_steps",
    "python_needs",
    "tox_steps",
]
