"""The MMIO SPTE encoding: spte.h / spte.c / mmu.c functions, driven by a :class:`HostConfig`.

Each function keeps the kernel's name; where the kernel reads a global (``shadow_mmio_mask``)
or the vCPU (the memslot generation), the Python function takes the :class:`HostConfig` and the
generation as arguments.
"""

from __future__ import annotations

from hostkvm.mirror._config import (
    ACC_ALL,
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    PAGE_SHIFT,
    SHADOW_NONPRESENT_OR_RSVD_MASK_LEN,
    SPTE_MMU_PRESENT_MASK,
    HostConfig,
)
from hostkvm.mirror._errors import MirrorConfigError

__all__ = [
    "check_mmio_spte",
    "generation_mmio_spte_mask",
    "get_mmio_spte_access",
    "get_mmio_spte_generation",
    "get_mmio_spte_gfn",
    "is_mmio_spte",
    "is_shadow_present_pte",
    "make_mmio_spte",
    "mark_mmio_spte_access",
]

_U64 = (1 << 64) - 1


def generation_mmio_spte_mask(config: HostConfig, gen: int) -> int:
    """spte.c:generation_mmio_spte_mask(): scatter an MMIO generation into SPTE bits.

    The kernel WARNs (once) when ``gen`` has bits outside ``MMIO_SPTE_GEN_MASK``; the mirror
    refuses such a generation, since its callers always mask first.
    """
    if gen & ~config.mmio_spte_gen_mask:
        raise MirrorConfigError(
            f"generation_mmio_spte_mask: generation {gen:#x} has bits outside "
            f"MMIO_SPTE_GEN_MASK {config.mmio_spte_gen_mask:#x}; mask it first"
        )
    mask = (gen << config.mmio_spte_gen_low_shift) & config.mmio_spte_gen_low_mask
    mask |= (gen << config.mmio_spte_gen_high_shift) & config.mmio_spte_gen_high_mask
    return mask


def get_mmio_spte_generation(config: HostConfig, spte: int) -> int:
    """spte.h:get_mmio_spte_generation(): gather the MMIO generation out of an SPTE."""
    gen = (spte & config.mmio_spte_gen_low_mask) >> config.mmio_spte_gen_low_shift
    gen |= (spte & config.mmio_spte_gen_high_mask) >> config.mmio_spte_gen_high_shift
    return gen


def make_mmio_spte(
    config: HostConfig, gfn: int, access: int, generation: int, mmio_value: int | None = None
) -> int:
    """spte.c:make_mmio_spte(): the MMIO SPTE for ``gfn`` at memslot ``generation``.

    ``generation`` is the memslots generation (``kvm_vcpu_memslots(vcpu)->generation``); it is
    masked with ``MMIO_SPTE_GEN_MASK`` here as the kernel does, dropping the update-in-progress
    bit. ``mmio_value`` is the per-VM ``kvm->arch.shadow_mmio_value`` (default: the global one).
    """
    gen = generation & config.mmio_spte_gen_mask
    spte = generation_mmio_spte_mask(config, gen)
    gpa = gfn << PAGE_SHIFT
    access &= config.shadow_mmio_access_mask
    spte |= (config.shadow_mmio_value if mmio_value is None else mmio_value) | access
    rsvd = config.shadow_nonpresent_or_rsvd_mask
    spte |= gpa | rsvd
    spte |= (gpa & rsvd) << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN
    return spte & _U64


def is_mmio_spte(config: HostConfig, spte: int, mmio_value: int | None = None) -> bool:
    """spte.h:is_mmio_spte(): the SPTE carries the VM's MMIO value and caching is on."""
    value = config.shadow_mmio_value if mmio_value is None else mmio_value
    return (spte & config.shadow_mmio_mask) == value and config.enable_mmio_caching


def get_mmio_spte_gfn(config: HostConfig, spte: int) -> int:
    """mmu.c:get_mmio_spte_gfn(): reassemble the gfn, undoing the L1TF relocation."""
    gpa = spte & config.shadow_nonpresent_or_rsvd_lower_gfn_mask
    gpa |= (spte >> SHADOW_NONPRESENT_OR_RSVD_MASK_LEN) & config.shadow_nonpresent_or_rsvd_mask
    return gpa >> PAGE_SHIFT


def get_mmio_spte_access(config: HostConfig, spte: int) -> int:
    """mmu.c:get_mmio_spte_access(): the cached guest access bits (``& shadow_mmio_access_mask``)."""
    return spte & config.shadow_mmio_access_mask


def mark_mmio_spte_access(spte: int) -> int:
    """The ``access`` field of ``kvmmmu:mark_mmio_spte``: the raw low bits ``spte & ACC_ALL``.

    Not the cached access: 7 for shadow/NPT (the P bit of the MMIO value is included), 6 on EPT.
    """
    return spte & ACC_ALL


def check_mmio_spte(config: HostConfig, spte: int, generation: int) -> bool:
    """mmu.c:check_mmio_spte(): is the SPTE's generation the current memslot generation?

    False while a memslot update is in progress (bit 63), before the tracepoint would fire.
    """
    if generation & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        return False
    return (generation & config.mmio_spte_gen_mask) == get_mmio_spte_generation(config, spte)


def is_shadow_present_pte(spte: int) -> bool:
    """spte.h:is_shadow_present_pte(): ``SPTE_MMU_PRESENT_MASK`` set (MMIO SPTEs never are)."""
    return bool(spte & SPTE_MMU_PRESENT_MASK)
