"""The built-in scenarios: each point the 2011 review of "KVM: MMU: mmio page fault support"
raised, plus access patterns. ``hostkvm compare --list`` prints them."""

from __future__ import annotations

from typing import Any

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


# --- concurrency: races and churn (invariants, with the mirror bounding what may happen) -------

def _build(text: str, name: str, kvm: Any) -> Any:
    from hostkvm.guest import build_guest
    from hostkvm.payload import parse_payload_text
    from hostkvm.system import X86_FEATURE_GBPAGES

    return build_guest(parse_payload_text(text, path=f"<scenario {name}>"),
                       cpu_has_pdpe1gb=kvm.cpuid_has(X86_FEATURE_GBPAGES))


def _allowed_exits(cfg: Any, image: Any, gva: int, candidates: list[int], data: bytes) -> set[tuple[int, int, bool, bytes]]:
    """Every KVM_EXIT_MMIO the mirror allows for a store of *data* at *gva* while the guest
    maps it to any of *candidates*."""
    from hostkvm.mirror import MirrorVm

    allowed = set()
    for gpa in candidates:
        vm = MirrorVm(cfg)
        slot = 0
        for r in image.regions:
            if r.kind != "mmio":
                vm.create_memslot(slot, r.gpa, r.size, 2 if r.readonly else 0)
                slot += 1
        for e in vm.access(0, gva, gpa, len(data), "w", 3, data).exits:
            allowed.add((e.gpa, e.len, e.is_write, e.data))
    return allowed


def _check_outcomes(res: Any, results: dict[int, Any]) -> None:
    from hostkvm.compare import Divergence

    for vcpu_id, r in sorted(results.items()):
        if isinstance(r, BaseException):
            res.divergences.append(Divergence("invariant", None, f"vcpu {vcpu_id} run", "done", repr(r)))
        elif r.outcome.kind != "done":
            res.divergences.append(Divergence("invariant", None, f"vcpu {vcpu_id} outcome", "done",
                                              r.outcome.describe()))


def _run_vcpus(machine: Any, timeout: float, host_work: Any = None) -> dict[int, Any]:
    """Run every vCPU of *machine* in its own thread (vCPU 0 in this one) until each ends;
    *host_work(stop_event)* runs in another thread meanwhile."""
    import threading

    from hostkvm.harness import run_machine

    results: dict[int, Any] = {}
    stop = threading.Event()

    def runner(i: int) -> None:
        try:
            results[i] = run_machine(machine, vcpu=machine.vcpus[i], timeout=timeout)
        except BaseException as e:  # reported as a divergence, never lost
            results[i] = e

    threads = [threading.Thread(target=runner, args=(i,), name=f"hostkvm-vcpu{i}")
               for i in range(1, len(machine.vcpus))]
    worker = threading.Thread(target=host_work, args=(stop,), name="hostkvm-host") if host_work else None
    for t in threads:
        t.start()
    if worker:
        worker.start()
    try:
        runner(0)
        for t in threads:
            t.join()
    finally:
        stop.set()
        if worker:
            worker.join()
    return results


RACE_REMAPS = 150
RACE_FLAG = RAM_GPA + 0x10000


def _remap_race(s: Scenario, kvm: Any, cfg: Any, res: Any) -> None:
    from hostkvm.compare import Divergence
    from hostkvm.guest import USER_STACK_TOP
    from hostkvm.harness import Machine

    gva, a, b, ram = MMIO_A, MMIO_A, MMIO_B, RAM_GPA
    text = f"""
;@ pages: 4k
;@ timeout: {s.timeout:g}
;@ mmio: {a:#x}+0x1000
;@ mmio: {b:#x}+0x1000
;@ ram: {ram:#x}+0x1000
;@ ram: {RACE_FLAG:#x}+0x1000
    cmp rdi, 0
    jne vcpu1
    mov rax, {gva:#x}
    mov rbx, {RACE_FLAG:#x}
loop0:
    mov dword ptr [rax], 0x5a5a5a5a
    mov ecx, dword ptr [rbx]
    test ecx, ecx
    jz loop0
    mov dword ptr [rax], 0xfeedface
    jmp finish
vcpu1:
    mov r13, {RACE_REMAPS}
loop1:
    mov rdi, {gva:#x}
    mov rsi, {b:#x}
    mov rdx, 1
    call kernel_remap
    mov rdi, {gva:#x}
    mov rsi, {ram:#x}
    mov rdx, 1
    call kernel_remap
    mov rdi, {gva:#x}
    mov rsi, {a:#x}
    mov rdx, 1
    call kernel_remap
    dec r13
    jnz loop1
    mov rax, {RACE_FLAG:#x}
    mov dword ptr [rax], 1
finish:
"""
    image = _build(text, s.name, kvm)
    allowed = _allowed_exits(cfg, image, gva, [a, b, ram], b"\x5a" * 4)
    final = _allowed_exits(cfg, image, gva, [a], bytes.fromhex("cefaedfe"))
    with Machine(image, kvm=kvm, nr_vcpus=2) as m:
        regs = m.vcpus[1].get_regs()
        regs.rdi, regs.rsp = 1, USER_STACK_TOP - 0x8000  # its own id and half the user stack
        m.vcpus[1].set_regs(regs)
        results = _run_vcpus(m, s.timeout)
    _check_outcomes(res, results)
    r0 = results.get(0)
    if r0 is None or isinstance(r0, BaseException):
        return
    mmio = [e for e in r0.exits if e.reason == "KVM_EXIT_MMIO"]
    res.exits, res.predicted_exits = len(mmio), None  # how many depends on the race
    res.extra["exits_by_gpa"] = {f"{g:#x}": sum(1 for e in mmio if e.gpa == g) for g in (a, b)}
    for e in mmio[:-1]:
        if (e.gpa, e.len, e.is_write, e.data) not in allowed:
            res.divergences.append(Divergence(
                "invariant", e.index, "exit at a gpa the gva was never mapped to", sorted(allowed),
                (e.gpa, e.len, e.is_write, e.data.hex()), insn=e.insn))
    # vCPU1 ended with the gva on MMIO A and an INVLPG: vCPU0's last store must exit at A.
    last = (mmio[-1].gpa, mmio[-1].len, mmio[-1].is_write, mmio[-1].data) if mmio else None
    if last not in final:
        res.divergences.append(Divergence("invariant", len(mmio) - 1 if mmio else None,
                                          "store after the race ended on MMIO A", sorted(final), last))


s = Scenario(
    "remap_race_two_vcpus",
    f"vCPU0 stores to an MMIO gva in a loop while vCPU1 remaps that gva between MMIO A, MMIO B "
    f"and RAM ({RACE_REMAPS} rounds, INVLPG each, ending on A): every exit is at a gpa the gva "
    "was mapped to, the store after the race exits at A, no internal errors, bounded time",
    review="what if another vCPU remaps the gva mid-emulation",
    timeout=60.0,
    runner=_remap_race,
)
register(s)


CHURN_ROUNDS = 2000
# The host thread pauses this long after each create/delete/flags round. Every memslot
# change zaps all shadow pages (kvm_mmu_zap_all_fast), and an unpaced loop zaps faster
# than the vCPU rebuilds them: on PVM it made ~100 rounds per guest round and starved the
# vCPU for 20-45 s. Paced, about one round lands per guest round, at random points of it.
CHURN_PAUSE_S = 20e-6


def _memslot_churn(s: Scenario, kvm: Any, cfg: Any, res: Any) -> None:
    import time

    from hostkvm.compare import Divergence
    from hostkvm.harness import Machine

    scratch = 0x30000000
    text = f"""
;@ timeout: {s.timeout:g}
;@ mmio: {MMIO_A:#x}+0x1000
;@ ram: {RAM_GPA:#x}+0x1000
    mov rax, {RAM_GPA:#x}
    mov dword ptr [rax], 0x600d600d
    mov r12, {CHURN_ROUNDS}
    mov rbx, {MMIO_A:#x}
again:
    mov dword ptr [rbx], 0x11223344
    mov ecx, dword ptr [rax]
    cmp ecx, 0x600d600d
    jne bad
    dec r12
    jnz again
    jmp finish
bad:
    lea rdi, [rip + msg]
    mov rsi, 26
    call ucall_fail
msg:
    .ascii "RAM read changed under us"
finish:
"""
    image = _build(text, s.name, kvm)
    ops = {"create": 0, "delete": 0, "flags": 0}

    def churn(stop: Any) -> None:
        assert m.vm is not None
        ram_slot = m.vm.memslot_at(RAM_GPA)
        assert ram_slot is not None
        flags = 0
        while not stop.is_set():
            ms = m.vm.add_memslot(scratch, 0x1000)
            ops["create"] += 1
            m.vm.delete_memslot(ms.slot)  # KVM_MR_DELETE: kvm_mmu_zap_all_fast on x86
            ops["delete"] += 1
            flags ^= KVM_MEM_LOG_DIRTY_PAGES
            m.vm.set_memslot_flags(ram_slot.slot, flags)
            ops["flags"] += 1
            time.sleep(CHURN_PAUSE_S)

    with Machine(image, kvm=kvm) as m:
        results = _run_vcpus(m, s.timeout, host_work=churn)
    _check_outcomes(res, results)
    res.extra["memslot_operations"] = dict(ops)
    r0 = results.get(0)
    if r0 is None or isinstance(r0, BaseException):
        return
    mmio = [e for e in r0.exits if e.reason == "KVM_EXIT_MMIO"]
    res.exits, res.predicted_exits = len(mmio), CHURN_ROUNDS
    want = (MMIO_A, 4, True, bytes.fromhex("44332211"))
    for e in mmio:
        if (e.gpa, e.len, e.is_write, e.data) != want:
            res.divergences.append(Divergence("invariant", e.index, "KVM_EXIT_MMIO", want,
                                              (e.gpa, e.len, e.is_write, e.data), insn=e.insn))
    if len(mmio) != CHURN_ROUNDS:
        res.divergences.append(Divergence("invariant", None, "MMIO exits", CHURN_ROUNDS, len(mmio)))
    if ops["delete"] == 0:
        res.missing.append("churn: the host thread made no memslot change while the vCPU ran")


s = Scenario(
    "memslot_churn_during_mmio",
    f"a host thread creates/deletes a scratch memslot and toggles dirty logging in a loop while "
    f"the vCPU does {CHURN_ROUNDS} MMIO stores and RAM loads: every exit exact, RAM intact",
    review="is the lockless shadow walk safe when the shadow page is zapped under it",
    timeout=60.0,
    runner=_memslot_churn,
)
register(s)

# --- memslot generation wraparound (slow) -----------------------------------------------------

WRAP_SWAPS = 1 << 19  # wraps the 19-bit MMIO generation with one address space (twice with two)

s = Scenario(
    "generation_wraparound",
    f"MMIO accesses around {WRAP_SWAPS} memslot swaps (dirty-log toggles), enough to wrap the "
    "MMIO generation: the wrap zaps all (kvm_mmu_zap_all_fast) and no stale mmio spte is used",
    review="memslot generation in mmio sptes",
    slow=True,
    timeout=600.0,
)
s.mmio(MMIO_A, 0x1000)
s.ram(RAM_GPA, 0x1000)
s.store(MMIO_A, 4, 1)
s.store(MMIO_A, 4, 2)
s.sync(SetMemslotFlags(RAM_GPA, KVM_MEM_LOG_DIRTY_PAGES, times=WRAP_SWAPS), label="wrap the generation")
s.store(MMIO_A, 4, 3)
s.store(MMIO_A, 4, 4)
register(s)
