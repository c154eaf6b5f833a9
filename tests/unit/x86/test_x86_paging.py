import pytest
from ptwalk import NotMapped, walk32, walk64

from hostkvm.errors import GuestSetupError
from hostkvm.x86.constants import (
    PT64_NX_MASK,
    PT_PAGE_SIZE_MASK,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
)
from hostkvm.x86.paging import PageTables32, PageTables64

POOL = 0x60000
K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30


def mem(pt):
    return dict(pt.pages())


def test_4k_mapping_walks_with_flags():
    pt = PageTables64(POOL, 0x10000)
    pt.map(0x400000, 0x123000, 0x3000, writable=False, user=True, nx=True)
    m = mem(pt)
    for off in (0, 0xFFF, 0x1000, 0x2ABC):
        w = walk64(m, pt.cr3, 0x400000 + off)
        assert w.gpa == 0x123000 + off
        assert (w.page_size, w.writable, w.user, w.nx) == (K4, False, True, True)
    with pytest.raises(NotMapped):
        walk64(m, pt.cr3, 0x403000)
    with pytest.raises(NotMapped):
        walk64(m, pt.cr3, 0x3FF000)
    assert pt.pages_used == 4  # PML4, PDPT, PD, PT


def test_2m_pages_chosen_when_aligned_and_4k_for_the_rest():
    pt = PageTables64(POOL, 0x10000)
    pt.map(0x200000, 0x40200000, M2 + 0x2000, user=False)
    m = mem(pt)
    big = walk64(m, pt.cr3, 0x200000 + 0x12345)
    assert (big.gpa, big.page_size, big.user, big.writable, big.nx) == (
        0x40212345, M2, False, True, False)
    small = walk64(m, pt.cr3, 0x400000 + 0x1001)
    assert (small.gpa, small.page_size) == (0x40400000 + 0x1001, K4)


def test_2m_leaf_has_ps_bit_and_nx_in_bit_63():
    pt = PageTables64(POOL, 0x10000)
    pt.map(0, M2, M2, nx=True, page_size=M2)
    m = mem(pt)
    pml4 = int.from_bytes(m[pt.cr3][0:8], "little")
    pdpt = int.from_bytes(m[pml4 & ~0xFFF][0:8], "little")
    pde = int.from_bytes(m[pdpt & ~0xFFF][0:8], "little")
    assert pde & PT_PAGE_SIZE_MASK and pde & PT64_NX_MASK and pde & PT_PRESENT_MASK
    assert pde & 0x000FFFFFFFFFF000 == M2
    # non-leaf entries are permissive; the leaf decides
    assert pml4 & (PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK) == 7
    assert not pml4 & PT64_NX_MASK


def test_1g_pages_only_with_pdpe1gb():
    pt = PageTables64(POOL, 0x10000)
    with pytest.raises(GuestSetupError, match="PDPE1GB"):
        pt.map(G1, G1, G1, page_size=G1)
    with pytest.raises(GuestSetupError, match="PDPE1GB"):
        pt.map(G1, G1, G1, max_page_size=G1)
    # without the flag a 1 GiB range is built from 2 MiB pages
    pt.map(G1, 2 * G1, G1)
    assert walk64(mem(pt), pt.cr3, G1 + 5).page_size == M2
    pt1 = PageTables64(POOL, 0x10000, pdpe1gb=True)
    pt1.map(G1, 2 * G1, G1, user=True)
    w = walk64(mem(pt1), pt1.cr3, G1 + 0x3456789)
    assert (w.gpa, w.page_size, w.user) == (2 * G1 + 0x3456789, G1, True)
    assert pt1.pages_used == 2  # PML4 + PDPT


def test_high_half_canonical_and_non_canonical():
    pt = PageTables64(POOL, 0x10000)
    pt.map(0xFFFFFFFF80000000, 0x1000000, M2)
    assert walk64(mem(pt), pt.cr3, 0xFFFFFFFF80000123).gpa == 0x1000123
    with pytest.raises(GuestSetupError, match="canonical"):
        pt.map(0x7FFFFFFFF000, 0x1000, 0x2000)


@pytest.mark.parametrize("gva,gpa,size,kw", [
    (0x1001, 0x2000, 0x1000, {}),
    (0x1000, 0x2800, 0x1000, {}),
    (0x1000, 0x2000, 0x800, {}),
    (0x200000, 0x201000, M2, {"page_size": M2}),
])
def test_misaligned_mappings_refused(gva, gpa, size, kw):
    pt = PageTables64(POOL, 0x10000)
    with pytest.raises(GuestSetupError, match="aligned"):
        pt.map(gva, gpa, size, **kw)


def test_overlapping_mappings_refused_and_state_kept():
    pt = PageTables64(POOL, 0x10000)
    pt.map(0x10000, 0x10000, 0x4000)
    with pytest.raises(GuestSetupError, match="overlaps"):
        pt.map(0x13000, 0x90000, 0x1000)
    with pytest.raises(GuestSetupError, match="overlaps"):
        pt.map(0xF000, 0x90000, 0x2000)
    with pytest.raises(GuestSetupError, match="overlaps"):
        pt.map(0, 0, M2, page_size=M2)
    pt.map(0x14000, 0x14000, 0x1000)  # adjacent is fine
    assert [m.gva for m in pt.mappings] == [0x10000, 0x14000]
    assert pt.translate(0x13FFF) == 0x13FFF and pt.translate(0x15000) is None


def test_same_gpa_through_two_gvas():
    pt = PageTables64(POOL, 0x10000)
    pt.map(0xFEE00000, 0xFEE00000, K4, user=True)
    pt.map(0x40000000, 0xFEE00000, K4, user=True, writable=False)
    m = mem(pt)
    assert walk64(m, pt.cr3, 0xFEE00010).gpa == walk64(m, pt.cr3, 0x40000010).gpa == 0xFEE00010
    assert not walk64(m, pt.cr3, 0x40000010).writable


def test_pool_exhaustion_is_reported():
    pt = PageTables64(POOL, 3 * K4)  # PML4 + PDPT + PD, no room for a PT
    with pytest.raises(GuestSetupError, match="pool exhausted"):
        pt.map(0x1000, 0x1000, K4)
    with pytest.raises(GuestSetupError, match="aligned"):
        PageTables64(POOL + 1, K4)


def test_tables_come_from_the_pool():
    pt = PageTables64(0x70000, 0x10000)
    pt.map(0, 0, 8 * M2)
    pt.map(0x8000000000, 0, K4)  # a second PML4 slot
    gpas = [gpa for gpa, _ in pt.pages()]
    assert gpas[0] == pt.cr3 == 0x70000
    assert all(0x70000 <= g < 0x80000 and g % K4 == 0 for g in gpas)
    assert all(len(data) == K4 for _, data in pt.pages())


def test_32bit_tables_4k_and_4m():
    pt = PageTables32(POOL, 0x10000)
    pt.map(0x1000, 0x1000, 0x3000, user=True, writable=False)
    pt.map(0x400000, 0x800000, 1 << 22, user=False)
    m = mem(pt)
    w = walk32(m, pt.cr3, 0x2345)
    assert (w.gpa, w.page_size, w.user, w.writable) == (0x2345, K4, True, False)
    w = walk32(m, pt.cr3, 0x412345)
    assert (w.gpa, w.page_size, w.user) == (0x812345, 1 << 22, False)
    with pytest.raises(GuestSetupError, match="NX"):
        pt.map(0x10000000, 0x1000, K4, nx=True)
    with pytest.raises(GuestSetupError, match="4 GiB"):
        pt.map(0xFFFFF000, 0x1000, 0x2000)
    nopse = PageTables32(POOL, 0x10000, pse=False)
    nopse.map(0x400000, 0x400000, 1 << 22)
    assert walk32(mem(nopse), nopse.cr3, 0x400000, pse=False).page_size == K4
    with pytest.raises(GuestSetupError, match="not available"):
        nopse.map(0x800000, 0x800000, 1 << 22, page_size=1 << 22)
