"""A Makefile's check targets (lint, types, tests, ...): ``make TARGET``, or the recipe's own
lines when the target has prerequisites."""

from __future__ import annotations

import re
from pathlib import Path

from microbuild.distill.files import leads_outside, read_project_file
from microbuild.distill.steps import Distiller, Step, Verdict, target_kind

__all__ = ["FILE", "distill_makefile"]

FILE = "Makefile"
_CHECK_TARGETS = ("lint", "check", "typecheck", "type-check", "types", "mypy", "test", "tests")


def distill_makefile(root: Path, out: Distiller) -> None:
    """Add the Makefile's check targets, one per kind of check not found yet."""
    if leads_outside(root / FILE, root):
        out.drop(FILE, "leads outside the project, so it is not read", FILE)
        return
    text = read_project_file(root / FILE, root)
    targets = re.findall(r"^([A-Za-z][A-Za-z0-9_-]*)\s*:(?!=)", text, re.MULTILINE)
    for target in _CHECK_TARGETS:
        if target in targets:
            kind = target_kind(target)
            if kind is not None and kind not in out.checks:
                _make_target(text, target, out)


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
            Step(f"make {target}", FILE, where),
            Verdict(target_kind(target) or "tests", f"make target {target!r}"),
        )
        return
    out.kept.append(
        (where, f"its recipe, without its prerequisites ({', '.join(prerequisites)})", FILE)
    )
    for line in recipe:
        if line:
            out.add(Step(line, FILE, where))
