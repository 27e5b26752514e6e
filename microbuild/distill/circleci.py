"""CircleCI ``.circleci/config.yml`` (2 / 2.1): the workflow jobs a push runs, steps expanded
through reusable commands and parameters; ``circleci tests`` pipelines rewritten to run locally."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

from microbuild.distill._yaml import as_dict, load_yaml
from microbuild.distill.steps import Distiller, Step, split_script
from microbuild.distill.tasks import add_all

FILE = ".circleci/config.yml"
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
_PARAM_RE = re.compile(r"<<\s*(pipeline\.parameters|parameters|pipeline)\.([A-Za-z0-9_.-]+)\s*>>")
_SPECIAL = {
    "checkout": "the sidecar receives the working tree; nothing to check out",
    "save_cache": "cache step: the snapshot is the cache",
    "restore_cache": "cache step: the snapshot is the cache",
    "store_artifacts": "artifact storage",
    "store_test_results": "test results upload",
    "persist_to_workspace": "CircleCI workspace plumbing",
    "attach_workspace": "CircleCI workspace plumbing",
    "add_ssh_keys": "CircleCI credentials",
    "setup_remote_docker": "containers are not part of a microbuild",
}
_SKIP_JOB_RE = re.compile(r"\b(deploy|publish|release|docs?|documentation|pages)\b", re.I)
_GLOB_RE = re.compile(r"circleci\s+tests\s+glob\s+((?:\"[^\"]*\"|'[^']*'|[^\s|)]+\s*)+)")
_RUN_CMD_RE = re.compile(r"--command[= ](\"[^\"]*\"|'[^']*'|\S+)")


def distill(root: Path, out: Distiller) -> list[str]:
    path = root / FILE
    if not path.is_file():
        return []
    data = load_yaml(path, FILE, root)
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
        out.drop(FILE, "no jobs", FILE)
        return [FILE]
    reader = _Reader(root, data, out)
    for job_name, params in reader.selected():
        reader.job(job_name, params)
    return [FILE]


class _Reader:
    def __init__(self, root: Path, data: dict[str, Any], out: Distiller) -> None:
        self.root = root
        self.data = data
        self.out = out
        self.orbs = (
            set((data.get("orbs") or {}).keys()) if isinstance(data.get("orbs"), dict) else set()
        )
        self.commands = as_dict(data.get("commands"))
        pipeline = as_dict(data.get("parameters"))
        self.pipeline = {
            str(k): v.get("default") for k, v in pipeline.items() if isinstance(v, dict)
        }

    def selected(self) -> list[tuple[str, dict[str, Any]]]:
        workflows = self.data.get("workflows")
        jobs = self.data["jobs"]
        if not isinstance(workflows, dict):
            return [(name, {}) for name in jobs]
        chosen: list[tuple[str, dict[str, Any]]] = []
        for wf_name, workflow in workflows.items():
            if not isinstance(workflow, dict):
                continue
            if "triggers" in workflow:
                self.out.drop(f"workflow {wf_name}", "scheduled workflow (not run on a push)", FILE)
                continue
            for entry in workflow.get("jobs") or []:
                name, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                opts = opts if isinstance(opts, dict) else {}
                why = self._skip(str(name), opts)
                if why:
                    self.out.drop(f"workflow {wf_name} job {name}", why, FILE)
                    continue
                params = {
                    k: v
                    for k, v in opts.items()
                    if k not in ("requires", "filters", "context", "name", "matrix", "type")
                }
                matrix = opts.get("matrix")
                if isinstance(matrix, dict) and isinstance(matrix.get("parameters"), dict):
                    cell = {}
                    for key, values in matrix["parameters"].items():
                        values = (
                            [str(v) for v in values] if isinstance(values, list) else [str(values)]
                        )
                        cell[key] = (
                            HOST_PYTHON
                            if any(v == HOST_PYTHON for v in values)
                            and ("python" in key or "version" in key)
                            else values[0]
                        )
                    params.update(cell)
                    shown = ", ".join(f"{k}={v}" for k, v in cell.items())
                    self.out.kept.append(
                        (
                            f"job {name} matrix cell",
                            f"{shown} (one cell; the host's Python {HOST_PYTHON} preferred)",
                            FILE,
                        )
                    )
                if all(n != name or p != params for n, p in chosen):
                    chosen.append((str(name), params))
        return chosen

    def _skip(self, name: str, opts: dict[str, Any]) -> str | None:
        if opts.get("type") == "approval":
            return "manual approval"
        if "/" in name and name.split("/")[0] in self.orbs:
            return f"orb job {name}: orbs cannot be expanded offline"
        if name not in self.data["jobs"]:
            return f"no job {name!r} in {FILE}"
        if _SKIP_JOB_RE.search(name):
            return "deploy, release or documentation job"
        filters = as_dict(opts.get("filters"))
        branches = as_dict(filters.get("branches"))
        if "only" in branches:
            return f"runs only on branches {branches['only']!r}"
        if branches.get("ignore") in ("/.*/", ".*") and "tags" in filters:
            return "runs only for tags"
        return None

    def job(self, name: str, args: dict[str, Any]) -> None:
        job = self.data["jobs"][name]
        if not isinstance(job, dict):
            return
        params = self._params(job.get("parameters"), args)
        env = (
            {str(k): str(v) for k, v in (job.get("environment") or {}).items()}
            if isinstance(job.get("environment"), dict)
            else {}
        )
        self._steps(
            job.get("steps") or [],
            params,
            f"job {name}",
            job.get("working_directory"),
            env,
            depth=0,
        )

    def _params(self, declared: Any, given: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if isinstance(declared, dict):
            for key, spec in declared.items():
                if isinstance(spec, dict) and "default" in spec:
                    values[str(key)] = spec["default"]
        values.update(given)
        return values

    def _subst(self, text: str, params: dict[str, Any]) -> str:
        def value(match: re.Match[str]) -> str:
            scope, key = match[1], match[2]
            if scope == "parameters" and key in params:
                return _text(params[key])
            if scope == "pipeline.parameters" and key in self.pipeline:
                return _text(self.pipeline[key])
            return ""

        return _PARAM_RE.sub(value, text)

    def _steps(
        self,
        steps: Any,
        params: dict[str, Any],
        where: str,
        cwd: Any,
        env: dict[str, str],
        depth: int,
    ) -> None:
        if not isinstance(steps, list) or depth > 10:
            return
        for index, step in enumerate(steps, 1):
            label = f"{where} step {index}"
            if isinstance(step, str):
                key, body = self._subst(step, params), None
            elif isinstance(step, dict) and len(step) == 1:
                key, body = next(iter(step.items()))
                key = str(key)
            else:
                continue
            if key in _SPECIAL:
                self.out.drop(f"{label}: {key}", _SPECIAL[key], FILE)
            elif key == "run":
                self._run(body, params, label, cwd, env)
            elif key in ("when", "unless") and isinstance(body, dict):
                condition = self._subst(_text(body.get("condition")), params).strip().lower()
                truthy = condition not in ("", "false", "0", "none")
                if (key == "when") == truthy:
                    self._steps(body.get("steps"), params, label, cwd, env, depth + 1)
                else:
                    self.out.drop(f"{label}: {key}", f"condition is {condition or 'false'}", FILE)
            elif key in self.commands:
                command = as_dict(self.commands[key])
                given = (
                    {
                        k: self._subst(v, params) if isinstance(v, str) else v
                        for k, v in (body or {}).items()
                    }
                    if isinstance(body, dict)
                    else {}
                )
                inner = self._params(command.get("parameters"), given)
                self._steps(command.get("steps"), inner, f"{label} ({key})", cwd, env, depth + 1)
            elif "/" in key and key.split("/")[0] in self.orbs:
                self.out.drop(
                    f"{label}: {key}", "orb command: orbs cannot be expanded offline", FILE
                )
            else:
                self.out.drop(f"{label}: {key}", "unknown step type", FILE)

    def _run(
        self, body: Any, params: dict[str, Any], label: str, cwd: Any, env: dict[str, str]
    ) -> None:
        if isinstance(body, str):
            command, step_env, background = body, {}, False
        elif isinstance(body, dict):
            command = _text(body.get("command"))
            step_env = {str(k): str(v) for k, v in (body.get("environment") or {}).items()}
            cwd = body.get("working_directory", cwd)
            background = bool(body.get("background"))
            if str(body.get("when", "on_success")) == "on_fail":
                self.out.drop(label, "runs only when an earlier step failed", FILE)
                return
        else:
            return
        if background:
            self.out.drop(
                f"{label}: `{command.strip()[:60]}`", "background service (not a check)", FILE
            )
            return
        script = _rewrite_split(self._subst(command, params), label, self.out)
        cwd_text = self._subst(str(cwd), params) if cwd else None
        if cwd_text in ("~/project", "/root/project", "~/repo"):
            cwd_text = None
        elif cwd_text and cwd_text.startswith("~/project/"):
            cwd_text = cwd_text.removeprefix("~/project/")
        all_env = {**env, **{k: self._subst(v, params) for k, v in step_env.items()}}
        for line in split_script(script):
            used = tuple(
                (k, v)
                for k, v in all_env.items()
                if k in step_env or re.search(rf"\${{?{re.escape(k)}\b", line)
            )
            add_all(self.root, self.out, [Step(line, FILE, label, cwd_text, used)])


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _glob_dirs(globs: str) -> list[str]:
    """The directories a ``circleci tests glob`` covers: each pattern up to its first wildcard."""
    dirs: list[str] = []
    for pattern in shlex.split(globs):
        head = re.split(r"[*?\[{]", pattern, maxsplit=1)[0]
        directory = (
            head
            if head.endswith("/") or head == pattern
            else head.rsplit("/", 1)[0] + "/"
            if "/" in head
            else "."
        )
        directory = directory.rstrip("/") or "."
        if directory not in dirs:
            dirs.append(directory)
    return dirs


def _rewrite_split(script: str, label: str, out: Distiller) -> str:
    """``circleci tests glob G | circleci tests split|run ... | xargs CMD`` → ``CMD dirs``;
    ``VAR=$(circleci tests glob G | ...)`` makes later ``$VAR`` the directories."""
    if "circleci tests" not in script:
        return script
    script = re.sub(r"\\\r?\n\s*", " ", script)
    lines: list[str] = []
    variables: dict[str, str] = {}
    for line in script.splitlines():
        glob = _GLOB_RE.search(line)
        if glob is None:
            for var, dirs in variables.items():
                line = re.sub(rf"\"?\$\{{?{var}\}}?\"?", dirs, line)
            lines.append(line)
            continue
        dirs = " ".join(shlex.quote(d) for d in _glob_dirs(glob[1].split("|")[0]))
        assign = re.match(r"\s*(?:export\s+)?([A-Za-z_]\w*)=\$\(", line)
        run = _RUN_CMD_RE.search(line)
        xargs = re.search(r"\|\s*xargs\s+(.+)$", line)
        if assign:
            variables[assign[1]] = dirs
            continue
        if run:
            inner = shlex.split(run[1])[0] if run[1][0] in "'\"" else run[1]
            command = re.sub(r"^xargs\s+", "", inner.strip())
        elif xargs:
            command = xargs[1].strip()
        else:
            lines.append(line)
            continue
        rewritten = f"{command} {dirs}"
        out.kept.append(
            (
                f"{label}: circleci tests",
                f"split only works inside CircleCI: runs `{rewritten}` (all of {glob[1].strip()})",
                FILE,
            )
        )
        lines.append(rewritten)
    return "\n".join(lines)
