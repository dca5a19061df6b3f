"""The page cache of one file, and the machine facts around it, for ``capsim measure-disk``.

:class:`MappedFile` maps a file privately (never written), evicts it from the page cache
(``madvise(MADV_DONTNEED)`` then ``posix_fadvise(POSIX_FADV_DONTNEED)``, no root needed) and counts its
pages still cached (``mincore(2)``); the rest reads this process's block-layer reads and the file's
file system and block device (readahead) from /proc and /sys. Linux only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from capsim.errors import CapsimError

PAGE = mmap.PAGESIZE
STREAM_READ_BYTES = 16 * 2**20  # one preadv per 16 MiB when reading the whole file



def _libc():
    if not sys.platform.startswith("linux"):
        raise CapsimError("capsim measure-disk needs Linux (mmap, madvise, mincore, posix_fadvise)")
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


class MappedFile:
    """A file mapped privately (copy-on-write, never written) and what the kernel holds of it."""

    def __init__(self, path: Path):
        import torch

        self.path, self.size = path, path.stat().st_size
        self.pages = -(-self.size // PAGE)
        self.fd = os.open(path, os.O_RDONLY)  # for reads and advice: its own readahead state (struct file)
        map_fd = os.open(path, os.O_RDONLY)  # the mapping's: page faults keep their readahead state apart
        try:
            self.map = mmap.mmap(map_fd, self.size, access=mmap.ACCESS_COPY)
        finally:
            os.close(map_fd)  # the mapping holds its own reference to the file
        self.bytes = torch.frombuffer(self.map, dtype=torch.uint8)  # the whole file, as one uint8 tensor
        self.addr = self.bytes.data_ptr()
        self.libc = _libc()

    def resident_pages(self) -> int:
        vec = ctypes.create_string_buffer(self.pages)
        if self.libc.mincore(self.addr, self.size, vec) != 0:
            raise CapsimError(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        return int(np.count_nonzero(np.frombuffer(vec.raw, dtype=np.uint8) & 1))

    def _madvise(self, advice: int) -> None:
        if self.libc.madvise(self.addr, self.size, advice) != 0:
            raise CapsimError(f"madvise failed: {os.strerror(ctypes.get_errno())}")

    def evict(self) -> int:
        """Unmap this process's pages of the file, drop the file from the page cache; pages left cached."""
        self._madvise(mmap.MADV_DONTNEED)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return self.resident_pages()

    def fault_readahead(self, on: bool) -> None:
        self._madvise(mmap.MADV_NORMAL if on else mmap.MADV_RANDOM)

    def prefetch(self) -> int:
        """Read the whole file into the page cache; pages cached after."""
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_NORMAL)
        buf = bytearray(STREAM_READ_BYTES)
        off = 0
        while (got := os.preadv(self.fd, [buf], off)) > 0:
            off += got
        return self.resident_pages()

    def close(self) -> None:
        self.bytes = None
        gc.collect()
        try:
            self.map.close()
        except BufferError:  # a tensor still views the map: it goes with the process
            pass
        os.close(self.fd)


def io_read_bytes() -> int | None:
    """Bytes this process caused to be read from the block layer (``read_bytes``, /proc/self/io)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_of(path: Path) -> dict[str, Any]:
    """The /proc/mounts entry whose mount point holds ``path`` (the longest prefix)."""
    real = os.path.realpath(path)
    best: dict[str, Any] = {}
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return {"note": "/proc/mounts unreadable"}
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt = _unescape(parts[1])
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best.get("mount_point", "")):
            best = {"source": _unescape(parts[0]), "mount_point": mnt, "type": parts[2], "options": parts[3]}
    return best


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def block_device_of(path: Path) -> dict[str, Any]:
    """The block queue under ``path``'s file system: name, read_ahead_kb, rotational, max_sectors_kb, scheduler."""
    dev = os.stat(path).st_dev
    key = f"{os.major(dev)}:{os.minor(dev)}"
    out: dict[str, Any] = {"dev": key}
    bdi_ra = _read(Path("/sys/class/bdi") / key / "read_ahead_kb")
    sys_dev = Path("/sys/dev/block") / key
    if sys_dev.exists():
        node = sys_dev.resolve()
        queue = node / "queue" if (node / "queue").is_dir() else node.parent / "queue"  # a partition: its disk
        out["name"] = node.name
        for f in ("read_ahead_kb", "rotational", "max_sectors_kb", "logical_block_size", "nr_requests"):
            v = _read(queue / f)
            out[f] = int(v) if v is not None and v.isdigit() else v
        sched = _read(queue / "scheduler") or ""
        m = re.search(r"\[([^\]]+)\]", sched)
        out["scheduler"] = m.group(1) if m else sched or None
    if bdi_ra is not None and bdi_ra.isdigit():
        out["bdi_read_ahead_kb"] = int(bdi_ra)  # what the page cache uses for files on this device
    ra = out.get("bdi_read_ahead_kb", out.get("read_ahead_kb"))
    out["readahead_bytes"] = int(ra) * 1024 if isinstance(ra, int) else None
    return out


def free_page_reporting() -> bool | None:
    """Whether a virtio balloon reports the guest's free pages to the host (feature bit 5,
    VIRTIO_BALLOON_F_REPORTING): freed memory is then handed back, and reusing it costs host page faults.
    None when there is no virtio balloon."""
    found = None
    for dev in Path("/sys/bus/virtio/drivers/virtio_balloon").glob("virtio*"):
        bits = _read(dev / "features") or ""
        found = bool(found) or (len(bits) > 5 and bits[5] == "1")
    return found
