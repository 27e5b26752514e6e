"""tox 4's native TOML: ``tox.toml``, or ``[tool.tox]`` in pyproject.toml.

``env_list``; ``[env_run_base]`` and ``[env.NAME]`` (with ``base``); commands as arrays of
argument arrays (no shell splitting); the ``replace`` tables ``posargs``, ``env``, ``ref``,
``if`` and ``glob``; and tox's string substitutions inside strings.
"""

from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path
from typing import Any

from microbuild.distill.tox_env import (
    MAX_DEPTH,
    MAX_ENVS,
    Context,
    ToxCommand,
    ToxConfig,
    ToxConfigError,
    ToxEnv,
    dep_line,
    escape,
    finish_dirs,
    normal_dir,
    up_from,
)
from microbuild.distill.tox_ini import active_factors

_OPEN_MINORS = (11, 15)
"""tox's Python 3 minors for a range without start or stop."""
_ALIASES = {
    "set_env": ("set_env", "setenv"),
    "change_dir": ("change_dir", "changedir"),
    "allowlist_externals": ("allowlist_externals",),
}


class TomlTox(ToxConfig):
    def __init__(self, root: Path, file: str, table: dict[str, Any]) -> None:
        super().__init__(root, file)
        self.table = table
        envs = table.get("env", {})
        if not isinstance(envs, dict):
            raise ToxConfigError(f"{file}: `env` must be a table of environments")
        self.envs: dict[str, Any] = envs

    def declared_envs(self) -> list[str]:
        raw = self.table.get("env_list", [])
        if not isinstance(raw, list):
            raise ToxConfigError(f"{self.file}: env_list must be an array of environment names")
        out: list[str] = []
        for entry in raw:
            names = self._product(entry) if isinstance(entry, dict) else [entry]
            out += [str(n) for n in names if isinstance(n, str | int) and str(n) not in out]
        return out

    def _product(self, entry: dict[str, Any]) -> list[str]:
        """``{ product = [["py312", "py313"], { prefix = "django", start = 42, stop = 43 }],
        exclude = [...] }``: every combination joined with ``-``."""
        groups = entry.get("product")
        if not isinstance(groups, list):
            raise ToxConfigError(f"{self.file}: an env_list table needs a `product` array")
        choices = [self._factor_group(g) for g in groups]
        if math.prod(len(c) for c in choices) > MAX_ENVS:
            raise ToxConfigError(f"{self.file}: env_list product has more than {MAX_ENVS} envs")
        exclude = entry.get("exclude") or []
        names = ["-".join(combo) for combo in itertools.product(*choices)]
        return [n for n in names if n not in exclude] if choices else []

    def _factor_group(self, group: Any) -> list[str]:
        if isinstance(group, list):
            return [str(item) for item in group]
        if isinstance(group, dict) and "prefix" in group:
            start, stop = group.get("start"), group.get("stop")
            first = start if isinstance(start, int) else _OPEN_MINORS[0]
            last = stop if isinstance(stop, int) else _OPEN_MINORS[1]
            if last - first > MAX_ENVS:
                raise ToxConfigError(f"{self.file}: env_list range has more than {MAX_ENVS} envs")
            return [f"{group['prefix']}{n}" for n in range(first, last + 1)]
        if isinstance(group, dict) and len(group) == 1:
            values = next(iter(group.values()))
            if isinstance(values, dict) and "prefix" in values:
                return self._factor_group(values)
            if isinstance(values, dict):
                values = values.get("values", [])
            return [str(v) for v in values] if isinstance(values, list) else []
        raise ToxConfigError(f"{self.file}: env_list product groups are arrays or ranges")

    def core_labels(self) -> dict[str, list[str]]:
        table = self.table.get("labels", {})
        if not isinstance(table, dict):
            return {}
        return {str(k): [str(e) for e in v] for k, v in table.items() if isinstance(v, list)}

    def env_labels(self, env: str) -> list[str]:
        raw = self._raw(env, "labels")
        return [str(label) for label in raw] if isinstance(raw, list) else []

    def defined_envs(self) -> list[str]:
        return [name for name, value in self.envs.items() if isinstance(value, dict)]

    def _tables(self, env: str) -> list[dict[str, Any]]:
        own = self.envs.get(env)
        bases = own.get("base", ["env_run_base"]) if isinstance(own, dict) else ["env_run_base"]
        if isinstance(bases, str):
            bases = [bases]
        chain = [own] if isinstance(own, dict) else []
        for base in bases if isinstance(bases, list) else []:
            for table in (self.table.get(str(base)), self.envs.get(str(base))):
                if isinstance(table, dict) and all(table is not t for t in chain):
                    chain.append(table)
        return chain

    def _raw(self, env: str, key: str) -> Any:
        for table in self._tables(env):
            for name in _ALIASES.get(key, (key,)):
                if name in table:
                    return table[name]
        return None

    # -- unrolling TOML values

    def unroll(self, value: Any, ctx: Context) -> Any:
        """tox's ``Unroll``: strings substituted, ``replace`` tables resolved, recursively."""
        if ctx.depth > MAX_DEPTH:
            raise ToxConfigError(f"{self.file}: tox env {ctx.env}: values nest too deep")
        if isinstance(value, str):
            return self.expand(value, ctx)
        if isinstance(value, list):
            out: list[Any] = []
            for item in value:
                got = self.unroll(item, ctx)
                spread = isinstance(item, dict) and item.get("replace") and item.get("extend")
                if spread and isinstance(got, list):
                    out += got
                elif spread and isinstance(got, str):
                    out += [got] if got else []
                else:
                    out.append(got)
            return out
        if isinstance(value, dict):
            kind = value.get("replace")
            if kind is None:
                return {k: self.unroll(v, ctx) for k, v in value.items()}
            return self._directive(str(kind), value, ctx)
        return value

    def _directive(self, kind: str, value: dict[str, Any], ctx: Context) -> Any:
        if kind == "posargs":
            given = self.given_posargs(ctx)
            return self.unroll(value.get("default", []), ctx) if given is None else given
        if kind == "env":
            name = value.get("name")
            if not isinstance(name, str) or not name:
                raise ToxConfigError(f'{self.file}: a replace = "env" table needs a name')
            default = value.get("default")
            return self._env_var(
                name, None if default is None else str(self.unroll(default, ctx)), ctx
            )
        if kind == "ref":
            return self._ref(value, ctx)
        if kind == "if":
            return self.unroll(
                value.get("then") if self._condition(value, ctx) else value.get("else", ""), ctx
            )
        if kind == "glob":
            got = self._glob(str(self.unroll(value.get("pattern", ""), ctx)), "", ctx)
            if value.get("extend"):
                return got.split() if got else list(value.get("default", []))
            return got or str(value.get("default", ""))
        return {k: self.unroll(v, ctx) for k, v in value.items()}

    def _ref(self, value: dict[str, Any], ctx: Context) -> Any:
        env, key, of = value.get("env"), value.get("key"), value.get("of")
        if isinstance(env, str) and isinstance(key, str):
            link = f"[env.{env}]{key}"
            if link in ctx.chain:
                raise ToxConfigError(f"{self.file}: tox env {ctx.env}: {link} refers to itself")
            raw = self._raw(env, key)
            return self.unroll(
                raw, Context(env, ctx.up, (*ctx.chain, link), ctx.depth + 1, ctx.make_dirs)
            )
        if isinstance(of, list) and all(isinstance(p, str) for p in of):
            link = ".".join(of)
            if link in ctx.chain:
                cycle = " -> ".join([*ctx.chain[ctx.chain.index(link) :], link])
                raise ToxConfigError(f"{self.file}: tox env {ctx.env}: {cycle} refers to itself")
            return self.unroll(self._path(of), ctx.nested(link))
        raise ToxConfigError(f'{self.file}: a replace = "ref" table needs `of`, or `env` and `key`')

    def _path(self, keys: list[str]) -> Any:
        current: Any = self.table
        for key in keys:
            if not isinstance(current, dict) or key not in current:
                raise ToxConfigError(
                    f"{self.file}: reference to {'.'.join(keys)}, which is not set"
                )
            current = current[key]
        return current

    def _condition(self, value: dict[str, Any], ctx: Context) -> bool:
        """``factor.NAME``, ``env_name``, ``==``, ``!=``, ``and``/``or``/``not``; ``env.NAME``
        is the env's set_env (the host's environment is not read)."""
        text = value.get("condition")
        try:
            tree = ast.parse(str(text), mode="eval")
        except SyntaxError:
            raise ToxConfigError(f"{self.file}: invalid condition {text!r}") from None
        factors = active_factors(ctx.env)

        def ev(node: ast.expr) -> str | bool:
            if isinstance(node, ast.BoolOp):
                results = [bool(ev(v)) for v in node.values]
                return all(results) if isinstance(node.op, ast.And) else any(results)
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                return not ev(node.operand)
            if isinstance(node, ast.Compare) and len(node.ops) == 1:
                left, right = ev(node.left), ev(node.comparators[0])
                if isinstance(node.ops[0], ast.Eq):
                    return left == right
                if isinstance(node.ops[0], ast.NotEq):
                    return left != right
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            if isinstance(node, ast.Name) and node.id == "env_name":
                return ctx.env
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "factor":
                    return node.attr in factors
                if node.value.id == "env":
                    raw = self.raw_set_env(ctx.env).get(node.attr)
                    return "" if raw is None else self.expand(raw, ctx.nested(f"env:{node.attr}"))
            raise ToxConfigError(f"{self.file}: unsupported condition {text!r}")

        return bool(ev(tree.body))

    # -- lookups for string substitution

    def raw_reference(self, section: str | None, key: str, ctx: Context) -> str | None:
        if section is not None and self.file.endswith("pyproject.toml"):
            section = section.removeprefix("tool.tox.")
        if section is None:
            found = self._raw(ctx.env, key)
            if found is None:
                found = self.table.get(key)
        elif section.startswith("env.") and section[4:] in self.envs:
            found = self._raw(section[4:], key)
        else:
            try:
                found = self._path([*section.split("."), key])
            except ToxConfigError:
                return None
        if found is None or isinstance(found, dict):
            return None
        value = self.unroll(found, ctx.nested(f"[{section or ''}]{key}"))
        if isinstance(value, list):
            value = " ".join(
                " ".join(map(str, v)) if isinstance(v, list) else str(v) for v in value
            )
        return escape(str(value))

    def raw_set_env(self, env: str) -> dict[str, str]:
        table = self._raw(env, "set_env")
        if not isinstance(table, dict):
            return {}
        out: dict[str, str] = {}
        for key, value in table.items():
            if isinstance(value, str):
                out[key] = value
            elif isinstance(value, dict) and value.get("replace") == "env":
                name, default = value.get("name"), value.get("default")
                out[key] = f"{{env:{name}" + ("" if default is None else f":{default}") + "}"
            elif isinstance(value, (int, float, bool)):
                out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    # -- the environment

    def _strings(self, name: str, key: str, ctx: Context) -> list[str]:
        raw = self._raw(name, key)
        if raw is None:
            return []
        got = self.unroll(raw if isinstance(raw, list) else [raw], ctx)
        return [self.plain(str(v)) for v in self._flat(got) if str(v).strip()]

    def _flat(self, value: Any) -> list[Any]:
        if isinstance(value, list):
            return [x for item in value for x in self._flat(item)]
        return [value]

    def _commands(self, name: str, key: str, ctx: Context) -> tuple[ToxCommand, ...]:
        raw = self._raw(name, key)
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise ToxConfigError(f"{self.file}: tox env {name}: {key} must be an array of commands")
        got = self.unroll(raw, ctx)
        commands: list[list[str]] = []
        for entry in got if isinstance(got, list) else []:
            if isinstance(entry, list) and entry and all(isinstance(e, list) for e in entry):
                commands += [[str(a) for a in self._flat(e)] for e in entry]
            elif isinstance(entry, list):
                commands.append([str(a) for a in self._flat(entry)])
            else:
                raise ToxConfigError(
                    f"{self.file}: tox env {name}: each of {key} must be an array of arguments"
                )
        return self.commands(commands)

    def read_env(self, name: str) -> ToxEnv:
        made: list[str] = []
        root_ctx = Context(name, ".", (), 0, made)
        raw_dir = self._raw(name, "change_dir")
        change_dir = None
        if raw_dir is not None:
            change_dir = normal_dir(str(self.unroll(raw_dir, root_ctx)), self.file, name)
        self.change_dir = change_dir
        up = up_from(change_dir)
        ctx = Context(name, up, (), 0, made)
        set_env, shell_env = self.set_env_values(name, up, made)
        skip = self._raw(name, "skip_install")
        package = self._raw(name, "package")
        return ToxEnv(
            name=name,
            deps=tuple(dep_line(d) for d in self._strings(name, "deps", root_ctx)),
            extras=tuple(self._strings(name, "extras", root_ctx)),
            dependency_groups=tuple(self._strings(name, "dependency_groups", root_ctx)),
            skip_install=skip is True or package == "skip",
            set_env=set_env,
            commands_pre=self._commands(name, "commands_pre", ctx),
            commands=self._commands(name, "commands", ctx),
            commands_post=self._commands(name, "commands_post", ctx),
            change_dir=change_dir,
            make_dirs=finish_dirs(self.root, change_dir, made),
            allowlist_externals=tuple(self._strings(name, "allowlist_externals", root_ctx)),
            shell_env=shell_env,
        )


__all__ = ["TomlTox"]
