"""Task runners a project declares without (or inside) CI: tox (tox.ini, setup.cfg, tox.toml or
pyproject.toml), noxfile.py, Makefile, package.json. A CI line ``tox -e py311-tests`` is expanded
through the tox config the same way, so the sidecar runs the environment's commands rather than
tox (which would need the network). Each runner is read by its own module; this one decides the
order and expands the ``tox``/``nox`` lines they contain."""

from __future__ import annotations

from pathlib import Path

from microbuild.distill import make, nox, npm
from microbuild.distill.steps import Distiller, Step, program
from microbuild.distill.toxconfig import check_envs, expand_tox, tox_steps, tox_with_envs

__all__ = ["add_all", "distill_tasks", "expand"]


def expand(root: Path, step: Step, out: Distiller) -> list[Step]:
    """``tox``/``nox`` lines as the commands they run; other lines unchanged."""
    name, _ = program(step.command)
    if name == "tox":
        return expand_tox(root, step, out)
    if name == "nox" and (root / nox.FILE).is_file():
        return nox.expand_nox(root, step, out)
    return [step]


def add_all(root: Path, out: Distiller, steps: list[Step]) -> None:
    """Add each step, ``tox``/``nox`` lines expanded."""
    for step in steps:
        for expanded in expand(root, step, out):
            out.add(expanded)


def distill_tasks(root: Path, out: Distiller) -> list[str]:
    """Read tox.ini, else noxfile.py, else Makefile; and package.json. Returns files read."""
    read: list[str] = []
    tox = tox_with_envs(root, out)
    if tox is not None:
        read.append(tox.file)
        before = len(out.checks)
        for env in check_envs(tox):
            add_all(root, out, tox_steps(tox, env, tox.file, out))
        if len(out.checks) > before:
            npm.distill_package_json(root, out, read)
            return read
    if (root / nox.FILE).is_file():
        read.append(nox.FILE)
        for session in nox.check_sessions(root, out):
            add_all(root, out, nox.nox_steps(root, [session], nox.FILE))
        if out.checks:
            npm.distill_package_json(root, out, read)
            return read
    if (root / make.FILE).is_file():
        read.append(make.FILE)
        make.distill_makefile(root, out)
    npm.distill_package_json(root, out, read)
    return read
