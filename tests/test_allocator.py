"""xlstm_torch.tune_cpu_allocator: applied on glibc, honours the opt-out, idempotent; the CLI applies it.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone, so the
pytest process must not decide the outcome.
"""

import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _run(code: str, **env: str) -> str:
    full_env = {**os.environ, **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_applied_on_glibc_and_idempotent():
    out = _run("import xlstm_torch as x; print(x.tune_cpu_allocator(), x.tune_cpu_allocator())",
               XLSTM_TORCH_MALLOC="")
    assert out == ("True True" if GLIBC else "False False")


def test_opt_out_keeps_the_c_library_defaults():
    out = _run("import xlstm_torch as x; print(x.tune_cpu_allocator())", XLSTM_TORCH_MALLOC="default")
    assert out == "False"


@pytest.mark.skipif(not GLIBC, reason="the tuning exists only for glibc")
def test_command_line_applies_it():
    code = ("import contextlib, io, xlstm_torch.allocator as a, xlstm_torch.cli as c\n"
            "print(a._applied)\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    c.main([])\n"
            "print(a._applied)")
    assert _run(code, XLSTM_TORCH_MALLOC="").split() == ["False", "True"]


@pytest.mark.skipif(not GLIBC or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33),
                    reason="the tuning exists only for glibc; mallinfo2 since glibc 2.33")
def test_large_blocks_come_from_the_heap():
    """A 64 MiB tensor: tuned, glibc serves it from the heap (its mapped bytes, mallinfo2's hblkhd, do not grow),
    where freed memory is kept for reuse; with the C library's defaults it maps 64 MiB of fresh pages."""
    code = ("import ctypes, torch, xlstm_torch as x\n"
            "class Info(ctypes.Structure):\n"
            "    _fields_ = [(n, ctypes.c_size_t) for n in 'arena ordblks smblks hblks hblkhd usmblks fsmblks "
            "uordblks fordblks keepcost'.split()]\n"
            "libc = ctypes.CDLL(None)\n"
            "libc.mallinfo2.restype = Info\n"
            "x.tune_cpu_allocator()\n"
            "before = libc.mallinfo2().hblkhd\n"
            "t = torch.empty(16 << 20)\n"
            "print((libc.mallinfo2().hblkhd - before) >> 20)")
    assert int(_run(code, XLSTM_TORCH_MALLOC="default")) >= 64  # the control: mapped afresh
    assert int(_run(code, XLSTM_TORCH_MALLOC="")) == 0
