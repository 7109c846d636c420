"""glibc allocator settings for hub processes (`tune_allocator`, called when a hub process starts).

The transformation stage builds buffers of several hundred kB per document (a 200 KB PDF gives a ~270 KB CDA, a
~270 KB IHE_XDM.zip and a ~650 KB mail). By default glibc serves such allocations with a fresh mmap() each, and
hands freed memory at the top of its heap back to the kernel: every buffer then costs page faults and page zeroing
again, measured at about a quarter of the PDF chain's time (bench/transform.py). Raising both thresholds keeps
those buffers in the heap for reuse. The price: a process may keep up to TRIM_THRESHOLD bytes of freed memory
instead of returning it to the kernel. Nothing happens with another C library (musl, macOS).
"""

from __future__ import annotations

import contextlib

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024                  # glibc's ceiling for it on 64-bit
TRIM_THRESHOLD = 128 * 1024 * 1024


def tune_allocator() -> bool:
    """Apply the thresholds; True when they were applied (glibc)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return False
