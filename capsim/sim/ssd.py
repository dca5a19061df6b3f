"""Reads from a drive priced by request size, and the bytes a memory-mapped expert file really reads.

Request size. A read of ``s`` bytes costs a fixed per-request time plus its bytes at the streaming rate::

    t(s) = t_req + s / B_seq,          rate(s) = s / t(s)

(the latency + size / bandwidth model of any storage or network request). The two measured or published
rates fix it: ``B_seq`` (large sequential reads) and ``R_4k`` (random 4 KiB reads), since
``4096 / R_4k = t_req + 4096 / B_seq``, i.e. ``t_req = 4096 / R_4k - 4096 / B_seq``. So the time per
byte, ``1 / rate(s) = 1 / B_seq + (4096 / s) (1 / R_4k - 1 / B_seq)``, interpolates linearly in
``4096 / s`` between the two: 4 KiB requests run at ``R_4k``, large ones at ``B_seq``. ``R_4k`` must be
measured at the queue depth the reader has: a demand page fault waits for its read (queue depth 1); a
datasheet's random IOPS are at a deep queue and fit an engine that issues many reads at once.

Memory-mapped experts. An engine that maps its weight file (``mmap``; llama.cpp's default, or
``torch.from_file``) reads the drive only on page faults, and Linux reads more than the faulting page
(mm/filemap.c, ``do_sync_mmap_readahead``; mm/readahead.c, ``page_cache_async_ra``; Linux 6.x):

- the first fault in a region reads a "read-around" window of ``w`` bytes (the device's readahead, the
  block queue's ``read_ahead_kb``; the kernel default is 128 KiB, ``VM_READAHEAD_PAGES`` in
  include/linux/mm.h, and a driver may set more) centred on the faulting page: ``[p - w/2, p + w/2)``,
  with the asynchronous-readahead mark ``w/4`` before the window's end, at ``p + w/4``;
- an access that reaches the mark reads the next window ``[p + w/2, p + 3w/2)`` (already at the maximum
  size ``w``, so its mark is its first page), and so on: each window ahead is read once the access enters
  the previous one.

A routed expert's slice of one stacked weight matrix (``m`` bytes, read from its first byte to its last by
the expert GEMM) therefore costs ``n`` windows of ``w`` bytes: one when ``m <= w/4``, two when
``w/4 < m <= w/2``, and ``2 + ceil((m - w/2) / w)`` beyond (:func:`readaround_windows`). Windows of
neighbouring activated experts overlap; with the activated experts spread uniformly over the ``E``
slices, a byte of the matrix is left unread only when none of the ``k = n w / m`` experts whose windows
could reach it is activated (:func:`mmap_read_bytes`). With ``madvise(MADV_RANDOM)`` the kernel skips
read-around: each fault reads its own page (:data:`PAGE_BYTES`), and exactly the activated slices are read.

Pure numpy; every argument may be an array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAGE_BYTES = 4096  # x86-64 and most arm64 kernels: the base page, the unit of a demand fault and of a 4K read
LINUX_DEFAULT_READAHEAD_BYTES = 128 * 1024  # VM_READAHEAD_PAGES = SZ_128K / PAGE_SIZE (include/linux/mm.h)
READAROUND_MARK_FRACTION = 0.25  # do_sync_mmap_readahead: ra->async_size = ra->ra_pages / 4


def request_overhead_s(sequential_bytes_per_s, random_4k_bytes_per_s):
    """Fixed time of one read request: ``4096 / R_4k - 4096 / B_seq`` (never below 0)."""
    seq = np.asarray(sequential_bytes_per_s, dtype=float)
    r4k = np.asarray(random_4k_bytes_per_s, dtype=float)
    return np.maximum(PAGE_BYTES / r4k - PAGE_BYTES / seq, 0.0)


def read_rate(request_bytes, sequential_bytes_per_s, random_4k_bytes_per_s):
    """Bytes per second of a stream of reads of ``request_bytes`` each: ``s / (t_req + s / B_seq)``."""
    s = np.asarray(request_bytes, dtype=float)
    seq = np.asarray(sequential_bytes_per_s, dtype=float)
    return s / (request_overhead_s(seq, random_4k_bytes_per_s) + s / seq)


def read_seconds(nbytes, request_bytes, sequential_bytes_per_s, random_4k_bytes_per_s):
    """Seconds to read ``nbytes`` in requests of ``request_bytes``: ``nbytes / rate(request_bytes)``."""
    return np.asarray(nbytes, dtype=float) / read_rate(request_bytes, sequential_bytes_per_s, random_4k_bytes_per_s)


def readaround_windows(slice_bytes, readahead_bytes):
    """Readahead windows of ``readahead_bytes`` that one sequential pass over a fresh ``slice_bytes`` region
    of a mapped file reads (see the module docstring): 1, 2, or ``2 + ceil((m - w/2) / w)``."""
    m = np.asarray(slice_bytes, dtype=float)
    w = np.asarray(readahead_bytes, dtype=float)
    beyond = np.ceil(np.maximum(m - w / 2, 0.0) / w)
    return np.where(m <= READAROUND_MARK_FRACTION * w, 1.0, 2.0 + beyond)


def _unactivated_fraction(experts, activated, k):
    """Probability that none of ``k`` given slices (an integer, 0..E) is among ``activated`` of ``experts``
    chosen uniformly without replacement: C(E - k, a) / C(E, a) = prod_{j < k} (E - a - j) / (E - j);
    the product form takes a fractional mean ``a``."""
    e = np.asarray(experts, dtype=float)
    a = np.asarray(activated, dtype=float)
    k = np.asarray(k, dtype=float)
    out = np.ones(np.broadcast(e, a, k).shape)
    for j in range(int(np.max(e))):
        factor = np.clip((e - a - j) / np.maximum(e - j, 1.0), 0.0, 1.0)
        out = np.where(j < k, out * factor, out)
    return out


def mmap_read_bytes(slice_bytes, experts, activated, readahead_bytes):
    """Expected bytes Linux reads from a mapped file to serve ``activated`` of ``experts`` slices (each
    ``slice_bytes``) of one stacked weight matrix, with read-around windows of ``readahead_bytes``.

    Each activated slice brings in ``n w`` bytes (:func:`readaround_windows`), starting ``w/2`` before it.
    A byte is read when one of the slices starting in the ``n w`` bytes before it (``k = n w / m`` of
    them, fractional k interpolated between its neighbours) is activated. Spill over the matrix's ends into
    the neighbouring data of the file is not counted (the matrix's own edge bytes are, as if it wrapped).
    ``readahead_bytes`` of :data:`PAGE_BYTES` or less is ``MADV_RANDOM``: the activated slices, page by page.
    """
    m = np.asarray(slice_bytes, dtype=float)
    e = np.asarray(experts, dtype=float)
    a = np.minimum(np.asarray(activated, dtype=float), e)
    w = np.asarray(readahead_bytes, dtype=float)
    exact = a * np.ceil(m / PAGE_BYTES) * PAGE_BYTES
    span = readaround_windows(m, w) * w
    q = np.minimum(span / m, e)
    lo = np.floor(q)
    frac = q - lo
    unread = (1 - frac) * _unactivated_fraction(e, a, lo) + frac * _unactivated_fraction(e, a, np.minimum(lo + 1, e))
    around = np.maximum(e * m * (1.0 - unread), exact)
    return np.where(w <= PAGE_BYTES, exact, around)


@dataclass(frozen=True)
class SsdRead:
    """How offloaded experts come off a drive: its two rates and the size of one read request."""

    sequential_bytes_per_s: float
    random_4k_bytes_per_s: float
    request_bytes: float  # bytes per read request (an engine reading whole matrices: one expert's matrix)

    def seconds(self, nbytes):
        return read_seconds(nbytes, self.request_bytes, self.sequential_bytes_per_s, self.random_4k_bytes_per_s)
