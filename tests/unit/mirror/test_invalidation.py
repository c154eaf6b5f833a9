"""Memslot generation arithmetic, the per-vCPU cache, and the invalidation rules (digest §3, §4)."""

from __future__ import annotations

import pytest

from hostkvm.mirror import (
    ACC_ALL,
    HOST_PVM_6_18,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    MMIO_GVA_ANY,
    HostConfig,
    MirrorConfigError,
    MirrorVm,
    Path,
    get_mmio_spte_access,
    vcpu_cache_mmio_info,
    vcpu_clear_mmio_info,
    vcpu_match_mmio_gen,
    vcpu_match_mmio_gpa,
    vcpu_match_mmio_gva,
)

A = 0x10000000


def _vm(kernel: str = "6.18.44", smm: bool = False, **kw) -> MirrorVm:
    cfg = HostConfig(kernel=kernel, backend="vmx", paging="shadow", tdp_mmu=False, smm=smm, **kw)
    vm = MirrorVm(cfg)
    vm.create_memslot(0, 0, 0x200000)
    return vm


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize(("smm", "step"), [(False, 1), (True, 2)])
def test_swaps_per_change(smm: bool, step: int) -> None:
    vm = MirrorVm(HostConfig(backend="vmx", paging="shadow", smm=smm))
    assert vm.generation == 0
    vm.create_memslot(0, 0, 0x10000)
    assert vm.generation == 1 * step
    vm.set_memslot_flags(0, KVM_MEM_LOG_DIRTY_PAGES)
    assert vm.generation == 2 * step
    vm.move_memslot(0, 0x100000)
    assert vm.generation == 4 * step
    vm.delete_memslot(0)
    assert vm.generation == 6 * step
    assert not vm.memslots


def test_delete_and_move_zap_all_under_the_quirk() -> None:
    vm = _vm()
    vm.create_memslot(1, 0x400000, 0x1000)
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    assert vm.sptes_indirect
    res = vm.move_memslot(1, 0x800000)
    assert [e.name for e in res.events] == ["kvm_mmu_zap_all_fast"]
    assert res.events[0].fields["mmu_valid_gen"] == 0 and vm.mmu_valid_gen == 1
    assert not vm.sptes_indirect
    assert "KVM_X86_QUIRK_SLOT_ZAP_ALL" in res.reasoning
    assert vm.delete_memslot(1).events[0].fields["mmu_valid_gen"] == 1


def test_delete_without_the_quirk_keeps_mmio_sptes() -> None:
    vm = _vm(slot_zap_all_quirk=False)
    vm.create_memslot(1, 0x400000, 0x1000)
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.access(0, 0x400000, 0x400000, 4, "r", 3)
    res = vm.delete_memslot(1)
    assert res.events == []
    assert A >> 12 in vm.sptes_indirect and 0x400 not in vm.sptes_indirect
    # ... but the generation moved, so the MMIO SPTE is stale
    assert vm.access(0, A, A, 4, "w", 3, b"\0" * 4).path is Path.STALE_GENERATION


def test_flag_change_and_create_do_not_zap() -> None:
    vm = _vm()
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    assert vm.set_memslot_flags(0, KVM_MEM_LOG_DIRTY_PAGES).events == []
    assert vm.create_memslot(2, 0x800000, 0x1000).events == []
    assert vm.sptes_indirect


@pytest.mark.parametrize(("smm", "start"), [(False, 0x7FFFF), (True, 0x7FFFE)])
def test_generation_wrap_zaps_all(smm: bool, start: int) -> None:
    vm = MirrorVm(HostConfig(backend="vmx", paging="shadow", smm=smm), generation=start - (2 if smm else 1))
    assert vm.create_memslot(0, 0, 0x1000).events == []
    assert vm.generation == start
    res = vm.set_memslot_flags(0, 0)
    assert [e.name for e in res.events] == ["kvm_mmu_zap_all_fast"]
    assert "wrapped" in res.reasoning
    assert vm.generation & 0x7FFFF == 0


def test_wrap_zaps_even_with_caching_off_on_6_18_but_not_7x() -> None:
    for kernel, expect in (("6.18.44", ["kvm_mmu_zap_all_fast"]), ("7.3.4", [])):
        cfg = HostConfig(kernel=kernel, backend="pvm", paging="shadow", mmio_caching=False, smm=False)
        mask = cfg.mmio_spte_gen_mask
        vm = MirrorVm(cfg, generation=mask - 1)
        vm.create_memslot(0, 0, 0x1000)
        assert [e.name for e in vm.set_memslot_flags(0, 0).events] == expect


def test_7x_generation_wraps_at_18_bits() -> None:
    cfg = HostConfig(kernel="7.3.4", backend="vmx", paging="shadow", smm=False)
    vm = MirrorVm(cfg, generation=0x3FFFE)
    vm.create_memslot(0, 0, 0x1000)
    assert [e.name for e in vm.set_memslot_flags(0, 0).events] == ["kvm_mmu_zap_all_fast"]


def test_update_window_sets_bit_63() -> None:
    vm = MirrorVm(HOST_PVM_6_18)
    with vm.memslot_update_window():
        assert vm.generation == KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
        with pytest.raises(MirrorConfigError, match="in progress|already"):
            vm.create_memslot(0, 0, 0x1000)
    assert vm.generation == 1


def test_memslot_errors() -> None:
    vm = _vm()
    with pytest.raises(MirrorConfigError, match="overlaps"):
        vm.create_memslot(1, 0x1000, 0x1000)
    with pytest.raises(MirrorConfigError, match="exists"):
        vm.create_memslot(0, 0x800000, 0x1000)
    with pytest.raises(MirrorConfigError, match="page aligned"):
        vm.create_memslot(3, 0x800001, 0x1000)
    with pytest.raises(MirrorConfigError, match="does not exist"):
        vm.delete_memslot(9)


# ---------------------------------------------------------------- per-vCPU cache


def test_vcpu_cache_semantics() -> None:
    vm = _vm()
    v = vm.vcpus[0]
    vcpu_cache_mmio_info(v, A + 0x123, 0x999, 6)
    assert (v.mmio_gva, v.mmio_gfn, v.mmio_access, v.mmio_gen) == (A, 0x999, 6, 1)
    assert vcpu_match_mmio_gen(v)
    assert vcpu_match_mmio_gva(v, A + 0xFFF) and not vcpu_match_mmio_gva(v, A + 0x1000)
    assert vcpu_match_mmio_gpa(v, 0x999ABC) and not vcpu_match_mmio_gpa(v, 0x998FFF)
    vcpu_clear_mmio_info(v, A + 0x1000)  # other page: untouched
    assert vcpu_match_mmio_gva(v, A)
    vcpu_clear_mmio_info(v, A + 8)
    assert not vcpu_match_mmio_gva(v, A)
    assert vcpu_match_mmio_gpa(v, 0x999000)  # only mmio_gva is cleared
    vcpu_cache_mmio_info(v, A, 0x999, 6)
    vcpu_clear_mmio_info(v, MMIO_GVA_ANY)
    assert v.mmio_gva == 0


def test_vcpu_cache_page_zero_and_gfn_zero_never_match() -> None:
    vm = _vm()
    v = vm.vcpus[0]
    vcpu_cache_mmio_info(v, 0x10, 0, 6)
    assert not vcpu_match_mmio_gva(v, 0x10)
    assert not vcpu_match_mmio_gpa(v, 0x10)


def test_vcpu_cache_compares_the_full_generation() -> None:
    vm = _vm()
    v = vm.vcpus[0]
    vcpu_cache_mmio_info(v, A, 0x999, 6)
    vm.create_memslot(5, 0x800000, 0x1000)
    assert not vcpu_match_mmio_gen(v) and not vcpu_match_mmio_gva(v, A)


def test_vcpu_cache_skipped_during_update() -> None:
    vm = _vm()
    v = vm.vcpus[0]
    with vm.memslot_update_window():
        vcpu_cache_mmio_info(v, A, 0x999, 6)
    assert v.mmio_gva == 0 and v.mmio_gfn == 0


def test_vcpus_have_separate_caches() -> None:
    cfg = HostConfig(backend="vmx", paging="shadow", smm=False)
    vm = MirrorVm(cfg, nr_vcpus=2)
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    assert vm.access(1, A, A, 4, "w", 3, b"\0" * 4).path is Path.MMIO_SPTE_HIT
    assert vm.access(0, A, A, 4, "w", 3, b"\0" * 4).path is Path.CACHE_HIT


def test_cpl3_cache_entry_used_by_gva_only_with_permission() -> None:
    vm = _vm()
    ro = ACC_ALL & ~2  # a read-only user page
    assert vm.access(0, A, A, 4, "w", 3, b"\0" * 4, pte_access=ro).path is Path.RETRY
    first = vm.access(0, A, A, 4, "r", 3, pte_access=ro)
    assert first.path is Path.NOSLOT_INSTALL
    assert vm.vcpus[0].mmio_access == 4
    p = vm.access(0, A, A, 4, "r", 3, pte_access=ro)
    assert p.path is Path.CACHE_HIT
    assert [e.fields["gpa_match"] for e in p.events if e.name == "vcpu_match_mmio"] == [False]
    # a write hits the cache in handle_mmio_page_fault(), but the emulator's permission check
    # on the cached access fails, its own walk faults, and #PF goes to the guest: no exit
    w = vm.access(0, A, A, 4, "w", 3, b"\0" * 4, pte_access=ro)
    assert w.path is Path.CACHE_HIT
    assert w.exits == () and w.exit_reason is None
    assert w.stats == {"pf_guest": 1}
    assert "vcpu_match_mmio" not in w.event_names()


# ---------------------------------------------------------------- INVLPG, CR3, sync, track write


def test_invlpg_clears_the_cache_for_that_page_only() -> None:
    vm = _vm()
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.invlpg(0, A + 0x1000)
    assert vm.access(0, A, A, 4, "w", 3, b"\0" * 4).path is Path.CACHE_HIT
    res = vm.invlpg(0, A)
    assert res.events == []  # the leaf is synced, so its MMIO SPTE stays
    assert vm.vcpus[0].stat["invlpg"] == 2
    assert vm.access(0, A, A, 4, "w", 3, b"\0" * 4).path is Path.MMIO_SPTE_HIT


def test_invlpg_on_unsync_leaf_remarks_same_gfn() -> None:
    vm = _vm()
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.create_memslot(1, 0x800000, 0x1000)  # make the SPTE's generation stale
    vm.mark_unsync(A)
    res = vm.invlpg(0, A, pte_access=ACC_ALL & ~2)
    assert [e.name for e in res.events] == ["mark_mmio_spte"]
    assert res.events[0].fields["gen"] == vm.generation
    assert "sync_mmio_spte" in res.reasoning
    assert get_mmio_spte_access(vm.config, vm.sptes_indirect[A >> 12]) == 4
    assert vm.vcpus[0].stat["pf_mmio_spte_created"] == 1  # re-mark does not count
    assert vm.access(0, A, A, 4, "r", 3).path is Path.MMIO_SPTE_HIT


def test_invlpg_on_unsync_leaf_clears_changed_gfn_or_not_present() -> None:
    vm = _vm()
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.mark_unsync(A)
    res = vm.invlpg(0, A, gpa=0x20000000)
    assert res.events == [] and A >> 12 not in vm.sptes_indirect
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.invlpg(0, A, present=False)
    assert A >> 12 not in vm.sptes_indirect


def test_invlpg_6_1_zaps_the_mmio_spte() -> None:
    vm = _vm(kernel="6.1.0-56-amd64")
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.mark_unsync(A)
    assert vm.invlpg(0, A).events == []
    assert A >> 12 not in vm.sptes_indirect


def test_load_cr3_clears_the_whole_cache() -> None:
    vm = _vm()
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.load_cr3(0)
    p = vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    assert p.path is Path.MMIO_SPTE_HIT


def test_sync_roots_clears_cache_and_remarks_unsync() -> None:
    vm = _vm()
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.mark_unsync(A)
    res = vm.sync_roots(0)
    assert [e.name for e in res.events] == ["mark_mmio_spte"]
    assert vm.vcpus[0].mmio_gva == 0
    assert not vm.unsync


def test_track_write_zaps_the_leaf_but_not_the_cache() -> None:
    vm = _vm()
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    res = vm.track_write(A)
    assert "mmu_spte_clear_no_track" in res.reasoning
    assert vm.stat["mmu_pte_write"] == 1
    assert A >> 12 not in vm.sptes_indirect
    assert vm.vcpus[0].mmio_gva == A
    # the next access takes a non-RSVD fault: the slow path, which re-installs the SPTE
    assert vm.access(0, A, A, 4, "w", 3, b"\0" * 4).path is Path.NOSLOT_INSTALL


def test_zap_all() -> None:
    vm = _vm()
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    vm.access(0, 0x1000, 0x1000, 4, "r", 3)
    res = vm.zap_all()
    assert [e.name for e in res.events] == ["kvm_mmu_zap_all_fast"]
    assert not vm.sptes_indirect
    # the per-vCPU cache survives a zap
    assert vm.access(0, A, A, 4, "w", 3, b"\0" * 4).path is Path.NOSLOT_INSTALL


def test_tdp_invlpg_and_track_write_are_noops() -> None:
    vm = MirrorVm(HostConfig(backend="vmx", paging="ept", smm=False))
    vm.access(0, A, A, 4, "w", 3, b"\0" * 4)
    assert "not intercepted" in vm.invlpg(0, A).reasoning
    assert vm.vcpus[0].stat["invlpg"] == 0  # observed on the reference host with npt=1
    assert "not intercepted" in vm.load_cr3(0).reasoning
    assert vm.track_write(A).reasoning.endswith("return")
    assert vm.access(0, A, A, 4, "w", 3, b"\0" * 4).path is Path.CACHE_HIT
