"""Guest page-table builders: 4-level (long mode, 4 KiB / 2 MiB / 1 GiB pages) and
32-bit non-PAE (4 KiB / 4 MiB PSE pages).

The builders only compute bytes: table pages are allocated from a caller-given gpa
range and returned by :meth:`pages` for the caller to copy into guest memory. The
leaf entry carries a mapping's permissions (``PT_WRITABLE_MASK``, ``PT_USER_MASK``,
``PT64_NX_MASK``); every non-leaf entry is ``PT_PRESENT_MASK | PT_WRITABLE_MASK |
PT_USER_MASK`` so that the leaf alone decides (the effective rights are the AND of
all levels, SDM vol. 3 §4.6). Misaligned, non-canonical or overlapping mappings and
an exhausted pool raise :class:`~hostkvm.errors.GuestSetupError`.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from hostkvm.errors import GuestSetupError
from hostkvm.x86.constants import (
    PAGE_SIZE,
    PGDIR32_SIZE,
    PMD_SIZE,
    PT32_BASE_ADDR_MASK,
    PT64_BASE_ADDR_MASK,
    PT64_NX_MASK,
    PT_ACCESSED_MASK,
    PT_DIRTY_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
    PUD_SIZE,
)


@dataclass(frozen=True)
class Mapping:
    """One contiguous ``gva → gpa`` range with uniform permissions."""

    gva: int
    gpa: int
    size: int
    writable: bool = True
    user: bool = False
    nx: bool = False

    @property
    def gva_end(self) -> int:
        return self.gva + self.size

    def translate(self, gva: int) -> int | None:
        """The gpa of ``gva`` if this mapping covers it, else ``None``."""
        if self.gva <= gva < self.gva + self.size:
            return self.gpa + (gva - self.gva)
        return None


def _human(size: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size:#x}"


class _RadixPageTables:
    """Shared machinery of the two formats; subclasses give the geometry."""

    #: index shift of each level, root first
    SHIFTS: tuple[int, ...] = ()
    INDEX_BITS = 9
    ENTRY_FORMAT = "<512Q"
    ADDR_MASK = PT64_BASE_ADDR_MASK
    MAX_GPA = 1 << 52
    NAME = ""

    def __init__(self, pool_gpa: int, pool_size: int, *, accessed_dirty: bool = True) -> None:
        if pool_gpa % PAGE_SIZE or pool_size % PAGE_SIZE or pool_size <= 0:
            raise GuestSetupError(
                f"{self.NAME}: page-table pool gpa {pool_gpa:#x} size {pool_size:#x} must be "
                "non-empty and 4 KiB aligned"
            )
        if pool_gpa + pool_size > self.MAX_GPA:
            raise GuestSetupError(f"{self.NAME}: page-table pool {pool_gpa:#x} is out of reach")
        self.pool_gpa = pool_gpa
        self.pool_size = pool_size
        self._next = pool_gpa
        self._tables: dict[int, list[int]] = {}
        self._starts: list[int] = []  # sorted gva starts of self._mappings
        self._mappings: list[Mapping] = []
        self._leaf_extra = PT_ACCESSED_MASK | PT_DIRTY_MASK if accessed_dirty else 0
        self._dir_extra = PT_ACCESSED_MASK if accessed_dirty else 0
        self.root = self._alloc()

    # -- allocation ----------------------------------------------------------------
    def _alloc(self) -> int:
        if self._next + PAGE_SIZE > self.pool_gpa + self.pool_size:
            raise GuestSetupError(
                f"{self.NAME}: page-table pool exhausted ({self.pool_size // PAGE_SIZE} pages at "
                f"gpa {self.pool_gpa:#x}); use larger or fewer, better-aligned mappings"
            )
        gpa = self._next
        self._next += PAGE_SIZE
        self._tables[gpa] = [0] * (1 << self.INDEX_BITS)
        return gpa

    # -- queries -------------------------------------------------------------------
    @property
    def cr3(self) -> int:
        """The value for CR3 (the root table's gpa, no PCD/PWT)."""
        return self.root

    @property
    def mappings(self) -> tuple[Mapping, ...]:
        """Every mapping made, sorted by gva."""
        return tuple(self._mappings)

    @property
    def pages_used(self) -> int:
        return len(self._tables)

    def pages(self) -> list[tuple[int, bytes]]:
        """``(gpa, 4096 bytes)`` for every table page, root first."""
        return [(gpa, struct.pack(self.ENTRY_FORMAT, *entries))
                for gpa, entries in sorted(self._tables.items())]

    def translate(self, gva: int) -> int | None:
        """The gpa ``gva`` maps to by the recorded mappings (not by walking the tables)."""
        i = bisect.bisect_right(self._starts, gva) - 1
        if i >= 0:
            return self._mappings[i].translate(gva)
        return None

    # -- geometry hooks --------------------------------------------------------------
    def _leaf_sizes(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _check_gva_range(self, gva: int, size: int) -> None:
        raise NotImplementedError

    def _leaf_flags(self, writable: bool, user: bool, nx: bool) -> int:
        flags = PT_PRESENT_MASK | self._leaf_extra
        if writable:
            flags |= PT_WRITABLE_MASK
        if user:
            flags |= PT_USER_MASK
        return flags

    # -- mapping ---------------------------------------------------------------------
    def _reserve(self, mapping: Mapping) -> None:
        i = bisect.bisect_right(self._starts, mapping.gva)
        prev = self._mappings[i - 1] if i > 0 else None
        nxt = self._mappings[i] if i < len(self._mappings) else None
        for other in (prev, nxt):
            if other is not None and other.gva < mapping.gva_end and mapping.gva < other.gva_end:
                raise GuestSetupError(
                    f"{self.NAME}: mapping gva {mapping.gva:#x}+{_human(mapping.size)} overlaps "
                    f"the mapping gva {other.gva:#x}+{_human(other.size)} (-> gpa {other.gpa:#x})"
                )
        self._starts.insert(i, mapping.gva)
        self._mappings.insert(i, mapping)

    def map(
        self,
        gva: int,
        gpa: int,
        size: int,
        *,
        writable: bool = True,
        user: bool = False,
        nx: bool = False,
        max_page_size: int | None = None,
        page_size: int | None = None,
    ) -> Mapping:
        """Map ``[gva, gva+size)`` to ``[gpa, gpa+size)``.

        With ``page_size`` every leaf has that size (``gva``, ``gpa`` and ``size`` must be
        multiples of it); otherwise each step uses the largest allowed page (up to
        ``max_page_size``) that the alignment of both addresses and the rest allow.
        """
        sizes = self._leaf_sizes()
        if page_size is not None:
            if page_size not in sizes:
                raise GuestSetupError(self._no_page_size(page_size))
            allowed: tuple[int, ...] = (page_size,)
            align = page_size
        else:
            limit = sizes[-1] if max_page_size is None else max_page_size
            if limit not in sizes:
                raise GuestSetupError(self._no_page_size(limit))
            allowed = tuple(s for s in sizes if s <= limit)
            align = PAGE_SIZE
        if size <= 0:
            raise GuestSetupError(f"{self.NAME}: mapping gva {gva:#x} has size {size:#x}")
        for name, value in (("gva", gva), ("gpa", gpa), ("size", size)):
            if value % align:
                raise GuestSetupError(
                    f"{self.NAME}: mapping {name} {value:#x} is not {_human(align)} aligned "
                    f"(gva {gva:#x} -> gpa {gpa:#x} size {size:#x})"
                )
        if gpa < 0 or gpa + size > self.MAX_GPA:
            raise GuestSetupError(
                f"{self.NAME}: gpa range {gpa:#x}+{size:#x} is beyond the {self.MAX_GPA:#x} limit"
            )
        self._check_gva_range(gva, size)
        mapping = Mapping(gva, gpa, size, writable, user, nx)
        self._reserve(mapping)
        flags = self._leaf_flags(writable, user, nx)
        offset = 0
        while offset < size:
            va, pa, rest = gva + offset, gpa + offset, size - offset
            step = next(s for s in reversed(allowed) if va % s == 0 and pa % s == 0 and rest >= s)
            self._set_leaf(va, pa, step, flags)
            offset += step
        return mapping

    def _no_page_size(self, size: int) -> str:
        return (f"{self.NAME}: page size {_human(size)} is not available "
                f"(this builder offers {', '.join(_human(s) for s in self._leaf_sizes())})")

    def _set_leaf(self, gva: int, gpa: int, page_size: int, flags: int) -> None:
        mask = (1 << self.INDEX_BITS) - 1
        table = self._tables[self.root]
        for shift in self.SHIFTS:
            idx = (gva >> shift) & mask
            entry = table[idx]
            if 1 << shift == page_size:
                if entry & PT_PRESENT_MASK:
                    raise GuestSetupError(f"{self.NAME}: gva {gva:#x} is already mapped")
                big = PT_PAGE_SIZE_MASK if page_size != PAGE_SIZE else 0
                table[idx] = gpa | flags | big
                return
            if not entry & PT_PRESENT_MASK:
                child = self._alloc()
                table[idx] = (child | PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK
                              | self._dir_extra)
            elif entry & PT_PAGE_SIZE_MASK:
                raise GuestSetupError(
                    f"{self.NAME}: gva {gva:#x} lies in a large page mapped already"
                )
            table = self._tables[table[idx] & self.ADDR_MASK]
        raise AssertionError("unreachable: page size checked by map()")


class PageTables64(_RadixPageTables):
    """4-level (PML4) long-mode tables: 4 KiB, 2 MiB and, when the CPU has PDPE1GB,
    1 GiB pages. CR4.PAE and EFER.LME must be set; NX needs EFER.NX."""

    SHIFTS = (39, 30, 21, 12)
    INDEX_BITS = 9
    ENTRY_FORMAT = "<512Q"
    ADDR_MASK = PT64_BASE_ADDR_MASK
    MAX_GPA = 1 << 52
    NAME = "4-level page tables"

    def __init__(
        self, pool_gpa: int, pool_size: int, *, pdpe1gb: bool = False, accessed_dirty: bool = True
    ) -> None:
        self.pdpe1gb = pdpe1gb
        super().__init__(pool_gpa, pool_size, accessed_dirty=accessed_dirty)

    def _leaf_sizes(self) -> tuple[int, ...]:
        return (PAGE_SIZE, PMD_SIZE, PUD_SIZE) if self.pdpe1gb else (PAGE_SIZE, PMD_SIZE)

    def _no_page_size(self, size: int) -> str:
        if size == PUD_SIZE and not self.pdpe1gb:
            return (f"{self.NAME}: 1 GiB pages need CPUID PDPE1GB, which this vCPU does not "
                    "offer; map with 2 MiB pages")
        return super()._no_page_size(size)

    def _leaf_flags(self, writable: bool, user: bool, nx: bool) -> int:
        flags = super()._leaf_flags(writable, user, nx)
        return flags | PT64_NX_MASK if nx else flags

    def _check_gva_range(self, gva: int, size: int) -> None:
        low_end = 1 << 47
        high_start = (1 << 64) - (1 << 47)
        end = gva + size
        if not ((0 <= gva and end <= low_end) or (high_start <= gva and end <= 1 << 64)):
            raise GuestSetupError(
                f"{self.NAME}: gva range {gva:#x}+{size:#x} is not canonical (48-bit virtual "
                "addresses: below 0x800000000000 or from 0xffff800000000000)"
            )


class PageTables32(_RadixPageTables):
    """Two-level 32-bit (non-PAE) tables: 4 KiB pages and, with CR4.PSE, 4 MiB pages.
    No NX (that needs PAE); gvas and gpas below 4 GiB."""

    SHIFTS = (22, 12)
    INDEX_BITS = 10
    ENTRY_FORMAT = "<1024I"
    ADDR_MASK = PT32_BASE_ADDR_MASK
    MAX_GPA = 1 << 32
    NAME = "32-bit page tables"

    def __init__(
        self, pool_gpa: int, pool_size: int, *, pse: bool = True, accessed_dirty: bool = True
    ) -> None:
        self.pse = pse
        super().__init__(pool_gpa, pool_size, accessed_dirty=accessed_dirty)

    def _leaf_sizes(self) -> tuple[int, ...]:
        return (PAGE_SIZE, PGDIR32_SIZE) if self.pse else (PAGE_SIZE,)

    def _leaf_flags(self, writable: bool, user: bool, nx: bool) -> int:
        if nx:
            raise GuestSetupError(f"{self.NAME}: NX needs PAE paging; 32-bit paging has no NX bit")
        return super()._leaf_flags(writable, user, nx)

    def _check_gva_range(self, gva: int, size: int) -> None:
        if gva < 0 or gva + size > 1 << 32:
            raise GuestSetupError(f"{self.NAME}: gva range {gva:#x}+{size:#x} is beyond 4 GiB")

