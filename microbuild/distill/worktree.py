"""The two questions `microbuild init` asks git (is this a work tree, which tags are there),
through :mod:`microbuild.gitsafe` so the repository's own config cannot run anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

from microbuild import gitsafe
from microbuild.distill.plan import InitError

__all__ = ["git", "require_work_tree"]


def git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            gitsafe.argv(root, *args),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError:
        raise InitError("git is not installed; install git (apt-get install git)") from None
    except subprocess.TimeoutExpired:
        raise InitError(f"git {args[0]} in {root} did not answer within 60s") from None


def require_work_tree(root: Path) -> None:
    proc = git(root, "rev-parse", "--is-inside-work-tree")
    if proc.returncode == 0 and proc.stdout.strip() == "true":
        return
    detail = (proc.stderr.strip().splitlines() or [""])[0]
    if proc.returncode == 0 or "not a git repository" in detail:
        raise InitError(
            f"{root} is not inside a git work tree; run `git init` there first "
            "(snapshots are built from git commits)"
        )
    if "dubious ownership" in detail:
        detail += f"; if you trust it: git config --global --add safe.directory {root}"
    raise InitError(f"git cannot read the repository at {root}: {detail}")
