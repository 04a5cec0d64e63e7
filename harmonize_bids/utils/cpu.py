"""Set up a process for PyTorch on the CPU: threads and glibc's allocator.

With glibc's default settings every large buffer PyTorch frees (activations of a
batch of slices, tens of MB) is handed back to the kernel (``munmap`` or a heap
trim) and the next step maps it again, page fault by page fault.  On the 2-core
VM this project is developed on, that made CPU inference ~1.6x slower
(``docs/cpu-allocator.md``).  :func:`tune_glibc_malloc` keeps those buffers in
the process instead, with ``mallopt`` at run time, so a plain ``pip install``
gets the speed without ``LD_PRELOAD``.  Results are bitwise the same: only where
memory comes from changes; the price is a few hundred MB more peak memory.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

#: no allocation is served by its own mmap (glibc still falls back to mmap when the
#: heap cannot grow), so a freed activation buffer is reused, not unmapped
MMAP_MAX = 0
#: free memory at the top of the heap is returned to the kernel only above 256 MiB
TRIM_THRESHOLD = 256 * 1024 * 1024

OPT_OUT = "HARMONIZE_BIDS_NO_MALLOC_TUNING"


def other_allocator_preloaded(ld_preload: str | None = None) -> bool:
    """True when ``LD_PRELOAD`` already brings its own malloc (tcmalloc, jemalloc, mimalloc).

    >>> other_allocator_preloaded("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    True
    >>> other_allocator_preloaded("")
    False
    """
    preload = os.environ.get("LD_PRELOAD", "") if ld_preload is None else ld_preload
    return any(name in preload for name in ("tcmalloc", "jemalloc", "mimalloc"))


def _glibc():
    """glibc as a ctypes library, or None (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl does not)
        libc.mallopt
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def tune_glibc_malloc() -> bool:
    """Keep freed large buffers in the process (see the module docstring).

    Returns True when glibc accepted the settings; False (and changes nothing)
    off glibc, when another allocator is preloaded, or when the environment
    variable ``HARMONIZE_BIDS_NO_MALLOC_TUNING`` is set to a non-empty value.
    Calling it again is harmless.
    """
    if os.environ.get(OPT_OUT) or other_allocator_preloaded():
        return False
    libc = _glibc()
    if libc is None:
        return False
    settings = ((M_MMAP_MAX, MMAP_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all([libc.mallopt(param, value) == 1 for param, value in settings])


def configure_cpu(num_threads: int) -> bool:
    """``torch.set_num_threads`` (at least 1) and :func:`tune_glibc_malloc`.

    Returns what :func:`tune_glibc_malloc` returned.
    """
    import torch

    torch.set_num_threads(max(1, int(num_threads)))
    return tune_glibc_malloc()
