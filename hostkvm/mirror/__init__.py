"""A Python mirror of KVM's x86 mmio-spte fast path: what the host *should* do on a guest MMIO
access, to compare with what it does.

Pure Python: it imports nothing from hostkvm's KVM layers (only :mod:`hostkvm.errors`) and
runs on any machine. Kernel things keep the kernel's names; comments cite
``file.c:function()``.

Configuration
-------------
Everything is driven by one frozen :class:`HostConfig`. Write it by hand, or build it from
``hostkvm probe --json`` output::

    cfg = HostConfig.from_probe(json.loads(probe_text))
    cfg = HostConfig(kernel="6.18.44", backend="vmx", paging="ept")   # by hand

It derives the kernel profile (:class:`KernelProfile`: ``PROFILE_6_1``, ``PROFILE_6_12``
(6.12-6.18), ``PROFILE_7``; chosen from the release with :func:`profile_for_release`), the
backend's quirks (:class:`HostQuirks`: ``QUIRKS_PVM`` lists the tracepoints that never fire
under PVM and that CPL0 code is emulated), the MMIO SPTE masks (``shadow_mmio_value``,
``shadow_mmio_mask``, ``shadow_mmio_access_mask`` for shadow paging, EPT, NPT with or without
SME), the L1TF gfn split (``shadow_nonpresent_or_rsvd_mask``,
``shadow_nonpresent_or_rsvd_lower_gfn_mask``), ``max_gfn`` (``kvm_mmu_max_gfn()``), the MMIO
generation layout, the memslot address-space count, and whether mmio caching ends up on
(``enable_mmio_caching``; ``mmio_caching_off_reasons`` says why not). ``cfg.describe()`` sums
it up. Presets: ``HOST_PVM_6_18`` (this project's hosts), ``REFHOST_6_1_NPT`` and
``REFHOST_6_1_SHADOW`` (the reference host).

Encoding (spte.h / spte.c / mmu.c)
----------------------------------
``make_mmio_spte(cfg, gfn, access, generation, mmio_value=None) -> int``,
``is_mmio_spte(cfg, spte, mmio_value=None) -> bool``, ``get_mmio_spte_gfn(cfg, spte)``,
``get_mmio_spte_access(cfg, spte)``, ``get_mmio_spte_generation(cfg, spte)``,
``generation_mmio_spte_mask(cfg, gen)``, ``check_mmio_spte(cfg, spte, generation) -> bool``,
``mark_mmio_spte_access(spte)`` (the ``access`` field of the ``mark_mmio_spte`` event),
``is_shadow_present_pte(spte)``. Constants: ``SPTE_MMU_PRESENT_MASK``, ``ACC_*``, ``PT_*``,
``KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS``, ``VMX_EPT_*``, ``genmask_ull``, ``rsvd_bits``.

State and fault flow
--------------------
``vm = MirrorVm(cfg, nr_vcpus=1, paging=True)`` holds memslots and ``vm.generation``,
``vm.sptes_indirect`` (shadow leaves by gva page) and ``vm.sptes_direct`` (TDP or
paging-off leaves by gfn), ``vm.vcpus`` (:class:`MirrorVcpu`: ``mmio_gva``, ``mmio_access``,
``mmio_gfn``, ``mmio_gen``, ``stat``) and ``vm.stat``. The per-vCPU cache functions are
importable: ``vcpu_cache_mmio_info``, ``vcpu_clear_mmio_info``, ``vcpu_match_mmio_gen``,
``vcpu_match_mmio_gva``, ``vcpu_match_mmio_gpa``.

One guest access::

    p = vm.access(vcpu, gva, gpa, width, kind="w", cpl=3, data=b"...",
                  pte_access=ACC_ALL, gpa2=None, rip=None)

returns a :class:`Prediction`: ``p.path`` (:class:`Path`: ``CACHE_HIT``, ``MMIO_SPTE_HIT``,
``STALE_GENERATION``, ``NOSLOT_INSTALL``, ``NOSLOT_NO_INSTALL``, ``RAM_HIT``, ``RAM_FIXED``,
``READONLY_WRITE``, ``RETRY``, ``EMULATED``), ``p.exits`` (:class:`MmioExit` ``(gpa, len,
is_write, data)`` per ``KVM_EXIT_MMIO`` round trip: split at page ends and every 8 bytes),
``p.exit_reason``, ``p.events`` (:class:`TraceEvent` ``(name, fields)`` in emission order,
names without subsystem and fields named as in the tracefs format files, in the order of
``EVENT_FIELDS``; a ``None`` field is not predicted), ``p.stats`` (nonzero vCPU stat deltas, binary-stats names; any name of
``VCPU_STATS_MODELLED`` missing is predicted unchanged), ``p.quirk`` and ``p.reasoning``
(the kernel functions it went through). The state advances as the host's would.

Comparing with a host trace: keep only host events whose name is in ``MIRROR_EVENTS`` (the
events the mirror predicts; a PVM host never emits those in ``cfg.quirks.absent_tracepoints``),
compare ``kvm_page_fault.error_code`` under ``KVM_PAGE_FAULT_ERROR_CODE_MASK``, and skip
``None`` fields. Not predicted: ``kvm_exit``/``kvm_entry``, ``kvm_emulate_insn``,
``kvm_mmu_paging_element``, ``kvm_mmu_get_page``, ``kvm_mmu_set_spte``, A/D-bit events.

Host actions (each returns :class:`ActionResult` ``(events, reasoning)``):
``create_memslot(slot, gpa, size, flags=0)`` and ``set_memslot_flags(slot, flags)`` (one
memslot swap), ``delete_memslot(slot)`` and ``move_memslot(slot, gpa)`` (two swaps and, with
``KVM_X86_QUIRK_SLOT_ZAP_ALL``, ``kvm_mmu_zap_all_fast``), ``track_write(gva)`` (guest wrote
the gPTE mapping ``gva``), ``invlpg(vcpu, gva, gpa=None, present=True, pte_access=ACC_ALL)``
(with ``sync_mmio_spte`` on leaves marked by ``mark_unsync(gva)``), ``load_cr3(vcpu)``,
``sync_roots(vcpu)``, ``zap_all()``, and the ``memslot_update_window()`` context manager
(accesses inside see ``KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS``). Each swap adds the
address-space count to the generation; a wrap of the MMIO generation zaps all.

Host quirks
-----------
Taken from ``cfg.quirks``, never from the backend name in flow code. Under PVM
(``QUIRKS_PVM``): ``kvm_exit``, ``kvm_entry`` and ``kvm_page_fault`` are never predicted;
a CPL0 access takes path ``EMULATED`` (``p.quirk == "pvm_cpl0_emulation"``: no #PF, no pf_*
stat, the emulator's own walk and the MMIO exit; inferred from HOST.md, not yet compared with a
trace); the emulator's instruction-fetch walk is not predicted (one
``kvm_mmu_pagetable_walk`` per CPL3 MMIO access, as observed).

Speed
-----
``bench_throughput(n=200_000, config=None) -> float`` returns simulated accesses per second.
"""

from __future__ import annotations

from hostkvm.mirror._bench import bench_throughput
from hostkvm.mirror._config import (
    ACC_ALL,
    ACC_EXEC_MASK,
    ACC_USER_MASK,
    ACC_WRITE_MASK,
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    MMIO_SPTE_GEN_HIGH_END,
    MMIO_SPTE_GEN_HIGH_START,
    MMIO_SPTE_GEN_LOW_START,
    PAGE_SHIFT,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
    SHADOW_NONPRESENT_OR_RSVD_MASK_LEN,
    SPTE_MMU_PRESENT_MASK,
    VMX_EPT_MISCONFIG_WX_VALUE,
    VMX_EPT_RWX_MASK,
    VMX_EPT_SUPPRESS_VE_BIT,
    HostConfig,
    genmask_ull,
    rsvd_bits,
)
from hostkvm.mirror._errors import MirrorConfigError
from hostkvm.mirror._model import (
    APIC_DEFAULT_PHYS_BASE,
    EVENT_FIELDS,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_MMIO,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_PAGE_FAULT_ERROR_CODE_MASK,
    KVM_TRACE_MMIO_READ,
    KVM_TRACE_MMIO_READ_UNSATISFIED,
    KVM_TRACE_MMIO_WRITE,
    MIRROR_EVENTS,
    MMIO_GVA_ANY,
    PFERR_FETCH_MASK,
    PFERR_PRESENT_MASK,
    PFERR_RSVD_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
    VCPU_STATS_MODELLED,
    VM_STATS_MODELLED,
    AccessKind,
    ActionResult,
    Memslot,
    MirrorVcpu,
    MirrorVm,
    MmioExit,
    Path,
    Prediction,
    TraceEvent,
    vcpu_cache_mmio_info,
    vcpu_clear_mmio_info,
    vcpu_match_mmio_gen,
    vcpu_match_mmio_gpa,
    vcpu_match_mmio_gva,
)
from hostkvm.mirror._presets import HOST_PVM_6_18, REFHOST_6_1_NPT, REFHOST_6_1_SHADOW
from hostkvm.mirror._profiles import (
    PROFILE_6_1,
    PROFILE_6_12,
    PROFILE_7,
    PROFILES,
    QUIRKS_PVM,
    QUIRKS_UPSTREAM,
    HostQuirks,
    KernelProfile,
    profile_for_release,
    quirks_for_backend,
)
from hostkvm.mirror._spte import (
    check_mmio_spte,
    generation_mmio_spte_mask,
    get_mmio_spte_access,
    get_mmio_spte_generation,
    get_mmio_spte_gfn,
    is_mmio_spte,
    is_shadow_present_pte,
    make_mmio_spte,
    mark_mmio_spte_access,
)

__all__ = [
    "ACC_ALL",
    "ACC_EXEC_MASK",
    "ACC_USER_MASK",
    "ACC_WRITE_MASK",
    "APIC_DEFAULT_PHYS_BASE",
    "AccessKind",
    "ActionResult",
    "EVENT_FIELDS",
    "HOST_PVM_6_18",
    "HostConfig",
    "HostQuirks",
    "KVM_EXIT_INTERNAL_ERROR",
    "KVM_EXIT_MMIO",
    "KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS",
    "KVM_MEM_LOG_DIRTY_PAGES",
    "KVM_MEM_READONLY",
    "KVM_PAGE_FAULT_ERROR_CODE_MASK",
    "KVM_TRACE_MMIO_READ",
    "KVM_TRACE_MMIO_READ_UNSATISFIED",
    "KVM_TRACE_MMIO_WRITE",
    "KernelProfile",
    "MIRROR_EVENTS",
    "MMIO_GVA_ANY",
    "MMIO_SPTE_GEN_HIGH_END",
    "MMIO_SPTE_GEN_HIGH_START",
    "MMIO_SPTE_GEN_LOW_START",
    "Memslot",
    "MirrorConfigError",
    "MirrorVcpu",
    "MirrorVm",
    "MmioExit",
    "PAGE_SHIFT",
    "PFERR_FETCH_MASK",
    "PFERR_PRESENT_MASK",
    "PFERR_RSVD_MASK",
    "PFERR_USER_MASK",
    "PFERR_WRITE_MASK",
    "PROFILES",
    "PROFILE_6_1",
    "PROFILE_6_12",
    "PROFILE_7",
    "PT_PRESENT_MASK",
    "PT_USER_MASK",
    "PT_WRITABLE_MASK",
    "Path",
    "Prediction",
    "QUIRKS_PVM",
    "QUIRKS_UPSTREAM",
    "REFHOST_6_1_NPT",
    "REFHOST_6_1_SHADOW",
    "SHADOW_NONPRESENT_OR_RSVD_MASK_LEN",
    "SPTE_MMU_PRESENT_MASK",
    "TraceEvent",
    "VCPU_STATS_MODELLED",
    "VMX_EPT_MISCONFIG_WX_VALUE",
    "VMX_EPT_RWX_MASK",
    "VMX_EPT_SUPPRESS_VE_BIT",
    "VM_STATS_MODELLED",
    "bench_throughput",
    "check_mmio_spte",
    "generation_mmio_spte_mask",
    "genmask_ull",
    "get_mmio_spte_access",
    "get_mmio_spte_generation",
    "get_mmio_spte_gfn",
    "is_mmio_spte",
    "is_shadow_present_pte",
    "make_mmio_spte",
    "mark_mmio_spte_access",
    "profile_for_release",
    "quirks_for_backend",
    "rsvd_bits",
    "vcpu_cache_mmio_info",
    "vcpu_clear_mmio_info",
    "vcpu_match_mmio_gen",
    "vcpu_match_mmio_gpa",
    "vcpu_match_mmio_gva",
]
