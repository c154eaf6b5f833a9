"""Guest memory: anonymous host mappings that back memslots, addressed by gpa."""

from __future__ import annotations

import ctypes
import mmap
import weakref

from hostkvm.errors import GuestMemoryError, GuestSetupError

PAGE_SIZE = 4096

Gpa = int
Hva = int


def _close_mapping(mm: mmap.mmap) -> None:
    mm.close()


class GuestMemory:
    """*size* bytes of zero-filled anonymous memory that appear to the guest at *gpa*.

    Reads and writes are bounds-checked by gpa. ``hva`` is the host virtual address
    handed to ``KVM_SET_USER_MEMORY_REGION``.
    """

    __slots__ = ("gpa", "size", "hva", "_mm", "_finalizer", "__weakref__")

    def __init__(self, gpa: Gpa, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE:
            raise GuestSetupError(
                f"guest memory must be page aligned and non-empty (gpa {gpa:#x}, size {size:#x})"
            )
        self.gpa = gpa
        self.size = size
        self._mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        # A from_buffer view pins the mapping; take the address and drop the view at once.
        view = ctypes.c_char.from_buffer(self._mm)
        self.hva: Hva = ctypes.addressof(view)
        del view
        self._finalizer = weakref.finalize(self, _close_mapping, self._mm)

    @property
    def end(self) -> Gpa:
        """First gpa past this memory."""
        return self.gpa + self.size

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def contains(self, gpa: Gpa, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.gpa + self.size

    def _offset(self, gpa: Gpa, length: int) -> int:
        if self.closed:
            raise GuestMemoryError(f"guest memory at gpa {self.gpa:#x} is closed")
        if length < 0 or not self.contains(gpa, length):
            raise GuestMemoryError(
                f"gpa {gpa:#x}+{length:#x} is outside guest memory "
                f"[{self.gpa:#x}, {self.gpa + self.size:#x})"
            )
        return gpa - self.gpa

    def read(self, gpa: Gpa, length: int) -> bytes:
        off = self._offset(gpa, length)
        return self._mm[off : off + length]

    def write(self, gpa: Gpa, data: bytes | bytearray | memoryview) -> None:
        off = self._offset(gpa, len(data))
        self._mm[off : off + len(data)] = data

    def read_u64(self, gpa: Gpa) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u64(self, gpa: Gpa, value: int) -> None:
        self.write(gpa, value.to_bytes(8, "little"))

    def fill(self, gpa: Gpa, length: int, byte: int = 0) -> None:
        self.write(gpa, bytes([byte]) * length)

    def close(self) -> None:
        """Unmap the memory. Idempotent. Unmap only after the memslot is gone."""
        self._finalizer()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GuestMemory(gpa={self.gpa:#x}, size={self.size:#x})"
