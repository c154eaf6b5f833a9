import struct

import pytest

from hostkvm.errors import GuestSetupError
from hostkvm.x86.descriptors import (
    encode_descriptor,
    encode_idt_gate32,
    encode_idt_gate64,
    encode_io_bitmap,
    encode_ivt_entry,
    encode_system_descriptor64,
    encode_tss32,
    encode_tss64,
    segment_descriptor,
)
from hostkvm.x86.modes import (
    GDT_KERNEL_CS32,
    GDT_KERNEL_CS64,
    GDT_KERNEL_DS,
    GDT_USER_CS32,
    GDT_USER_CS64,
    GDT_USER_DS,
    flat_segments,
)

# The flat descriptors every x86-64 kernel carries (SDM 3.4.5; the values of the
# Linux boot GDT for __KERNEL_CS/__KERNEL_DS/__USER_CS/__USER_DS with accessed bits).
KNOWN = {
    GDT_KERNEL_CS32: 0x00CF9B000000FFFF,
    GDT_KERNEL_DS: 0x00CF93000000FFFF,
    GDT_KERNEL_CS64: 0x00AF9B000000FFFF,
    GDT_USER_CS32: 0x00CFFB000000FFFF,
    GDT_USER_DS: 0x00CFF3000000FFFF,
    GDT_USER_CS64: 0x00AFFB000000FFFF,
}


@pytest.mark.parametrize("offset", sorted(KNOWN))
def test_flat_segments_encode_to_known_descriptors(offset):
    seg = flat_segments()[offset]
    assert int.from_bytes(segment_descriptor(seg), "little") == KNOWN[offset]
    assert seg.selector & ~3 == offset and seg.selector & 3 == seg.dpl


def test_descriptor_fields_land_in_their_bits():
    value = encode_descriptor(0x12345678, 0xABCDE, type=0x3, s=1, dpl=2, present=1, avl=1,
                              db=1, g=0)
    assert value & 0xFFFF == 0xBCDE and (value >> 48) & 0xF == 0xA
    assert (value >> 16) & 0xFFFFFF == 0x345678 and value >> 56 == 0x12
    assert (value >> 40) & 0xFF == 0x80 | 2 << 5 | 0x10 | 0x3
    assert (value >> 52) & 0xF == 0b0101  # avl, l=0, db, g=0


def test_descriptor_rejects_bad_fields():
    with pytest.raises(GuestSetupError):
        encode_descriptor(0, 0x100000, type=3, s=1)
    with pytest.raises(GuestSetupError, match="L=1 and D=1"):
        encode_descriptor(0, 0, type=0xB, s=1, l=1, db=1)
    with pytest.raises(GuestSetupError):
        encode_descriptor(1 << 32, 0, type=3, s=1)


def test_tss64_system_descriptor():
    d = encode_system_descriptor64(0xFFFF888012345000, 0x67, type=0x9)
    assert len(d) == 16
    low, high = struct.unpack("<QQ", d)
    assert low == 0x12008934_50000067 and high == 0xFFFF8880


def test_idt_gate64_layout():
    g = encode_idt_gate64(0xFFFFFFFF81234567, 0x10, type=0xE, dpl=0)
    assert struct.unpack("<QQ", g) == (0x81238E0000104567, 0xFFFFFFFF)
    g = encode_idt_gate64(0x4000, 0x18, type=0xE, dpl=3, ist=1)
    assert g[4] == 1 and g[5] == 0xEE
    with pytest.raises(GuestSetupError):
        encode_idt_gate64(0, 0x10, type=0x5)
    with pytest.raises(GuestSetupError):
        encode_idt_gate64(0, 0x10, ist=8)


def test_idt_gate32_and_ivt():
    assert int.from_bytes(encode_idt_gate32(0x12345678, 0x08, type=0xF), "little") == (
        0x12348F0000085678)
    assert encode_ivt_entry(0x4321, 0xF000) == bytes([0x21, 0x43, 0x00, 0xF0])


def test_tss64_layout():
    tss = encode_tss64(rsp0=0x58000, rsp2=0x1122, ist=[0x5C000, 0, 0, 0, 0, 0, 0x7777],
                       iomap_base=0x68)
    assert len(tss) == 104
    assert struct.unpack_from("<Q", tss, 4)[0] == 0x58000
    assert struct.unpack_from("<Q", tss, 20)[0] == 0x1122
    assert struct.unpack_from("<Q", tss, 36)[0] == 0x5C000  # IST1
    assert struct.unpack_from("<Q", tss, 36 + 6 * 8)[0] == 0x7777  # IST7
    assert struct.unpack_from("<H", tss, 102)[0] == 0x68
    with pytest.raises(GuestSetupError):
        encode_tss64(ist=[0] * 8)


def test_tss32_layout():
    tss = encode_tss32(esp0=0x58000, ss0=0x10, cr3=0x60000)
    assert len(tss) == 104
    assert struct.unpack_from("<IHxxI", tss, 4)[0:2] == (0x58000, 0x10)
    assert struct.unpack_from("<I", tss, 28)[0] == 0x60000
    assert struct.unpack_from("<H", tss, 102)[0] == 104


def test_io_bitmap():
    bm = encode_io_bitmap([0x6A00, 0x3F8])
    assert len(bm) == 8193 and bm[-1] == 0xFF
    assert bm[0x6A00 // 8] == 0xFE and bm[0x3F8 // 8] == 0xFE
    assert bm[0] == 0xFF
