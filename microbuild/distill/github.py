"""GitHub Actions: ``.github/workflows/*.yml`` — the jobs a push or pull request runs."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from microbuild.distill._yaml import load_yaml
from microbuild.distill.steps import Distiller, Step, program, short, split_script
from microbuild.distill.tasks import add_all

HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
_PUSH_EVENTS = {"push", "pull_request", "pull_request_target", "merge_group"}
_SKIP_JOB_RE = re.compile(r"\b(deploy|publish|release|docs?|documentation|pages|docset)\b", re.I)
_EXPR_RE = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_ACTIONS = {
    "actions/checkout": "the sidecar receives the working tree; nothing to check out",
    "actions/cache": "cache step: the snapshot is the cache",
    "actions/upload-artifact": "artifact storage",
    "actions/download-artifact": "artifact storage (needs an earlier CI job)",
    "codecov/codecov-action": "coverage upload (needs the network and a CI token)",
    "coverallsapp/github-action": "coverage upload (needs the network and a CI token)",
    "pypa/gh-action-pypi-publish": "publishes a release",
    "github/codeql-action": "security scan (CodeQL)",
}


def files(root: Path) -> list[Path]:
    base = root / ".github" / "workflows"
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())


def distill(root: Path, out: Distiller) -> list[str]:
    read: list[str] = []
    for path in files(root):
        rel = path.relative_to(root).as_posix()
        read.append(rel)
        data = load_yaml(path, rel, root)
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            out.drop(rel, "no jobs in this workflow", rel)
            continue
        events = _events(data.get("on"))
        if not events & _PUSH_EVENTS:
            out.drop(rel, f"runs on {', '.join(sorted(events)) or 'no event'}, not on a push", rel)
            continue
        workflow_env = _env(data.get("env"))
        for job_id, job in data["jobs"].items():
            if isinstance(job, dict):
                _job(root, rel, str(job_id), job, workflow_env, out)
    return read


def _events(on: Any) -> set[str]:
    if isinstance(on, str):
        return {on}
    if isinstance(on, list):
        return {str(e) for e in on}
    if isinstance(on, dict):
        return {str(e) for e in on}
    return set()


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _job(
    root: Path, rel: str, job_id: str, job: dict[str, Any], wf_env: dict[str, str], out: Distiller
) -> None:
    where = f"job {job_id}"
    name = str(job.get("name") or "")
    if "uses" in job:
        out.drop(where, f"calls the reusable workflow {job['uses']} (not expanded offline)", rel)
        return
    if _SKIP_JOB_RE.search(job_id) or _SKIP_JOB_RE.search(_EXPR_RE.sub("", name)):
        out.drop(where, "deploy, release or documentation job", rel)
        return
    condition = str(job.get("if") or "")
    if re.search(
        r"refs/tags|event_name\s*==\s*'(release|schedule|workflow_dispatch)'|action\s*==\s*'published'",
        condition,
    ):
        out.drop(where, f"runs only for `{condition}`", rel)
        return
    matrix = _matrix_cell(job, where, rel, out)
    job_env = {**wf_env, **_env(job.get("env"))}
    defaults = job.get("defaults")
    run_defaults = defaults.get("run") if isinstance(defaults, dict) else None
    job_cwd = run_defaults.get("working-directory") if isinstance(run_defaults, dict) else None
    steps = job.get("steps")
    if not isinstance(steps, list):
        return
    for index, step in enumerate(steps, 1):
        if not isinstance(step, dict):
            continue
        label = f"{where} step {index}"
        if "uses" in step:
            _action(str(step["uses"]), step, label, matrix, rel, out)
            continue
        if "run" not in step:
            continue
        step_if = str(step.get("if") or "")
        if re.search(r"\b(failure|cancelled)\(\)", step_if):
            out.drop(label, f"runs only when `{step_if}`", rel)
            continue
        if step_if and _matrix_condition(step_if, matrix) is False:
            out.drop(label, f"does not run in the chosen matrix cell (`if: {step_if}`)", rel)
            continue
        shell = str(step.get("shell") or (run_defaults or {}).get("shell") or "bash")
        if not shell.split()[0].endswith(("bash", "sh")):
            out.drop(label, f"runs in shell {shell!r}, not a POSIX shell", rel)
            continue
        env = {**job_env, **_env(step.get("env"))}
        values = {k: _eval(v, matrix, job_env, rel, label, out) for k, v in env.items()}
        script = _eval(str(step["run"]), matrix, values, rel, label, out)
        cwd = step.get("working-directory") or job_cwd
        cwd_text = _eval(str(cwd), matrix, values, rel, label, out) if cwd else None
        step_env = _env(step.get("env"))
        for line in split_script(script):
            used = tuple(
                (k, values[k]) for k in values if (k in step_env or _reads(line, k)) and values[k]
            )
            add_all(root, out, [Step(line, rel, label, cwd_text, used)])


def _reads(line: str, name: str) -> bool:
    """Whether a line uses a variable: ``$NAME``, or tox reading TOXENV."""
    if name == "TOXENV" and program(line)[0] == "tox":
        return True
    return re.search(rf"\${{?{re.escape(name)}\b", line) is not None


_MAX_CELLS = 512


def _cells(matrix: dict[str, Any]) -> list[dict[str, str]]:
    """The matrix's cells as GitHub expands them: the product of its lists, minus `exclude`,
    with `include` entries merged into matching cells or added as cells of their own."""
    axes = [
        (str(k), [str(v) for v in values] if isinstance(values, list) else [str(values)])
        for k, values in matrix.items()
        if k not in ("include", "exclude")
    ]
    cells: list[dict[str, str]] = [{}] if axes else []
    for key, values in axes:
        cells = [{**c, key: v} for c in cells for v in values or [""]][:_MAX_CELLS]
    excludes = [e for e in matrix.get("exclude") or [] if isinstance(e, dict)]
    cells = [
        c
        for c in cells
        if not any(all(c.get(str(k)) == str(v) for k, v in e.items()) for e in excludes)
    ]
    originals = set(cells[0]) if cells else set()
    for extra in matrix.get("include") or []:
        if not isinstance(extra, dict):
            continue
        entry = {str(k): str(v) for k, v in extra.items()}
        matched = False
        for cell in cells:
            if all(cell.get(k) == v for k, v in entry.items() if k in originals):
                matched = True
                for k, v in entry.items():
                    if k not in originals:
                        cell[k] = v
        if not matched:
            cells.append(entry)
    return [c for c in cells if c]


def _cell_score(cell: dict[str, str]) -> int:
    """Prefer a Linux cell on the host's Python, CPython, and not a benchmark or docs run."""
    text = " ".join(cell.values()).lower()
    host = HOST_PYTHON.replace(".", "")
    score = 0
    if re.search(r"windows|macos|osx|darwin", text):
        score -= 4
    if re.search(r"ubuntu|linux", text):
        score += 2
    if re.search(rf"(?<![\d.]){re.escape(HOST_PYTHON)}(?![\d])|py{host}(?!\d)", text):
        score += 3
    if "pypy" in text:
        score -= 2
    if re.search(r"bench|docs|nightly|dev\b|main\b|minimum|oldest", text):
        score -= 1
    return score


def _matrix_cell(job: dict[str, Any], where: str, rel: str, out: Distiller) -> dict[str, str]:
    strategy = job.get("strategy")
    matrix = strategy.get("matrix") if isinstance(strategy, dict) else None
    if not isinstance(matrix, dict):
        return {}
    cells = _cells(matrix)
    if not cells:
        return {}
    cell = max(cells, key=_cell_score)  # the first of the best
    shown = ", ".join(f"{k}={v}" for k, v in cell.items())
    out.kept.append(
        (
            f"{where} matrix cell",
            f"{shown} (one of {len(cells)} cells: Linux and the host's Python {HOST_PYTHON} "
            "preferred)",
            rel,
        )
    )
    return cell


_IF_TOKEN = re.compile(
    r"\s*(?:(?P<ref>matrix\.[A-Za-z0-9_-]+)|(?P<str>'[^']*')|(?P<op>==|!=|&&|\|\||!|\(|\))"
    r"|(?P<lit>true|false|null))"
)


def _matrix_condition(condition: str, matrix: dict[str, str]) -> bool | None:
    """An `if:` made only of matrix values, literals, ==, !=, !, && and ||, evaluated for the
    chosen cell; None for anything else (the step is then kept)."""
    text = condition.strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    pieces: list[str] = []
    pos = 0
    while pos < len(text.rstrip()):
        match = _IF_TOKEN.match(text, pos)
        if match is None:
            return None
        pos = match.end()
        if match["ref"]:
            value = matrix.get(match["ref"].split(".", 1)[1], "")
            known = {"true": True, "false": False, "": None}  # YAML's true reads as "True"
            pieces.append(repr(known.get(value.lower(), value)))
        elif match["str"]:
            pieces.append(repr(match["str"][1:-1]))
        elif match["lit"]:
            pieces.append({"true": "True", "false": "False", "null": "None"}[match["lit"]])
        else:
            pieces.append({"&&": " and ", "||": " or ", "!": " not "}.get(match["op"], match["op"]))
    try:
        tree = ast.parse("".join(pieces).strip(), mode="eval")
    except SyntaxError:
        return None
    allowed = (
        ast.Expression,
        ast.BoolOp,
        ast.And,
        ast.Or,
        ast.UnaryOp,
        ast.Not,
        ast.Compare,
        ast.Eq,
        ast.NotEq,
        ast.Constant,
    )
    if not all(isinstance(node, allowed) for node in ast.walk(tree)):
        return None
    return bool(eval(compile(tree, "<if>", "eval"), {"__builtins__": {}}, {}))


def _eval(
    text: str, matrix: dict[str, str], env: dict[str, str], rel: str, where: str, out: Distiller
) -> str:
    def value(match: re.Match[str]) -> str:
        expr = match[1]
        ref = re.fullmatch(r"(matrix|env)\.([A-Za-z0-9_-]+)", expr)
        if ref:
            source = matrix if ref[1] == "matrix" else env
            if ref[2] in source:
                return source[ref[2]]
        out.drop(
            f"{where}: ${{{{ {expr} }}}}", "GitHub expression not evaluable offline; removed", rel
        )
        return ""

    return _EXPR_RE.sub(value, text)


def _action(
    uses: str, step: dict[str, Any], label: str, matrix: dict[str, str], rel: str, out: Distiller
) -> None:
    action = uses.split("@", 1)[0]
    base = "/".join(action.split("/")[:2])
    with_ = step.get("with") if isinstance(step.get("with"), dict) else {}
    if base == "actions/setup-python":
        wanted = _eval(str((with_ or {}).get("python-version", "")), matrix, {}, rel, label, out)
        note = f" (the workflow asks for {wanted})" if wanted and wanted != HOST_PYTHON else ""
        out.kept.append(
            (
                f"{label}: {short(uses)}",
                f"the snapshot's .venv uses the host's Python {HOST_PYTHON}{note}",
                rel,
            )
        )
        return
    if base in ("actions/setup-node", "actions/setup-go", "actions/setup-java"):
        out.kept.append((f"{label}: {short(uses)}", "the sidecar uses the host's toolchain", rel))
        return
    if base in ("astral-sh/setup-uv", "hynek/setup-cached-uv", "yezz123/setup-uv"):
        out.kept.append(
            (f"{label}: {short(uses)}", "uv installs are written as .venv pip installs", rel)
        )
        return
    if base in ("pre-commit/action", "j178/prek-action", "tox-dev/action-pre-commit-uv"):
        given = (with_ or {}).get("extra_args", (with_ or {}).get("extra-args"))
        extra = _eval(str(given or "--all-files"), matrix, {}, rel, label, out)
        try:
            words = shlex.split(extra)
        except ValueError:
            words = ["--all-files"]
        tool = "prek" if base == "j178/prek-action" else "pre-commit"
        out.add(Step(shlex.join([tool, "run", *words]), rel, f"{label}: {short(uses)}"))
        return
    reason = _ACTIONS.get(base) or next(
        (why for prefix, why in _ACTIONS.items() if action.startswith(prefix)), None
    )
    out.drop(f"{label}: {short(uses)}", reason or "a GitHub action cannot run outside GitHub", rel)
