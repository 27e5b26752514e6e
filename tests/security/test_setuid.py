"""Setuid files and file capabilities a sidecar writes: inert inside, out of reach of the
host's other users, gone from snapshot layers; the state dir private to its owner."""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from microbuild.runtime import SidecarHandle
from microbuild.runtime.namespace import NamespaceRuntime

from .conftest import py, sh

pytestmark = pytest.mark.isolation
NOBODY = 65534
# struct vfs_cap_data, revision 2, effective: CAP_SYS_ADMIN.
CAP_SYS_ADMIN_XATTR = struct.pack("<IIIII", 0x02000001, 1 << 21, 0, 0, 0)


def as_nobody(action: Callable[[], object]) -> int:
    """Run `action` in a child as uid/gid 65534: 0 when it raised PermissionError, 1 when it
    succeeded, 2 on any other error."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit code
        code = 2
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            code = 1
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_setuid_copy_is_out_of_reach_of_other_users(
    runtime: NamespaceRuntime, sidecar: Callable[..., SidecarHandle]
) -> None:
    h = sidecar()
    code, out = sh(runtime, h, "cp /bin/sh /workspace/sh && chmod u+s /workspace/sh")
    assert code == 0, out
    planted = Path(h.dir) / "upper" / "workspace" / "sh"
    assert planted.stat().st_mode & stat.S_ISUID
    assert as_nobody(lambda: os.stat(planted)) == 0
    assert as_nobody(lambda: os.execv(planted, [str(planted), "-c", "id -u"])) == 0
    assert as_nobody(lambda: os.listdir(runtime.state_dir)) == 0
    via_proc = f"/proc/{h.init_pid}/root/workspace/sh"
    assert os.stat(via_proc).st_mode & stat.S_ISUID
    assert as_nobody(lambda: os.stat(via_proc)) == 0


def test_setuid_bits_and_file_capabilities_are_inert_inside(
    runtime: NamespaceRuntime, sidecar: Callable[..., SidecarHandle]
) -> None:
    h = sidecar()
    code, out = sh(runtime, h, "awk '$2 == \"/\" {print $4}' /proc/self/mounts")
    assert code == 0
    options = out.strip().split(",")
    assert "nosuid" in options and "nodev" in options, out
    code, out = sh(
        runtime,
        h,
        f"cp /usr/bin/id /workspace/id && chown {NOBODY} /workspace/id && "
        "chmod u+s /workspace/id && /workspace/id -u",
    )
    assert code == 0, out
    assert out.strip() == "0", "a setuid file changed the euid inside the sidecar"


def test_writing_file_capabilities_is_refused(
    runtime: NamespaceRuntime, sidecar: Callable[..., SidecarHandle]
) -> None:
    h = sidecar()
    code, out = py(
        runtime,
        h,
        "import os, sys\n"
        "open('/workspace/tool', 'w').close()\n"
        f"value = {CAP_SYS_ADMIN_XATTR!r}\n"
        "try:\n    os.setxattr('/workspace/tool', 'security.capability', value)\n"
        "except PermissionError:\n    print('refused'); sys.exit(0)\n"
        "print('written'); sys.exit(1)\n",
    )
    assert code == 0 and "refused" in out, out


def test_frozen_layer_keeps_no_setuid_file_or_capability(
    runtime: NamespaceRuntime, sidecar: Callable[..., SidecarHandle], tmp_path: Path
) -> None:
    h = sidecar()
    code, out = sh(
        runtime,
        h,
        "cp /bin/sh sh && chmod 4755 sh && cp /bin/sh sg && chmod 2755 sg && "
        "mkdir -p deep/er && cp /bin/sh deep/er/sh && chmod u+s deep/er/sh && "
        "ln -s /bin/sh link && echo plain > plain",
    )
    assert code == 0, out
    upper = Path(h.dir) / "upper" / "workspace"
    # As a runtime that still granted CAP_SETFCAP would have left it.
    os.setxattr(upper / "plain", "security.capability", CAP_SYS_ADMIN_XATTR)
    layer = runtime.freeze(h, runtime.state_dir / "snapshots" / "frozen")[0]
    found = []
    for dirpath, dirnames, filenames in os.walk(layer):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                continue
            if not stat.S_ISDIR(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                found.append(path)
            if "security.capability" in os.listxattr(path, follow_symlinks=False):
                found.append(path)
    assert not found, f"privileged files left in the snapshot layer: {found}"
    assert os.access(os.path.join(layer, "workspace/deep/er/sh"), os.X_OK)


def test_strip_privileged_bits_never_follows_symlinks(tmp_path: Path) -> None:
    from microbuild.runtime.layers import strip_privileged_bits

    outside = tmp_path / "outside"
    outside.write_text("")
    outside.chmod(0o4755)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "to-outside").symlink_to(outside)
    (tree / "suid").write_text("")
    (tree / "suid").chmod(0o6755)
    assert strip_privileged_bits(tree) == 1
    assert stat.S_IMODE((tree / "suid").stat().st_mode) == 0o755
    assert outside.stat().st_mode & stat.S_ISUID


def test_state_dir_is_private_after_start(open_state_dir: Path) -> None:
    from microbuild.host.manager import SidecarManager

    manager = SidecarManager(open_state_dir, default_runtime="process")
    manager.close()
    for path in (open_state_dir, open_state_dir / "snapshots", open_state_dir / "sidecars"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    from microbuild.runtime.layers import StateDirUnsafe, secure_state_dir

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(StateDirUnsafe, match="belongs to uid 65534"):
        secure_state_dir(theirs)
