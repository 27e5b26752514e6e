"""A tree with a few paths replaced by what is on disk now, written with git's plumbing (no
index): the fast path of `sync.tree_id` when a watcher says which files changed.

Staging a one-file change through an index costs reading and writing the whole index twice
(add, then write-tree), in proportion to the repository. Here the cost follows the change:
`hash-object` for the changed files, `check-ignore` for the new ones, one `ls-tree` of the
directories on their paths and one `mktree` for the new trees. Anything this does not know how
to stage exactly as `git add --all` would (a directory, a symlink, a submodule, a path git
would read as a pattern) gets None: the caller stages through the index instead.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from microbuild import gitsafe

TREE_MODE = "040000"
_PATTERN_CHARS = frozenset("*?[]\\\n")


class _Unsupported(Exception):
    pass


def edit_tree(root: Path, tree: str, changed: list[str], filemode: bool) -> str | None:
    """`tree` (the tree of the project at `root`) with each of `changed` (root-relative
    paths) as it is on disk now: a file, or gone. None when that needs the index."""
    try:
        return _edit(root, tree, changed, filemode)
    except (_Unsupported, OSError, ValueError, subprocess.SubprocessError):
        return None


def _edit(root: Path, tree: str, changed: list[str], filemode: bool) -> str:
    if not changed:
        return tree
    on_disk: dict[str, os.stat_result | None] = {}
    for path in changed:
        if not path or path.startswith("/") or _PATTERN_CHARS & set(path):
            raise _Unsupported(path)
        try:
            st = os.lstat(root / path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise _Unsupported(path)  # a directory or a symlink: the index knows best
        on_disk[path] = st
    dirs = {""}
    for path in changed:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    entries = _listing(root, tree, dirs)

    new = [
        p for p, st in on_disk.items() if st is not None and _entry(entries, p) in (None, "tree")
    ]
    ignored = _ignored(root, new) if new else set()
    staged = [p for p, st in on_disk.items() if st is not None and p not in ignored]
    blobs = _hash_files(root, staged) if staged else {}
    for path, st in on_disk.items():
        parent, _, name = path.rpartition("/")
        listing = entries.setdefault(parent, {})
        old = listing.get(name)
        if old is not None and old[0] == "160000":
            raise _Unsupported(path)  # a submodule
        if st is None or path in ignored:
            # Gone (a file, or a whole directory), or a new file git ignores (only new ones
            # are asked): no entry. A directory replaced by a file leaves nothing below it.
            listing.pop(name, None)
            continue
        if filemode:
            mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
        else:
            mode = old[0] if old is not None and old[0] in ("100644", "100755") else "100644"
        listing[name] = (mode, blobs[path])
    return _write_trees(root, tree, entries)


def _entry(entries: dict[str, dict[str, tuple[str, str]]], path: str) -> str | None:
    parent, _, name = path.rpartition("/")
    old = entries.get(parent, {}).get(name)
    if old is None:
        return None
    return "tree" if old[0] == TREE_MODE else "blob"


def _git(root: Path, args: list[str], data: bytes, ok: tuple[int, ...] = (0,)) -> bytes:
    proc = subprocess.run(
        gitsafe.argv(root, *args),
        input=data,
        capture_output=True,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        check=False,
    )
    if proc.returncode not in ok:
        raise _Unsupported(proc.stderr.decode(errors="replace").strip())
    return proc.stdout


def _listing(root: Path, tree: str, dirs: set[str]) -> dict[str, dict[str, tuple[str, str]]]:
    """The entries (name -> (mode, oid)) of each of `dirs` in `tree`; a directory `tree` does
    not have gets none."""
    specs = ["."] + [f"{d}/" for d in sorted(dirs) if d]
    out = _git(root, ["ls-tree", "-z", "--full-tree", tree, "--", *specs], b"")
    entries: dict[str, dict[str, tuple[str, str]]] = {d: {} for d in dirs}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, raw_path = record.split(b"\t", 1)
        mode, _kind, oid = meta.decode().split(" ")
        parent, _, name = os.fsdecode(raw_path).rpartition("/")
        if parent in entries:
            entries[parent][name] = (mode, oid)
    return entries


def _ignored(root: Path, paths: list[str]) -> set[str]:
    """Which of `paths` (untracked in the tree) git ignores; tracked ones never are."""
    data = b"\0".join(os.fsencode(p) for p in paths) + b"\0"
    out = _git(root, ["check-ignore", "-z", "--stdin"], data, ok=(0, 1))
    return {os.fsdecode(p) for p in out.split(b"\0") if p}


def _hash_files(root: Path, paths: list[str]) -> dict[str, str]:
    """Blob ids of the files, written to the object store, with the path's attributes and
    filters applied as `git add` applies them."""
    data = b"".join(os.fsencode(p) + b"\n" for p in paths)
    out = _git(root, ["hash-object", "-w", "--stdin-paths"], data).decode().split()
    if len(out) != len(paths):
        raise _Unsupported("hash-object gave a short answer")
    return dict(zip(paths, out, strict=True))


def _write_trees(root: Path, tree: str, entries: dict[str, dict[str, tuple[str, str]]]) -> str:
    """Every directory of `entries` as a tree, deepest first, each parent pointing at its new
    child (an empty one dropped, as the index drops it); the root's id."""
    algorithm = hashlib.sha1 if len(tree) == 40 else hashlib.sha256
    batch: list[bytes] = []
    expected: list[str] = []
    for directory in sorted(entries, key=lambda d: (-d.count("/") - bool(d), d)):
        listing = entries[directory]
        parent, _, name = directory.rpartition("/")
        if directory and not listing:
            entries[parent].pop(name, None)
            continue
        oid = _tree_id(listing, algorithm)
        batch.append(
            b"".join(
                f"{mode} {'tree' if mode == TREE_MODE else 'blob'} {sha}\t".encode()
                + os.fsencode(n)
                + b"\0"
                for n, (mode, sha) in listing.items()
            )
            + b"\0"
        )
        expected.append(oid)
        if directory:
            entries[parent][name] = (TREE_MODE, oid)
    written = _git(root, ["mktree", "-z", "--batch"], b"".join(batch)).decode().split()
    if written != expected:
        raise _Unsupported("mktree wrote other trees than computed")
    return expected[-1]


def _tree_id(listing: dict[str, tuple[str, str]], algorithm: object) -> str:
    """What git names this tree: entries sorted as git sorts them (a tree as `name/`)."""

    def key(name: str) -> bytes:
        return os.fsencode(name) + (b"/" if listing[name][0] == TREE_MODE else b"")

    body = b"".join(
        listing[n][0].lstrip("0").encode()
        + b" "
        + os.fsencode(n)
        + b"\0"
        + bytes.fromhex(listing[n][1])
        for n in sorted(listing, key=key)
    )
    digest = algorithm(b"tree %d\0" % len(body) + body)  # type: ignore[operator]
    return str(digest.hexdigest())
