"""The state and fault flow of KVM's mmio-spte path: memslots and their generation, shadow
SPTEs, the per-vCPU MMIO info cache, stats counters, and what one guest access does.

Everything here is sequential: one vCPU acts at a time, so no concurrent zap ever makes
``handle_mmio_page_fault()`` return ``RET_PF_RETRY``; the only retry the mirror predicts is a
guest page fault the guest must handle itself.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from hostkvm.mirror._config import (
    ACC_ALL,
    ACC_USER_MASK,
    ACC_WRITE_MASK,
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    PAGE_SHIFT,
    PT_PRESENT_MASK,
    PT_USER_MASK,
    PT_WRITABLE_MASK,
    SHADOW_NONPRESENT_OR_RSVD_MASK_LEN,
    SPTE_MMU_PRESENT_MASK,
    HostConfig,
)
from hostkvm.mirror._errors import MirrorConfigError
from hostkvm.mirror._spte import (
    get_mmio_spte_access,
    get_mmio_spte_generation,
    get_mmio_spte_gfn,
    make_mmio_spte,
)

__all__ = [
    "APIC_DEFAULT_PHYS_BASE",
    "AccessKind",
    "ActionResult",
    "KVM_EXIT_INTERNAL_ERROR",
    "KVM_EXIT_MMIO",
    "KVM_MEM_LOG_DIRTY_PAGES",
    "KVM_MEM_READONLY",
    "KVM_PAGE_FAULT_ERROR_CODE_MASK",
    "KVM_TRACE_MMIO_READ",
    "KVM_TRACE_MMIO_READ_UNSATISFIED",
    "KVM_TRACE_MMIO_WRITE",
    "EVENT_FIELDS",
    "MIRROR_EVENTS",
    "MMIO_GVA_ANY",
    "Memslot",
    "MirrorVcpu",
    "MirrorVm",
    "MmioExit",
    "PFERR_FETCH_MASK",
    "PFERR_PRESENT_MASK",
    "PFERR_RSVD_MASK",
    "PFERR_USER_MASK",
    "PFERR_WRITE_MASK",
    "Path",
    "Prediction",
    "TraceEvent",
    "VCPU_STATS_MODELLED",
    "VM_STATS_MODELLED",
    "vcpu_cache_mmio_info",
    "vcpu_clear_mmio_info",
    "vcpu_match_mmio_gen",
    "vcpu_match_mmio_gpa",
    "vcpu_match_mmio_gva",
]

PAGE_SIZE = 1 << PAGE_SHIFT
_OFF = PAGE_SIZE - 1
_U64 = (1 << 64) - 1
PAGE_MASK = _U64 & ~_OFF
MMIO_GVA_ANY = _U64
APIC_DEFAULT_PHYS_BASE = 0xFEE00000
_UIP = KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS

# kvm_host.h PFERR_*
PFERR_PRESENT_MASK = 1 << 0
PFERR_WRITE_MASK = 1 << 1
PFERR_USER_MASK = 1 << 2
PFERR_RSVD_MASK = 1 << 3
PFERR_FETCH_MASK = 1 << 4
#: The ``kvm_page_fault.error_code`` bits the mirror predicts. Compare under this mask: the
#: P bit of an RSVD fault and the high #NPF bits vary (QEMU TCG reports RSVD faults without P).
KVM_PAGE_FAULT_ERROR_CODE_MASK = PFERR_WRITE_MASK | PFERR_USER_MASK | PFERR_RSVD_MASK | PFERR_FETCH_MASK

# uapi kvm.h
KVM_EXIT_MMIO = 6
KVM_EXIT_INTERNAL_ERROR = 17
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# trace/events/kvm.h kvm_trace_symbol_mmio
KVM_TRACE_MMIO_READ_UNSATISFIED = 0
KVM_TRACE_MMIO_READ = 1
KVM_TRACE_MMIO_WRITE = 2

#: vCPU binary-stats counters the mirror predicts; one absent from a prediction's ``stats``
#: is predicted unchanged.
VCPU_STATS_MODELLED = (
    "pf_taken",
    "pf_fixed",
    "pf_emulate",
    "pf_spurious",
    "pf_mmio_spte_created",
    "pf_guest",
    "mmio_exits",
    "invlpg",
    "insn_emulation_fail",
)
#: VM binary-stats counters the mirror predicts.
VM_STATS_MODELLED = ("mmu_pte_write",)

#: Trace events the mirror predicts (name without subsystem). Compare a host trace only on
#: these names, minus the host's ``config.quirks.absent_tracepoints``.
MIRROR_EVENTS = frozenset(
    {
        "kvm_page_fault",
        "kvm_mmu_pagetable_walk",
        "check_mmio_spte",
        "handle_mmio_page_fault",
        "mark_mmio_spte",
        "vcpu_match_mmio",
        "kvm_mmio",
        "kvm_userspace_exit",
        "kvm_mmu_zap_all_fast",
    }
)


class AccessKind(enum.IntEnum):
    """What the guest instruction does to memory."""

    READ = 0
    WRITE = 1
    FETCH = 2


_KINDS: dict[Any, AccessKind] = {
    AccessKind.READ: AccessKind.READ,
    AccessKind.WRITE: AccessKind.WRITE,
    AccessKind.FETCH: AccessKind.FETCH,
    "r": AccessKind.READ,
    "read": AccessKind.READ,
    "w": AccessKind.WRITE,
    "write": AccessKind.WRITE,
    "x": AccessKind.FETCH,
    "fetch": AccessKind.FETCH,
}


class Path(enum.Enum):
    """Which way through KVM one guest access went."""

    #: RSVD #PF; ``mmio_info_in_cache()`` hit in ``handle_mmio_page_fault()``: no kvmmmu event,
    #: no pf_* stat.
    CACHE_HIT = "per_vcpu_cache_hit"
    #: RSVD #PF; the MMIO SPTE's generation is current: ``check_mmio_spte`` +
    #: ``handle_mmio_page_fault`` events, no pf_* stat.
    MMIO_SPTE_HIT = "mmio_spte_hit"
    #: RSVD #PF; stale generation: ``RET_PF_INVALID`` → slow path, which re-marks the SPTE.
    STALE_GENERATION = "stale_generation_slow_path"
    #: Not-present #PF on a gfn with no memslot; an MMIO SPTE is installed (``mark_mmio_spte``).
    NOSLOT_INSTALL = "noslot_slow_path_install"
    #: Not-present #PF on a gfn with no memslot; caching off (or gfn > max gfn): emulate at once.
    NOSLOT_NO_INSTALL = "noslot_slow_path_no_install"
    #: Every byte is RAM with a usable SPTE: no exit, no KVM involvement.
    RAM_HIT = "ram_hit"
    #: RAM, but a not-present SPTE had to be filled first (``pf_fixed``); no exit.
    RAM_FIXED = "ram_fault_fixed"
    #: A write to a ``KVM_MEM_READONLY`` slot: ``RET_PF_EMULATE`` without the MMIO cache.
    READONLY_WRITE = "readonly_slot_write"
    #: ``RET_PF_RETRY``: the guest's own page tables fault; KVM injects #PF into the guest.
    RETRY = "retry"
    #: Host quirk (PVM): CPL0 code runs in KVM's emulator, no shadow #PF at all.
    EMULATED = "emulated"

    # members are singletons compared by identity: hash them the cheap way (hot dict keys)
    __hash__ = object.__hash__


class TraceEvent(NamedTuple):
    """One predicted trace event: ``name`` without subsystem, ``fields`` as in the format file.

    A field whose value is ``None`` is not predicted (e.g. ``guest_rip``, ``mmu_used_pages``);
    leave it out of a comparison.
    """

    name: str
    fields: dict[str, Any]


class MmioExit(NamedTuple):
    """One ``KVM_EXIT_MMIO`` round trip: ``kvm_run.mmio`` as userspace sees it.

    ``data`` is the bytes written (writes), or ``None`` (reads, or writes whose data was not
    given).
    """

    gpa: int
    len: int
    is_write: bool
    data: bytes | None


class ActionResult(NamedTuple):
    """What a host action (memslot change, INVLPG, CR3 load, ...) emitted and why."""

    events: list[TraceEvent]
    reasoning: str


class Prediction:
    """What the host does for one guest access.

    ``path``: a :class:`Path`. ``exits``: the ``KVM_EXIT_MMIO`` round trips in order (split at
    page ends and every 8 bytes). ``exit_reason``: ``KVM_EXIT_MMIO``, ``KVM_EXIT_INTERNAL_ERROR``
    or ``None`` (the access needs no exit). ``events``: the trace events in order (built on
    first use). ``stats``: nonzero vCPU stat deltas (names from ``VCPU_STATS_MODELLED``).
    ``quirk``: the host quirk that decided the path, if any. ``reasoning``: the kernel
    functions it went through, for divergence reports.
    """

    __slots__ = ("path", "exits", "exit_reason", "stats", "quirk", "_raw", "_events", "_via")

    def __init__(
        self,
        path: Path,
        exits: tuple[MmioExit, ...],
        exit_reason: int | None,
        raw_events: list[tuple[Any, ...]],
        stats: dict[str, int],
        via: list[str],
        quirk: str | None = None,
    ) -> None:
        self.path = path
        self.exits = exits
        self.exit_reason = exit_reason
        self.stats = stats
        self.quirk = quirk
        self._raw = raw_events
        self._events: list[tuple[Any, ...]] | None = None
        self._via = via

    @property
    def events(self) -> list[TraceEvent]:
        if self._events is None:
            self._events = _materialize(self._raw)
        return self._events

    @property
    def reasoning(self) -> str:
        text = f"{self.path.value}: " + " -> ".join(self._via)
        if self.quirk:
            text += f" [host quirk: {self.quirk}]"
        return text

    def event_names(self, enabled: frozenset[str] | set[str] | None = None) -> list[str]:
        """The event names in order, keeping only ``enabled`` ones when given."""
        if enabled is None:
            return [e[0] for e in self._raw]
        return [e[0] for e in self._raw if e[0] in enabled]

    def __repr__(self) -> str:
        return (
            f"Prediction(path={self.path.name}, exits={list(self.exits)!r}, "
            f"events={self.event_names()!r}, stats={self.stats!r})"
        )


#: Field names of each event the mirror emits, in the order of its compact raw form
#: ``(name, value, ...)`` (the tracefs format files' names).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "kvm_page_fault": ("vcpu_id", "guest_rip", "fault_address", "error_code"),
    "kvm_mmu_pagetable_walk": ("addr", "pferr"),
    "check_mmio_spte": ("kvm_gen", "spte_gen", "spte"),
    "handle_mmio_page_fault": ("addr", "gfn", "access"),
    "mark_mmio_spte": ("sptep", "gfn", "access", "gen"),
    "vcpu_match_mmio": ("gva", "gpa", "write", "gpa_match"),
    "kvm_mmio": ("type", "len", "gpa", "val"),
    "kvm_userspace_exit": ("reason", "errno"),
    "kvm_mmu_zap_all_fast": ("mmu_valid_gen", "mmu_used_pages"),
}


def _materialize(raw: list[tuple[Any, ...]]) -> list[TraceEvent]:
    return [TraceEvent(r[0], dict(zip(EVENT_FIELDS[r[0]], r[1:]))) for r in raw]


class Memslot:
    """One ``kvm_userspace_memory_region``: ``slot``, ``base_gfn``, ``npages``, ``flags``."""

    __slots__ = ("slot", "base_gfn", "npages", "flags")

    def __init__(self, slot: int, base_gfn: int, npages: int, flags: int) -> None:
        self.slot = slot
        self.base_gfn = base_gfn
        self.npages = npages
        self.flags = flags

    @property
    def readonly(self) -> bool:
        return bool(self.flags & KVM_MEM_READONLY)

    def __repr__(self) -> str:
        return (
            f"Memslot(slot={self.slot}, gpa={self.base_gfn << PAGE_SHIFT:#x}, "
            f"size={self.npages << PAGE_SHIFT:#x}, flags={self.flags:#x})"
        )


class MirrorVcpu:
    """One vCPU: ``kvm_vcpu_arch``'s MMIO info cache (``mmio_gva``, ``mmio_access``,
    ``mmio_gfn``, ``mmio_gen``), its stat counters, and whether guest paging is on.

    With paging off the shadow MMU is direct (``nonpaging``), as with TDP.
    """

    __slots__ = ("vm", "vcpu_id", "mmio_gva", "mmio_access", "mmio_gfn", "mmio_gen", "stat", "paging")

    def __init__(self, vm: MirrorVm, vcpu_id: int, paging: bool = True) -> None:
        self.vm = vm
        self.vcpu_id = vcpu_id
        self.mmio_gva = 0
        self.mmio_access = 0
        self.mmio_gfn = 0
        self.mmio_gen = 0
        self.stat: dict[str, int] = dict.fromkeys(VCPU_STATS_MODELLED, 0)
        self.paging = paging

    def __repr__(self) -> str:
        return (
            f"MirrorVcpu({self.vcpu_id}, mmio_gva={self.mmio_gva:#x}, mmio_gfn={self.mmio_gfn:#x}, "
            f"mmio_access={self.mmio_access:#x}, mmio_gen={self.mmio_gen:#x})"
        )


# ----------------------------------------------------------------------------------------
# x86.h per-vCPU MMIO info cache


def vcpu_cache_mmio_info(vcpu: MirrorVcpu, gva: int, gfn: int, access: int) -> None:
    """x86.h:vcpu_cache_mmio_info(): remember the last MMIO translation; nothing while a
    memslot update is in progress."""
    gen = vcpu.vm.generation
    if gen & _UIP:
        return
    vcpu.mmio_gva = gva & PAGE_MASK
    vcpu.mmio_access = access
    vcpu.mmio_gfn = gfn
    vcpu.mmio_gen = gen


def vcpu_clear_mmio_info(vcpu: MirrorVcpu, gva: int) -> None:
    """x86.h:vcpu_clear_mmio_info(): forget ``mmio_gva`` (only it) if it is ``gva``'s page or
    ``gva`` is ``MMIO_GVA_ANY``."""
    if gva != MMIO_GVA_ANY and vcpu.mmio_gva != (gva & PAGE_MASK):
        return
    vcpu.mmio_gva = 0


def vcpu_match_mmio_gen(vcpu: MirrorVcpu) -> bool:
    """x86.h:vcpu_match_mmio_gen(): full 64-bit generation compare."""
    return vcpu.mmio_gen == vcpu.vm.generation


def vcpu_match_mmio_gva(vcpu: MirrorVcpu, gva: int) -> bool:
    """x86.h:vcpu_match_mmio_gva(): GVA page 0 never matches."""
    return (
        vcpu.mmio_gen == vcpu.vm.generation
        and vcpu.mmio_gva != 0
        and vcpu.mmio_gva == (gva & PAGE_MASK)
    )


def vcpu_match_mmio_gpa(vcpu: MirrorVcpu, gpa: int) -> bool:
    """x86.h:vcpu_match_mmio_gpa(): GFN 0 never matches."""
    return (
        vcpu.mmio_gen == vcpu.vm.generation
        and vcpu.mmio_gfn != 0
        and vcpu.mmio_gfn == gpa >> PAGE_SHIFT
    )


# ----------------------------------------------------------------------------------------


class MirrorVm:
    """A model VM: memslots and their generation, shadow SPTEs, vCPUs, stats.

    ``MirrorVm(config, nr_vcpus=1)``. Guest accesses go through :meth:`access`; host actions
    are :meth:`create_memslot`, :meth:`delete_memslot`, :meth:`move_memslot`,
    :meth:`set_memslot_flags`, :meth:`track_write`, :meth:`invlpg`, :meth:`load_cr3`,
    :meth:`sync_roots`, :meth:`zap_all` and the :meth:`memslot_update_window` context.

    ``generation`` starts at the address-space id (0); ``generation=`` overrides it, to
    reach the MMIO-generation wrap without half a million swaps (not a kernel behaviour).
    """

    def __init__(
        self, config: HostConfig, nr_vcpus: int = 1, *, paging: bool = True, generation: int = 0
    ) -> None:
        if nr_vcpus < 1:
            raise MirrorConfigError(f"MirrorVm: nr_vcpus {nr_vcpus} must be at least 1")
        self.config = config
        self.generation = generation
        self.memslots: dict[int, Memslot] = {}
        self._slot_list: list[Memslot] = []
        self.vcpus = [MirrorVcpu(self, i, paging) for i in range(nr_vcpus)]
        self.stat: dict[str, int] = dict.fromkeys(VM_STATS_MODELLED, 0)
        self.mmu_valid_gen = 0
        #: indirect (shadow, guest paging on) leaf SPTEs keyed by gva page number
        self.sptes_indirect: dict[int, int] = {}
        #: direct (TDP, or shadow with guest paging off) leaf SPTEs keyed by gfn
        self.sptes_direct: dict[int, int] = {}
        #: gva pages whose leaf shadow page is unsync (see :meth:`mark_unsync`)
        self.unsync: set[int] = set()
        self.shadow_mmio_value = config.shadow_mmio_value  # kvm->arch.shadow_mmio_value
        q = config.quirks
        assert q is not None
        absent = q.absent_tracepoints
        self._tp_page_fault = "kvm_page_fault" not in absent
        self._cpl0_emulated = q.cpl0_emulated
        self._fetch_walk = q.emulator_fetch_walk
        self._gen_mask = config.mmio_spte_gen_mask
        self._tdp = config.tdp_enabled
        self._ept = config.paging == "ept"
        self._npt = config.paging == "npt"
        self._caching = config.enable_mmio_caching
        self._mmio_mask = config.shadow_mmio_mask

    # ------------------------------------------------------------------ memslots

    def _lookup(self, gfn: int) -> Memslot | None:
        for s in self._slot_list:
            if s.base_gfn <= gfn < s.base_gfn + s.npages:
                return s
        return None

    def gfn_to_memslot(self, gfn: int) -> Memslot | None:
        """kvm_main.c:gfn_to_memslot(): the slot backing ``gfn``, or ``None``."""
        return self._lookup(gfn)

    def _rebuild(self) -> None:
        self._slot_list = list(self.memslots.values())

    def _swap(self, events: list[tuple[Any, ...]], via: list[str]) -> None:
        """kvm_main.c:kvm_swap_active_memslots() then x86.c:kvm_arch_memslots_updated()."""
        gen = self.generation
        if gen & _UIP:
            raise MirrorConfigError(
                "kvm_swap_active_memslots: a memslot update is already in progress "
                "(leave memslot_update_window() first)"
            )
        gen += self.config.nr_address_spaces
        self.generation = gen
        via.append(f"kvm_swap_active_memslots(gen {gen:#x})")
        self._invalidate_mmio_sptes(gen, events, via)

    def _invalidate_mmio_sptes(self, gen: int, events: list[tuple[Any, ...]], via: list[str]) -> None:
        """mmu.c:kvm_mmu_invalidate_mmio_sptes(): zap all when the MMIO generation wraps."""
        cfg = self.config
        if cfg.profile.invalidate_mmio_sptes_checks_caching and not cfg.enable_mmio_caching:  # type: ignore[union-attr]
            return
        gen &= self._gen_mask
        gen &= ~(cfg.nr_address_spaces - 1)
        if gen == 0:
            via.append("kvm_mmu_invalidate_mmio_sptes: MMIO generation wrapped")
            self._zap_all_fast(events, via)

    def _zap_all_fast(self, events: list[tuple[Any, ...]], via: list[str]) -> None:
        """mmu.c:__kvm_mmu_zap_all_fast_front_half(): trace, toggle mmu_valid_gen, drop every SPTE."""
        events.append(
            ("kvm_mmu_zap_all_fast", self.mmu_valid_gen, None)
        )
        self.mmu_valid_gen ^= 1
        self.sptes_indirect.clear()
        self.sptes_direct.clear()
        self.unsync.clear()
        via.append("kvm_mmu_zap_all_fast")

    def _check_slot(self, slot: int, base_gfn: int, npages: int, ignore: int | None = None) -> None:
        for s in self._slot_list:
            if s.slot == ignore:
                continue
            if base_gfn < s.base_gfn + s.npages and s.base_gfn < base_gfn + npages:
                raise MirrorConfigError(
                    f"KVM_SET_USER_MEMORY_REGION: gpa {base_gfn << PAGE_SHIFT:#x} size "
                    f"{npages << PAGE_SHIFT:#x} overlaps {s!r} (the kernel answers EEXIST)"
                )

    @staticmethod
    def _pages(gpa: int, size: int) -> tuple[int, int]:
        if gpa & _OFF or size & _OFF or size <= 0:
            raise MirrorConfigError(
                f"KVM_SET_USER_MEMORY_REGION: gpa {gpa:#x} and size {size:#x} must be page "
                "aligned and size nonzero (the kernel answers EINVAL)"
            )
        return gpa >> PAGE_SHIFT, size >> PAGE_SHIFT

    def create_memslot(self, slot: int, gpa: int, size: int, flags: int = 0) -> ActionResult:
        """KVM_MR_CREATE: one memslot swap."""
        if slot in self.memslots:
            raise MirrorConfigError(f"create_memslot: slot {slot} exists; use move or flag change")
        base, npages = self._pages(gpa, size)
        self._check_slot(slot, base, npages)
        events: list[tuple[Any, ...]] = []
        via = [f"kvm_set_memslot(KVM_MR_CREATE slot {slot})"]
        self.memslots[slot] = Memslot(slot, base, npages, flags)
        self._rebuild()
        self._swap(events, via)
        return ActionResult(_materialize(events), " -> ".join(via))

    def _flush_shadow_memslot(self, old: Memslot, events: list[tuple[Any, ...]], via: list[str]) -> None:
        """x86.c:kvm_arch_flush_shadow_memslot()."""
        if self.config.slot_zap_all_quirk:
            via.append("kvm_arch_flush_shadow_memslot: KVM_X86_QUIRK_SLOT_ZAP_ALL")
            self._zap_all_fast(events, via)
            return
        via.append("kvm_arch_flush_shadow_memslot: zap the slot's SPTEs")
        lo, hi = old.base_gfn, old.base_gfn + old.npages
        for table in (self.sptes_indirect, self.sptes_direct):
            doomed = [
                k for k, v in table.items() if v & SPTE_MMU_PRESENT_MASK and lo <= (v >> PAGE_SHIFT) & _GFN < hi
            ]
            for key in doomed:
                del table[key]

    def delete_memslot(self, slot: int) -> ActionResult:
        """KVM_MR_DELETE: swap to an INVALID copy, flush, swap again (two swaps)."""
        old = self._get(slot)
        events: list[tuple[Any, ...]] = []
        via = [f"kvm_set_memslot(KVM_MR_DELETE slot {slot})", "kvm_invalidate_memslot"]
        del self.memslots[slot]
        self._rebuild()
        self._swap(events, via)
        self._flush_shadow_memslot(old, events, via)
        via.append("kvm_activate_memslot")
        self._swap(events, via)
        return ActionResult(_materialize(events), " -> ".join(via))

    def move_memslot(self, slot: int, gpa: int) -> ActionResult:
        """KVM_MR_MOVE: like delete, two swaps and a flush of the old range."""
        old = self._get(slot)
        base, _ = self._pages(gpa, old.npages << PAGE_SHIFT)
        self._check_slot(slot, base, old.npages, ignore=slot)
        events: list[tuple[Any, ...]] = []
        via = [f"kvm_set_memslot(KVM_MR_MOVE slot {slot} to {gpa:#x})", "kvm_invalidate_memslot"]
        del self.memslots[slot]
        self._rebuild()
        self._swap(events, via)
        self._flush_shadow_memslot(old, events, via)
        self.memslots[slot] = Memslot(slot, base, old.npages, old.flags)
        self._rebuild()
        via.append("kvm_activate_memslot")
        self._swap(events, via)
        return ActionResult(_materialize(events), " -> ".join(via))

    def set_memslot_flags(self, slot: int, flags: int) -> ActionResult:
        """KVM_MR_FLAGS_ONLY (e.g. toggling ``KVM_MEM_LOG_DIRTY_PAGES``): one swap.

        Dirty-logging write protection of RAM SPTEs is not modelled.
        """
        old = self._get(slot)
        events: list[tuple[Any, ...]] = []
        via = [f"kvm_set_memslot(KVM_MR_FLAGS_ONLY slot {slot} flags {flags:#x})"]
        old.flags = flags
        self._swap(events, via)
        return ActionResult(_materialize(events), " -> ".join(via))

    def _get(self, slot: int) -> Memslot:
        try:
            return self.memslots[slot]
        except KeyError:
            raise MirrorConfigError(
                f"KVM_SET_USER_MEMORY_REGION: slot {slot} does not exist (slots: {sorted(self.memslots)})"
            ) from None

    @contextmanager
    def memslot_update_window(self) -> Iterator[None]:
        """The SRCU window of ``kvm_swap_active_memslots()``: the generation carries
        ``KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS`` inside, and is bumped by the address-space count
        on leaving (with the wrap check). Accesses made inside see the in-progress generation.
        """
        gen = self.generation
        if gen & _UIP:
            raise MirrorConfigError("memslot_update_window: already inside one")
        self.generation = gen | _UIP
        try:
            yield
        finally:
            self.generation = gen
            self._swap([], [])

    # ------------------------------------------------------------------ host MMU actions

    def vcpu(self, index: int) -> MirrorVcpu:
        return self.vcpus[index]

    def mark_unsync(self, gva: int) -> None:
        """Say that the leaf shadow page mapping ``gva`` is unsync (``sp->unsync``), so that
        INVLPG syncs its SPTEs with ``FNAME(sync_spte)``."""
        self.unsync.add(gva >> PAGE_SHIFT)

    def track_write(self, gva: int) -> ActionResult:
        """mmu.c:kvm_mmu_track_write(): the guest wrote the gPTE that maps ``gva`` (an emulated
        write to a write-tracked page table). ``mmu_page_zap_pte()`` clears the leaf SPTE, MMIO
        or present; the per-vCPU cache is not touched. No-op with TDP (no indirect shadow pages).
        """
        via = ["kvm_mmu_track_write"]
        if self.config.tdp_enabled:
            via.append("no indirect shadow pages: return")
            return ActionResult([], " -> ".join(via))
        self.stat["mmu_pte_write"] += 1
        spte = self.sptes_indirect.pop(gva >> PAGE_SHIFT, None)
        if spte is not None:
            how = "drop_spte" if spte & SPTE_MMU_PRESENT_MASK else "mmu_spte_clear_no_track (MMIO SPTE)"
            via.append("mmu_page_zap_pte: " + how)
        return ActionResult([], " -> ".join(via))

    def invlpg(
        self,
        vcpu: MirrorVcpu | int,
        gva: int,
        *,
        gpa: int | None = None,
        present: bool = True,
        pte_access: int = ACC_ALL,
    ) -> ActionResult:
        """mmu.c:kvm_mmu_invlpg(): ``invlpg`` stat, then for shadow MMUs
        ``__kvm_mmu_invalidate_addr()``: ``vcpu_clear_mmio_info(gva)`` and, if the leaf shadow
        page is unsync, ``FNAME(sync_spte)`` against the guest PTE now in memory: ``gpa`` (default:
        unchanged), ``present``, ``pte_access``. ``sync_mmio_spte()`` clears an MMIO SPTE whose
        gfn changed and re-marks it otherwise (a ``mark_mmio_spte`` event, no
        ``pf_mmio_spte_created``). In the 6.1 profile ``FNAME(invlpg)`` just zaps it.
        """
        v = vcpu if isinstance(vcpu, MirrorVcpu) else self.vcpus[vcpu]
        events: list[tuple[Any, ...]] = []
        cfg = self.config
        if cfg.tdp_enabled:
            # svm.c:init_vmcb() clears INTERCEPT_INVLPG when npt_enabled; vmx.c drops
            # CPU_BASED_INVLPG_EXITING with EPT: the guest's INVLPG never reaches KVM.
            return ActionResult([], "INVLPG is not intercepted with EPT/NPT")
        via = ["kvm_mmu_invlpg"]
        v.stat["invlpg"] += 1
        if not v.paging:
            via.append("direct MMU: no sync_spte, MMIO cache untouched")
            return ActionResult(_materialize(events), " -> ".join(via))
        via.append("__kvm_mmu_invalidate_addr: vcpu_clear_mmio_info")
        vcpu_clear_mmio_info(v, gva)
        page = gva >> PAGE_SHIFT
        if page in self.unsync:
            self._sync_spte(page, gpa, present, pte_access, events, via)
        return ActionResult(_materialize(events), " -> ".join(via))

    def _sync_spte(
        self,
        page: int,
        gpa: int | None,
        present: bool,
        pte_access: int,
        events: list[tuple[Any, ...]],
        via: list[str],
    ) -> None:
        """paging_tmpl.h:FNAME(sync_spte) on one leaf (only MMIO SPTEs are modelled in detail)."""
        spte = self.sptes_indirect.get(page)
        if spte is None:
            return
        cfg = self.config
        if not cfg.profile.invlpg_syncs_mmio_spte:  # type: ignore[union-attr]
            via.append("FNAME(invlpg): mmu_page_zap_pte")
            del self.sptes_indirect[page]
            return
        if not present:
            via.append("FNAME(sync_spte): FNAME(prefetch_invalid_gpte) -> drop_spte")
            del self.sptes_indirect[page]
            return
        if spte & SPTE_MMU_PRESENT_MASK:
            old_gfn = (spte >> PAGE_SHIFT) & _GFN
            if gpa is not None and gpa >> PAGE_SHIFT != old_gfn:
                via.append("FNAME(sync_spte): gfn changed -> drop_spte")
                del self.sptes_indirect[page]
            return
        gfn = get_mmio_spte_gfn(cfg, spte)
        new_gfn = gfn if gpa is None else gpa >> PAGE_SHIFT
        if new_gfn != gfn:
            via.append("FNAME(sync_spte): sync_mmio_spte: gfn changed -> mmu_spte_clear_no_track")
            del self.sptes_indirect[page]
            return
        via.append("FNAME(sync_spte): sync_mmio_spte -> mark_mmio_spte")
        self._mark_mmio_spte(self.sptes_indirect, page, gfn, pte_access, events)

    def load_cr3(self, vcpu: MirrorVcpu | int) -> ActionResult:
        """mmu.c:kvm_mmu_new_pgd(): a CR3 load clears the whole MMIO cache
        (``vcpu_clear_mmio_info(MMIO_GVA_ANY)``). The mirror keeps one set of shadow roots."""
        v = vcpu if isinstance(vcpu, MirrorVcpu) else self.vcpus[vcpu]
        if self.config.tdp_enabled and v.paging:
            # CR3 writes of a paging guest do not exit with EPT/NPT (svm.c/vmx.c intercept
            # CR3 only without TDP): KVM never sees this load.
            return ActionResult([], "CR3 load is not intercepted with EPT/NPT")
        vcpu_clear_mmio_info(v, MMIO_GVA_ANY)
        return ActionResult([], "kvm_mmu_new_pgd -> vcpu_clear_mmio_info(MMIO_GVA_ANY)")

    def sync_roots(self, vcpu: MirrorVcpu | int) -> ActionResult:
        """mmu.c:kvm_mmu_sync_roots() (shadow only): clear the MMIO cache, then sync every
        unsync leaf; unchanged MMIO gPTEs are re-marked (``mark_mmio_spte``)."""
        v = vcpu if isinstance(vcpu, MirrorVcpu) else self.vcpus[vcpu]
        events: list[tuple[Any, ...]] = []
        via = ["kvm_mmu_sync_roots"]
        if self.config.tdp_enabled or not v.paging:
            via.append("root_role.direct: return")
            return ActionResult(_materialize(events), " -> ".join(via))
        vcpu_clear_mmio_info(v, MMIO_GVA_ANY)
        via.append("vcpu_clear_mmio_info(MMIO_GVA_ANY)")
        for page in sorted(self.unsync):
            spte = self.sptes_indirect.get(page)
            if spte is not None and not spte & SPTE_MMU_PRESENT_MASK:
                self._sync_spte(page, None, True, get_mmio_spte_access(self.config, spte), events, via)
        self.unsync.clear()
        return ActionResult(_materialize(events), " -> ".join(via))

    def zap_all(self) -> ActionResult:
        """mmu.c:kvm_mmu_zap_all_fast()."""
        events: list[tuple[Any, ...]] = []
        via: list[str] = []
        self._zap_all_fast(events, via)
        return ActionResult(_materialize(events), " -> ".join(via))

    # ------------------------------------------------------------------ the fault flow

    def _mark_mmio_spte(
        self, table: dict[int, int], key: int, gfn: int, access: int, events: list[tuple[Any, ...]]
    ) -> int:
        """mmu.c:mark_mmio_spte()."""
        spte = make_mmio_spte(self.config, gfn, access, self.generation, self.shadow_mmio_value)
        table[key] = spte
        events.append(("mark_mmio_spte", None, gfn, spte & ACC_ALL, get_mmio_spte_generation(self.config, spte)))
        return spte

    def access(
        self,
        vcpu: MirrorVcpu | int,
        gva: int,
        gpa: int,
        width: int,
        kind: AccessKind | str = AccessKind.WRITE,
        cpl: int = 3,
        data: bytes | None = None,
        *,
        pte_access: int = ACC_ALL,
        gpa2: int | None = None,
        rip: int | None = None,
    ) -> Prediction:
        """Predict one guest access of ``width`` bytes at ``gva`` (which the guest maps to
        ``gpa``; the second page of a page-crossing access maps to ``gpa2``, default the next
        physical page), at privilege ``cpl``. ``data`` is the bytes written (writes) or the
        bytes the instruction ends up reading (reads, optional; fills ``kvm_mmio read``'s
        ``val``). ``pte_access`` is the guest PTE's ``ACC_*`` bits; a CPL3 access to a page
        without ``ACC_USER_MASK`` (or a write without ``ACC_WRITE_MASK``) is a guest #PF.
        """
        v = vcpu if vcpu.__class__ is MirrorVcpu else self.vcpus[vcpu]  # type: ignore[index]
        k = _KINDS.get(kind)
        if k is None:
            raise MirrorConfigError(f"access: kind {kind!r} is not read, write or fetch")
        write = k is _WRITE
        if width <= 0:
            raise MirrorConfigError(f"access: width {width} must be positive")
        if write and data is not None and len(data) != width:
            raise MirrorConfigError(f"access: {len(data)} data bytes for a {width}-byte write")

        off = gva & _OFF
        if off + width > PAGE_SIZE:
            if width > PAGE_SIZE:
                raise MirrorConfigError(f"access: width {width} spans more than two pages")
            first = PAGE_SIZE - off
            g2 = gpa2 if gpa2 is not None else (gpa & PAGE_MASK) + PAGE_SIZE
            parts: tuple[tuple[int, int, int, int], ...] = (
                (gva, gpa, first, 0),
                ((gva & PAGE_MASK) + PAGE_SIZE, g2, width - first, first),
            )
        else:
            parts = ((gva, gpa, width, 0),)

        events: list[tuple[Any, ...]] = []
        via: list[str] = []

        if cpl == 0 and self._cpl0_emulated:
            via.append("CPL0 runs in x86_emulate_instruction() (no shadow #PF)")
            exits, reason = self._emulate(v, parts, k, cpl, data, None, pte_access, events, via)
            stats = _exit_stats(reason)
            if reason == _GUEST_PF:
                reason = None
            self._commit(v, stats)
            return Prediction(Path.EMULATED, exits, reason, events, stats, via, "pvm_cpl0_emulation")

        direct = self._tdp or not v.paging
        table = self.sptes_direct if direct else self.sptes_indirect
        pfec = (PFERR_USER_MASK if cpl == 3 else 0) | (
            PFERR_WRITE_MASK if write else (PFERR_FETCH_MASK if k is _FETCH else 0)
        )
        caching = self._caching
        mmio_mask = self._mmio_mask
        mmio_value = self.shadow_mmio_value
        counts: list[Path] = []  # slow-path outcomes, for the stats
        gpa_val: int | None = None
        for pgva, pgpa, _plen, _o in parts:
            key = (pgpa if direct else pgva) >> PAGE_SHIFT
            spte = table.get(key)
            addr = pgpa if direct else pgva
            if spte is None:
                ec = pfec
            elif spte & SPTE_MMU_PRESENT_MASK:
                if not write or spte & PT_WRITABLE_MASK:
                    continue
                ec = pfec | PFERR_PRESENT_MASK
            elif caching and (spte & mmio_mask) == mmio_value:
                # RSVD #PF on an MMIO SPTE: mmu.c:handle_mmio_page_fault()
                ec = pfec | PFERR_RSVD_MASK | PFERR_PRESENT_MASK
                if self._tp_page_fault:
                    self._trace_page_fault(v, addr, ec, rip, events)
                via.append("kvm_mmu_page_fault(PFERR_RSVD) -> handle_mmio_page_fault")
                path = self._handle_mmio_page_fault(v, addr, spte, direct, events, via)
                if path is None:  # RET_PF_INVALID: the slow path, which rewrites the SPTE
                    path = self._slow_fault(v, pgva, pgpa, pfec, write, direct, table, key, pte_access, events, via)
                    counts.append(path)
                    if path is Path.RAM_FIXED:
                        continue
                    if path is Path.NOSLOT_INSTALL:
                        path = Path.STALE_GENERATION
                if direct:
                    gpa_val = addr
                break
            else:
                ec = pfec
            if self._tp_page_fault:
                self._trace_page_fault(v, addr, ec, rip, events)
            via.append("kvm_mmu_page_fault")
            path = self._slow_fault(v, pgva, pgpa, ec, write, direct, table, key, pte_access, events, via)
            counts.append(path)
            if path is Path.RAM_FIXED:
                continue
            if direct:
                gpa_val = addr
            break
        else:
            if not counts:
                return Prediction(Path.RAM_HIT, (), None, events, {}, ["no fault: every byte has a usable SPTE"])
            stats = _fault_stats(counts)
            self._commit(v, stats)
            return Prediction(Path.RAM_FIXED, (), None, events, stats, via)

        if path is Path.RETRY:
            stats = _fault_stats(counts)
            self._commit(v, stats)
            return Prediction(path, (), None, events, stats, via)
        exits, reason = self._emulate(v, parts, k, cpl, data, gpa_val, pte_access, events, via)
        if counts:
            stats = dict(_PATH_STATS[counts[0]]) if len(counts) == 1 else _fault_stats(counts)
            if reason is not None:
                stats[_EXIT_STAT[reason]] = 1
        else:
            stats = _exit_stats(reason)
        if reason == _GUEST_PF:
            reason = None
        st = v.stat
        for name, n in stats.items():
            st[name] += n
        return Prediction(path, exits, reason, events, stats, via)

    def _handle_mmio_page_fault(
        self, v: MirrorVcpu, addr: int, spte: int, direct: bool, events: list[tuple[Any, ...]], via: list[str]
    ) -> Path | None:
        """mmu.c:handle_mmio_page_fault(); ``None`` stands for ``RET_PF_INVALID``."""
        gen = self.generation
        if v.mmio_gen == gen and (
            (v.mmio_gfn != 0 and v.mmio_gfn == addr >> PAGE_SHIFT)
            if direct
            else (v.mmio_gva != 0 and v.mmio_gva == addr & PAGE_MASK)
        ):
            via.append("mmio_info_in_cache: hit -> RET_PF_EMULATE")
            return Path.CACHE_HIT
        cfg = self.config
        if gen & _UIP:
            via.append("check_mmio_spte: memslot update in progress -> RET_PF_INVALID")
            return None
        kvm_gen = gen & self._gen_mask
        # spte.h:get_mmio_spte_generation(), inlined
        spte_gen = ((spte & cfg.mmio_spte_gen_low_mask) >> cfg.mmio_spte_gen_low_shift) | (
            (spte & cfg.mmio_spte_gen_high_mask) >> cfg.mmio_spte_gen_high_shift
        )
        events.append(("check_mmio_spte", kvm_gen, spte_gen, spte))
        if kvm_gen != spte_gen:
            via.append("check_mmio_spte: stale generation -> RET_PF_INVALID")
            return None
        # mmu.c:get_mmio_spte_gfn() and get_mmio_spte_access(), inlined
        gfn = (
            (spte & cfg.shadow_nonpresent_or_rsvd_lower_gfn_mask)
            | ((spte >> SHADOW_NONPRESENT_OR_RSVD_MASK_LEN) & cfg.shadow_nonpresent_or_rsvd_mask)
        ) >> PAGE_SHIFT
        acc = spte & cfg.shadow_mmio_access_mask
        a = 0 if direct else addr
        events.append(("handle_mmio_page_fault", a, gfn, acc))
        # x86.h:vcpu_cache_mmio_info(), inlined (gen has no update-in-progress bit here)
        v.mmio_gva = a & PAGE_MASK
        v.mmio_access = acc
        v.mmio_gfn = gfn
        v.mmio_gen = gen
        via.append("check_mmio_spte: valid -> vcpu_cache_mmio_info -> RET_PF_EMULATE")
        return Path.MMIO_SPTE_HIT

    def _trace_page_fault(
        self, v: MirrorVcpu, addr: int, ec: int, rip: int | None, events: list[tuple[Any, ...]]
    ) -> None:
        """x86.c:kvm_handle_page_fault() / svm.c:npf_interception() / vmx.c EPT violation."""
        if self._ept:
            if ec & PFERR_RSVD_MASK:
                return  # vmx.c:handle_ept_misconfig() emits no kvm_page_fault
            ec_field: int | None = None  # an exit qualification, not a PFEC
        elif self._npt:
            ec_field = ec | PFERR_USER_MASK  # #NPF: every nested-page-table access is a user access
        else:
            ec_field = ec
        events.append(
            ("kvm_page_fault", v.vcpu_id, rip, addr, ec_field)
        )

    def _slow_fault(
        self,
        v: MirrorVcpu,
        pgva: int,
        pgpa: int,
        ec: int,
        write: bool,
        direct: bool,
        table: dict[int, int],
        key: int,
        pte_access: int,
        events: list[tuple[Any, ...]],
        via: list[str],
    ) -> Path:
        """``pf_taken++`` → kvm_mmu_do_page_fault() → FNAME(page_fault) or the direct fault →
        kvm_mmu_faultin_pfn() → kvm_handle_noslot_fault() or a RAM SPTE. The outcome path
        decides the pf_* stats (:func:`_fault_stats`)."""
        cfg = self.config
        if direct:
            access = ACC_ALL
            via.append("kvm_tdp_page_fault" if self._tdp else "nonpaging_page_fault")
        else:
            events.append(("kvm_mmu_pagetable_walk", pgva, ec))
            # the walker's mmu.h:permission_fault() against the guest PTE (CR0.WP=1, no SMAP/PKU)
            if (ec & PFERR_USER_MASK and not pte_access & ACC_USER_MASK) or (
                ec & PFERR_WRITE_MASK and not pte_access & ACC_WRITE_MASK
            ):
                via.append("FNAME(page_fault): FNAME(walk_addr) fails -> inject #PF into the guest -> RET_PF_RETRY")
                return Path.RETRY
            access = pte_access
            via.append("FNAME(page_fault): FNAME(walk_addr)")
        gfn = pgpa >> PAGE_SHIFT
        slot = self._lookup(gfn)
        if slot is None:
            # mmu.c:kvm_handle_noslot_fault(): x86.h:vcpu_cache_mmio_info() comes first
            gen = self.generation
            if not gen & _UIP:
                v.mmio_gva = 0 if self._tdp else pgva & PAGE_MASK
                v.mmio_access = access & cfg.shadow_mmio_access_mask
                v.mmio_gfn = gfn
                v.mmio_gen = gen
            if not self._caching:
                via.append(_NOSLOT_CACHING_OFF)
                return Path.NOSLOT_NO_INSTALL
            via.append("kvm_mmu_faultin_pfn -> kvm_handle_noslot_fault -> vcpu_cache_mmio_info")
            if gfn > cfg.max_gfn:
                via.append("gfn > kvm_mmu_max_gfn() -> RET_PF_EMULATE")
                return Path.NOSLOT_NO_INSTALL
            via.append("RET_PF_CONTINUE -> mmu_set_spte(KVM_PFN_NOSLOT) -> mark_mmio_spte -> RET_PF_EMULATE")
            self._mark_mmio_spte(table, key, gfn, access, events)
            return Path.NOSLOT_INSTALL
        if write and slot.flags & KVM_MEM_READONLY:
            via.append("kvm_mmu_faultin_pfn: write to KVM_MEM_READONLY -> KVM_PFN_ERR_RO_FAULT -> RET_PF_EMULATE")
            return Path.READONLY_WRITE
        writable = not slot.flags & KVM_MEM_READONLY and (direct or pte_access & ACC_WRITE_MASK)
        table[key] = (
            (gfn << PAGE_SHIFT)
            | SPTE_MMU_PRESENT_MASK
            | PT_PRESENT_MASK
            | (PT_WRITABLE_MASK if writable else 0)
            | (PT_USER_MASK if access & ACC_USER_MASK else 0)
        )
        via.append("kvm_mmu_faultin_pfn -> mmu_set_spte -> RET_PF_FIXED")
        return Path.RAM_FIXED

    def _emulate(
        self,
        v: MirrorVcpu,
        parts: tuple[tuple[int, int, int, int], ...],
        k: AccessKind,
        cpl: int,
        data: bytes | None,
        gpa_val: int | None,
        pte_access: int,
        events: list[tuple[Any, ...]],
        via: list[str],
    ) -> tuple[tuple[MmioExit, ...], int | None]:
        """x86.c:x86_emulate_instruction() → emulator_read_write() →
        emulator_read_write_onepage() per page part → KVM_EXIT_MMIO fragments."""
        write = k is _WRITE
        paging = v.paging
        if self._fetch_walk and paging:
            # the emulator fetches the instruction through the guest page tables
            events.append(
                ("kvm_mmu_pagetable_walk", None, PFERR_FETCH_MASK | (PFERR_USER_MASK if cpl == 3 else 0))
            )
        if k is _FETCH:
            via.append("x86_decode_emulated_instruction: cannot fetch from MMIO -> handle_emulation_failure")
            events.append(("kvm_userspace_exit", KVM_EXIT_INTERNAL_ERROR, 0))
            return (), KVM_EXIT_INTERNAL_ERROR
        frags: list[tuple[int, int, bytes | None]] = []
        pfec = (PFERR_USER_MASK if cpl == 3 else 0) | (PFERR_WRITE_MASK if write else 0)
        gen = self.generation
        last_len = 0
        for pgva, pgpa, plen, o in parts:
            last_len = plen
            if gpa_val is not None and (pgva & _OFF) == (gpa_val & _OFF):
                gpa = gpa_val
                is_mmio = self._vcpu_is_mmio_gpa(v, pgva, gpa, write, events)
            elif (
                v.mmio_gen == gen
                and v.mmio_gva
                and v.mmio_gva == (pgva & PAGE_MASK)
                and (
                    not paging
                    or not (
                        (pfec & PFERR_USER_MASK and not v.mmio_access & ACC_USER_MASK)
                        or (pfec & PFERR_WRITE_MASK and not v.mmio_access & ACC_WRITE_MASK)
                    )
                )
            ):
                # x86.c:vcpu_mmio_gva_to_gpa(): vcpu_match_mmio_gva() and no permission_fault()
                gpa = (v.mmio_gfn << PAGE_SHIFT) | (pgva & _OFF)
                events.append(
                    ("vcpu_match_mmio", pgva, gpa, write, False)
                )
                is_mmio = True
            else:
                if paging:
                    events.append(("kvm_mmu_pagetable_walk", pgva, pfec))
                    # the walk's mmu.h:permission_fault() against the guest PTE
                    if (pfec & PFERR_USER_MASK and not pte_access & ACC_USER_MASK) or (
                        pfec & PFERR_WRITE_MASK and not pte_access & ACC_WRITE_MASK
                    ):
                        via.append("vcpu_mmio_gva_to_gpa: guest walk faults -> X86EMUL_PROPAGATE_FAULT -> #PF injected")
                        return (), _GUEST_PF
                gpa = pgpa
                is_mmio = self._vcpu_is_mmio_gpa(v, pgva, gpa, write, events)
            if not is_mmio:
                slot = self._lookup(gpa >> PAGE_SHIFT)
                if slot is not None and not (write and slot.flags & KVM_MEM_READONLY):
                    continue  # read_write_emulate() on guest memory succeeded
            if write:
                pdata = data[o : o + plen] if data is not None else None
                events.append(
                    ("kvm_mmio", KVM_TRACE_MMIO_WRITE, plen, gpa,
                     int.from_bytes(pdata[:8], "little") if pdata is not None else None)
                )
                frags.append((gpa, plen, pdata))
            else:
                frags.append((gpa, plen, None))
        if not frags:
            via.append("emulated against guest memory: no exit")
            return (), None
        via.append("emulator_read_write: KVM_EXIT_MMIO")
        if not write:
            events.append(
                ("kvm_mmio", KVM_TRACE_MMIO_READ_UNSATISFIED, last_len, frags[0][0], 0)
            )
        exits: list[MmioExit] = []
        for fgpa, flen, fdata in frags:
            pos = 0
            while pos < flen:
                n = flen - pos if flen - pos < 8 else 8
                exits.append(_te(MmioExit, (fgpa + pos, n, write, fdata[pos : pos + n] if fdata is not None else None)))
                events.append(_USERSPACE_EXIT_MMIO)
                pos += n
        if len(exits) > 1:
            via.append("complete_emulated_mmio: one more round trip per 8 bytes / fragment")
        if not write:
            total = parts[0][2] + parts[1][2] if len(parts) > 1 else parts[0][2]
            events.append(
                ("kvm_mmio", KVM_TRACE_MMIO_READ, total, frags[0][0],
                 int.from_bytes(data[:8], "little") if data is not None else None)
            )
        return tuple(exits), KVM_EXIT_MMIO

    def _vcpu_is_mmio_gpa(self, v: MirrorVcpu, gva: int, gpa: int, write: bool, events: list[tuple[Any, ...]]) -> bool:
        """x86.c:vcpu_is_mmio_gpa()."""
        if gpa & PAGE_MASK == APIC_DEFAULT_PHYS_BASE:
            return True
        if v.mmio_gen == self.generation and v.mmio_gfn and v.mmio_gfn == gpa >> PAGE_SHIFT:
            events.append(("vcpu_match_mmio", gva, gpa, write, True))
            return True
        return False

    @staticmethod
    def _commit(v: MirrorVcpu, stats: dict[str, int]) -> None:
        st = v.stat
        for name, n in stats.items():
            st[name] += n


_te = tuple.__new__
_GFN = (1 << 40) - 1
_NOSLOT_CACHING_OFF = (
    "kvm_mmu_faultin_pfn -> kvm_handle_noslot_fault -> vcpu_cache_mmio_info -> enable_mmio_caching off -> RET_PF_EMULATE"
)
_WRITE = AccessKind.WRITE
_FETCH = AccessKind.FETCH
#: one shared, never mutated event: kvm_main.c KVM_RUN returning to userspace for an MMIO exit
_USERSPACE_EXIT_MMIO = ("kvm_userspace_exit", KVM_EXIT_MMIO, 0)
_GUEST_PF = -1  # the emulator injected #PF into the guest: no exit
_EXIT_STAT = {KVM_EXIT_MMIO: "mmio_exits", KVM_EXIT_INTERNAL_ERROR: "insn_emulation_fail", _GUEST_PF: "pf_guest"}

# pf_* stats each slow-path outcome adds, per mmu.c:kvm_mmu_page_fault():
# pf_taken for every RET_PF_INVALID, then pf_fixed / pf_emulate by the return value;
# pf_mmio_spte_created in mmu_set_spte(); pf_guest in kvm_inject_page_fault().
_PATH_STATS: dict[Path, tuple[tuple[str, int], ...]] = {
    Path.RAM_FIXED: (("pf_taken", 1), ("pf_fixed", 1)),
    Path.NOSLOT_NO_INSTALL: (("pf_taken", 1), ("pf_emulate", 1)),
    Path.NOSLOT_INSTALL: (("pf_taken", 1), ("pf_mmio_spte_created", 1), ("pf_emulate", 1)),
    Path.READONLY_WRITE: (("pf_taken", 1), ("pf_emulate", 1)),
    Path.RETRY: (("pf_taken", 1), ("pf_guest", 1)),
}


def _fault_stats(counts: list[Path]) -> dict[str, int]:
    if len(counts) == 1:
        return dict(_PATH_STATS[counts[0]])
    stats: dict[str, int] = {}
    for p in counts:
        for name, n in _PATH_STATS[p]:
            stats[name] = stats.get(name, 0) + n
    return stats


def _exit_stats(reason: int | None) -> dict[str, int]:
    if reason is None:
        return {}
    return {_EXIT_STAT[reason]: 1}
