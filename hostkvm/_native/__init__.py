"""The native helpers: ``runloop.c`` (the run loop) and ``ringbuf.c`` (the trace
ring-buffer walk), compiled with the system C compiler into one library on first use and
loaded with ctypes.

A Python ``KVM_RUN`` loop costs about 1.5 µs of interpreter time per exit on top of the
exit itself (measured by ``hostkvm bench``); for an emulated exit of 10-15 µs that is more
than the harness may add. ``runloop.c`` runs the MMIO exits of a payload in C and hands
every other exit back to Python, which decodes ``kvm_run`` as before. It issues
``KVM_RUN`` only; every other ioctl goes through :mod:`hostkvm._syscall`.

Likewise, walking the ring buffer's event headers in Python costs about 1 µs per event;
``ringbuf.c`` lists the events of the pages (:mod:`hostkvm.trace` decodes their fields)
and cuts the sorted event timestamps at the ``KVM_RUN`` windows in one merge walk.

:func:`load` returns None (and the harness uses its Python loop and decoder) when no C
compiler or no ``<linux/kvm.h>`` is available, or when ``HOSTKVM_NATIVE=0``;
:func:`unavailable_reason` says why.
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

SOURCES = tuple(Path(__file__).with_name(n) for n in ("runloop.c", "ringbuf.c"))
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


class HkRbLayout(ctypes.Structure):
    """struct hk_rb_layout of ringbuf.c: where a ring-buffer page keeps what."""

    _fields_ = [
        ("timestamp_offset", ctypes.c_uint32),
        ("commit_offset", ctypes.c_uint32),
        ("commit_size", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint32),
    ]


def _build(src: bytes) -> Path | None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        _reason.append("no C compiler (install gcc)")
        return None
    key = hashlib.sha256(src + cc.encode()).hexdigest()[:16]
    out = cache_dir() / f"hostkvm-native-{key}.so"
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
        r = subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", tmp, *map(str, SOURCES)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            _reason.append(f"{cc} failed on {', '.join(s.name for s in SOURCES)}: {r.stderr.strip()[-300:]}")
            return None
        os.replace(tmp, out)  # atomic: a concurrent build never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled library, or None (see :func:`unavailable_reason`)."""
    if os.environ.get("HOSTKVM_NATIVE", "1") == "0":
        _reason.append("HOSTKVM_NATIVE=0")
        return None
    path = _build(b"".join(s.name.encode() + b"\0" + s.read_bytes() for s in SOURCES))
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    fn = lib.hk_run_mmio
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                   ctypes.c_void_p, ctypes.c_void_p]
    walk = lib.hk_rb_walk
    walk.restype = ctypes.c_long
    walk.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                     ctypes.POINTER(HkRbLayout), *[ctypes.c_void_p] * 5]
    cut = lib.hk_cut_windows
    cut.restype = ctypes.c_int
    cut.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
    return lib


def unavailable_reason() -> str | None:
    return None if load() is not None else "; ".join(_reason) or "unknown"
