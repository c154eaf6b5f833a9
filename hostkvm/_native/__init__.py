"""The native run loop: ``runloop.c``, compiled with the system C compiler on first use and
loaded with ctypes.

A Python ``KVM_RUN`` loop costs about 1.5 µs of interpreter time per exit on top of the
exit itself (measured by ``hostkvm bench``); for an emulated exit of 10-15 µs that is more
than the harness may add. ``runloop.c`` runs the MMIO exits of a payload in C and hands
every other exit back to Python, which decodes ``kvm_run`` as before. It issues
``KVM_RUN`` only; every other ioctl goes through :mod:`hostkvm._syscall`.

:func:`load` returns None (and the harness uses its Python loop) when no C compiler or no
``<linux/kvm.h>`` is available, or when ``HOSTKVM_NATIVE=0``; :func:`unavailable_reason`
says why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("runloop.c")
REC_SIZE = 56
# struct hk_rec: t0, t1, gpa, data[8], rip, rcx, len, is_write
REC_FORMAT = "<QQQ8sQQII"

_reason: list[str] = []


class HkRec(ctypes.Structure):
    _fields_ = [
        ("t0", ctypes.c_uint64),
        ("t1", ctypes.c_uint64),
        ("gpa", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 8),
        ("rip", ctypes.c_uint64),
        ("rcx", ctypes.c_uint64),
        ("len", ctypes.c_uint32),
        ("is_write", ctypes.c_uint32),
    ]


assert ctypes.sizeof(HkRec) == REC_SIZE


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hostkvm" / "native"


def _build(src: bytes) -> Path | None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        _reason.append("no C compiler (install gcc)")
        return None
    key = hashlib.sha256(src + cc.encode()).hexdigest()[:16]
    out = cache_dir() / f"runloop-{key}.so"
    if out.exists():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
    except OSError as e:
        _reason.append(f"cache directory {out.parent} not writable: {e.strerror}")
        return None
    try:
        r = subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", tmp, str(SOURCE)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            _reason.append(f"{cc} failed on {SOURCE.name}: {r.stderr.strip()[-300:]}")
            return None
        os.replace(tmp, out)  # atomic: a concurrent build never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled run loop, or None (see :func:`unavailable_reason`)."""
    if os.environ.get("HOSTKVM_NATIVE", "1") == "0":
        _reason.append("HOSTKVM_NATIVE=0")
        return None
    path = _build(SOURCE.read_bytes())
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    fn = lib.hk_run_mmio
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                   ctypes.c_void_p, ctypes.c_void_p]
    return lib


def unavailable_reason() -> str | None:
    return None if load() is not None else "; ".join(_reason) or "unknown"
