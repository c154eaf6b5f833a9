"""A small, independent software page walker for the unit tests (SDM vol. 3 §4.3, §4.5).

It reads only raw table bytes, so it checks the builders rather than trusting them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


class NotMapped(Exception):
    pass


@dataclass(frozen=True)
class Walk:
    gpa: int
    page_size: int
    writable: bool
    user: bool
    nx: bool


def _read(memory: dict[int, bytes], table: int, index: int, width: int) -> int:
    page = memory.get(table)
    if page is None:
        raise AssertionError(f"table page {table:#x} is not among the built pages")
    fmt = "<Q" if width == 8 else "<I"
    return struct.unpack_from(fmt, page, index * width)[0]


def walk64(memory: dict[int, bytes], cr3: int, gva: int) -> Walk:
    """Translate through 4-level tables; rights are the AND (NX the OR) over all levels."""
    table = cr3 & ~0xFFF
    writable, user, nx = True, True, False
    for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
        entry = _read(memory, table, (gva >> shift) & 0x1FF, 8)
        if not entry & 1:
            raise NotMapped(f"gva {gva:#x} not present at level {level}")
        assert entry & (0x7FF << 52) & ~(1 << 63) == 0, "reserved high bits set"
        writable &= bool(entry & 2)
        user &= bool(entry & 4)
        nx |= bool(entry >> 63)
        frame = entry & ((1 << 52) - 1) & ~0xFFF
        if level == 1 or (level in (2, 3) and entry & 0x80):
            size = 1 << shift
            assert frame % size == 0, f"large-page frame {frame:#x} misaligned"
            return Walk(frame + (gva & (size - 1)), size, writable, user, nx)
        assert not entry & 0x80 or level == 1, "PS bit in a PML4E"
        table = frame
    raise AssertionError("unreachable")


def walk32(memory: dict[int, bytes], cr3: int, gva: int, *, pse: bool = True) -> Walk:
    """Translate through 32-bit non-PAE tables."""
    table = cr3 & 0xFFFFF000
    pde = _read(memory, table, gva >> 22, 4)
    if not pde & 1:
        raise NotMapped(f"gva {gva:#x} not present in the page directory")
    if pde & 0x80:
        assert pse, "4 MiB page without CR4.PSE"
        frame = pde & 0xFFC00000
        return Walk(frame + (gva & 0x3FFFFF), 1 << 22, bool(pde & 2), bool(pde & 4), False)
    pte = _read(memory, pde & 0xFFFFF000, (gva >> 12) & 0x3FF, 4)
    if not pte & 1:
        raise NotMapped(f"gva {gva:#x} not present in the page table")
    return Walk((pte & 0xFFFFF000) + (gva & 0xFFF), 1 << 12, bool(pde & pte & 2),
                bool(pde & pte & 4), False)
