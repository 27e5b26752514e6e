"""Host-side git runs nothing the repository configured.

A repository whose `.git/config` (an agent can write it) names programs: `core.fsmonitor`, a
clean/smudge/process filter that `.gitattributes` applies, diff textconv and external drivers,
`core.hooksPath` hooks (`post-index-change` fires on `read-tree`/`add`/`update-index`), a pager,
and an `include.path` that brings in more of the same. Every program writes a marker file. The
code paths microbuild runs on the host for a validate, a stop hook and `init` must leave no
marker; the same git commands without microbuild's overrides leave them (so the vectors are
live), and the tree ids are still right.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from microbuild import gitsafe, sync, treeedit, watch
from microbuild.distill.configure import init_project

VECTORS = ("fsmonitor", "clean", "smudge", "process", "textconv", "extdiff", "hook", "included")


def _script(path: Path, marker: Path, body: str = "") -> str:
    path.write_text(f"#!/bin/sh\ntouch {marker}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """A committed repository, then its config turned hostile (as an agent would, later)."""
    root = tmp_path / "repo"
    marks = tmp_path / "marks"
    bin_dir = tmp_path / "bin"
    for d in (root, marks, bin_dir, root / "hooks"):
        d.mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "b.dat").write_text("bravo\n")
    (root / "pyproject.toml").write_text('[project]\nname = "victim"\nversion = "1"\n')
    _git(root, "init", "-q")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")

    (root / ".gitattributes").write_text(
        "*.txt filter=evil diff=evil\n*.dat filter=inc\n*.proc filter=proc\n"
    )
    (root / "c.proc").write_text("charlie\n")
    for hook in ("post-index-change", "pre-commit", "post-checkout", "reference-transaction"):
        _script(root / "hooks" / hook, marks / "hook")
    fsmonitor = _script(bin_dir / "fsmonitor", marks / "fsmonitor", "exit 1\n")
    clean = _script(bin_dir / "clean", marks / "clean", "cat\n")
    smudge = _script(bin_dir / "smudge", marks / "smudge", "cat\n")
    process = _script(bin_dir / "process", marks / "process", "exit 1\n")
    textconv = _script(bin_dir / "textconv", marks / "textconv", 'cat "$1"\n')
    extdiff = _script(bin_dir / "extdiff", marks / "extdiff")
    included = _script(bin_dir / "included", marks / "included", "cat\n")
    (tmp_path / "evil.cfg").write_text(f'[filter "inc"]\n\tclean = {included}\n')
    with open(root / ".git" / "config", "a") as config:
        config.write(
            f"[core]\n\tfsmonitor = {fsmonitor}\n\thooksPath = {root / 'hooks'}\n"
            f"\tpager = {extdiff}\n"
            f'[filter "evil"]\n\tclean = {clean}\n\tsmudge = {smudge}\n\trequired = true\n'
            f'[filter "proc"]\n\tprocess = {process}\n'
            f'[diff "evil"]\n\ttextconv = {textconv}\n\tcommand = {extdiff}\n'
            f"[include]\n\tpath = {tmp_path / 'evil.cfg'}\n"
        )
    (root / "a.txt").write_text("alpha changed\n")
    (root / "new.txt").write_text("new\n")
    return root, marks


def _marks(marks: Path) -> set[str]:
    return {p.name for p in marks.iterdir()}


def test_the_vectors_are_live_without_the_overrides(hostile: tuple[Path, Path]) -> None:
    root, marks = hostile
    for args in (
        ["status"],
        ["add", "-A"],
        ["diff", "HEAD", "--", "a.txt"],
        ["diff", "--no-ext-diff", "HEAD", "--", "a.txt"],
    ):
        subprocess.run(["git", "-C", str(root), *args], capture_output=True)
    assert _marks(marks) == set(VECTORS)


def test_validate_stop_hook_and_init_paths_run_no_repository_program(
    hostile: tuple[Path, Path], tmp_path: Path
) -> None:
    root, marks = hostile
    base = sync.head_commit(root)
    kept = tmp_path / "kept-index"
    kept.mkdir()
    one_off = sync.tree_id(root)
    with_kept = sync.tree_id(root, kept, watched=False)
    again = sync.tree_id(root, kept, watched=False)
    assert one_off == with_kept == again
    assert sync.has_object(root, one_off)
    patch = sync.tree_diff(root, _git(root, "rev-parse", "HEAD^{tree}"), one_off)
    assert b"alpha changed" in patch and b"new.txt" in patch
    assert sync.tree_archive(root, one_off)[:512].strip(b"\0")
    edited = treeedit.edit_tree(root, one_off, ["a.txt"], True)
    assert edited in (None, one_off)
    sync.tracked_among(root, one_off, ["a.txt", "missing"])
    watch.ignored_directories(root)
    init_project(root, dry_run=True)
    assert base and _marks(marks) == set(), f"repository programs ran: {_marks(marks)}"

    # The tree holds the files as they are: no filter rewrote them on the way in.
    listing = _git(root, "ls-tree", "-r", one_off)
    blob = next(line.split()[2] for line in listing.splitlines() if line.endswith("\ta.txt"))
    assert _git(root, "cat-file", "-p", blob) == "alpha changed"


def test_filters_of_the_users_own_config_stay(tmp_path: Path) -> None:
    """A filter the user defined globally (git-lfs, say) is theirs: it is not emptied."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text('[filter "lfs"]\n\tclean = git-lfs clean -- %f\n')
    (root / ".git" / "config").open("a").write('[filter "local"]\n\tsmudge = ./x\n')
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        flags = gitsafe.overrides(root)
    finally:
        if old is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old
    settings = set(flags[1::2])
    assert "filter.local.smudge=" in settings and "filter.local.required=false" in settings
    assert not any(s.startswith("filter.lfs.") for s in settings)
    assert {"core.fsmonitor=false", "core.hooksPath=/dev/null", "protocol.allow=never"} <= settings


def test_a_filter_added_later_is_seen(tmp_path: Path) -> None:
    """The overrides are cached by the config files' stamps: a new driver is never missed."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    assert not any(s.startswith("filter.") for s in gitsafe.overrides(root))
    include = tmp_path / "more.cfg"
    include.write_text("")
    with open(root / ".git" / "config", "a") as config:
        config.write(f"[include]\n\tpath = {include}\n")
    assert not any(s.startswith("filter.") for s in gitsafe.overrides(root))
    include.write_text('[filter "late"]\n\tprocess = ./late\n')
    assert "filter.late.process=" in gitsafe.overrides(root)
