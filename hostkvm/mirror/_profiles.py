"""Kernel profiles and host quirks: what differs between the kernels the mirror knows.

A :class:`KernelProfile` holds the few constants and rules of the mmio-spte path that changed
between the kernel families hostkvm meets: Debian's 6.1 (the reference host), 6.12 to 6.18 (this
project's hosts), and 7.x (current upstream). A :class:`HostQuirks` holds what a KVM *backend*
does differently from upstream (PVM here), so that no flow code tests ``backend == "pvm"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hostkvm.mirror._errors import MirrorConfigError

__all__ = [
    "HostQuirks",
    "KernelProfile",
    "PROFILE_6_1",
    "PROFILE_6_12",
    "PROFILE_7",
    "PROFILES",
    "QUIRKS_PVM",
    "QUIRKS_UPSTREAM",
    "profile_for_release",
    "quirks_for_backend",
]


def _genmask(high: int, low: int) -> int:
    return ((1 << (high - low + 1)) - 1) << low


@dataclass(frozen=True, slots=True)
class KernelProfile:
    """The mmio-spte rules of one kernel family.

    ``mmio_spte_gen_low_end``: spte.h ``MMIO_SPTE_GEN_LOW_END`` (10 up to 6.18 = 19-bit MMIO
    generation; 9 in 7.x = 18 bits). ``spte_mmio_allowed_mask``: spte.h
    ``SPTE_MMIO_ALLOWED_MASK`` (7.x adds bit 10 for MBEC). ``frozen_spte``: the value that
    ``kvm_mmu_set_mmio_spte_mask()`` must not match (``REMOVED_SPTE`` = 0x5a0 in 6.1,
    ``FROZEN_SPTE`` = ``SHADOW_NONPRESENT_VALUE | 0x5a0`` later). ``ret_pf``: the ``RET_PF_*``
    enum (6.1 has no ``RET_PF_WRITE_PROTECTED``).
    ``invalidate_mmio_sptes_checks_caching``: 7.x's ``kvm_mmu_invalidate_mmio_sptes()`` returns
    early when ``enable_mmio_caching`` is off, so a wrap zaps nothing there.
    ``invlpg_syncs_mmio_spte``: INVLPG on an unsync shadow page goes through
    ``FNAME(sync_spte)`` → ``sync_mmio_spte()`` (re-mark or clear); 6.1's ``FNAME(invlpg)``
    zaps the SPTE and prefetches only gfns that have a memslot, so an mmio SPTE is just cleared.
    Not a difference: ``handle_mmio_page_fault()`` consults the per-vCPU cache
    (``mmio_info_in_cache()``) *before* the lockless walk and its ``check_mmio_spte`` /
    ``handle_mmio_page_fault`` tracepoints in 6.1, 6.12 and 7.3 alike (the reference host's 6.1
    log shows a cache hit emitting neither), so no profile knob exists for it.
    ``npt_fast_mmio``: ``npf_interception()`` has the expedited ``KVM_FAST_MMIO_BUS`` path
    (6.19+/7.x). ``slot_zap_all_quirk_exists``: ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` exists (6.12+);
    in 6.1 a memslot delete/move always zaps all (the same effect as the default quirk).
    """

    name: str
    mmio_spte_gen_low_end: int
    spte_mmio_allowed_mask: int
    frozen_spte: int
    shadow_nonpresent_value: int
    ret_pf: tuple[tuple[str, int], ...]
    invalidate_mmio_sptes_checks_caching: bool
    invlpg_syncs_mmio_spte: bool
    npt_fast_mmio: bool = False
    slot_zap_all_quirk_exists: bool = True
    notes: str = ""

    @property
    def mmio_spte_gen_low_bits(self) -> int:
        return self.mmio_spte_gen_low_end - 3 + 1

    @property
    def mmio_spte_gen_bits(self) -> int:
        return self.mmio_spte_gen_low_bits + 11

    @property
    def mmio_spte_gen_mask(self) -> int:
        return (1 << self.mmio_spte_gen_bits) - 1


_RET_PF_6_1 = (
    ("RET_PF_CONTINUE", 0),
    ("RET_PF_RETRY", 1),
    ("RET_PF_EMULATE", 2),
    ("RET_PF_INVALID", 3),
    ("RET_PF_FIXED", 4),
    ("RET_PF_SPURIOUS", 5),
)
_RET_PF_6_12 = (
    ("RET_PF_CONTINUE", 0),
    ("RET_PF_RETRY", 1),
    ("RET_PF_EMULATE", 2),
    ("RET_PF_WRITE_PROTECTED", 3),
    ("RET_PF_INVALID", 4),
    ("RET_PF_FIXED", 5),
    ("RET_PF_SPURIOUS", 6),
)

_ALLOWED_6 = (1 << 63) | _genmask(51, 12) | _genmask(2, 0)

PROFILE_6_1 = KernelProfile(
    name="6.1",
    mmio_spte_gen_low_end=10,
    spte_mmio_allowed_mask=_ALLOWED_6,
    frozen_spte=0x5A0,
    shadow_nonpresent_value=0,
    ret_pf=_RET_PF_6_1,
    invalidate_mmio_sptes_checks_caching=False,
    invlpg_syncs_mmio_spte=False,
    slot_zap_all_quirk_exists=False,
    notes="Debian 6.1 (reference host): global shadow_mmio_value, handle_abnormal_pfn()",
)
PROFILE_6_12 = KernelProfile(
    name="6.12-6.18",
    mmio_spte_gen_low_end=10,
    spte_mmio_allowed_mask=_ALLOWED_6,
    frozen_spte=(1 << 63) | 0x5A0,
    shadow_nonpresent_value=1 << 63,
    ret_pf=_RET_PF_6_12,
    invalidate_mmio_sptes_checks_caching=False,
    invlpg_syncs_mmio_spte=True,
    notes="6.12 to 6.19: kvm_handle_noslot_fault(), per-VM shadow_mmio_value (6.16+)",
)
PROFILE_7 = KernelProfile(
    name="7.x",
    mmio_spte_gen_low_end=9,
    spte_mmio_allowed_mask=_ALLOWED_6 | (1 << 10),
    frozen_spte=(1 << 63) | 0x5A0,
    shadow_nonpresent_value=1 << 63,
    ret_pf=_RET_PF_6_12,
    invalidate_mmio_sptes_checks_caching=True,
    invlpg_syncs_mmio_spte=True,
    npt_fast_mmio=True,
    notes="7.x: 18-bit MMIO generation, MBEC bit 10 allowed, no wrap zap with caching off",
)

PROFILES: dict[str, KernelProfile] = {p.name: p for p in (PROFILE_6_1, PROFILE_6_12, PROFILE_7)}

_RELEASE = re.compile(r"^\s*(\d+)\.(\d+)")


def profile_for_release(release: str) -> KernelProfile:
    """The profile for a kernel release string such as ``"6.18.44-fc-v669"``.

    Releases below 6.12 get the 6.1 profile, 6.12 to 6.x the 6.12-6.18 profile, 7.0 and later
    the 7.x one. Raises :class:`MirrorConfigError` for a string that is not a release.
    """
    m = _RELEASE.match(release)
    if m is None:
        raise MirrorConfigError(
            f"kernel release {release!r} not understood: expected 'MAJOR.MINOR...' as uname -r prints it"
        )
    major, minor = int(m.group(1)), int(m.group(2))
    if major < 6:
        raise MirrorConfigError(
            f"kernel release {release!r} is older than any profile the mirror has (6.1, 6.12-6.18, 7.x)"
        )
    if major >= 7:
        return PROFILE_7
    if minor < 12:
        return PROFILE_6_1
    return PROFILE_6_12


@dataclass(frozen=True, slots=True)
class HostQuirks:
    """What a KVM backend does that upstream ``kvm_intel``/``kvm_amd`` do not.

    ``absent_tracepoints``: events that never fire on this backend (PVM: ``kvm_exit``,
    ``kvm_entry``, ``kvm_page_fault``). ``cpl0_emulated``: ring-0 guest code is run by KVM's
    emulator one instruction at a time, so a CPL0 access never takes a shadow #PF (PVM).
    ``emulator_fetch_walk``: the emulator walks the guest page tables to fetch the instruction
    (``emulate.c:__do_insn_fetch_bytes()`` → ``x86.c:kvm_fetch_guest_virt()`` →
    ``kvm_mmu_pagetable_walk`` with ``PFERR_FETCH``) after a #PF; False where the backend hands
    KVM the instruction bytes (SVM decode assists). Observed on PVM at CPL3: two walks per
    MMIO access, the #PF walk (``addr`` = the data gva) then the fetch walk (``addr`` = RIP,
    ``pferr`` U|F).
    ``observed``: where the quirk comes from.
    """

    name: str
    absent_tracepoints: frozenset[str] = field(default_factory=frozenset)
    cpl0_emulated: bool = False
    emulator_fetch_walk: bool = True
    observed: str = ""


QUIRKS_UPSTREAM = HostQuirks(name="upstream")
QUIRKS_PVM = HostQuirks(
    name="pvm",
    absent_tracepoints=frozenset({"kvm_exit", "kvm_entry", "kvm_page_fault"}),
    cpl0_emulated=True,
    emulator_fetch_walk=True,
    observed="PVM host, 6.18.44: kvm_exit/kvm_entry/kvm_page_fault never fire; CPL0 code is "
    "emulated instruction by instruction; CPL3 MMIO shows the #PF walk and the emulator's "
    "instruction-fetch walk (pferr 0x14)",
)


def quirks_for_backend(backend: str) -> HostQuirks:
    """The quirks of a backend name as ``hostkvm probe`` reports it."""
    return QUIRKS_PVM if backend == "pvm" else QUIRKS_UPSTREAM
