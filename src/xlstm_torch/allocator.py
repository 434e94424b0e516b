"""The C allocator's settings for CPU training: keep freed memory instead of handing it back at every step.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves blocks above a (dynamic)
threshold with fresh ``mmap`` pages and returns freed memory at the top of its heap to the kernel
once more than a trim threshold is free. A training step allocates and frees hundreds of
multi-megabyte activations and gradients in changing sizes, so glibc keeps unmapping memory that the
next step maps again, and every page of it faults in and is zeroed by the kernel anew. On the 2-core
machine this library is developed on that was ~2 s of kernel time per 5 steps of the benchmark model
(D 256, 4 blocks, B 8 x S 512) and the step ran 17-25% faster with the settings below (measured
side by side; benchmarks/RESULTS.md, "CPU: the C allocator setting").

``tune_cpu_allocator`` raises the mmap threshold to 32 MiB (glibc's own ceiling for its dynamic
threshold: blocks up to that size come from the heap and are reused), turns off ``mmap`` for larger
blocks too (``M_MMAP_MAX`` 0: they come from the heap as well; glibc still falls back to ``mmap`` when
the heap cannot grow), and raises the trim threshold to 1 GiB (freed heap memory is kept for the next
step). Peak memory is unchanged in kind (freed memory is reused, not leaked); the process's resident
size just does not shrink between steps, and a heap without ``mmap`` fragments a little: a training
step of D 512, B 16 x S 512 peaked 13% higher (2.17 against 1.92 GiB) and ran 1.37x faster than
with large blocks still mapped fresh (67 MiB of fresh pages take ~17 ms to fault in here, against
~0.8 ms to write the same memory again); the benchmark model's step is unchanged in speed and within
1-5% in peak (benchmarks/RESULTS.md, "CPU: no fresh pages for large blocks either").

It changes the whole process, so the library never calls it on import: the ``xlstm`` command line
calls it at start-up (it owns its process), and Python users may call it themselves. Set
``XLSTM_TORCH_MALLOC=default`` to keep the C library's defaults. Elsewhere than glibc (macOS, musl,
Windows) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["tune_cpu_allocator", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 32 << 20  # bytes; blocks below this come from the reusable heap
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before returning memory to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameter numbers (malloc.h)
_applied = False


def tune_cpu_allocator() -> bool:
    """Apply the settings of the module docstring to this process; True if they are in effect.

    Idempotent. Returns False (and changes nothing) when ``XLSTM_TORCH_MALLOC=default`` is set or the
    C library is not glibc.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("XLSTM_TORCH_MALLOC", "").strip().lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; all must hold, or the heap is left half-tuned.
    _applied = (bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
                and bool(mallopt(_M_MMAP_MAX, 0)))
    return _applied
