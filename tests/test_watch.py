"""The working tree's watcher (real inotify) and tree_id restaging only what it saw change: the
trees must be exactly the full scan's, whatever happens to the files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git
from test_sync import expected_tree, make_repo, repo_state, tree_entries, write

from microbuild import sync, watch


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    root = make_repo(
        tmp_path / "repo",
        {
            ".gitignore": "*.log\nbuild/\n.venv/\n",
            "README": "readme\n",
            "src/pkg/a.py": "a = 1\n",
            "src/pkg/b.py": "b = 1\n",
            "tests/test_a.py": "def test(): pass\n",
        },
    )
    write(root, ".venv/lib/site.py", "ignored\n")
    watcher = watch.start(root)
    watch.register(watcher)
    try:
        yield root, tmp_path / "indexes"
    finally:
        watch.unregister(root)


def untouched(root: Path) -> dict[str, object]:
    """What restaging must leave as it is while the files change: all but `git status`."""
    return {k: v for k, v in repo_state(root).items() if k != "status"}


def restaged(root: Path, kept: Path, by_hand: bool = True) -> str:
    """tree_id with the watcher; it must equal the tree of a full scan of the files (and, with
    `by_hand`, the files as this test reads them)."""
    tree = sync.tree_id(root, kept)
    if by_hand:
        assert tree_entries(root, tree) == expected_tree(root)
    assert tree == sync.tree_id(root)
    return tree


def test_watcher_skips_git_and_ignored_directories(watched: tuple[Path, Path]) -> None:
    root, _ = watched
    watcher = watch.find(root)
    assert watcher is not None
    assert ".venv" in watcher._skip
    watched_dirs = set(watcher._wds)
    assert {"", "src", "src/pkg", "tests"} <= watched_dirs
    assert not any(d.startswith((".git", ".venv")) for d in watched_dirs)


def test_watcher_reports_changes_since_a_token(watched: tuple[Path, Path]) -> None:
    root, _ = watched
    watcher = watch.find(root)
    assert watcher is not None
    token = watcher.token()
    assert watcher.changes_since(token) == []
    write(root, "src/pkg/a.py", "a = 2\n")
    (root / "README").chmod(0o755)
    (root / "tests/test_a.py").unlink()
    watch.find(root)
    assert watcher.changes_since(token) == ["README", "src/pkg/a.py", "tests/test_a.py"]
    later = watcher.token()
    assert watcher.changes_since(later) == []
    assert watcher.changes_since("another:1") is None
    assert watcher.changes_since("garbage") is None
    assert watcher.changes_since(f"{watcher.ident}:0") is None  # before it started


def test_restaging_gives_the_full_scans_trees(watched: tuple[Path, Path]) -> None:
    root, kept = watched
    before = untouched(root)
    first = restaged(root, kept)
    (where,) = kept.iterdir()
    assert (where / "watch").is_file()
    assert restaged(root, kept) == first  # nothing changed: the kept moment's tree
    trees = {first}
    steps = [
        lambda: write(root, "src/pkg/a.py", "a = 2\n"),
        lambda: write(root, "new/deep/dir/c.py", "c = 1\n"),
        lambda: os.rename(root / "new", root / "moved"),
        lambda: write(root, "moved/deep/dir/c.py", "c = 2\n"),
        lambda: shutil.rmtree(root / "moved"),
        lambda: (root / "src/pkg/b.py").chmod(0o755),
        lambda: (root / "README").unlink(),
        lambda: write(root, "top.txt", "top\n"),
        lambda: os.symlink("src", root / "link"),
        lambda: write(root, "debug.log", "ignored\n"),
        lambda: write(root, "build/out.bin", b"\0ignored\0"),
        lambda: os.rename(root / "src/pkg/a.py", root / "src/a_renamed.py"),
        lambda: (shutil.rmtree(root / "src/pkg"), write(root, "src/pkg", "now a file\n")),
    ]
    for step in steps:
        step()
        trees.add(restaged(root, kept))
    assert len(trees) >= len(steps) - 2  # the two ignored writes change nothing
    assert untouched(root) == before


def test_an_ignore_file_change_starts_again_from_the_users_index(
    watched: tuple[Path, Path],
) -> None:
    """A file that becomes ignored leaves the tree (the kept index is made again), and a
    directory that stops being ignored is watched from then on."""
    root, kept = watched
    write(root, "notes.txt", "untracked\n")
    restaged(root, kept)
    write(root, ".gitignore", "*.log\nbuild/\n*.txt\n")
    tree = restaged(root, kept)
    assert "notes.txt" not in tree_entries(root, tree)
    write(root, ".gitignore", "*.log\nbuild/\n")  # .venv is no longer ignored
    restaged(root, kept)
    restaged(root, kept)
    write(root, ".venv/lib/site.py", "now part of the tree\n")
    tree = restaged(root, kept)
    assert tree_entries(root, tree)[".venv/lib/site.py"]


def test_the_users_index_changing_means_a_full_scan(watched: tuple[Path, Path]) -> None:
    root, kept = watched
    restaged(root, kept)
    write(root, "src/pkg/a.py", "a = 3\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "user commit")
    restaged(root, kept)
    git(root, "rm", "-q", "--cached", "README")
    write(root, ".gitignore", "README\n")
    tree = restaged(root, kept)
    assert "README" not in tree_entries(root, tree)


def test_an_overflowing_or_dead_watcher_means_a_full_scan(watched: tuple[Path, Path]) -> None:
    root, kept = watched
    restaged(root, kept)
    watcher = watch.find(root)
    assert watcher is not None
    token = watcher.token()
    for i in range(watch.MAX_CHANGES + 1):
        write(root, f"src/f{i}.txt", "x\n")
    watch.find(root)
    assert watcher.changes_since(token) is None  # too many to list: scan instead
    restaged(root, kept)
    watcher.close()
    assert watch.find(root) is None
    write(root, "src/pkg/a.py", "a = 4\n")
    restaged(root, kept)


def test_a_deleted_root_ends_the_watcher(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "gone", {"a.txt": "a\n"})
    watcher = watch.TreeWatcher(root)
    try:
        shutil.rmtree(root)
        watcher.drain()
        assert not watcher.alive
    finally:
        watcher.close()


def test_a_forked_child_asks_the_owner_and_never_reads_its_events(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "child", {"a.txt": "a\n"})
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            watch.freeze(write_end)
            watch.request(root)
            os._exit(0 if watch.find(root) is None else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    os.close(write_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.read(read_end, 4096) == os.fsencode(root) + b"\0"
    os.close(read_end)


def moment(kept: Path) -> dict[str, object]:
    import json

    (where,) = kept.iterdir()
    data: dict[str, object] = json.loads((where / "watch").read_text())
    return data


def test_a_file_change_is_edited_into_the_tree_without_the_index(
    watched: tuple[Path, Path],
) -> None:
    """Files written, created or deleted: the tree is made with git's plumbing, the kept index
    is left behind (and caught up when a change needs it: a new directory, a symlink)."""
    root, kept = watched
    restaged(root, kept)
    (where,) = kept.iterdir()
    index_stamp = (where / "index").stat().st_mtime_ns
    write(root, "src/pkg/a.py", "a = 5\n")
    write(root, "src/pkg/new.py", "n = 1\n")
    (root / "tests/test_a.py").unlink()
    restaged(root, kept)
    state = moment(kept)
    assert state["tree_token"] != state["index_token"]
    assert (where / "index").stat().st_mtime_ns == index_stamp
    write(root, "fresh/dir/x.py", "x = 1\n")  # a new directory: through the index
    restaged(root, kept)
    state = moment(kept)
    assert state["tree_token"] == state["index_token"]
    write(root, "src/pkg/a.py", "a = 6\n")
    restaged(root, kept)


def test_edited_trees_follow_git_for_the_odd_cases(watched: tuple[Path, Path]) -> None:
    root, kept = watched
    restaged(root, kept)
    write(root, "build/keep.txt", "ignored dir\n")
    restaged(root, kept)
    write(root, "new.log", "an ignored new file\n")
    write(root, "src/pkg/b.py", "b = 2\n")
    tree = restaged(root, kept)
    assert "new.log" not in tree_entries(root, tree)
    # A tracked file that is ignored stays in the tree when it is rewritten or recreated.
    write(root, "tracked.log", "forced\n")
    git(root, "add", "-f", "tracked.log")
    restaged(root, kept)
    (root / "tracked.log").unlink()
    restaged(root, kept)
    write(root, "tracked.log", "back\n")
    assert "tracked.log" in tree_entries(root, restaged(root, kept))
    # The executable bit, and core.fileMode=false keeping the recorded mode.
    (root / "src/pkg/b.py").chmod(0o755)
    assert tree_entries(root, restaged(root, kept))["src/pkg/b.py"][0] == "100755"
    git(root, "config", "core.fileMode", "false")
    write(root, "src/pkg/a.py", "a = 7\n")
    (root / "src/pkg/a.py").chmod(0o755)
    tree = sync.tree_id(root, kept)
    assert tree == sync.tree_id(root)
    assert tree_entries(root, tree)["src/pkg/a.py"][0] == "100644"
    git(root, "config", "core.fileMode", "true")
    # A file where a directory was, and the other way round.
    shutil.rmtree(root / "tests")
    write(root, "tests", "now a file\n")
    restaged(root, kept)
    (root / "README").unlink()
    write(root, "README/inside.txt", "now a directory\n")
    assert "README/inside.txt" in tree_entries(root, restaged(root, kept, by_hand=False))
    # Names git could read as patterns or that need quoting.
    write(root, "src/pkg/we[ir]d *.py", "w = 1\n")
    write(root, "src/pkg/tab\tand ünïcode.py", "u = 1\n")
    restaged(root, kept, by_hand=False)
    write(root, "src/pkg/tab\tand ünïcode.py", "u = 2\n")
    restaged(root, kept, by_hand=False)


def test_the_watcher_knows_its_repository_until_git_dir_changes(
    watched: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, kept = watched
    watcher = watch.find(root)
    assert watcher is not None
    assert watch.repository(root) == ((root / ".git").resolve(), "")
    monkeypatch.setenv("GIT_DIR", str(root / ".git"))
    assert watch.repository(root) is None  # the command's own git environment wins
    monkeypatch.delenv("GIT_DIR")
    os.rename(root / ".git", root / ".git-moved")
    assert watch.repository(root) is None and watcher.stale
    os.rename(root / ".git-moved", root / ".git")
    restaged(root, kept)  # starts again from the user's index, watching anew
    assert watch.repository(root) == ((root / ".git").resolve(), "")
