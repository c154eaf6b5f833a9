"""The fault flow with mmio caching on: paths, events, exits and stats, checked against the
reference host's 6.1 traces (kvm_amd npt=0/1 under TCG) and the digest's rules."""

from __future__ import annotations

import pytest

from hostkvm.mirror import (
    ACC_ALL,
    APIC_DEFAULT_PHYS_BASE,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_MEM_READONLY,
    KVM_PAGE_FAULT_ERROR_CODE_MASK,
    REFHOST_6_1_NPT,
    REFHOST_6_1_SHADOW,
    HostConfig,
    MirrorConfigError,
    MirrorVm,
    MmioExit,
    Path,
)

TRACED = {"check_mmio_spte", "handle_mmio_page_fault", "mark_mmio_spte", "kvm_page_fault", "kvm_mmio"}


def _fields(p, name):
    return [e.fields for e in p.events if e.name == name]


@pytest.mark.parametrize("cfg", [REFHOST_6_1_SHADOW, REFHOST_6_1_NPT], ids=["npt=0", "npt=1"])
def test_reference_host_real_mode_two_pages(cfg: HostConfig) -> None:
    """`kvmtest real 4 2`: four 1-byte writes alternating over 0x8000 and 0x9000."""
    vm = MirrorVm(cfg, paging=False)
    vm.create_memslot(0, 0, 0x8000)
    assert vm.generation == 2  # SMM: two address spaces, +2 per swap
    preds = [vm.access(0, a, a, 1, "w", 0, bytes([0x42 + i])) for i, a in enumerate((0x8000, 0x9000, 0x8000, 0x9000))]
    assert [p.path for p in preds] == [Path.NOSLOT_INSTALL, Path.NOSLOT_INSTALL, Path.MMIO_SPTE_HIT, Path.MMIO_SPTE_HIT]
    assert _fields(preds[0], "mark_mmio_spte") == [{"sptep": None, "gfn": 8, "access": 7, "gen": 2}]
    assert _fields(preds[1], "mark_mmio_spte") == [{"sptep": None, "gfn": 9, "access": 7, "gen": 2}]
    assert _fields(preds[2], "check_mmio_spte") == [{"kvm_gen": 2, "spte_gen": 2, "spte": 0x8000000008017}]
    assert _fields(preds[2], "handle_mmio_page_fault") == [{"addr": 0, "gfn": 8, "access": 6}]
    assert _fields(preds[3], "handle_mmio_page_fault") == [{"addr": 0, "gfn": 9, "access": 6}]
    assert [p.event_names(TRACED) for p in preds[2:]] == [
        ["kvm_page_fault", "check_mmio_spte", "handle_mmio_page_fault", "kvm_mmio"]
    ] * 2
    # the log's stats less the one code-fetch fault (pf_taken=3 pf_fixed=1)
    st = vm.vcpus[0].stat
    assert (st["pf_taken"], st["pf_emulate"], st["pf_mmio_spte_created"], st["mmio_exits"]) == (2, 2, 2, 4)
    # error codes: 0x2 first touch, RSVD afterwards (TCG leaves P out: compare under the mask)
    ec = [_fields(p, "kvm_page_fault")[0]["error_code"] & KVM_PAGE_FAULT_ERROR_CODE_MASK for p in preds]
    user = 4 if cfg.paging == "npt" else 0
    assert ec == [0x2 | user, 0x2 | user, 0xA | user, 0xA | user]


@pytest.mark.parametrize("cfg", [REFHOST_6_1_SHADOW, REFHOST_6_1_NPT], ids=["npt=0", "npt=1"])
def test_reference_host_one_page_hits_the_vcpu_cache(cfg: HostConfig) -> None:
    """`kvmtest real 3 1`: mark_mmio_spte once, then cache hits with no kvmmmu event."""
    vm = MirrorVm(cfg, paging=False)
    vm.create_memslot(0, 0, 0x8000)
    preds = [vm.access(0, 0x8000, 0x8000, 1, "w", 0, b"B") for _ in range(3)]
    assert [p.path for p in preds] == [Path.NOSLOT_INSTALL, Path.CACHE_HIT, Path.CACHE_HIT]
    assert preds[1].event_names(TRACED) == ["kvm_page_fault", "kvm_mmio"]
    assert preds[1].stats == {"mmio_exits": 1}
    # direct MMU: the emulator matches on the GPA
    assert [e.fields["gpa_match"] for e in preds[1].events if e.name == "vcpu_match_mmio"] == [True]


def test_reference_host_long_mode_shadow_pte_access() -> None:
    """`kvmtest long 4 2` with npt=0: a supervisor-only writable gPTE (access 3)."""
    vm = MirrorVm(REFHOST_6_1_SHADOW)
    vm.create_memslot(0, 0, 0x200000)
    preds = [
        vm.access(0, a, a, 1, "w", 0, b"x", pte_access=3) for a in (0x200000, 0x201000, 0x200000, 0x201000)
    ]
    assert _fields(preds[0], "mark_mmio_spte") == [{"sptep": None, "gfn": 0x200, "access": 3, "gen": 2}]
    assert _fields(preds[2], "check_mmio_spte") == [{"kvm_gen": 2, "spte_gen": 2, "spte": 0x8000000200013}]
    assert _fields(preds[2], "handle_mmio_page_fault") == [{"addr": 0x200000, "gfn": 0x200, "access": 2}]
    assert preds[2].path is Path.MMIO_SPTE_HIT


def _shadow_vm(**kw) -> MirrorVm:
    cfg = HostConfig(kernel="6.18.44", backend="vmx", paging="shadow", tdp_mmu=False, smm=False, **kw)
    vm = MirrorVm(cfg)
    vm.create_memslot(0, 0, 0x200000)
    return vm


def test_shadow_cache_hit_then_miss_on_other_page() -> None:
    vm = _shadow_vm()
    a, b = 0x10000000, 0x10001000
    assert vm.access(0, a, a, 4, "w", 3, b"\0" * 4).path is Path.NOSLOT_INSTALL
    hit = vm.access(0, a + 4, a + 4, 4, "w", 3, b"\0" * 4)
    assert hit.path is Path.CACHE_HIT
    assert hit.stats == {"mmio_exits": 1}
    assert hit.event_names() == ["kvm_page_fault", "kvm_mmu_pagetable_walk", "vcpu_match_mmio", "kvm_mmio", "kvm_userspace_exit"]
    assert hit.events[1].fields == {"addr": None, "pferr": 0x14}  # the emulator's instruction fetch
    assert vm.access(0, b, b, 4, "w", 3, b"\0" * 4).path is Path.NOSLOT_INSTALL
    again = vm.access(0, a, a, 4, "w", 3, b"\0" * 4)
    assert again.path is Path.MMIO_SPTE_HIT
    assert again.stats == {"mmio_exits": 1}
    assert [e.fields["gpa_match"] for e in again.events if e.name == "vcpu_match_mmio"] == [False]


def test_stale_generation_goes_to_the_slow_path_and_remarks() -> None:
    vm = _shadow_vm()
    a = 0x10000000
    vm.access(0, a, a, 4, "w", 3, b"\0" * 4)
    vm.create_memslot(1, 0x400000, 0x1000)  # generation 1 -> 2
    p = vm.access(0, a, a, 4, "w", 3, b"\0" * 4)
    assert p.path is Path.STALE_GENERATION
    assert p.event_names()[:5] == ["kvm_page_fault", "check_mmio_spte", "kvm_mmu_pagetable_walk", "mark_mmio_spte", "kvm_mmu_pagetable_walk"]
    assert p.events[1].fields["kvm_gen"] == 2 and p.events[1].fields["spte_gen"] == 1
    assert p.events[3].fields["gen"] == 2
    assert p.stats == {"pf_taken": 1, "pf_mmio_spte_created": 1, "pf_emulate": 1, "mmio_exits": 1}
    assert vm.access(0, a, a, 4, "w", 3, b"\0" * 4).path is Path.CACHE_HIT


def test_update_in_progress_refuses_cache_and_spte() -> None:
    vm = _shadow_vm()
    a = 0x10000000
    vm.access(0, a, a, 4, "w", 3, b"\0" * 4)
    with vm.memslot_update_window():
        p = vm.access(0, a, a, 4, "w", 3, b"\0" * 4)
        # check_mmio_spte returns false before its tracepoint; the slow path re-marks
        assert p.path is Path.STALE_GENERATION
        assert "check_mmio_spte" not in p.event_names()
        assert vm.vcpus[0].mmio_gen == 1  # vcpu_cache_mmio_info did nothing
    assert vm.generation == 2
    # the SPTE was made with the in-progress generation's low bits (1): stale now
    assert vm.access(0, a, a, 4, "w", 3, b"\0" * 4).path is Path.STALE_GENERATION


def test_gfn_above_max_gfn_is_not_cached_in_an_spte() -> None:
    cfg = HostConfig(kernel="6.18.44", backend="svm", paging="npt", maxphyaddr=40, smm=False)
    vm = MirrorVm(cfg)
    far = 1 << 41
    p = vm.access(0, far, far, 4, "w", 3, b"\0" * 4)
    assert p.path is Path.NOSLOT_NO_INSTALL
    assert "kvm_mmu_max_gfn" in p.reasoning


def test_ept_events() -> None:
    vm = MirrorVm(HostConfig(kernel="6.18.44", backend="vmx", paging="ept", smm=False))
    a = 0xFEB00000
    first = vm.access(0, 0x7000, a, 4, "w", 3, b"\0" * 4)
    assert first.path is Path.NOSLOT_INSTALL
    assert first.events[0].fields["error_code"] is None  # EPT violation: an exit qualification
    mark = first.events[1].fields
    assert mark["access"] == 6 and mark["gfn"] == a >> 12
    second = vm.access(0, 0x7000, a, 4, "w", 3, b"\0" * 4)
    assert second.path is Path.CACHE_HIT
    assert "kvm_page_fault" not in second.event_names()  # EPT misconfig has no kvm_page_fault


def test_readonly_slot_write_is_emulated_mmio() -> None:
    vm = _shadow_vm()
    vm.create_memslot(1, 0x400000, 0x2000, KVM_MEM_READONLY)
    r = vm.access(0, 0x400000, 0x400000, 4, "r", 3)
    assert r.path is Path.RAM_FIXED
    w = vm.access(0, 0x400000, 0x400000, 4, "w", 3, b"\1\0\0\0")
    assert w.path is Path.READONLY_WRITE
    assert w.exits == (MmioExit(0x400000, 4, True, b"\1\0\0\0"),)
    assert w.stats == {"pf_taken": 1, "pf_emulate": 1, "mmio_exits": 1}
    assert "vcpu_match_mmio" not in w.event_names()


def test_guest_page_fault_is_a_retry() -> None:
    vm = _shadow_vm()
    p = vm.access(0, 0x10000000, 0x10000000, 4, "w", 3, b"\0" * 4, pte_access=ACC_ALL & ~4)
    assert p.path is Path.RETRY
    assert p.exits == ()
    assert p.stats == {"pf_taken": 1, "pf_guest": 1}


def test_page_crossing_mmio_mmio() -> None:
    vm = _shadow_vm()
    data = bytes(range(8))
    p = vm.access(0, 0x10000FFC, 0x10000FFC, 8, "w", 3, data)
    assert p.exits == (MmioExit(0x10000FFC, 4, True, data[:4]), MmioExit(0x10001000, 4, True, data[4:]))
    assert p.stats["mmio_exits"] == 1
    kinds = [e.fields["len"] for e in p.events if e.name == "kvm_mmio"]
    assert kinds == [4, 4]


def test_page_crossing_read_unsatisfied_len_is_last_part() -> None:
    vm = _shadow_vm()
    p = vm.access(0, 0x10000FFA, 0x10000FFA, 8, "r", 3)
    mmio = [e.fields for e in p.events if e.name == "kvm_mmio"]
    assert mmio[0] == {"type": 0, "len": 2, "gpa": 0x10000FFA, "val": 0}
    assert mmio[1] == {"type": 1, "len": 8, "gpa": 0x10000FFA, "val": None}
    assert [x.len for x in p.exits] == [6, 2]


def test_apic_page_matches_without_trace() -> None:
    vm = _shadow_vm()
    a = APIC_DEFAULT_PHYS_BASE + 0x300
    vm.access(0, a, a, 4, "w", 3, b"\0" * 4)
    # second page of a crossing access into the APIC page: no vcpu_match_mmio for that part
    p = vm.access(0, APIC_DEFAULT_PHYS_BASE - 2, APIC_DEFAULT_PHYS_BASE - 2, 4, "w", 3, b"\0" * 4)
    assert [e.name for e in p.events].count("vcpu_match_mmio") == 1


def test_fetch_from_mmio_is_an_internal_error() -> None:
    vm = _shadow_vm()
    p = vm.access(0, 0x10000000, 0x10000000, 1, "x", 3)
    assert p.exit_reason == KVM_EXIT_INTERNAL_ERROR
    assert p.stats["insn_emulation_fail"] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width"),
        ({"kind": "rw"}, "kind"),
        ({"data": b"\0"}, "data bytes"),
        ({"width": 8192}, "two pages"),
    ],
)
def test_access_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    vm = _shadow_vm()
    args = {"gva": 0x10000000, "gpa": 0x10000000, "width": 4, "kind": "w", "cpl": 3, "data": None} | kwargs
    with pytest.raises(MirrorConfigError, match=match):
        vm.access(0, **args)


def test_stats_accumulate_on_the_vcpu() -> None:
    vm = _shadow_vm()
    total: dict[str, int] = {}
    for i in range(6):
        p = vm.access(0, 0x10000000 + (i % 2) * 0x1000, 0x10000000 + (i % 2) * 0x1000, 4, "w", 3, b"\0" * 4)
        for k, n in p.stats.items():
            total[k] = total.get(k, 0) + n
    assert {k: v for k, v in vm.vcpus[0].stat.items() if v} == total
