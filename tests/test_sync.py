"""Incremental tree sync: `microbuild.sync` on the client (tree ids written through a temporary
index, patches, archives) and `microbuild.validate.sync_tree` through a real host into a
real sidecar, where the workspace must end up exactly the working tree.

The tree_id tests need only git. The end-to-end ones (isolation-marked) share one local host
(started with `connect(None, state)`, stopped at teardown) and give every test a sidecar of its
own; the workspace is compared file by file (kind, executable bit, sha256) with the working
tree's files as `git ls-files -co --exclude-standard` lists them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import git, need_isolation, stop_local_host

from microbuild import sync
from microbuild.cli._ui import Progress
from microbuild.client import Client, HostError, connect
from microbuild.validate import sync_tree

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
QUIET = Progress(quiet=True)

# -- repository helpers ------------------------------------------------------------------------


def read_only_git(root: Path, *args: str, check: bool = True) -> bytes:
    """git without optional locks: `git status` must not refresh (rewrite) the index."""
    proc = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def repo_state(root: Path) -> dict[str, Any]:
    """Everything of the user's repository that tree_id must leave alone (not the object
    store, which it may add to): the index byte for byte and its mtime, status, HEAD, refs and
    every other file under .git."""
    gitdir = Path(os.fsdecode(read_only_git(root, "rev-parse", "--absolute-git-dir").strip()))
    index = gitdir / "index"
    return {
        "index": index.read_bytes() if index.exists() else None,
        "index_mtime": index.stat().st_mtime_ns if index.exists() else None,
        "status": read_only_git(
            root,
            "status",
            "--porcelain=v2",
            "-z",
            "--branch",
            "--untracked-files=all",
            "--ignored=matching",
        ),
        "head_file": (gitdir / "HEAD").read_bytes(),
        "head": read_only_git(root, "rev-parse", "-q", "--verify", "HEAD", check=False),
        "refs": read_only_git(root, "for-each-ref", "--format=%(refname) %(objectname)"),
        "git_dir": sorted(
            (p.relative_to(gitdir).as_posix(), p.stat().st_mtime_ns if p.is_file() else 0)
            for p in gitdir.rglob("*")
            if p.relative_to(gitdir).parts[0] != "objects"
        ),
    }


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def worktree_files(root: Path) -> list[str]:
    """What the sync must carry: tracked and untracked-not-ignored files that exist."""
    listed = read_only_git(root, "ls-files", "-co", "--exclude-standard", "-z")
    paths = {os.fsdecode(p) for p in listed.split(b"\0") if p}
    return sorted(p for p in paths if os.path.lexists(root / p))


def expected_tree(root: Path) -> dict[str, tuple[str, str]]:
    """path -> (mode, blob id) of the working tree, as git would store it."""
    entries = {}
    for rel in worktree_files(root):
        path = root / rel
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            entries[rel] = ("120000", blob_id(os.fsencode(os.readlink(path))))
        else:
            mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
            entries[rel] = (mode, blob_id(path.read_bytes()))
    return entries


def tree_entries(root: Path, tree: str) -> dict[str, tuple[str, str]]:
    out = read_only_git(root, "ls-tree", "-r", "-z", "--full-tree", tree)
    entries = {}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, path = record.split(b"\t", 1)
        mode, _kind, oid = meta.decode().split()
        entries[os.fsdecode(path)] = (mode, oid)
    return entries


def write(root: Path, rel: str, data: bytes | str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def make_repo(root: Path, files: dict[str, bytes | str], *, commit: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        write(root, rel, data)
    git(root, "init", "-q")
    if commit:
        git(root, "add", "-A")
        git(root, "commit", "-qm", "initial")
    return root


# -- tree_id -----------------------------------------------------------------------------------


@pytest.fixture
def messy_repo(tmp_path: Path) -> Path:
    """Committed, then: staged and unstaged edits, a staged new file, staged and unstaged
    deletions, untracked files, ignored files and directories."""
    root = make_repo(
        tmp_path / "repo",
        {
            ".gitignore": "*.log\nbuild/\n",
            "staged.txt": "one\n",
            "unstaged.txt": "two\n",
            "gone-staged.txt": "three\n",
            "gone-unstaged.txt": "four\n",
            "src/mod.py": "x = 1\n",
        },
    )
    write(root, "staged.txt", "one, staged\n")
    git(root, "add", "staged.txt")
    write(root, "unstaged.txt", "two, not staged\n")
    write(root, "new-staged.txt", "added\n")
    git(root, "add", "new-staged.txt")
    git(root, "rm", "-q", "gone-staged.txt")
    (root / "gone-unstaged.txt").unlink()
    write(root, "untracked.txt", "untracked\n")
    write(root, "deep/er/untracked.py", "y = 2\n")
    write(root, "debug.log", "ignored\n")
    write(root, "build/out.bin", b"\0ignored\0")
    return root


def test_tree_id_leaves_the_repository_alone_and_sees_the_working_tree(messy_repo: Path) -> None:
    before = repo_state(messy_repo)
    tree = sync.tree_id(messy_repo)
    assert repo_state(messy_repo) == before

    entries = tree_entries(messy_repo, tree)
    assert entries == expected_tree(messy_repo)
    assert {"staged.txt", "unstaged.txt", "new-staged.txt", "untracked.txt"} <= entries.keys()
    assert "deep/er/untracked.py" in entries
    absent = {"gone-staged.txt", "gone-unstaged.txt", "debug.log", "build/out.bin"}
    assert not absent & entries.keys()
    assert entries["unstaged.txt"][1] == blob_id(b"two, not staged\n")
    # Twice in a row: the same id, and the repository still untouched.
    assert sync.tree_id(messy_repo) == tree
    assert repo_state(messy_repo) == before


def test_tree_id_is_content_addressed(messy_repo: Path, tmp_path: Path) -> None:
    tree = sync.tree_id(messy_repo)
    # A copy of the repository (other inode and stat data, same content): the same id.
    copy = tmp_path / "copy"
    shutil.copytree(messy_repo, copy, symlinks=True)
    assert sync.tree_id(copy) == tree
    # mtime alone changes nothing.
    os.utime(messy_repo / "src" / "mod.py", (1, 1))
    assert sync.tree_id(messy_repo) == tree
    # One byte, same size: another tree; put it back: the first one again.
    target = messy_repo / "src" / "mod.py"
    original = target.read_bytes()
    target.write_bytes(original.replace(b"1", b"2"))
    changed = sync.tree_id(messy_repo)
    assert changed != tree
    assert tree_entries(messy_repo, changed)["src/mod.py"][1] == blob_id(b"x = 2\n")
    target.write_bytes(original)
    assert sync.tree_id(messy_repo) == tree
    # The executable bit alone is a change too.
    target.chmod(0o755)
    assert sync.tree_id(messy_repo) not in (tree, changed)


def test_tree_id_without_commits_or_index(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "fresh", {}, commit=False)
    before = repo_state(root)
    assert sync.tree_id(root) == EMPTY_TREE
    assert repo_state(root) == before
    assert not (root / ".git" / "index").exists()

    write(root, "a.txt", "a\n")
    write(root, "pkg/sub/b.py", "b = 1\n")
    write(root, ".gitignore", "*.tmp\n")
    write(root, "scratch.tmp", "ignored\n")
    before = repo_state(root)
    tree = sync.tree_id(root)
    assert repo_state(root) == before
    assert not (root / ".git" / "index").exists()  # no index was made for the user
    assert tree_entries(root, tree) == expected_tree(root)
    assert set(tree_entries(root, tree)) == {"a.txt", "pkg/sub/b.py", ".gitignore"}

    # An index but still no commit.
    git(root, "add", "a.txt")
    write(root, "a.txt", "a, changed after add\n")
    before = repo_state(root)
    assert sync.tree_id(root) == sync.tree_id(root)
    assert repo_state(root) == before
    assert tree_entries(root, sync.tree_id(root)) == expected_tree(root)


def test_tree_id_with_odd_paths(tmp_path: Path) -> None:
    names = [
        "dir with spaces/file name.txt",
        "ünïcödé/日本語 ファイル.txt",
        "tab\there.txt",
        "quote\"and'apostrophe.txt",
        "-leading-dash.txt",
        "new\nline.txt",
        "back\\slash.txt",
    ]
    root = make_repo(tmp_path / "odd", {name: f"{name}\n" for name in names[:3]})
    for name in names[3:]:
        write(root, name, f"{name}\n")
    write(root, "ünïcödé/日本語 ファイル.txt", "changed\n")
    before = repo_state(root)
    tree = sync.tree_id(root)
    assert repo_state(root) == before
    entries = tree_entries(root, tree)
    assert entries == expected_tree(root)
    assert set(names) <= entries.keys()
    assert entries["ünïcödé/日本語 ファイル.txt"][1] == blob_id(b"changed\n")


def _racy_edit(root: Path) -> None:
    """`git add` a file and rewrite it, same size, in the same second (git's "racy" case)."""
    for _ in range(3):
        time.sleep(1.02 - time.time() % 1)  # just after a second starts
        started = int(time.time())
        write(root, "f.txt", "aaaa\n")
        git(root, "add", "f.txt")
        write(root, "f.txt", "bbbb\n")
        if int(time.time()) == started:
            return
    pytest.skip("could not add and rewrite a file within one second")


def test_tree_id_sees_a_racy_rewrite(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "racy", {"base.txt": "base\n"})
    _racy_edit(root)
    time.sleep(1.1 - time.time() % 1)  # the next second: the index is no longer "now"
    assert b"AM f.txt" in read_only_git(root, "status", "--short")  # git itself sees it
    tree = sync.tree_id(root)
    assert tree_entries(root, tree)["f.txt"][1] == blob_id(b"bbbb\n")


def test_kept_index_gives_the_same_trees_and_leaves_the_repository_alone(
    messy_repo: Path, tmp_path: Path
) -> None:
    """The index kept between calls gives exactly the one-off copy's tree through edits,
    additions, deletions, mode changes, the user staging and committing; the repository is
    untouched; the kept index is made again when the user's index changes."""
    kept = tmp_path / "indexes"
    before = repo_state(messy_repo)

    def same() -> str:
        tree = sync.tree_id(messy_repo, kept)
        assert tree == sync.tree_id(messy_repo)
        return tree

    first = same()
    assert repo_state(messy_repo) == before
    (where,) = kept.iterdir()
    assert (where / "index").is_file() and (where / "base").is_file()
    assert same() == first
    write(messy_repo, "src/mod.py", "x = 3\n")
    write(messy_repo, "brand/new.txt", "new\n")
    (messy_repo / "untracked.txt").unlink()
    (messy_repo / "staged.txt").chmod(0o755)
    state = repo_state(messy_repo)
    changed = same()
    assert changed != first
    assert repo_state(messy_repo) == state
    git(messy_repo, "add", "-A")
    git(messy_repo, "commit", "-qm", "user commit")
    base = (where / "base").read_text()
    assert same() == changed
    assert (where / "base").read_text() != base  # the user's index changed: made again
    write(messy_repo, "src/mod.py", "x = 1\n")
    assert same() != changed


def test_kept_index_sees_a_racy_rewrite(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "racy", {"base.txt": "base\n"})
    kept = tmp_path / "indexes"
    sync.tree_id(root, kept)
    _racy_edit(root)
    time.sleep(1.1 - time.time() % 1)
    tree = sync.tree_id(root, kept)
    assert tree_entries(root, tree)["f.txt"][1] == blob_id(b"bbbb\n")


def test_kept_index_busy_or_broken_falls_back_to_a_one_off_copy(
    messy_repo: Path, tmp_path: Path
) -> None:
    import fcntl

    kept = tmp_path / "indexes"
    expected = sync.tree_id(messy_repo)
    assert sync.tree_id(messy_repo, kept) == expected
    (where,) = kept.iterdir()
    with open(where / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another validate of this repository
        write(messy_repo, "src/mod.py", "x = 9\n")
        busy = sync.tree_id(messy_repo, kept)
    assert busy == sync.tree_id(messy_repo) != expected
    (where / "index").write_bytes(b"DIRC garbage")
    assert sync.tree_id(messy_repo, kept) == busy
    assert sync.tree_id(messy_repo, kept) == busy  # and the next call has a good index again
    assert (where / "index").read_bytes()[:4] == b"DIRC"


# -- end to end: a host, a snapshot, sidecars --------------------------------------------------

BASE_CONFIG = """\
[snapshot]
setup = ["true"]

[sidecar]
memory = "256MiB"
pids = 128
"""


def base_files() -> dict[str, bytes | str]:
    rng = random.Random(7)
    return {
        "microbuild.toml": BASE_CONFIG,
        ".gitignore": ".venv/\n*.log\n",
        "README.md": "# demo\n\nsome text\n",
        "src/app.py": "".join(f"line {i}\n" for i in range(40)),
        "src/util.py": "".join(f"def f{i}():\n    return {i}\n\n" for i in range(30)),
        "data/blob.bin": bytes(rng.randrange(256) for _ in range(4096)),
        "bin/run.sh": "#!/bin/sh\necho run\n",
        "docs/guide.md": "".join(f"Paragraph {i}: how to use the demo.\n" for i in range(20)),
    }


IGNORED = {".venv/bin/python": "not a real python\n", ".venv/lib/site.py": "x\n", "run.log": "log"}

# Run in the sidecar: every file and symlink under the root as path -> [kind, x bit, sha256].
MANIFEST_PY = r"""
import hashlib, json, os, stat, sys
root = sys.argv[1]
out = {}
for dirpath, dirs, files in os.walk(root):
    if dirpath == root and ".git" in dirs:
        dirs.remove(".git")  # the snapshot's empty repository, not the tree's
    for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
        path = os.path.join(dirpath, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            entry = ["link", False, hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()]
        else:
            with open(path, "rb") as f:
                entry = ["file", bool(st.st_mode & 0o100), hashlib.sha256(f.read()).hexdigest()]
        out[os.path.relpath(path, root)] = entry
json.dump(out, sys.stdout)
"""


def local_manifest(root: Path) -> dict[str, list[Any]]:
    """The same listing for the files the host's git says make up the working tree."""
    out: dict[str, list[Any]] = {}
    for rel in worktree_files(root):
        path = root / rel
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ["link", False, hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()]
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = ["file", bool(st.st_mode & stat.S_IXUSR), digest]
    return out


def run_in(client: Client, sidecar_id: str, argv: list[str]) -> bytes:
    out, err, result = [], [], {}
    for kind, data in client.exec(sidecar_id, argv):
        if kind == "stdout":
            out.append(data)
        elif kind == "stderr":
            err.append(data)
        else:
            result = data
    assert result.get("exit_code") == 0, (argv, result, b"".join(err))
    return b"".join(out)


def sidecar_manifest(client: Client, sidecar_id: str) -> dict[str, list[Any]]:
    data: dict[str, list[Any]] = json.loads(
        run_in(client, sidecar_id, ["python3", "-c", MANIFEST_PY, "/workspace"])
    )
    return data


@dataclass
class Call:
    kind: str
    from_tree: str | None
    reset: bool
    size: int
    error: str | None = None


@dataclass
class Host:
    state: Path
    client: Client


def reap_host(state: Path, timeout: float = 10) -> None:
    """`connect` started the host as our child: wait for it, or it lingers as a zombie that
    `stop_local_host` takes for alive (and waits 10 s on)."""
    try:
        pid = int(json.loads((state / "host.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ChildProcessError):
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    need_isolation()
    state = Path(tempfile.mkdtemp(prefix="mbs-", dir="/var/tmp"))
    client = None
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MICROBUILD_HOST_IDLE_EXIT", "300")  # not 3 s: long steps in between
            client = connect(None, state)
        yield Host(state, client)
    finally:
        if client is not None:
            with contextlib.suppress(HostError):
                for record in client.list_sidecars():
                    client.sidecar_action(record["id"], "destroy")
            with contextlib.suppress(HostError):
                client.stop_host()
            client.close()
        reap_host(state)
        stop_local_host(state)
        with contextlib.suppress(Exception):
            from microbuild.host.manager import SidecarManager

            if (state / "state.db").exists():
                manager = SidecarManager(state)
                try:
                    for leftover in manager.store.list_sidecars():
                        with contextlib.suppress(Exception):
                            manager.destroy(leftover.id)
                    manager.runtime("namespace").collect_garbage(keep=set())
                finally:
                    manager.close()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def spy(host: Host, monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Record every Client.sync call sync_tree makes (kind, from, reset, size, error code)."""
    calls: list[Call] = []
    real = host.client.sync

    def recording(
        sidecar_id: str,
        *,
        to_tree: str,
        payload: bytes,
        kind: str = "patch",
        from_tree: str | None = None,
        reset: bool = False,
    ) -> dict[str, Any]:
        call = Call(kind, from_tree, reset, len(payload))
        calls.append(call)
        try:
            return real(
                sidecar_id,
                to_tree=to_tree,
                payload=payload,
                kind=kind,
                from_tree=from_tree,
                reset=reset,
            )
        except HostError as exc:
            call.error = exc.code
            raise

    monkeypatch.setattr(host.client, "sync", recording)
    return calls


def build_snapshot(client: Client, root: Path) -> dict[str, Any]:
    from microbuild.config import find_project

    project = find_project(root)
    request = sync.describe_snapshot(project)
    snap, needed = client.resolve_snapshot(request.model_dump(mode="json"), runtime="namespace")
    if needed:
        with tempfile.TemporaryDirectory(prefix="mbs-src-") as tmp:
            tar = Path(tmp) / "source.tar"
            sync.export_source(project, request, tar)
            events = list(client.upload_source(snap["id"], tar))
        assert events and events[-1]["event"] == "done", events
        snap = events[-1]["snapshot"]
    assert snap["state"] == "ready", snap
    return snap


@dataclass
class Env:
    """A project, its snapshot and a sidecar of its own on the shared host."""

    root: Path
    client: Client
    snap: dict[str, Any]
    sidecar: dict[str, Any]
    calls: list[Call]

    @property
    def id(self) -> str:
        return str(self.sidecar["id"])

    def sync(self, root: Path | None = None) -> str:
        """sync_tree as validate runs it; the repository must come out untouched and the
        sidecar hold exactly its working tree. Returns the tree."""
        root = root or self.root
        before = repo_state(root)
        tree = sync.tree_id(root)
        self.sidecar = self.client.get_sidecar(self.id)  # fresh, as validate lists it
        self.sidecar = sync_tree(self.client, root, self.sidecar, self.snap, tree, QUIET)
        assert repo_state(root) == before
        assert self.sidecar["tree"] == tree
        assert self.client.get_sidecar(self.id)["tree"] == tree
        self.check(root)
        return tree

    def check(self, root: Path | None = None) -> None:
        root = root or self.root
        remote = sidecar_manifest(self.client, self.id)
        assert remote == local_manifest(root)
        assert not [p for p in remote if p.startswith(".venv/") or p.endswith(".log")]


def new_env(
    host: Host, top: Path, calls: list[Call], files: dict[str, bytes | str], project: str = "."
) -> Env:
    make_repo(top, files)
    root = top / project
    for rel, data in IGNORED.items():
        write(root, rel, data)
    snap = build_snapshot(host.client, root)
    sidecar = host.client.create_sidecar(snap["id"])
    return Env(root, host.client, snap, sidecar, calls)


@pytest.fixture
def env(host: Host, spy: list[Call], tmp_path: Path) -> Iterator[Env]:
    made = new_env(host, tmp_path / "proj", spy, base_files())
    # Every project made from base_files() has the same tree, so they all share one snapshot
    # whose source is that tree: a new sidecar holds it.
    assert made.sidecar["tree"] == made.snap["source_tree"] == sync.tree_id(made.root)
    try:
        yield made
    finally:
        with contextlib.suppress(HostError):
            host.client.sidecar_action(made.id, "destroy")


# The changes a sync must carry, each as one edit of the working tree (never staged).


def edit(root: Path) -> None:
    with open(root / "src" / "app.py", "a") as f:
        f.write("an appended line\n")


def delete(root: Path) -> None:
    (root / "src" / "util.py").unlink()


def rename(root: Path) -> None:
    (root / "manual").mkdir(exist_ok=True)
    os.rename(root / "docs" / "guide.md", root / "manual" / "guide.md")


def untracked(root: Path) -> None:
    write(root, "notes/todo.txt", "an untracked file\n")


def binary(root: Path) -> None:
    data = bytearray((root / "data" / "blob.bin").read_bytes())
    data[100] ^= 0xFF
    data += b"\0\1\2"
    (root / "data" / "blob.bin").write_bytes(bytes(data))


def exec_bit(root: Path) -> None:
    (root / "bin" / "run.sh").chmod(0o755)


def nested_dir(root: Path) -> None:
    write(root, "a/b/c/d/deep.txt", "deep\n")
    write(root, "a/b/other file.txt", "spaces, too\n")


def symlink(root: Path) -> None:
    (root / "README.md").unlink()
    os.symlink("src/app.py", root / "README.md")


CHANGES: list[Callable[[Path], None]] = [
    edit,
    delete,
    rename,
    untracked,
    binary,
    exec_bit,
    nested_dir,
    symlink,
]


@pytest.mark.isolation
@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__ for c in CHANGES])
def test_sync_carries_each_change(env: Env, change: Callable[[Path], None]) -> None:
    env.check()  # the fresh sidecar holds the committed tree
    held = env.sidecar["tree"]
    change(env.root)
    env.sync()
    # Incremental: one patch from the tree the sidecar held.
    assert [(c.kind, c.from_tree, c.reset, c.error) for c in env.calls] == [
        ("patch", held, False, None)
    ]


@pytest.mark.isolation
def test_sync_carries_changes_one_after_another(env: Env) -> None:
    """Each change on top of the last, every sync a patch from the tree the sidecar holds; the
    ignored files never reach it, and ignored-only changes need no sync at all."""
    for change in CHANGES:
        held = env.sidecar["tree"]
        env.calls.clear()
        change(env.root)
        env.sync()
        assert [(c.kind, c.from_tree, c.reset, c.error) for c in env.calls] == [
            ("patch", held, False, None)
        ], change.__name__
    # Ignored files only: the same tree, nothing sent.
    env.calls.clear()
    write(env.root, ".venv/lib/new.py", "ignored\n")
    write(env.root, "more.log", "ignored\n")
    held = env.sidecar["tree"]
    assert env.sync() == held
    assert env.calls == []
    # And back to the committed tree in one patch.
    git(env.root, "checkout", "-q", "--", ".")
    git(env.root, "clean", "-qfd")  # not -x: the ignored files stay
    env.calls.clear()
    assert env.sync() == env.snap["source_tree"]
    assert [c.kind for c in env.calls] == ["patch"]


@pytest.mark.isolation
def test_diverged_sidecar_is_resynced_from_the_snapshot(env: Env) -> None:
    """A command in the sidecar rewrote a file the next patch touches: the host reports it as
    changed since the sync, so sync_tree does not even try the patch; it resyncs from the
    snapshot's source tree on a fresh layer."""
    edit(env.root)
    env.sync()
    run_in(env.client, env.id, ["sh", "-c", "echo 'rewritten in the sidecar' > src/app.py"])
    assert env.client.get_sidecar(env.id)["changed"] == ["src/app.py"]
    with open(env.root / "src" / "app.py", "a") as f:
        f.write("a second appended line\n")
    untracked(env.root)
    env.calls.clear()
    env.sync()
    assert [(c.kind, c.from_tree, c.reset, c.error) for c in env.calls] == [
        ("patch", None, True, None),
    ]
    assert env.client.get_sidecar(env.id)["changed"] == []


@pytest.mark.isolation
def test_patch_that_does_not_apply_falls_back_to_a_fresh_layer(env: Env, host: Host) -> None:
    """A sidecar whose changes the host cannot see (no sync stamp: made by an older host) and
    that rewrote a file the patch touches: the patch fails atomically, then the resync."""
    edit(env.root)
    first = env.sync()
    run_in(env.client, env.id, ["sh", "-c", "echo 'rewritten in the sidecar' > src/app.py"])
    (stamp,) = host.state.rglob(f"sidecars/{env.id}/synced")
    stamp.unlink()
    assert env.client.get_sidecar(env.id)["changed"] is None
    with open(env.root / "src" / "app.py", "a") as f:
        f.write("a second appended line\n")
    env.calls.clear()
    env.sync()
    assert [(c.kind, c.from_tree, c.reset, c.error) for c in env.calls] == [
        ("patch", first, False, "apply_failed"),
        ("patch", None, True, None),
    ]


@pytest.mark.isolation
@pytest.mark.parametrize(
    "command",
    [
        pytest.param("echo 'rewritten in the sidecar' > src/util.py", id="modified"),
        pytest.param("rm src/util.py", id="deleted"),
        pytest.param("rm -r src && mkdir src && echo new > src/other.py", id="dir-replaced"),
        pytest.param("chmod +x src/util.py", id="mode"),
    ],
)
def test_sidecar_change_elsewhere_is_resynced(env: Env, command: str) -> None:
    """A command in the sidecar changed a tracked file that the next patch does not touch (or
    none at all: the user's tree did not change). The sidecar no longer holds its recorded
    tree, so it is resynced and then holds exactly the user's files (Env.sync checks)."""
    edit(env.root)
    held = env.sync()
    run_in(env.client, env.id, ["sh", "-c", command])
    env.calls.clear()
    assert env.sync() == held  # the user's tree did not change: resynced all the same
    assert [(c.kind, c.reset) for c in env.calls] == [("patch", True)]
    untracked(env.root)
    run_in(env.client, env.id, ["sh", "-c", command])
    env.calls.clear()
    env.sync()
    assert [(c.kind, c.reset) for c in env.calls] == [("patch", True)]


@pytest.mark.isolation
def test_untracked_output_of_commands_does_not_cost_a_resync(env: Env) -> None:
    """Checks leave caches and build output (untracked files) in the workspace: reported as
    changed, but not in the tree the sidecar holds, so the next sync is an ordinary patch."""
    edit(env.root)
    held = env.sync()
    script = "mkdir -p __pycache__ && echo x > __pycache__/a.pyc && echo y > out.txt"
    run_in(env.client, env.id, ["sh", "-c", script])
    assert env.client.get_sidecar(env.id)["changed"] == ["__pycache__/a.pyc", "out.txt"]
    untracked(env.root)
    env.calls.clear()
    tree = sync.tree_id(env.root)
    env.sidecar = sync_tree(
        env.client, env.root, env.client.get_sidecar(env.id), env.snap, tree, QUIET
    )
    assert [(c.kind, c.from_tree, c.reset) for c in env.calls] == [("patch", held, False)]
    assert run_in(env.client, env.id, ["cat", "out.txt", "notes/todo.txt"]) == (
        b"y\nan untracked file\n"
    )


@pytest.mark.isolation
def test_tar_fallback_when_the_client_lacks_both_trees(env: Env, tmp_path: Path) -> None:
    """A shallow `git clone --no-local` holds neither the tree the sidecar holds (written by the
    original repository's temporary index) nor the snapshot's source tree (an older commit):
    the whole tree goes as an archive on a fresh layer, and the next change is a patch again."""
    untracked(env.root)
    held = env.sync()
    edit(env.root)
    git(env.root, "commit", "-qam", "second")  # the clone's only commit; wip stays untracked
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", "--no-local", "--depth", "1", f"file://{env.root}", str(clone)],
        check=True,
        capture_output=True,
    )
    for rel, data in IGNORED.items():
        write(clone, rel, data)
    write(clone, "clone-only.txt", "made in the clone\n")
    assert not sync.has_object(clone, held)
    assert not sync.has_object(clone, env.snap["source_tree"])
    assert sync.has_object(env.root, held)

    env.calls.clear()
    tree = env.sync(clone)
    assert [(c.kind, c.reset, c.error) for c in env.calls] == [("tar", True, None)]
    assert "notes/todo.txt" not in sidecar_manifest(env.client, env.id)  # gone with the reset

    env.calls.clear()
    binary(clone)
    env.sync(clone)
    assert [(c.kind, c.from_tree, c.error) for c in env.calls] == [("patch", tree, None)]


def _patch_for(env: Env, change: Callable[[Path], None]) -> tuple[str, str, bytes]:
    """(from, to, patch) for a change, then the working tree put back."""
    source = env.sidecar["tree"]
    change(env.root)
    target = sync.tree_id(env.root)
    patch = sync.tree_diff(env.root, source, target)
    git(env.root, "checkout", "-q", "--", ".")
    return source, target, patch


def _two_files(root: Path) -> None:
    edit(root)
    with open(root / "src" / "util.py", "a") as f:
        f.write("# appended\n")


def _bad_context(patch: bytes) -> bytes:
    assert b" line 38\n" in patch
    return patch.replace(b" line 38\n", b" line 3X\n")


def _bad_second_file(patch: bytes) -> bytes:
    head, sep, tail = patch.partition(b"diff --git a/src/util.py")
    assert sep and b"    return 29\n" in tail
    return head + sep + tail.replace(b"    return 29\n", b"    return 99\n")


def _truncated(patch: bytes) -> bytes:
    return patch[: patch.index(b"@@", patch.index(b"@@") + 2) + 12]


def _wrong_binary_preimage(patch: bytes) -> bytes:
    start = patch.index(b"\nindex ") + len(b"\nindex ")
    return patch[:start] + b"1" * 40 + patch[start + 40 :]


MALFORMED: list[tuple[Callable[[Path], None], Callable[[bytes], bytes]]] = [
    (edit, _bad_context),
    (_two_files, _bad_second_file),
    (edit, _truncated),
    (binary, _wrong_binary_preimage),
]


@pytest.mark.isolation
@pytest.mark.parametrize(
    ("change", "spoil"), MALFORMED, ids=["context", "second-file", "truncated", "binary-preimage"]
)
def test_malformed_patch_is_refused_and_changes_nothing(
    env: Env, change: Callable[[Path], None], spoil: Callable[[bytes], bytes]
) -> None:
    source, target, patch = _patch_for(env, change)
    bad = spoil(patch)
    assert bad != patch
    before = sidecar_manifest(env.client, env.id)
    with pytest.raises(HostError) as refused:
        env.client.sync(env.id, to_tree=target, payload=bad, from_tree=source)
    assert (refused.value.status, refused.value.code) == (409, "apply_failed")
    assert env.client.get_sidecar(env.id)["tree"] == source
    assert sidecar_manifest(env.client, env.id) == before
    # The good patch still applies afterwards.
    assert env.client.sync(env.id, to_tree=target, payload=patch, from_tree=source)["tree"] == (
        target
    )


def test_payload_that_is_no_patch_is_refused(env: Env) -> None:
    source, target, _patch = _patch_for(env, edit)
    with pytest.raises(HostError) as refused:
        env.client.sync(env.id, to_tree=target, payload=b"this is not a patch\n", from_tree=source)
    assert (refused.value.status, refused.value.code) == (409, "apply_failed")
    assert env.client.get_sidecar(env.id)["tree"] == source


@pytest.mark.isolation
def test_patch_from_another_tree_is_refused(env: Env) -> None:
    source, target, patch = _patch_for(env, edit)
    before = sidecar_manifest(env.client, env.id)
    for wrong in (target, EMPTY_TREE):
        with pytest.raises(HostError) as refused:
            env.client.sync(env.id, to_tree=target, payload=patch, from_tree=wrong)
        assert (refused.value.status, refused.value.code) == (409, "tree_mismatch")
    assert env.client.get_sidecar(env.id)["tree"] == source
    assert sidecar_manifest(env.client, env.id) == before


@pytest.mark.isolation
def test_one_change_in_thousands_of_files_is_a_small_patch(
    host: Host, spy: list[Call], tmp_path: Path
) -> None:
    files: dict[str, bytes | str] = {
        "microbuild.toml": BASE_CONFIG.replace('"true"', '"true", "true"'),  # its own snapshot
        ".gitignore": ".venv/\n*.log\n",
    }
    name = "pkg{:02d}/mod{}/file{}.py".format
    for i in range(3000):
        files[name(i % 30, i // 30 % 10, i)] = f"VALUE_{i} = {i}\n" * 8
    big = new_env(host, tmp_path / "big", spy, files)
    try:
        assert big.sidecar["tree"] == big.snap["source_tree"]
        held = big.sidecar["tree"]
        changed = big.root / name(937 % 30, 937 // 30 % 10, 937)
        assert changed.is_file()
        changed.write_text(changed.read_text().replace("= 937\n", "= 'changed'\n", 1))
        big.sync()
        assert [(c.kind, c.from_tree, c.error) for c in spy] == [("patch", held, None)]
        assert spy[0].size < 2048, spy[0].size
        assert len(local_manifest(big.root)) == 3002
    finally:
        with contextlib.suppress(HostError):
            host.client.sidecar_action(big.id, "destroy")


def test_project_in_a_subdirectory(host: Host, spy: list[Call], tmp_path: Path) -> None:
    files = {f"sub/{rel}": data for rel, data in base_files().items()}
    files["sub/microbuild.toml"] = BASE_CONFIG.replace('"true"', '"true", "true", "true"')
    files["elsewhere/other.txt"] = "outside the project\n"
    sub = new_env(host, tmp_path / "repo", spy, files, project="sub")
    try:
        sub.check()  # the snapshot holds the subdirectory's files
        untracked(sub.root)
        sub.sync()
    finally:
        with contextlib.suppress(HostError):
            host.client.sidecar_action(sub.id, "destroy")
