"""glibc's allocator, set for a proxy's reads.

Every read from a socket is a new ``bytes`` object of up to 256 KiB (uvloop
has no buffer to read into that a protocol could reuse).  glibc serves
allocations above its mmap threshold (128 KiB, raised adaptively) with
``mmap`` and returns a freed top of the heap above its trim threshold
(128 KiB) to the kernel at once, so relaying a 1 MiB response mapped and
unmapped, or grew and trimmed, memory several times per read: 1 MiB
responses ran 2.6x slower (strace showed the brk/munmap pairs).  With the
mmap threshold at 4 MiB and the trim threshold at 64 MiB, reads come from
the heap and stay there; the price is up to 64 MiB of freed heap kept
instead of returned to the kernel.  ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` in the environment win (glibc reads them at
start, and this leaves the values alone).
"""

from __future__ import annotations

import ctypes
import os
import sys

#: mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; False where that does not apply."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the operator chose
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no such knobs)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
