"""The client side of getting a working tree to a host: what the snapshot needs, as data and
as a source archive. (Incremental tree sync arrives here with `microbuild validate`.)

Everything runs git read-only with a temporary index (GIT_INDEX_FILE): the user's index, files
and refs are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microbuild import gitsafe
from microbuild.config import Project
from microbuild.errors import SnapshotError
from microbuild.snapshot import SnapshotRequest

if TYPE_CHECKING:
    from microbuild.watch import TreeWatcher


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(
            gitsafe.argv(root, *args),
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except FileNotFoundError as exc:
        raise SnapshotError("git is not installed; install git (apt-get install git)") from exc
    if proc.returncode != 0:
        raise SnapshotError(_git_failure(root, args[0], proc.stderr))
    return proc.stdout.strip()


def _git_failure(root: Path, command: str, stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    detail = (fatal or lines or ["(no message)"])[0]
    if "safe.directory" in stderr:
        detail += f"; if you trust it: git config --global --add safe.directory {root}"
    return f"git {command} failed in {root}: {detail}"


def head_commit(root: Path) -> str:
    head = subprocess.run(
        gitsafe.argv(root, "rev-parse", "--verify", "-q", "HEAD^{commit}"),
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0 and not head.stderr.strip():
        raise SnapshotError(
            f"{root} has no commit yet; commit once so the snapshot has a base commit"
        )
    if head.returncode != 0:
        raise SnapshotError(_git_failure(root, "rev-parse", head.stderr))
    return head.stdout.strip()


def input_files(project: Project) -> list[Path]:
    """The files matched by `[snapshot] inputs`, relative to the project root, sorted."""
    found: set[Path] = set()
    for pattern in project.config.snapshot.inputs:
        for path in project.root.glob(pattern):
            rel = path.relative_to(project.root)
            if path.is_file() and ".git" not in rel.parts:
                found.add(rel)
    return sorted(found)


def describe_snapshot(project: Project, cache_dir: Path | None = None) -> SnapshotRequest:
    """What the host needs to find or build this project's snapshot, without any file content
    but the input files' digests. With `cache_dir`, the source tree (the base commit with the
    input files as they are) is kept there, so an unchanged one costs no git call."""
    commit = head_commit(project.root)
    inputs = input_files(project)
    digests = tuple(
        (rel.as_posix(), hashlib.sha256((project.root / rel).read_bytes()).hexdigest())
        for rel in inputs
    )
    modes = tuple((project.root / rel).stat().st_mode & 0o111 for rel in inputs)
    key = hashlib.sha256(repr((str(project.root), commit, digests, modes)).encode()).hexdigest()
    where = hashlib.sha256(os.fsencode(project.root)).hexdigest()[:24]
    kept = cache_dir / f"source-tree-{where}" if cache_dir is not None else None
    tree = ""
    if kept is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
            kept_key, kept_tree = kept.read_text().split()
            tree = kept_tree if kept_key == key else ""
    if not tree:
        tree = _source_tree(project.root, commit, inputs)
        if kept is not None:
            with contextlib.suppress(OSError):
                kept.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                temp = kept.with_name(f".source-tree.{os.getpid()}")
                temp.write_text(f"{key} {tree}\n")
                temp.replace(kept)
    return SnapshotRequest(
        project=str(project.root),
        setup=tuple(project.config.snapshot.setup),
        inputs=digests,
        timeout_s=project.config.snapshot.timeout_s,
        sidecar=project.config.sidecar,
        base_commit=commit,
        source_tree=tree,
    )


def _source_tree(root: Path, commit: str, inputs: list[Path]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(root, "read-tree", commit, env=env)
        if inputs:
            _git(root, "update-index", "--add", "--", *map(str, inputs), env=env)
        return _write_tree(root, env)


def export_source(project: Project, request: SnapshotRequest, dest: Path) -> None:
    """Write the snapshot's source as a tar file: the base commit, then the input files as they
    are in the working tree (later members win when it is unpacked)."""
    with open(dest, "wb") as out:
        archive = subprocess.run(
            gitsafe.argv(project.root, "archive", "--format=tar", request.base_commit),
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
    if archive.returncode != 0:
        raise SnapshotError(_git_failure(project.root, "archive", archive.stderr.decode()))
    if request.inputs:
        with tarfile.open(dest, "a") as tar:
            for rel, _digest in request.inputs:
                tar.add(project.root / rel, arcname=rel, recursive=False)


# -- incremental sync ------------------------------------------------------------------------


def git_dir(root: Path) -> Path:
    return Path(_git(root, "rev-parse", "--absolute-git-dir"))


def _repository(root: Path) -> tuple[Path, str]:
    """The git dir and the project's prefix in its repository, in one git call."""
    lines = _git(root, "rev-parse", "--absolute-git-dir", "--show-prefix").split("\n")
    return Path(lines[0]), (lines[1] if len(lines) > 1 else "")


def _write_tree(root: Path, env: dict[str, str], prefix: str | None = None) -> str:
    """The tree of the project directory: the repository's, or its subdirectory's when the
    project lives below the repository root (what `git archive` exports from there too)."""
    if prefix is None:
        prefix = _git(root, "rev-parse", "--show-prefix")
    args = ["write-tree", f"--prefix={prefix}"] if prefix else ["write-tree"]
    return _git(root, *args, env=env)


def _index_signature(index: Path) -> str:
    try:
        info = index.stat()
    except FileNotFoundError:
        return "none"
    return f"{info.st_mtime_ns} {info.st_size} {info.st_ino}"


def tree_id(root: Path, index_dir: Path | None = None, *, watched: bool = True) -> str:
    """The working tree (tracked and untracked-but-not-ignored files) as a git tree id.

    Staged with an index of microbuild's own, never the user's: a copy of the user's index
    (its stat cache means only changed files are hashed), so the user's index, files and refs
    are never touched. With `index_dir`, that copy is kept there between calls, with git's
    untracked cache and cache tree, and made again only when the user's index changes: on a
    large repository this halves the time (see benchmarks/sync.py). With a watcher of `root`
    in this process (microbuild.watch; the command server keeps one per project) and
    `watched`, only the paths it saw change are restaged. A file that became ignored after
    the kept index first saw it stays in it until the user's index or an ignore file changes
    (without a watcher: only the user's index): the tree then has a file the working tree has
    too, and a cached result may be missed.
    """
    from microbuild import watch

    known = watch.repository(root) if watched and index_dir is not None else None
    gitdir, prefix = known or _repository(root)
    index = gitdir / "index"
    if index_dir is not None:
        # Busy (another validate of this repository) or broken: the one-off copy will do.
        with contextlib.suppress(BlockingIOError, SnapshotError, OSError):
            return _tree_with_kept_index(root, index, prefix, index_dir, watched)
    with tempfile.TemporaryDirectory(prefix="microbuild-index-") as tmp:
        temp_index = Path(tmp) / "index"
        if index.exists():
            # copy2 keeps the mtime: git trusts cached stat data only for files older than the
            # index, so a fresh mtime would hide a same-second, same-size rewrite.
            shutil.copy2(index, temp_index)
        env = {"GIT_INDEX_FILE": str(temp_index), "GIT_OPTIONAL_LOCKS": "0"}
        _git(root, "add", "--all", "--", ".", env=env)
        return _write_tree(root, env, prefix)


def _tree_with_kept_index(
    root: Path, index: Path, prefix: str, index_dir: Path, watched: bool = True
) -> str:
    """tree_id with a kept index; BlockingIOError when another call is using it.

    With a live watcher of `root` (see microbuild.watch) and the moment of the last tree kept
    beside the index, only the paths changed since then are restaged: no lstat of every file,
    no scan for untracked ones. Without one, or when it cannot say what changed, all of them."""
    from microbuild import watch

    gitdir = index.parent
    where = index_dir / hashlib.sha256(os.fsencode(gitdir)).hexdigest()[:24]
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    kept, base, moment = where / "index", where / "base", where / "watch"
    with open(where / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        signature = f"{gitdir}\n{_index_signature(index)}"
        fresh = not kept.exists() or not base.exists() or base.read_text() != signature
        watcher = watch.find(root) if watched else None
        if watcher is None:
            if watched:
                watch.request(root)
        elif watcher.stale:
            # An ignore file changed: start again from the user's index, so that files that
            # became ignored leave the tree, and watch again with the new rules.
            fresh, watcher = True, None
            watch.restart(root)
        env = {"GIT_INDEX_FILE": str(kept), "GIT_OPTIONAL_LOCKS": "0"}
        # Taken before any file is read: what changes from here on is restaged next time.
        token = watcher.token() if watcher is not None else None
        config = _config_signature(gitdir) if watcher is not None else ""
        saved = _read_moment(moment) if watcher is not None else None
        if saved is not None and saved["prefix"] != prefix:
            saved = None  # kept for another project of this repository
        elif saved is not None and saved["config"] != config:
            fresh = True  # git's configuration changed (core.fileMode, say): start again
        if fresh:
            saved = None
            kept.unlink(missing_ok=True)
            if index.exists():
                shutil.copy2(index, kept)
        try:
            tree = None
            if watcher is not None and saved is not None:
                tree = _tree_from_changes(root, watcher, saved)
                if tree is not None:
                    _write_moment(moment, {**saved, "tree": tree, "tree_token": token})
                    return tree
                tree = _restage_changed(root, env, prefix, watcher, str(saved["index_token"]))
            if tree is None:
                _git(root, "-c", "core.untrackedCache=true", "add", "--all", "--", ".", env=env)
                tree = _write_tree(root, env, prefix)
        except BaseException:
            kept.unlink(missing_ok=True)
            moment.unlink(missing_ok=True)
            raise
        if fresh:
            base.write_text(signature)
        if token is not None:
            filemode = saved["filemode"] if saved is not None else _core_filemode(root)
            _write_moment(
                moment,
                {
                    "prefix": prefix,
                    "tree": tree,
                    "tree_token": token,
                    "index_token": token,
                    "filemode": filemode,
                    "config": config,
                },
            )
        return tree


def _read_moment(moment: Path) -> dict[str, Any] | None:
    """What the last watched tree_id kept: the tree and the watcher's moment it was true at,
    and the moment the kept index was last brought up to date."""
    try:
        data = json.loads(moment.read_text())
    except (OSError, ValueError):
        return None
    keys = ("prefix", "tree", "tree_token", "index_token", "filemode", "config")
    return data if isinstance(data, dict) and all(k in data for k in keys) else None


def _write_moment(moment: Path, data: dict[str, Any]) -> None:
    temp = moment.with_name(f".{moment.name}.{os.getpid()}")
    temp.write_text(json.dumps(data))
    temp.replace(moment)


def _tree_from_changes(root: Path, watcher: TreeWatcher, saved: dict[str, Any]) -> str | None:
    """The kept tree with the files changed since it edited in, without the index (see
    microbuild.treeedit); None when that cannot be done exactly."""
    from microbuild import treeedit

    changed = watcher.changes_since(str(saved["tree_token"]))
    if changed is None:
        return None
    if not changed:
        return str(saved["tree"])
    filemode = saved["filemode"]
    if not isinstance(filemode, bool):
        return None
    return treeedit.edit_tree(root, str(saved["tree"]), changed, filemode)


def _config_signature(gitdir: Path) -> str:
    """When git's configuration files last changed, and the configuration the environment
    gives: a kept core.fileMode is trusted only while this stays the same."""
    paths = [gitdir / "config"]
    with contextlib.suppress(OSError):
        paths.append(gitdir / (gitdir / "commondir").read_text().strip() / "config")
    home = Path(os.environ.get("HOME") or "/")
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    paths += [
        Path(os.environ.get("GIT_CONFIG_GLOBAL") or home / ".gitconfig"),
        xdg / "git" / "config",
        Path(os.environ.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig"),
    ]
    stamps = []
    for path in paths:
        try:
            st = path.stat()
            stamps.append(f"{path} {st.st_mtime_ns} {st.st_size} {st.st_ino}")
        except OSError:
            stamps.append(f"{path} -")
    stamps += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("GIT_CONFIG"))
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:32]


_CORE_FLAGS = r"^core\.(filemode|ignorecase)$"


def _core_filemode(root: Path) -> bool | None:
    """Whether git takes the executable bit from the files (core.fileMode); None when the
    fast path must not be used at all (a case-insensitive core.ignoreCase)."""
    proc = subprocess.run(
        gitsafe.argv(root, "config", "--type=bool", "--get-regexp", _CORE_FLAGS),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, 1):
        return None
    values = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    if values.get("core.ignorecase") == "true":
        return None
    return values.get("core.filemode", "true") == "true"


def _restage_changed(
    root: Path, env: dict[str, str], prefix: str, watcher: TreeWatcher, since: str
) -> str | None:
    """The tree after restaging in the kept index only what `watcher` saw change since it was
    last brought up to date; None when that is unknown (then everything is restaged)."""
    changed = watcher.changes_since(since)
    if changed is None:
        return None
    exists = {p: os.path.lexists(root / p) for p in changed}
    present = [p for p in changed if exists[p]]
    gone = [p for p in changed if not exists[p]]
    quiet = {**env, "LC_ALL": "C"}
    try:
        if present:
            _git_paths(root, ["add", "--all"], present, quiet, ignored_ok=True)
        if gone:
            _git_paths(root, ["rm", "-r", "-f", "-q", "--cached", "--ignore-unmatch"], gone, quiet)
        return _write_tree(root, env, prefix)
    except SnapshotError:
        return None


def _git_paths(
    root: Path, args: list[str], paths: list[str], env: dict[str, str], ignored_ok: bool = False
) -> None:
    """`git ARGS` on literal paths given on stdin. An explicitly named ignored path is skipped,
    as `add --all` of the whole tree would, when `ignored_ok`."""
    proc = subprocess.run(
        [
            *gitsafe.argv(root, "--literal-pathspecs", "-c", "advice.addIgnoredFile=false"),
            *("-c", "core.untrackedCache=true", *args),
            *("--pathspec-from-file=-", "--pathspec-file-nul"),
        ],
        input=b"\0".join(os.fsencode(p) for p in paths) + b"\0",
        capture_output=True,
        env={**os.environ, **env},
        check=False,
    )
    err = proc.stderr.decode(errors="replace")
    if proc.returncode == 1 and ignored_ok and err.startswith("The following paths are ignored"):
        return
    if proc.returncode != 0:
        raise SnapshotError(_git_failure(root, args[0], err))


def has_object(root: Path, oid: str) -> bool:
    probe = subprocess.run(
        gitsafe.argv(root, "cat-file", "-e", f"{oid}^{{tree}}"),
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def tracked_among(root: Path, tree: str, paths: list[str]) -> list[str]:
    """Which of `paths` (files, or directories as a whole) hold files of `tree`: the ones whose
    change in a sidecar means it no longer holds that tree. `.` stands for everything."""
    if "." in paths:
        return ["."]
    found: list[str] = []
    for start in range(0, len(paths), 500):
        specs = [f":(literal){p}" for p in paths[start : start + 500]]
        out = _git(root, "ls-tree", "-r", "--name-only", "-z", tree, "--", *specs)
        found.extend(name for name in out.split("\0") if name)
    return found


def tree_diff(root: Path, old: str, new: str) -> bytes:
    """`git diff --binary` between two trees: what a sidecar holding `old` needs."""
    proc = subprocess.run(
        [
            *gitsafe.argv(root, "diff"),
            "--binary",
            "--full-index",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "-M",
            old,
            new,
        ],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SnapshotError(_git_failure(root, "diff", proc.stderr.decode(errors="replace")))
    return proc.stdout


def tree_archive(root: Path, tree: str) -> bytes:
    proc = subprocess.run(
        gitsafe.argv(root, "archive", "--format=tar", tree),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SnapshotError(_git_failure(root, "archive", proc.stderr.decode(errors="replace")))
    return proc.stdout
