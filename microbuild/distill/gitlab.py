"""GitLab ``.gitlab-ci.yml``: jobs with ``extends`` (hidden templates, several levels),
``default``/global ``before_script``, ``!reference`` tags and one ``parallel:matrix`` cell."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from microbuild.distill._yaml import Reference, as_dict, load_yaml
from microbuild.distill.steps import Distiller, Step, split_script
from microbuild.distill.tasks import add_all

FILE = ".gitlab-ci.yml"
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
RESERVED = {
    "image", "services", "stages", "types", "before_script", "after_script", "variables",
    "cache", "include", "default", "workflow",
}  # fmt: skip
_SKIP_STAGE_RE = re.compile(r"\b(deploy|release|publish|pages|docs?)\b", re.I)


def distill(root: Path, out: Distiller) -> list[str]:
    path = root / FILE
    if not path.is_file():
        return []
    data = load_yaml(path, FILE, root)
    if not isinstance(data, dict):
        out.drop(FILE, "not a mapping of jobs", FILE)
        return [FILE]
    if "include" in data:
        out.drop(f"{FILE} include", "included files are not fetched offline", FILE)
    default = as_dict(data.get("default"))
    global_vars = _vars(data.get("variables"))
    for name, job in data.items():
        if name in RESERVED or str(name).startswith(".") or not isinstance(job, dict):
            continue
        _job(root, data, str(name), _resolve(data, job, set()), default, global_vars, out)
    return [FILE]


def _resolve(data: dict[str, Any], job: dict[str, Any], seen: set[str]) -> dict[str, Any]:
    """The job with its ``extends`` chain merged in (deep merge of maps, later wins)."""
    parents = job.get("extends") or []
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        if parent in seen or not isinstance(data.get(parent), dict):
            continue
        merged = _merge(merged, _resolve(data, data[parent], seen | {parent}))
    return _merge(merged, {k: v for k, v in job.items() if k != "extends"})


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _lines(data: dict[str, Any], value: Any, depth: int = 0) -> list[str]:
    if isinstance(value, Reference):
        node: Any = data
        for key in value:
            node = node.get(key) if isinstance(node, dict) else None
        return _lines(data, node, depth + 1) if depth < 10 else []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [line for item in value for line in _lines(data, item, depth + 1)]
    return []


def _vars(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    out: dict[str, str] = {}
    for key, val in value.items():
        out[str(key)] = str(val.get("value", "")) if isinstance(val, dict) else str(val)
    return out


def _job(
    root: Path,
    data: dict[str, Any],
    name: str,
    job: dict[str, Any],
    default: dict[str, Any],
    global_vars: dict[str, str],
    out: Distiller,
) -> None:
    where = f"job {name}"
    stage = str(job.get("stage") or "test")
    if name == "pages" or _SKIP_STAGE_RE.search(stage) or _SKIP_STAGE_RE.search(name):
        out.drop(where, f"deploy, release or documentation job (stage {stage})", FILE)
        return
    if job.get("when") == "manual":
        out.drop(where, "manual job", FILE)
        return
    only = job.get("only")
    refs = (
        only
        if isinstance(only, list)
        else (only or {}).get("refs")
        if isinstance(only, dict)
        else None
    )
    if (
        isinstance(refs, list)
        and refs
        and all(r in ("tags", "main", "master", "schedules", "web") for r in refs)
    ):
        out.drop(where, f"runs only for {', '.join(map(str, refs))}", FILE)
        return
    rules = job.get("rules")
    if (
        isinstance(rules, list)
        and rules
        and all(
            isinstance(r, dict)
            and re.search(
                r"CI_COMMIT_TAG|CI_PIPELINE_SOURCE\s*==\s*\"schedule\"", str(r.get("if", ""))
            )
            and r.get("when") != "never"
            for r in rules
        )
    ):
        out.drop(where, "runs only for tags or schedules (rules)", FILE)
        return
    variables = {**global_vars, **_vars(job.get("variables"))}
    parallel = job.get("parallel")
    matrix = parallel.get("matrix") if isinstance(parallel, dict) else None
    if isinstance(matrix, list) and matrix and isinstance(matrix[0], dict):
        cell: dict[str, str] = {}
        for key, values in matrix[0].items():
            options = [str(v) for v in values] if isinstance(values, list) else [str(values)]
            cell[str(key)] = HOST_PYTHON if HOST_PYTHON in options else options[0]
        variables.update(cell)
        shown = ", ".join(f"{k}={v}" for k, v in cell.items())
        out.kept.append(
            (f"{where} matrix cell", f"{shown} (the first parallel:matrix entry)", FILE)
        )
    before = (
        job["before_script"]
        if "before_script" in job
        else default.get("before_script", data.get("before_script"))
    )
    after = (
        job["after_script"]
        if "after_script" in job
        else default.get("after_script", data.get("after_script"))
    )
    for part, value in (
        ("before_script", before),
        ("script", job.get("script")),
        ("after_script", after),
    ):
        for entry in _lines(data, value):
            entry = _substitute(entry, variables)
            for line in split_script(entry):
                used = tuple(
                    (k, v)
                    for k, v in variables.items()
                    if re.search(rf"\${{?{re.escape(k)}\b", line)
                )
                add_all(root, out, [Step(line, FILE, f"{where} {part}", None, used)])


def _substitute(text: str, variables: dict[str, str]) -> str:
    """Matrix and job variables written into the line, so the check reads like the job ran."""

    def value(match: re.Match[str]) -> str:
        key = match[1] or match[2]
        return variables.get(key, match[0])

    return re.sub(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", value, text)
