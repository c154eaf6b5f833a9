"""This project's host (HOST.md): PVM, shadow paging, mmio_caching=N, one address space.

The predictions here are the ground behaviour HOST.md records for CPL3 MMIO."""

from __future__ import annotations

import pytest

from hostkvm.mirror import (
    HOST_PVM_6_18,
    KVM_EXIT_MMIO,
    KVM_TRACE_MMIO_WRITE,
    MIRROR_EVENTS,
    MirrorVm,
    MmioExit,
    Path,
)

MMIO = 0x10000000
RAM_END = 0x200000


@pytest.fixture
def vm() -> MirrorVm:
    vm = MirrorVm(HOST_PVM_6_18)
    vm.create_memslot(0, 0, RAM_END)
    return vm


def test_cpl3_mmio_write_ground_behaviour(vm: MirrorVm) -> None:
    for _ in range(3):  # the same every time: nothing is cached in SPTEs
        p = vm.access(0, MMIO, MMIO, 4, "w", 3, b"\x11\x22\x33\x44")
        assert p.path is Path.NOSLOT_NO_INSTALL
        assert p.stats == {"pf_taken": 1, "pf_emulate": 1, "mmio_exits": 1}
        # observed on the PVM host: the #PF walk, then the emulator's instruction-fetch walk
        assert p.event_names() == ["kvm_mmu_pagetable_walk", "kvm_mmu_pagetable_walk", "vcpu_match_mmio",
                                   "kvm_mmio", "kvm_userspace_exit"]
        walk, fetch, match, mmio, uexit = p.events
        assert walk.fields == {"addr": MMIO, "pferr": 0x6}
        assert fetch.fields == {"addr": None, "pferr": 0x14}  # addr is the RIP: not predicted
        assert match.fields == {"gva": MMIO, "gpa": MMIO, "write": True, "gpa_match": False}
        assert mmio.fields == {"type": KVM_TRACE_MMIO_WRITE, "len": 4, "gpa": MMIO, "val": 0x44332211}
        assert uexit.fields == {"reason": KVM_EXIT_MMIO, "errno": 0}
        assert p.exits == (MmioExit(MMIO, 4, True, b"\x11\x22\x33\x44"),)
        assert "kvm_handle_noslot_fault" in p.reasoning
    assert vm.vcpus[0].stat["pf_taken"] == 3
    assert vm.vcpus[0].stat["pf_mmio_spte_created"] == 0
    assert not vm.sptes_indirect  # never an MMIO SPTE


def test_pvm_never_predicts_absent_tracepoints(vm: MirrorVm) -> None:
    names = set()
    for kind in ("r", "w"):
        for cpl in (0, 3):
            names |= set(vm.access(0, MMIO + 0x10, MMIO + 0x10, 8, kind, cpl, b"\0" * 8 if kind == "w" else None).event_names())
    assert names <= MIRROR_EVENTS
    assert not names & HOST_PVM_6_18.quirks.absent_tracepoints  # type: ignore[union-attr]


def test_sse_store_two_8_byte_exits_one_mmio_exit(vm: MirrorVm) -> None:
    data = bytes(range(16))
    p = vm.access(0, MMIO, MMIO, 16, "w", 3, data)
    assert p.exits == (MmioExit(MMIO, 8, True, data[:8]), MmioExit(MMIO + 8, 8, True, data[8:]))
    assert p.stats["mmio_exits"] == 1
    assert p.event_names().count("kvm_userspace_exit") == 2
    assert p.event_names().count("kvm_mmio") == 1
    assert p.events[3].fields["len"] == 16


def test_rep_stosb_is_n_one_byte_accesses(vm: MirrorVm) -> None:
    preds = [vm.access(0, MMIO + i, MMIO + i, 1, "w", 3, b"\xaa") for i in range(5)]
    assert [p.exits for p in preds] == [(MmioExit(MMIO + i, 1, True, b"\xaa"),) for i in range(5)]
    assert vm.vcpus[0].stat["mmio_exits"] == 5


def test_store_straddling_end_of_ram_exits_only_past_it(vm: MirrorVm) -> None:
    vm.access(0, RAM_END - 0x1000, RAM_END - 0x1000, 8, "w", 3, b"\0" * 8)  # touch the RAM page
    data = bytes(range(8))
    p = vm.access(0, RAM_END - 4, RAM_END - 4, 8, "w", 3, data)
    assert p.path is Path.NOSLOT_NO_INSTALL
    assert p.exits == (MmioExit(RAM_END, 4, True, data[4:]),)
    assert p.stats == {"pf_taken": 1, "pf_emulate": 1, "mmio_exits": 1}


def test_ram_first_touch_then_hit(vm: MirrorVm) -> None:
    p = vm.access(0, 0x3000, 0x3000, 8, "r", 3)
    assert p.path is Path.RAM_FIXED and p.exits == () and p.stats == {"pf_taken": 1, "pf_fixed": 1}
    p = vm.access(0, 0x3008, 0x3008, 8, "w", 3, b"\0" * 8)
    assert p.path is Path.RAM_HIT and p.events == [] and p.stats == {}


def test_cpl0_is_emulated_quirk(vm: MirrorVm) -> None:
    p = vm.access(0, MMIO, MMIO, 4, "w", 0, b"\1\2\3\4")
    assert p.path is Path.EMULATED
    assert p.quirk == "pvm_cpl0_emulation"
    assert "host quirk" in p.reasoning
    assert p.stats == {"mmio_exits": 1}  # no shadow #PF: no pf_* stats
    # observed: the emulator's fetch walk (PFERR_FETCH) before the data walk
    assert p.event_names() == ["kvm_mmu_pagetable_walk", "kvm_mmu_pagetable_walk", "kvm_mmio", "kvm_userspace_exit"]
    assert [e.fields["pferr"] for e in p.events[:2]] == [0x10, 0x2]
    assert p.exits == (MmioExit(MMIO, 4, True, b"\1\2\3\4"),)
    ram = vm.access(0, 0x5000, 0x5000, 4, "w", 0, b"\0" * 4)
    assert ram.path is Path.EMULATED and ram.exits == () and ram.exit_reason is None
    assert ram.stats == {}


def test_upstream_cpl0_takes_the_fault_path() -> None:
    from hostkvm.mirror import HostConfig

    vm = MirrorVm(HostConfig(kernel="6.18.44", backend="vmx", paging="shadow", mmio_caching=False, smm=False))
    vm.create_memslot(0, 0, RAM_END)
    p = vm.access(0, MMIO, MMIO, 4, "w", 0, b"\0" * 4)
    assert p.path is Path.NOSLOT_NO_INSTALL
    assert p.event_names()[0] == "kvm_page_fault"


def test_read_events_and_exits(vm: MirrorVm) -> None:
    p = vm.access(0, MMIO + 8, MMIO + 8, 4, "r", 3, b"\x78\x56\x34\x12")
    assert p.event_names() == ["kvm_mmu_pagetable_walk", "kvm_mmu_pagetable_walk", "vcpu_match_mmio", "kvm_mmio",
                               "kvm_userspace_exit", "kvm_mmio"]
    unsat, done = p.events[3], p.events[5]
    assert unsat.fields == {"type": 0, "len": 4, "gpa": MMIO + 8, "val": 0}
    assert done.fields == {"type": 1, "len": 4, "gpa": MMIO + 8, "val": 0x12345678}
    assert p.exits == (MmioExit(MMIO + 8, 4, False, None),)


def test_bench_throughput_runs() -> None:
    from hostkvm.mirror import bench_throughput

    rate = bench_throughput(2000)
    assert rate > 0
