"""package.json's scripts: lint, type-check, build and test, run with the package manager whose
lock file the project has, after its install."""

from __future__ import annotations

import json
from pathlib import Path

from microbuild.distill.files import leads_outside
from microbuild.distill.steps import Distiller, Kind, Step, Verdict

__all__ = ["FILE", "distill_package_json"]

FILE = "package.json"
_SCRIPTS: dict[Kind, tuple[str, ...]] = {
    "lint": ("lint", "eslint"),
    "types": ("typecheck", "type-check", "types", "tsc", "check-types"),
    "build": ("build",),
    "tests": ("test", "tests", "test:unit"),
}
"""The scripts looked for, by the check they are, first found first."""


def distill_package_json(root: Path, out: Distiller, read: list[str]) -> None:
    """Add package.json's check scripts and its install; ``read`` gets the file if it has
    scripts."""
    path = root / FILE
    if not path.is_file():
        return
    if leads_outside(path, root):
        out.drop(FILE, "leads outside the project, so it is not read", FILE)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        out.drop(FILE, f"cannot be parsed ({err})", FILE)
        return
    scripts = data.get("scripts") if isinstance(data, dict) else None
    if not isinstance(scripts, dict):
        return
    read.append(FILE)
    manager = "npm"
    if (root / "pnpm-lock.yaml").is_file():
        manager, setup, lock = "pnpm", "pnpm install --frozen-lockfile", "pnpm-lock.yaml"
    elif (root / "yarn.lock").is_file():
        manager, setup, lock = "yarn", "yarn install --frozen-lockfile", "yarn.lock"
    elif (root / "package-lock.json").is_file():
        setup, lock = "npm ci", "package-lock.json"
    else:
        setup, lock = "npm install", FILE
    found_any = False
    for kind, names in _SCRIPTS.items():
        name = next((n for n in names if isinstance(scripts.get(n), str)), None)
        if name is None:
            continue
        body = scripts[name]
        if "no test specified" in body:
            out.drop(f"{FILE} script {name}", "npm's placeholder (`exit 1`)", FILE)
            continue
        run = f"{manager} test" if name == "test" else f"{manager} run {name}"
        out.add(Step(run, FILE, f"script {name}"), Verdict(kind, f"{FILE} script: {body}"))
        found_any = True
    if found_any:
        out.add(Step(setup, FILE, "dependencies"))
        out.input(FILE)
        out.input(lock)
