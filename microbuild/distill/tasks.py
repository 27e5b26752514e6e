"""Task runners a project declares without (or inside) CI: tox.ini, noxfile.py, Makefile,
package.json. A CI line ``tox -e py311-tests`` is expanded through tox.ini the same way, so the
sidecar runs the environment's commands rather than tox (which would need the network)."""

from __future__ import annotations

import ast
import configparser
import itertools
import json
import re
import shlex
import sys
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

HOST_PY = f"py{sys.version_info.major}{sys.version_info.minor}"
_PY_FACTOR_RE = re.compile(r"py\d*|pypy\d*")
_MAKE_TARGETS = ("lint", "check", "typecheck", "type-check", "types", "mypy", "test", "tests")


# ---------------------------------------------------------------------------
# tox


def _expand_generative(name: str) -> list[str]:
    """``py3{9-11}-{a,b}`` → py39-a, py39-b, ...; ranges and comma lists."""
    parts = re.split(r"(\{[^{}]*\})", name)
    choices: list[list[str]] = []
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            items: list[str] = []
            for item in part[1:-1].split(","):
                item = item.strip()
                rng = re.fullmatch(r"(\d+)-(\d+)", item)
                if rng:
                    items += [str(n) for n in range(int(rng[1]), int(rng[2]) + 1)]
                else:
                    items.append(item)
            choices.append(items)
        else:
            choices.append([part])
    return ["".join(combo) for combo in itertools.product(*choices)]


def _split_top(text: str) -> list[str]:
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


class Tox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.parser = configparser.ConfigParser(interpolation=None, strict=False)
        self.parser.read_string((root / "tox.ini").read_text(encoding="utf-8", errors="replace"))

    def env_list(self) -> list[str]:
        """The declared environments, then those with a section of their own."""
        out = self.declared_envs()
        for section_name in self.parser.sections():
            if section_name.startswith("testenv:"):
                for name in _expand_generative(section_name.removeprefix("testenv:")):
                    if name not in out:
                        out.append(name)
        return out

    def declared_envs(self) -> list[str]:
        """The `env_list` alone: what `tox` with no `-e` runs."""
        section = "tox" if self.parser.has_section("tox") else "tox:tox"
        raw = self.parser.get(section, "env_list", fallback="") or self.parser.get(
            section, "envlist", fallback=""
        )
        out: list[str] = []
        for line in _split_top(raw.replace("\n", ",")):
            line = line.split("#", 1)[0].strip()
            if line:
                out += _expand_generative(line)
        return out

    def _section(self, env: str) -> str | None:
        for name in self.parser.sections():
            if name.startswith("testenv:") and env in _expand_generative(name[8:]):
                return name
        return None

    def get(self, env: str, key: str) -> str:
        factors = set(env.split("-"))
        section = self._section(env)
        alt = key.replace("_", "")
        raw = None
        for sec in (section, "testenv"):
            if sec is None or not self.parser.has_section(sec):
                continue
            for k in (key, alt):
                if self.parser.has_option(sec, k):
                    raw = self.parser.get(sec, k)
                    break
            if raw is not None:
                break
        if raw is None:
            return ""
        lines: list[str] = []
        for line in re.sub(r"\\\n\s*", " ", raw).splitlines():
            match = re.match(r"\s*([!A-Za-z0-9_.{},-]+):\s+(.*)", line)
            if match and not match[1].startswith(("-", "http")):
                wanted = match[1]
                options = [opt for spec in wanted.split(",") for opt in _expand_generative(spec)]
                if not any(
                    all(
                        (f[1:] not in factors) if f.startswith("!") else (f in factors)
                        for f in option.split("-")
                    )
                    for option in options
                ):
                    continue
                line = match[2]
            lines.append(line.strip())
        return "\n".join(line for line in lines if line)

    def steps(self, env: str, where: str, file: str) -> list[Step]:
        out: list[Step] = []
        env_vars: list[tuple[str, str]] = []
        for line in self.get(env, "set_env").splitlines():
            key, eq, value = line.partition("=")
            if eq and "{" not in value:
                env_vars.append((key.strip(), value.strip()))
        install: list[str] = []
        if self.get(env, "skip_install").lower() != "true":
            extras = [e.strip() for e in re.split(r"[,\s]+", self.get(env, "extras")) if e.strip()]
            install.append(".[" + ",".join(extras) + "]" if extras else ".")
        for dep in self.get(env, "deps").splitlines():
            dep = self._subst(dep)
            install += shlex.split(dep) if dep.startswith("-") else [dep]
        for group in re.split(r"[,\s]+", self.get(env, "dependency_groups")):
            if group.strip():
                install += ["--group", group.strip()]
        if install:
            command = "pip install " + " ".join(shlex.quote(a) for a in install)
            out.append(Step(command, file, f"{where} (tox env {env})"))
        change_dir = self._subst(self.get(env, "change_dir") or self.get(env, "changedir"))
        for line in self.get(env, "commands").splitlines():
            line = self._subst(line, dict(env_vars)).lstrip("-! ").strip()
            if line:
                out.append(
                    Step(
                        line, file, f"{where} (tox env {env})", change_dir or None, tuple(env_vars)
                    )
                )
        return out

    def _subst(self, text: str, set_env: dict[str, str] | None = None) -> str:
        # {env:NAME:default} (nested defaults too): the environment's set_env value, else the
        # default, as tox gives it when NAME is unset; {env:NAME}: left to the shell.
        known = set_env or {}
        while True:
            expanded = re.sub(
                r"\{env:([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*))?\}",
                lambda m: known.get(m[1], m[2] if m[2] is not None else f"${{{m[1]}}}"),
                text,
            )
            if expanded == text:
                break
            text = expanded
        text = re.sub(r"\{posargs:([^{}]*)\}", r"\1", text)
        text = re.sub(r"\{(posargs|tty:[^{}]*)\}", "", text)
        text = re.sub(r"\{(toxinidir|tox_root)\}/?", "./", text)
        text = re.sub(r"\{envpython\}", "python", text)
        text = re.sub(r"\{env(tmp|log|site_packages_|)dir\}", "/tmp/tox-env", text)
        return re.sub(r"\s+", " ", text).strip()

    def select(self, args: list[str]) -> tuple[list[str], str | None]:
        """The environments a ``tox`` command line runs, or a reason it cannot be read."""
        names: list[str] = []
        factors: list[str] = []
        it = iter(args)
        for arg in it:
            if arg in ("-e", "--env", "-f", "--factor") or arg.startswith(("-e", "-f")):
                value = arg[2:] if len(arg) > 2 and not arg.startswith("--") else next(it, "")
                value = value.lstrip("=")
                (factors if arg.startswith(("-f", "--factor")) else names).extend(
                    v for v in value.split(",") if v
                )
        if not names and not factors:
            names = self.env_list()
        known = self.env_list()
        chosen: list[str] = []
        for name in names:
            if "$" in name:
                pattern = re.compile(re.sub(r"\\\$\w+|\\\$\\\{\w+\\\}", ".*", re.escape(name)))
                matches = [k for k in known if pattern.fullmatch(k)]
                if not matches:
                    return [], f"no tox environment matches {name!r}"
                chosen.append(next((m for m in matches if HOST_PY in m.split("-")), matches[0]))
            else:
                chosen.append(name)
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
            host = [m for m in members if HOST_PY in m.split("-")]
            plain = [
                m for m in members if not any(_PY_FACTOR_RE.fullmatch(f) for f in m.split("-"))
            ]
            cpython = [m for m in members if not m.startswith("pypy")]
            out.append((host or plain or cpython or members)[0])
        return out


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
    if name == "tox" and (root / "tox.ini").is_file():
        try:
            tox = Tox(root)
        except configparser.Error as err:
            out.drop(
                step.where, f"tox.ini cannot be parsed ({err}); `{step.command}` dropped", "tox.ini"
            )
            return []
        envs, why = tox.select([a for a in args if a not in ("run", "r")])
        if why:
            out.drop(f"{step.where}: `{step.command}`", why, step.file)
            return []
        out.kept.append(
            (
                f"{step.where}: `{step.command}`",
                f"expanded through tox.ini: {', '.join(envs)}",
                "tox.ini",
            )
        )
        return [s for env in envs for s in tox.steps(env, step.where, "tox.ini")]
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
    if (root / "tox.ini").is_file() and _tox_has_envs(root):
        read.append("tox.ini")
        before = len(out.checks)
        tox = Tox(root)
        # The environments a plain `tox` runs; the others (a benchmark, say) only when none is.
        checks = [e for e in tox.env_list() if _tox_env_is_check(tox, e)]
        declared = [e for e in checks if e in tox.declared_envs()]
        envs = tox.one_python(declared or checks)
        for env in envs:
            add_all(root, out, tox.steps(env, "tox.ini", "tox.ini"))
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


def _tox_has_envs(root: Path) -> bool:
    try:
        return bool(Tox(root).env_list())
    except configparser.Error:
        return False


def _tox_env_is_check(tox: Tox, env: str) -> bool:
    commands = [tox._subst(c) for c in tox.get(env, "commands").splitlines()]
    return any(classify(c).kind in ("lint", "types", "tests", "build") for c in commands)


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


__all__ = ["Tox", "add_all", "distill_tasks", "expand", "nox_steps", "python_needs"]
