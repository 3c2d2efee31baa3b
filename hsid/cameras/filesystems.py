"""File systems: which kind the camera root is on, and so whether the watcher must poll.

inotify reports only the changes made through this machine's kernel. On NFS, SMB/CIFS, FUSE
(sshfs, rclone, ...) and the other network file systems below, files written by another
machine (the NAS's own FTP server, a camera writing to a share) raise no event; on
overlayfs, files written to a layer directly (an upload folder shared with a container that
sees it through an overlay) raise none either. There the watcher polls.

The kind is read with statfs(2) on the camera root itself, through ctypes, because
os.statvfs has no f_type. statfs asks the kernel about the very path, so bind mounts,
nested mounts and symlinks resolve as the watcher's own reads will; /proc/self/mountinfo
would need the mount found by longest prefix over escaped paths (`\\040` for a space), and
its fstype names vary (nfs4, smb3, fuse.sshfs, fuseblk) where the magic numbers are stable
kernel ABI.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# statfs f_type values, from Linux include/uapi/linux/magic.h.
REMOTE_FILE_SYSTEMS: dict[int, str] = {
    0x6969: "nfs",  # NFS_SUPER_MAGIC
    0x517B: "smb",  # SMB_SUPER_MAGIC (the old smbfs)
    0xFF534D42: "cifs",  # CIFS_SUPER_MAGIC (CIFS_MAGIC_NUMBER before 6.x)
    0xFE534D42: "smb2",  # SMB2_SUPER_MAGIC: cifs.ko mounting SMB2/3
    0x65735546: "fuse",  # FUSE_SUPER_MAGIC: sshfs, rclone, s3fs, virtiofs, ntfs-3g, ...
    0x794C7630: "overlayfs",  # OVERLAYFS_SUPER_MAGIC
    0x01021997: "9p",  # V9FS_MAGIC: virtual machine and WSL shares
    0x00C36400: "ceph",  # CEPH_SUPER_MAGIC
    0x5346414F: "afs",  # AFS_SUPER_MAGIC
    0x73757245: "coda",  # CODA_SUPER_MAGIC
}
# Named only to make the start-up line and `hsid check` readable.
LOCAL_FILE_SYSTEMS: dict[int, str] = {
    0xEF53: "ext2/3/4",  # EXT4_SUPER_MAGIC
    0x58465342: "xfs",  # XFS_SUPER_MAGIC
    0x9123683E: "btrfs",  # BTRFS_SUPER_MAGIC
    0x01021994: "tmpfs",  # TMPFS_MAGIC
    0x2FC12FC1: "zfs",  # ZFS_SUPER_MAGIC (zfs/include/sys/fs/zfs.h)
    0xF2F52010: "f2fs",  # F2FS_SUPER_MAGIC
}
# struct statfs is 120 bytes on x86_64 and aarch64; the buffer leaves room for any layout.
STATFS_BUFFER_BYTES = 256


@dataclass(frozen=True, slots=True)
class WatchMode:
    """How the watcher follows the camera root, and why (for the start-up log and check)."""

    polling: bool
    file_system: str  # "nfs", "ext2/3/4", "0x1234abcd", or "unknown (<error>)"
    reason: str


def watch_mode(root: Path, polling: bool | str) -> WatchMode:
    """The mode for watcher.polling (`True`, `False` or "auto") on `root`; blocking.

    "auto" polls where the root is on a file system of REMOTE_FILE_SYSTEMS; a root whose
    kind cannot be read (missing, not Linux) is watched with inotify, whose failure the
    watcher still answers by polling.
    """
    file_system, remote = describe_file_system(root)
    if polling is True or polling is False:
        return WatchMode(polling, file_system, f"watcher.polling = {str(polling).lower()}")
    if remote:
        return WatchMode(True, file_system, f"the camera root is on {file_system}, where "
                         "inotify misses changes not made through this mount")
    return WatchMode(False, file_system, f"the camera root is on {file_system}")


def describe_file_system(path: Path) -> tuple[str, bool]:
    """(name, remote) of the file system holding `path`; blocking, never raises."""
    try:
        magic = statfs_type(path)
    except OSError as err:
        return f"unknown ({err.strerror or err})", False
    if magic in REMOTE_FILE_SYSTEMS:
        return REMOTE_FILE_SYSTEMS[magic], True
    return LOCAL_FILE_SYSTEMS.get(magic, f"{magic:#x}"), False


def statfs_type(path: Path) -> int:
    """statfs(2) f_type of the file system holding `path`; raises OSError. Blocking.

    f_type is the first field of struct statfs, a native long (`__fsword_t`) on the Linux
    ABIs hsid runs on; magic numbers are 32-bit, hence the mask.
    """
    if not sys.platform.startswith("linux"):
        raise OSError(0, f"statfs f_type is read on Linux only, not {sys.platform}")
    buffer = ctypes.create_string_buffer(STATFS_BUFFER_BYTES)
    if _libc().statfs(os.fsencode(path), buffer) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), str(path))
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    libc.statfs.restype = ctypes.c_int
    return libc
