"""The one frozen host configuration every mirror function is driven by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hostkvm.mirror._errors import MirrorConfigError
from hostkvm.mirror._profiles import (
    HostQuirks,
    KernelProfile,
    profile_for_release,
    quirks_for_backend,
)

__all__ = [
    "ACC_ALL",
    "ACC_EXEC_MASK",
    "ACC_USER_MASK",
    "ACC_WRITE_MASK",
    "HostConfig",
    "KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS",
    "MMIO_SPTE_GEN_HIGH_END",
    "MMIO_SPTE_GEN_HIGH_START",
    "MMIO_SPTE_GEN_LOW_START",
    "PAGE_SHIFT",
    "PT_PRESENT_MASK",
    "PT_USER_MASK",
    "PT_WRITABLE_MASK",
    "SHADOW_NONPRESENT_OR_RSVD_MASK_LEN",
    "SPTE_MMU_PRESENT_MASK",
    "VMX_EPT_MISCONFIG_WX_VALUE",
    "VMX_EPT_RWX_MASK",
    "VMX_EPT_SUPPRESS_VE_BIT",
    "genmask_ull",
    "rsvd_bits",
]

PAGE_SHIFT = 12

# mmu.h / spte.h
PT_PRESENT_MASK = 1 << 0
PT_WRITABLE_MASK = 1 << 1
PT_USER_MASK = 1 << 2
ACC_EXEC_MASK = 1
ACC_WRITE_MASK = PT_WRITABLE_MASK
ACC_USER_MASK = PT_USER_MASK
ACC_ALL = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK
SPTE_MMU_PRESENT_MASK = 1 << 11
SHADOW_NONPRESENT_OR_RSVD_MASK_LEN = 5
MMIO_SPTE_GEN_LOW_START = 3
MMIO_SPTE_GEN_HIGH_START = 52
MMIO_SPTE_GEN_HIGH_END = 62

# vmx.h
VMX_EPT_RWX_MASK = 0x7
VMX_EPT_MISCONFIG_WX_VALUE = 0x6
VMX_EPT_SUPPRESS_VE_BIT = 1 << 63

# kvm_host.h
KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS = 1 << 63

_BACKENDS = ("vmx", "svm", "pvm", "other")
_PAGINGS = ("ept", "npt", "shadow")


def genmask_ull(high: int, low: int) -> int:
    """bits.h ``GENMASK_ULL(h, l)``: bits ``l`` to ``h`` inclusive."""
    return ((1 << (high - low + 1)) - 1) << low


def rsvd_bits(s: int, e: int) -> int:
    """mmu.h ``rsvd_bits(s, e)``: bits ``s`` to ``e`` inclusive, 0 when ``e < s``."""
    if e < s:
        return 0
    return genmask_ull(e, s)


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Everything about a host that decides what KVM's mmio-spte path does.

    Write one by hand (``HostConfig(kernel="6.18.44", backend="vmx", paging="ept")``) or
    build it from ``hostkvm probe --json`` with :meth:`from_probe`. Inputs:

    ``kernel``: release string; selects :attr:`profile` unless one is given.
    ``backend``: ``vmx``, ``svm``, ``pvm`` or ``other``; selects :attr:`quirks` unless given.
    ``paging``: ``ept``, ``npt`` or ``shadow``. ``tdp_mmu``: ``kvm.tdp_mmu``.
    ``mmio_caching``: ``kvm.mmio_caching`` (userspace's or the vendor's wish; the rules of
    ``kvm_mmu_set_mmio_spte_mask()`` may still force it off, see :attr:`enable_mmio_caching`).
    ``maxphyaddr``: raw CPUID 0x80000008[7:0] (``kvm_host.maxphyaddr``).
    ``x86_phys_bits``: ``boot_cpu_data.x86_phys_bits`` (reduced by SME/MKTME; default
    ``maxphyaddr``). ``l1tf``/``x86_cache_bits``: ``X86_BUG_L1TF`` and the L1D's PA width.
    ``sme``/``sme_c_bit``: SME enabled in ``MSR_AMD64_SYSCFG`` and the C-bit position
    (CPUID 0x8000001f EBX[5:0]). ``smm``: ``CONFIG_KVM_SMM`` (2 memslot address spaces).
    ``private_mem``: the VM type has private memory (1 address space even with SMM).
    ``slot_zap_all_quirk``: ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` left enabled (the default).

    Derived (read-only): ``profile``, ``quirks``, ``tdp_enabled``, ``nr_address_spaces``,
    ``shadow_mmio_value``/``_mask``/``_access_mask``, ``shadow_nonpresent_or_rsvd_mask``,
    ``shadow_nonpresent_or_rsvd_lower_gfn_mask``, ``enable_mmio_caching``,
    ``mmio_caching_off_reasons``, ``max_gfn`` (``kvm_mmu_max_gfn()``) and the MMIO generation
    masks.
    """

    kernel: str = "6.18.44"
    backend: str = "vmx"
    paging: str = "ept"
    tdp_mmu: bool = True
    mmio_caching: bool = True
    maxphyaddr: int = 48
    x86_phys_bits: int | None = None
    l1tf: bool = False
    x86_cache_bits: int | None = None
    sme: bool = False
    sme_c_bit: int = 47
    smm: bool = True
    private_mem: bool = False
    slot_zap_all_quirk: bool = True
    profile: KernelProfile | None = None
    quirks: HostQuirks | None = None

    # derived
    tdp_enabled: bool = field(init=False)
    nr_address_spaces: int = field(init=False)
    shadow_mmio_value: int = field(init=False)
    shadow_mmio_mask: int = field(init=False)
    shadow_mmio_access_mask: int = field(init=False)
    shadow_nonpresent_or_rsvd_mask: int = field(init=False)
    shadow_nonpresent_or_rsvd_lower_gfn_mask: int = field(init=False)
    enable_mmio_caching: bool = field(init=False)
    mmio_caching_off_reasons: tuple[str, ...] = field(init=False)
    max_gfn: int = field(init=False)
    mmio_spte_gen_mask: int = field(init=False)
    mmio_spte_gen_low_mask: int = field(init=False)
    mmio_spte_gen_high_mask: int = field(init=False)
    mmio_spte_gen_low_shift: int = field(init=False)
    mmio_spte_gen_high_shift: int = field(init=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        if self.backend not in _BACKENDS:
            raise MirrorConfigError(
                f"HostConfig: backend {self.backend!r} unknown (expected one of {', '.join(_BACKENDS)})"
            )
        if self.paging not in _PAGINGS:
            raise MirrorConfigError(
                f"HostConfig: paging {self.paging!r} unknown (expected one of {', '.join(_PAGINGS)})"
            )
        if (self.paging == "ept" and self.backend in ("svm", "pvm")) or (
            self.paging == "npt" and self.backend in ("vmx", "pvm")
        ):
            raise MirrorConfigError(
                f"HostConfig: paging {self.paging!r} is impossible with backend {self.backend!r}"
            )
        if not 32 <= self.maxphyaddr <= 52:
            raise MirrorConfigError(
                f"HostConfig: maxphyaddr {self.maxphyaddr} outside 32..52 (CPUID 0x80000008 EAX[7:0])"
            )
        profile = self.profile or profile_for_release(self.kernel)
        put(self, "profile", profile)
        if self.quirks is None:
            put(self, "quirks", quirks_for_backend(self.backend))
        if self.x86_phys_bits is None:
            put(self, "x86_phys_bits", self.maxphyaddr)
        if self.x86_cache_bits is None:
            put(self, "x86_cache_bits", self.x86_phys_bits)
        tdp = self.paging in ("ept", "npt")
        put(self, "tdp_enabled", tdp)
        put(self, "nr_address_spaces", 2 if (self.smm and not self.private_mem) else 1)

        # spte.h generation layout
        low_end = profile.mmio_spte_gen_low_end
        low_bits = low_end - MMIO_SPTE_GEN_LOW_START + 1
        put(self, "mmio_spte_gen_low_mask", genmask_ull(low_end, MMIO_SPTE_GEN_LOW_START))
        put(self, "mmio_spte_gen_high_mask", genmask_ull(MMIO_SPTE_GEN_HIGH_END, MMIO_SPTE_GEN_HIGH_START))
        put(self, "mmio_spte_gen_low_shift", MMIO_SPTE_GEN_LOW_START)
        put(self, "mmio_spte_gen_high_shift", MMIO_SPTE_GEN_HIGH_START - low_bits)
        put(self, "mmio_spte_gen_mask", profile.mmio_spte_gen_mask)

        # mmu.c:kvm_mmu_max_gfn()
        max_gpa_bits = self.maxphyaddr if tdp else 52
        put(self, "max_gfn", (1 << (max_gpa_bits - PAGE_SHIFT)) - 1)

        self._reset_all_pte_masks()

    def _reset_all_pte_masks(self) -> None:
        """spte.c:kvm_mmu_reset_all_pte_masks(), then the vendor's override, then
        spte.c:kvm_mmu_set_mmio_spte_mask()."""
        put = object.__setattr__
        assert self.x86_phys_bits is not None and self.x86_cache_bits is not None
        rsvd_mask = 0
        low_phys_bits = self.x86_phys_bits
        if self.l1tf and not self.x86_cache_bits >= 52 - SHADOW_NONPRESENT_OR_RSVD_MASK_LEN:
            low_phys_bits = self.x86_cache_bits - SHADOW_NONPRESENT_OR_RSVD_MASK_LEN
            rsvd_mask = rsvd_bits(low_phys_bits, self.x86_cache_bits - 1)
        put(self, "shadow_nonpresent_or_rsvd_mask", rsvd_mask)
        put(self, "shadow_nonpresent_or_rsvd_lower_gfn_mask", genmask_ull(low_phys_bits - 1, PAGE_SHIFT))

        reasons: list[str] = []
        if self.maxphyaddr < 52:
            value = (1 << 51) | PT_PRESENT_MASK
        else:
            value = 0
            reasons.append(
                "MAXPHYADDR is 52: no reserved PA bit for the RSVD #PF "
                "(spte.c:kvm_mmu_reset_all_pte_masks())"
            )
        mask = value
        access_mask = ACC_WRITE_MASK | ACC_USER_MASK

        if self.backend == "vmx" and self.paging == "ept":
            # spte.c:kvm_mmu_set_ept_masks() tail
            value = VMX_EPT_MISCONFIG_WX_VALUE
            mask = VMX_EPT_RWX_MASK | VMX_EPT_SUPPRESS_VE_BIT
            access_mask = 0
            reasons.clear()
        elif self.backend == "svm" and self.sme:
            # svm.c:svm_adjust_mmio_mask()
            mask_bit = self.x86_phys_bits
            if self.sme_c_bit == mask_bit:
                mask_bit += 1
            value = (rsvd_bits(mask_bit, 51) | PT_PRESENT_MASK) if mask_bit < 52 else 0
            mask = value
            access_mask = PT_WRITABLE_MASK | PT_USER_MASK
            reasons.clear()
            if not value:
                reasons.append(
                    f"SME: mask bit {mask_bit} >= 52 leaves no reserved PA bit (svm.c:svm_adjust_mmio_mask())"
                )

        # spte.c:kvm_mmu_set_mmio_spte_mask()
        if not self.mmio_caching:
            value = 0
            reasons.insert(0, "kvm.mmio_caching=N (module parameter, or the vendor module turned it off)")
        if mask & ~self.profile.spte_mmio_allowed_mask:  # type: ignore[union-attr]
            value = 0
            reasons.append("mmio mask outside SPTE_MMIO_ALLOWED_MASK (WARN in kvm_mmu_set_mmio_spte_mask())")
        if value & (rsvd_mask << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN):
            value = 0
            reasons.append("mmio value collides with the L1TF relocated-gfn bits")
        frozen = self.profile.frozen_spte  # type: ignore[union-attr]
        if (value & mask) != value or (value and (frozen & mask) == value):
            value = 0
            reasons.append("mmio value does not match itself under the mask, or matches FROZEN_SPTE")
        put(self, "shadow_mmio_value", value)
        put(self, "shadow_mmio_mask", mask)
        put(self, "shadow_mmio_access_mask", access_mask)
        put(self, "enable_mmio_caching", bool(value))
        put(self, "mmio_caching_off_reasons", tuple(reasons) if not value else ())

    @classmethod
    def from_probe(cls, probe: dict[str, Any], **overrides: Any) -> HostConfig:
        """Build the configuration from the JSON object ``hostkvm probe --json`` prints.

        Reads ``kernel``, ``backend``, ``paging``, ``tdp_mmu``, ``mmio_caching``,
        ``maxphyaddr`` and ``smm``; optional keys ``l1tf``, ``x86_cache_bits``, ``x86_phys_bits``,
        ``sme``, ``sme_c_bit`` are used when present; everything else (``api_version``,
        ``tracefs``, ``caps``) is ignored. ``overrides`` replace any field.
        """
        if not isinstance(probe, dict):
            raise MirrorConfigError(f"HostConfig.from_probe: probe must be a JSON object, got {type(probe).__name__}")
        required = {
            "kernel": str,
            "backend": str,
            "paging": str,
            "tdp_mmu": bool,
            "mmio_caching": bool,
            "maxphyaddr": int,
            "smm": bool,
        }
        kwargs: dict[str, Any] = {}
        for key, typ in required.items():
            if key not in probe:
                raise MirrorConfigError(
                    f"HostConfig.from_probe: probe has no {key!r} (keys: {', '.join(sorted(probe))}); "
                    "run `hostkvm probe --json` on the host"
                )
            val = probe[key]
            if typ is int and isinstance(val, bool) or not isinstance(val, typ):
                raise MirrorConfigError(
                    f"HostConfig.from_probe: probe[{key!r}] is {val!r}, expected {typ.__name__}"
                )
            kwargs[key] = val
        for key in ("x86_cache_bits", "x86_phys_bits", "sme", "sme_c_bit"):
            if key in probe and probe[key] is not None:
                kwargs[key] = probe[key]
        l1tf = probe.get("l1tf")
        if isinstance(l1tf, str):
            # /sys/devices/system/cpu/vulnerabilities/l1tf: "Not affected", or the mitigation
            # text ("Mitigation: PTE Inversion; ...") when the CPU has X86_BUG_L1TF.
            kwargs["l1tf"] = l1tf.strip().lower() != "not affected"
        elif l1tf is not None:
            kwargs["l1tf"] = bool(l1tf)
        kwargs.update(overrides)
        return cls(**kwargs)

    def describe(self) -> str:
        """One paragraph naming the profile, quirks, masks and the caching verdict."""
        caching = (
            "mmio caching ON"
            if self.enable_mmio_caching
            else "mmio caching OFF (" + "; ".join(self.mmio_caching_off_reasons) + ")"
        )
        return (
            f"kernel {self.kernel} (profile {self.profile.name}), backend {self.backend} "  # type: ignore[union-attr]
            f"(quirks {self.quirks.name}), paging {self.paging}, "  # type: ignore[union-attr]
            f"{self.nr_address_spaces} address space(s), MAXPHYADDR {self.maxphyaddr}; "
            f"shadow_mmio_value {self.shadow_mmio_value:#x} mask {self.shadow_mmio_mask:#x} "
            f"access_mask {self.shadow_mmio_access_mask:#x}; {caching}"
        )
