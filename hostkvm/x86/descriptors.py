"""Encoders for GDT/LDT descriptors, IDT gates, real-mode IVT entries and TSSes.

Layouts follow the SDM (vol. 3, §3.4.5 segment descriptors, §6.14.1 64-bit IDT
gates, §7.2.1/§8.7 TSS) and ``arch/x86/include/asm/desc_defs.h``. Every encoder
checks its inputs and raises :class:`~hostkvm.errors.GuestSetupError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from hostkvm.errors import GuestSetupError
from hostkvm.x86.state import Segment

TSS64_SIZE = 104
TSS32_SIZE = 104
#: an I/O-map base at or past the TSS limit means "no I/O permission bitmap"
TSS_NO_IO_BITMAP = TSS64_SIZE


def _check(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise GuestSetupError(f"descriptor field {name}={value:#x} does not fit in {bits} bits")


def encode_descriptor(
    base: int,
    limit: int,
    *,
    type: int,  # noqa: A002 - SDM name
    s: int,
    dpl: int = 0,
    present: int = 1,
    avl: int = 0,
    l: int = 0,  # noqa: E741 - SDM name
    db: int = 0,
    g: int = 0,
) -> int:
    """The 8-byte code/data/system descriptor as an integer (bit 0 = byte 0, bit 0).

    ``limit`` is the raw 20-bit field; ``base`` is 32 bits (the upper half of a 64-bit
    system descriptor is added by :func:`encode_system_descriptor64`).
    """
    _check("base", base, 32)
    _check("limit", limit, 20)
    _check("type", type, 4)
    for name, value in (("s", s), ("present", present), ("avl", avl), ("l", l), ("db", db), ("g", g)):
        _check(name, value, 1)
    _check("dpl", dpl, 2)
    if l and db:
        raise GuestSetupError("descriptor with L=1 and D=1 is reserved (SDM 3.4.5)")
    return (
        (limit & 0xFFFF)
        | (base & 0xFFFFFF) << 16
        | type << 40
        | s << 44
        | dpl << 45
        | present << 47
        | (limit >> 16) << 48
        | avl << 52
        | l << 53
        | db << 54
        | g << 55
        | (base >> 24) << 56
    )


def raw_limit(segment: Segment) -> int:
    """The 20-bit descriptor limit field for a ``kvm_segment`` byte limit."""
    if segment.g:
        if segment.limit & 0xFFF != 0xFFF:
            raise GuestSetupError(
                f"segment limit {segment.limit:#x} with g=1 must end in 0xfff (page granular)"
            )
        return segment.limit >> 12
    return segment.limit


def segment_descriptor(segment: Segment) -> bytes:
    """The 8 GDT bytes that load exactly ``segment`` (code, data or a 32-bit system segment)."""
    value = encode_descriptor(
        segment.base,
        raw_limit(segment),
        type=segment.type,
        s=segment.s,
        dpl=segment.dpl,
        present=segment.present,
        avl=segment.avl,
        l=segment.l,
        db=segment.db,
        g=segment.g,
    )
    return value.to_bytes(8, "little")


def encode_system_descriptor64(
    base: int, limit: int, *, type: int, dpl: int = 0, present: int = 1, g: int = 0  # noqa: A002
) -> bytes:
    """A 16-byte long-mode system descriptor (TSS or LDT), raw 20-bit ``limit``."""
    _check("base", base, 64)
    low = encode_descriptor(
        base & 0xFFFFFFFF, limit, type=type, s=0, dpl=dpl, present=present, g=g
    )
    return low.to_bytes(8, "little") + (base >> 32).to_bytes(4, "little") + bytes(4)


def system_segment_descriptor64(segment: Segment) -> bytes:
    """The 16 GDT bytes that load exactly ``segment`` (a long-mode TSS/LDT)."""
    if segment.s:
        raise GuestSetupError("system_segment_descriptor64 wants a system segment (s=0)")
    return encode_system_descriptor64(
        segment.base, raw_limit(segment), type=segment.type, dpl=segment.dpl,
        present=segment.present, g=segment.g,
    )


def encode_idt_gate64(
    offset: int, selector: int, *, type: int = 0xE, dpl: int = 0, ist: int = 0, present: int = 1  # noqa: A002
) -> bytes:
    """A 16-byte long-mode IDT gate (``struct gate_struct``)."""
    _check("offset", offset, 64)
    _check("selector", selector, 16)
    _check("ist", ist, 3)
    _check("type", type, 4)
    _check("dpl", dpl, 2)
    _check("present", present, 1)
    if type not in (0xE, 0xF):
        raise GuestSetupError(f"long-mode IDT gate type {type:#x} must be 0xe or 0xf")
    low = (
        (offset & 0xFFFF)
        | selector << 16
        | ist << 32
        | type << 40
        | dpl << 45
        | present << 47
        | ((offset >> 16) & 0xFFFF) << 48
    )
    return low.to_bytes(8, "little") + (offset >> 32).to_bytes(4, "little") + bytes(4)


def encode_idt_gate32(
    offset: int, selector: int, *, type: int = 0xE, dpl: int = 0, present: int = 1  # noqa: A002
) -> bytes:
    """An 8-byte protected-mode IDT gate (32-bit interrupt 0xe or trap 0xf gate)."""
    _check("offset", offset, 32)
    _check("selector", selector, 16)
    _check("type", type, 4)
    _check("dpl", dpl, 2)
    _check("present", present, 1)
    if type not in (0xE, 0xF):
        raise GuestSetupError(f"32-bit IDT gate type {type:#x} must be 0xe or 0xf")
    value = (
        (offset & 0xFFFF)
        | selector << 16
        | type << 40
        | dpl << 45
        | present << 47
        | (offset >> 16) << 48
    )
    return value.to_bytes(8, "little")


def encode_ivt_entry(offset: int, segment: int) -> bytes:
    """A 4-byte real-mode interrupt vector (``offset:segment``)."""
    _check("offset", offset, 16)
    _check("segment", segment, 16)
    return struct.pack("<HH", offset, segment)


def encode_tss64(
    *, rsp0: int = 0, rsp1: int = 0, rsp2: int = 0, ist: Sequence[int] = (),
    iomap_base: int = TSS_NO_IO_BITMAP,
) -> bytes:
    """The 104-byte 64-bit TSS (``struct x86_hw_tss``); ``ist[0]`` is IST1."""
    if len(ist) > 7:
        raise GuestSetupError(f"a 64-bit TSS has 7 IST slots, got {len(ist)}")
    for name, value in (("rsp0", rsp0), ("rsp1", rsp1), ("rsp2", rsp2), *(("ist", v) for v in ist)):
        _check(name, value, 64)
    _check("iomap_base", iomap_base, 16)
    ists = list(ist) + [0] * (7 - len(ist))
    return struct.pack("<IQQQQ7QQHH", 0, rsp0, rsp1, rsp2, 0, *ists, 0, 0, iomap_base)


def encode_tss32(
    *, esp0: int = 0, ss0: int = 0, cr3: int = 0, iomap_base: int = TSS_NO_IO_BITMAP
) -> bytes:
    """The 104-byte 32-bit TSS (only the ring-0 stack, CR3 and I/O-map base are set)."""
    _check("esp0", esp0, 32)
    _check("ss0", ss0, 16)
    _check("cr3", cr3, 32)
    _check("iomap_base", iomap_base, 16)
    tss = bytearray(TSS32_SIZE)
    struct.pack_into("<I", tss, 4, esp0)
    struct.pack_into("<H", tss, 8, ss0)
    struct.pack_into("<I", tss, 28, cr3)
    struct.pack_into("<H", tss, 102, iomap_base)
    return bytes(tss)


def encode_io_bitmap(allowed_ports: Iterable[int]) -> bytes:
    """An I/O permission bitmap (8 KiB + the required all-ones byte) that lets CPL>IOPL
    code use ``allowed_ports`` (a clear bit allows the port). Place it at the TSS's
    ``iomap_base`` and make the TSS limit cover it."""
    bitmap = bytearray(b"\xff" * (65536 // 8 + 1))
    for port in allowed_ports:
        _check("port", port, 16)
        bitmap[port // 8] &= ~(1 << (port % 8)) & 0xFF
    return bytes(bitmap)
