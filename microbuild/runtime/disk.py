"""A sidecar's disk limit: its writable layer on a size-limited filesystem of its own.

Each sidecar with `[sidecar] disk` set gets a sparse ext4 image file in its directory (under
the 0700 state dir), attached to a loop device and mounted nosuid,nodev at `<sidecar>/disk`;
the overlay's upper and work directories live in it. Whatever the sidecar writes outside
/tmp (a tmpfs with its own size) lands there, so the host's filesystem gains at most the
image's size, and a write beyond it fails with ENOSPC inside the sidecar only.

mkfs.ext4 costs more than making a sidecar (about 15 ms against 5), so it runs once per
size, for a template image under `<state dir>/disks/`; a sidecar's image is a sparse copy
of it (its few hundred KiB of metadata, under a millisecond). No resize inode and no
journal keep that small. The loop device is configured with LOOP_CONFIGURE (LOOP_SET_FD and
LOOP_SET_STATUS64 on kernels before 5.8) and autoclear, through ioctls on /dev/loop-control
and /dev/loopN: it is released by the kernel when the last mount of its filesystem goes
away (the host's, then the copy in the sidecar's mount namespace, which dies with its init),
and `release()` checks that it did and detaches it otherwise.

The image has no journal (nothing in it must survive a crash: a sidecar
whose host machine rebooted is dead and its layer discarded) and mounted with
`noinit_itable`, so that the kernel does not zero its inode tables in the background (that
would write about 1.6% of the size to the host's disk per sidecar). The sidecar only ever
reaches the filesystem through the kernel, never the image or the loop device (its /dev has
neither), so the host never mounts a filesystem a sidecar crafted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

from microbuild.runtime import linux
from microbuild.runtime.base import RuntimeError_

MOUNT_DIR = "disk"
IMAGE = "disk.img"
LOOP_FILE = "disk.loop"
POOL_DIR = "disks"
MOUNT_OPTIONS = "noinit_itable"
MKFS_ARGS = (
    "-q",
    "-F",
    "-m",
    "0",
    "-O",
    "^has_journal,^resize_inode",
    "-E",
    "lazy_itable_init=1,nodiscard",
)

LOOP_CTL_GET_FREE = 0x4C82
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
# struct loop_info64: 5 u64, 4 u32, file name[64], crypt name[64], key[32], 2 u64 = 232 bytes
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# struct loop_config: u32 fd, u32 block_size, loop_info64, u64 reserved[8] = 304 bytes
_LOOP_CONFIG = struct.Struct(f"=II{_LOOP_INFO64.size}s64x")


class DiskError(RuntimeError_):
    """The sidecar's disk limit cannot be set up."""


def unavailable_reason() -> str | None:
    """Why disk-limited sidecars cannot be made here, or None."""
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices (/dev/loop-control is missing; `modprobe loop`)"
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is not installed (e2fsprogs)"
    try:
        with open("/proc/filesystems") as f:
            if "ext4" not in f.read().split():
                return "the kernel has no ext4"
    except OSError:
        return "/proc is not mounted"
    return None


def make_image(path: Path, size: int) -> None:
    """A sparse, formatted image of `size` bytes at `path` (written aside, then renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.truncate(size)
        proc = subprocess.run(
            ["mkfs.ext4", *MKFS_ARGS, str(tmp)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            raise DiskError(
                f"cannot format the sidecar's disk image: mkfs.ext4 failed"
                f'{": " + detail[-1] if detail else ""}; set [sidecar] disk = "none" in '
                "microbuild.toml to run without a disk limit"
            )
        os.rename(tmp, path)
    except OSError as exc:
        raise DiskError(
            f"cannot make the sidecar's disk image {path}: {exc.strerror or exc}"
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def clone_image(template: Path, dest: Path) -> None:
    """A copy of a sparse image that stays sparse: only its data extents are copied
    (SEEK_DATA/SEEK_HOLE, copy_file_range), about 250 KiB for a fresh filesystem."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(template, "rb") as src, open(tmp, "wb") as out:
            fi, fo = src.fileno(), out.fileno()
            size = os.fstat(fi).st_size
            os.ftruncate(fo, size)
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(fi, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # nothing but a hole from here on
                    raise
                end = os.lseek(fi, start, os.SEEK_HOLE)
                offset = start
                while offset < end:
                    copied = os.copy_file_range(fi, fo, end - offset, offset, offset)
                    if copied == 0:
                        raise OSError(errno.EIO, f"{template} ended early")
                    offset += copied
                pos = end
        os.rename(tmp, dest)
    except OSError as exc:
        raise DiskError(
            f"cannot make the sidecar's disk image {dest}: {exc.strerror or exc}"
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class DiskPool:
    """Where sidecars' images come from and go: `<state dir>/disks`.

    mkfs.ext4 runs once per size, for a template (`disks/<size>.img`) that is never
    mounted; each sidecar gets a sparse copy of it, which takes well under a millisecond
    (every copy has the template's filesystem UUID: ext4 does not mind, and nothing mounts
    these by UUID). Deleting a released image (a few ms for a 10 GiB sparse file) is left
    to a background thread, off the path of a destroy."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / POOL_DIR
        self._lock = threading.Condition()
        self._trash: list[Path] = []
        self._worker: threading.Thread | None = None
        self._seq = 0

    def template(self, size: int) -> Path:
        """The formatted template of `size` bytes, made now if there is none yet."""
        path = self.root / f"{size}.img"
        if not path.exists():
            # Never parents=True: a state dir removed meanwhile must stay removed.
            self.root.mkdir(exist_ok=True, mode=0o700)
            self._sweep()
            make_image(path, size)
        return path

    def take(self, size: int, dest: Path) -> None:
        """Put a formatted image of `size` bytes at `dest`."""
        template = self.template(size)
        try:
            clone_image(template, dest)
        except DiskError:
            if template.exists():
                raise
            clone_image(self.template(size), dest)  # removed meanwhile: made again

    def fill(self, size: int) -> None:
        """Make the template now (warm-up), so that the first sidecar need not."""
        self.template(size)

    def discard(self, image: Path) -> None:
        """Delete a released image in the background (moved out of its sidecar's directory
        first, so that the directory can go now); at once if it cannot be moved."""
        try:
            self.root.mkdir(exist_ok=True, mode=0o700)
            with self._lock:
                self._seq += 1
                moved = self.root / f".trash-{os.getpid()}-{self._seq}-{time.monotonic_ns()}"
            os.rename(image, moved)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(image)
            return
        with self._lock:
            self._trash.append(moved)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, daemon=True, name="disk-trash")
                self._worker.start()
            self._lock.notify()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._trash:
                    if not self._lock.wait(timeout=60):
                        if self._worker is threading.current_thread():
                            self._worker = None
                        return
                trash, self._trash = self._trash, []
            for path in trash:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _sweep(self) -> None:
        """Remove what a process killed mid-way left (temporary files, trash)."""
        with contextlib.suppress(OSError):
            for entry in os.listdir(self.root):
                path = self.root / entry
                with contextlib.suppress(OSError):
                    if entry.startswith(".") and time.time() - path.lstat().st_mtime > 600:
                        path.unlink()


def _attach(image: Path) -> tuple[int, str]:
    """(open fd, /dev/loopN) of a free loop device attached to `image`, with autoclear."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _attempt in range(64):
                number = _ioctl_int(ctl, LOOP_CTL_GET_FREE, 0)
                device = f"/dev/loop{number}"
                try:
                    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    time.sleep(0.001)  # udev has not made the node yet
                    continue
                try:
                    _configure(fd, backing, str(image))
                except OSError as exc:
                    os.close(fd)
                    if exc.errno == errno.EBUSY:
                        continue  # another process took it between GET_FREE and here
                    raise
                return fd, device
            raise OSError(errno.EBUSY, "every free loop device was taken meanwhile")
        finally:
            os.close(ctl)
    finally:
        os.close(backing)


def _ioctl_int(fd: int, request: int, arg: int) -> int:
    import fcntl

    return fcntl.ioctl(fd, request, arg)


def _configure(fd: int, backing: int, name: str) -> None:
    import fcntl

    info = _LOOP_INFO64.pack(
        0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR, name.encode()[:63], b"", b"", 0, 0
    )
    try:
        fcntl.ioctl(fd, LOOP_CONFIGURE, _LOOP_CONFIG.pack(backing, 0, info))
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    fcntl.ioctl(fd, LOOP_SET_FD, backing)
    try:
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    except OSError:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, LOOP_CLR_FD, 0)
        raise


def mount(sdir: Path, size: int, pool: DiskPool) -> Path:
    """Give the sidecar at `sdir` its disk: an image from the pool, attached and mounted at
    `sdir/disk`; returns the mount point. On failure nothing is left attached or mounted."""
    image = sdir / IMAGE
    target = sdir / MOUNT_DIR
    if image.exists() or os.path.ismount(target):
        # Left by a sidecar of the same id: never mounted twice, never handed on.
        release(sdir)
        image.unlink(missing_ok=True)
    target.mkdir(exist_ok=True)
    pool.take(size, image)
    try:
        fd, device = _attach(image)
    except OSError as exc:
        raise DiskError(
            f"cannot attach the sidecar's disk image to a loop device: {exc.strerror or exc}; "
            'set [sidecar] disk = "none" in microbuild.toml to run without a disk limit'
        ) from exc
    try:
        (sdir / LOOP_FILE).write_text(device)
        linux.mount(device, str(target), "ext4", linux.MS_NOSUID | linux.MS_NODEV, MOUNT_OPTIONS)
    except OSError as exc:
        raise DiskError(f"cannot mount the sidecar's disk image: {exc}") from exc
    finally:
        os.close(fd)  # autoclear: from now on the mount alone holds the device
    return target


def remount(sdir: Path) -> bool:
    """After a host restart in a mount namespace of its own (a systemd unit with
    PrivateTmp, say), the sidecar's filesystem is still mounted in its namespace but no
    longer at `sdir/disk` for the host: mount it there again from the same loop device (the
    same superblock, never a second one over the same image). True when it is mounted."""
    target = sdir / MOUNT_DIR
    if os.path.ismount(target):
        return True
    try:
        device = (sdir / LOOP_FILE).read_text().strip()
    except OSError:
        return False
    backing = _backing_file(device)
    if backing is None or not backing.startswith(str(sdir / IMAGE)):
        return False
    try:
        linux.mount(device, str(target), "ext4", linux.MS_NOSUID | linux.MS_NODEV, MOUNT_OPTIONS)
    except OSError:
        return False
    return True


def _backing_file(device: str) -> str | None:
    name = os.path.basename(device)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def release(sdir: Path, timeout: float = 5.0) -> None:
    """Unmount the sidecar's disk and make sure its loop device is detached (autoclear does
    it asynchronously, from a kernel workqueue: waited for). Call once the
    sidecar's processes are gone (their mount namespace holds the filesystem too)."""
    target = sdir / MOUNT_DIR
    image = str(sdir / IMAGE)
    while os.path.ismount(target):
        try:
            linux.umount(str(target), 0)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                break
            linux.umount(str(target), linux.MNT_DETACH)
    try:
        device = (sdir / LOOP_FILE).read_text().strip()
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while True:
        backing = _backing_file(device)
        if backing is None or not backing.startswith(image):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.0005)
    with contextlib.suppress(OSError):
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        try:
            import fcntl

            fcntl.ioctl(fd, LOOP_CLR_FD, 0)
        finally:
            os.close(fd)
    backing = _backing_file(device)
    if backing is not None and backing.startswith(image):
        raise DiskError(
            f"the sidecar's loop device {device} is still attached to {image} (a process "
            f"still uses its filesystem); detach it with `losetup -d {device}`"
        )


def usage(sdir: Path) -> tuple[int, int] | None:
    """(bytes available, total bytes) of the sidecar's disk, or None when it has none."""
    target = sdir / MOUNT_DIR
    try:
        if not os.path.ismount(target):
            return None
        info = os.statvfs(target)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize


def is_full(sdir: Path) -> bool:
    """Whether the sidecar's disk is (as good as) full: less free than 1 MiB or 0.5%."""
    found = usage(sdir)
    if found is None:
        return False
    free, total = found
    return free < max(1 << 20, total // 200)
