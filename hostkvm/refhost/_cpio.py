"""A writer for the ``newc`` cpio format the kernel unpacks as an initramfs.

Written here (instead of calling ``cpio``) so that device nodes such as
``/dev/console`` can be put in the archive without root privileges and so that
the archive is byte-for-byte reproducible (fixed owner and mtime).
See the kernel's ``init/initramfs.c`` for the reader and
``Documentation/driver-api/early-userspace/buffer-format.rst`` for the layout.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


class CpioWriter:
    """Append entries to a ``newc`` archive; :meth:`close` writes the trailer.

    Every entry is owned by 0:0 with mtime 0; inode numbers count up from 1.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self._closed = False

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        if self._closed:
            raise ValueError("cpio archive already closed")
        name = name.lstrip("/")
        if not name or name.startswith("../") or "/../" in name:
            raise ValueError(f"bad cpio member name {name!r}")
        self._ino += 1
        nlink = 2 if stat.S_ISDIR(mode) else 1
        namez = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, nlink, 0, len(data),
            0, 0,  # dev major/minor of the archive's own fs: unused by the kernel
            rdev[0], rdev[1],
            len(namez), 0,  # namesize, check (0: no crc)
        )
        header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + namez + _pad4(len(header) + len(namez)))
        self._out.write(data + _pad4(len(data)))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        if not self._closed:
            self._entry(TRAILER, 0)
            self._closed = True


def read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """Parse a ``newc`` archive into ``(name, mode, data, (rdevmajor, rdevminor))``.

    The trailer is not returned. Used by the tests and by ``refhost build`` to
    check what it wrote.
    """
    out: list[tuple[str, int, bytes, tuple[int, int]]] = []
    pos = 0
    while True:
        if data[pos : pos + 6] != NEWC_MAGIC:
            raise ValueError(f"cpio: bad magic at offset {pos}")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == TRAILER:
            return out
        out.append((name, mode, body, (rmaj, rmin)))
