"""The built-in scenarios: each point the 2011 review of "KVM: MMU: mmio page fault support"
raised, plus access patterns. ``hostkvm compare --list`` prints them."""

from __future__ import annotations

from hostkvm.scenario import (
    Access,
    CreateMemslot,
    DeleteMemslot,
    MoveMemslot,
    Scenario,
    SetMemslotFlags,
    register,
)

KVM_MEM_LOG_DIRTY_PAGES = 1

MMIO_A = 0x10000000
MMIO_B = 0x10010000
RAM_GPA = 0x20000000

# --- the review's questions -----------------------------------------------------------------

s = Scenario(
    "memslot_create_covers_mmio",
    "MMIO store, then the host creates a memslot over that gpa: the same access hits RAM "
    "(no exit) and reads what the host wrote",
    review="zap mmio sptes when memslots are created",
)
s.mmio(MMIO_A, 0x1000)
s.store(MMIO_A, 4, 0x11223344)
s.load(MMIO_A, 4)
s.sync(CreateMemslot(MMIO_A, 0x1000, fill=b"\x5a"), label="create memslot")
s.load(MMIO_A, 4, expect=0x5A5A5A5A)
s.store(MMIO_A + 8, 4, 0x01020304)
s.load(MMIO_A + 8, 4, expect=0x01020304)
register(s)

s = Scenario(
    "memslot_delete_makes_mmio",
    "RAM access, then the host deletes the memslot: the same access becomes KVM_EXIT_MMIO",
    review="the reverse of memslot creation",
)
s.ram(RAM_GPA, 0x1000)
s.store(RAM_GPA, 4, 0xCAFE)
s.load(RAM_GPA, 4, expect=0xCAFE)
s.sync(DeleteMemslot(RAM_GPA), label="delete memslot")
s.store(RAM_GPA, 4, 0xBEEF)
s.load(RAM_GPA, 4)
s.store(RAM_GPA, 4, 0xBEEF)
register(s)

s = Scenario(
    "memslot_move",
    "RAM at A; the host moves the memslot from A to B (A becomes MMIO, B becomes RAM "
    "holding A's old contents)",
    review="memslot moves invalidate cached MMIO info and sptes",
)
s.ram(RAM_GPA, 0x1000)
s.mmio(RAM_GPA + 0x100000, 0x1000)
s.store(RAM_GPA, 4, 0x600D)
s.store(RAM_GPA + 0x100000, 4, 0x1)
s.sync(MoveMemslot(RAM_GPA, RAM_GPA + 0x100000), label="move memslot")
s.store(RAM_GPA, 4, 0x2)
s.load(RAM_GPA + 0x100000, 4, expect=0x600D)
s.store(RAM_GPA, 4, 0x3)
register(s)

s = Scenario(
    "dirty_log_toggle",
    "MMIO stores around toggles of KVM_MEM_LOG_DIRTY_PAGES on a RAM slot (each toggle is a "
    "memslot swap that bumps the generation)",
    review="memslot flag changes bump the generation; cached MMIO info must not go stale",
)
s.mmio(MMIO_A, 0x1000)
s.ram(RAM_GPA, 0x1000)
s.store(MMIO_A, 4, 1)
s.store(MMIO_A, 4, 2)
s.sync(SetMemslotFlags(RAM_GPA, KVM_MEM_LOG_DIRTY_PAGES), label="dirty logging on")
s.store(MMIO_A, 4, 3)
s.store(RAM_GPA, 4, 4)
s.sync(SetMemslotFlags(RAM_GPA, 0), label="dirty logging off")
s.store(MMIO_A, 4, 5)
s.store(MMIO_A, 4, 6)
register(s)

# --- access patterns --------------------------------------------------------------------------

s = Scenario("mmio_store_repeat", "100 four-byte stores to one MMIO page (repeat faults on one gva)")
s.mmio(MMIO_A, 0x1000)
s.repeat(100, Access(MMIO_A + 0x10, 4, True, 0xA5A5A5A5))
register(s)

s = Scenario("mmio_load_repeat", "100 eight-byte loads from one MMIO page", read_value=0x0123456789ABCDEF)
s.mmio(MMIO_A, 0x1000)
s.repeat(100, Access(MMIO_A + 0x20, 8, False))
register(s)

s = Scenario("mmio_widths", "1, 2, 4 and 8-byte loads and stores on MMIO", read_value=0x8877665544332211)
s.mmio(MMIO_A, 0x1000)
for w in (1, 2, 4, 8):
    s.store(MMIO_A + 0x100 + w, w, (0x0102030405060708 >> (64 - 8 * w)) if w < 8 else 0x0102030405060708)
    s.load(MMIO_A + 0x200 + w, w)
register(s)

s = Scenario(
    "mmio_many_pages",
    "stores round-robin over 8 MMIO pages, 4 rounds (first touch vs repeat per page; on a "
    "host with mmio caching this is where mmio sptes are created and then hit)",
)
s.mmio(MMIO_A, 0x8000)
for _round in range(4):
    for page in range(8):
        s.store(MMIO_A + page * 0x1000, 4, page)
register(s)

s = Scenario(
    "mmio_two_regions_alternate",
    "alternate stores between two MMIO regions far apart (per-vCPU mmio_gva/mmio_gfn cache "
    "replaced on every access)",
)
s.mmio(MMIO_A, 0x1000)
s.mmio(MMIO_B, 0x1000)
s.repeat(20, Access(MMIO_A, 4, True, 1), Access(MMIO_B, 4, True, 2))
register(s)

s = Scenario("readonly_slot_write", "stores to a KVM_MEM_READONLY slot exit as MMIO; loads read RAM")
s.ram(RAM_GPA, 0x1000, ro=True)
s.load(RAM_GPA, 4, expect=0)
s.store(RAM_GPA, 4, 0x77)
s.load(RAM_GPA, 4, expect=0)
s.store(RAM_GPA + 4, 2, 0x88)
register(s)

# --- guest page-table changes (the runtime's kernel_remap service, at CPL0) --------------------

s = Scenario(
    "remap_invlpg",
    "the guest remaps a gva from MMIO gpa A to MMIO gpa B (PTE write at CPL0) and runs "
    "INVLPG: the next access exits at B",
    review="drop mmio sptes and the per-vCPU mmio_gva cache on invlpg",
)
s.mmio(MMIO_A, 0x1000)
s.mmio(MMIO_B, 0x1000)
s.store(MMIO_A, 4, 1)
s.store(MMIO_A, 4, 2)
s.remap(MMIO_A, MMIO_B, "invlpg")
s.store(MMIO_A, 4, 3)
s.store(MMIO_A, 4, 4)
register(s)

s = Scenario(
    "remap_cr3_reload",
    "the guest remaps a gva from MMIO A to MMIO B and reloads CR3 instead of INVLPG: the next "
    "access exits at B",
    review="clear cached MMIO info under CR3 sync",
)
s.mmio(MMIO_A, 0x1000)
s.mmio(MMIO_B, 0x1000)
s.store(MMIO_A, 4, 1)
s.remap(MMIO_A, MMIO_B, "cr3")
s.store(MMIO_A, 4, 2)
s.remap(MMIO_A, MMIO_A, "cr3")
s.store(MMIO_A, 4, 3)
register(s)

s = Scenario(
    "guest_pte_write_retarget",
    "the guest rewrites its own (shadowed) PTE to retarget an MMIO mapping from A to B with no "
    "flush: write tracking of the shadowed page table must zap the mmio spte",
    review="drop mmio sptes on guest PTE writes",
)
s.mmio(MMIO_A, 0x1000)
s.mmio(MMIO_B, 0x1000)
s.store(MMIO_A, 4, 1)
s.store(MMIO_A, 4, 2)
s.remap(MMIO_A, MMIO_B, "none")
s.store(MMIO_A, 4, 3)
register(s)
