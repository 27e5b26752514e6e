"""Keeping what sidecars write from being a door for the host's other users.

A sidecar's root may `chmod u+s` a copy of a shell in its workspace, or give a file
capabilities: inside, nosuid mounts and no_new_privs make both inert, but on the host the
file sits in the state dir (the writable layer, then a snapshot layer) where any local user
who can reach it could run it as root. So the state dir is for its owner only, and a
writable layer loses its setuid/setgid bits and file capabilities before it becomes a
snapshot layer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from microbuild.runtime.base import RuntimeUnavailable

CAPABILITY_XATTR = "security.capability"
PRIVILEGED_BITS = stat.S_ISUID | stat.S_ISGID
STATE_DIR_MODE = 0o700


class StateDirUnsafe(RuntimeUnavailable):
    """The state dir cannot be made private to its owner."""


def secure_state_dir(state_dir: Path) -> None:
    """Make the state dir and its top-level subdirectories 0700 (creating the state dir if
    needed); refuse one owned by another user, who could open it again."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    uid = os.geteuid()
    paths = [state_dir]
    with contextlib.suppress(FileNotFoundError):
        paths += [p for p in state_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    for path in paths:
        try:
            info = path.lstat()
            if info.st_uid != uid:
                raise StateDirUnsafe(
                    f"{path} belongs to uid {info.st_uid}, not to this user (uid {uid}): "
                    "use a state dir of your own (MICROBUILD_STATE_DIR)"
                )
            if stat.S_IMODE(info.st_mode) != STATE_DIR_MODE:
                os.chmod(path, STATE_DIR_MODE, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed meanwhile (a sidecar's dir by its destroy)
        except OSError as exc:
            raise StateDirUnsafe(
                f"cannot make {path} private (chmod 700): {exc.strerror}; fix its "
                "permissions or use another state dir (MICROBUILD_STATE_DIR)"
            ) from exc


def strip_privileged_bits(root: Path) -> int:
    """Clear setuid/setgid bits and remove `security.capability` xattrs on every file under
    `root`, symlinks never followed; returns how many files were changed."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode):
                continue
            touched = False
            if not stat.S_ISDIR(info.st_mode) and info.st_mode & PRIVILEGED_BITS:
                # Setgid on a directory only sets new files' group: harmless, and kept.
                os.chmod(path, stat.S_IMODE(info.st_mode) & ~PRIVILEGED_BITS)
                touched = True
            try:
                os.removexattr(path, CAPABILITY_XATTR, follow_symlinks=False)
                touched = True
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
            changed += touched
    return changed
