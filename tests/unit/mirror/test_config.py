"""HostConfig: masks per paging mode, the rules that force mmio caching off, probes, profiles."""

from __future__ import annotations

import dataclasses

import pytest

from hostkvm.errors import HostKvmError
from hostkvm.mirror import (
    HOST_PVM_6_18,
    PROFILE_6_1,
    PROFILE_6_12,
    PROFILE_7,
    QUIRKS_PVM,
    QUIRKS_UPSTREAM,
    VMX_EPT_RWX_MASK,
    VMX_EPT_SUPPRESS_VE_BIT,
    HostConfig,
    MirrorConfigError,
    profile_for_release,
    rsvd_bits,
)

# what `hostkvm probe --json` reports on this project's hosts (HOST.md)
THIS_HOST_PROBE = {
    "kernel": "6.18.44-fc-v669",
    "api_version": 12,
    "backend": "pvm",
    "paging": "shadow",
    "tdp_mmu": False,
    "mmio_caching": False,
    "maxphyaddr": 48,
    "smm": False,
    "tracefs": {"mounted": False},
    "caps": {"KVM_CAP_BINARY_STATS_FD": 1, "KVM_CAP_READONLY_MEM": 1},
}


def test_from_probe_this_host() -> None:
    cfg = HostConfig.from_probe(THIS_HOST_PROBE)
    assert cfg == HOST_PVM_6_18
    assert cfg.profile is PROFILE_6_12
    assert cfg.quirks is QUIRKS_PVM
    assert not cfg.enable_mmio_caching
    assert cfg.mmio_caching_off_reasons and "mmio_caching=N" in cfg.mmio_caching_off_reasons[0]
    assert cfg.shadow_mmio_value == 0
    # the access mask is still set (the GVA cache path is observed at CPL3)
    assert cfg.shadow_mmio_access_mask == 6
    assert cfg.nr_address_spaces == 1
    assert not cfg.tdp_enabled
    assert cfg.shadow_nonpresent_or_rsvd_mask == 0
    assert cfg.max_gfn == (1 << 40) - 1  # shadow paging: 52-bit gpa limit
    assert "OFF" in cfg.describe() and "pvm" in cfg.describe()


def test_from_probe_overrides_and_optional_keys() -> None:
    cfg = HostConfig.from_probe(dict(THIS_HOST_PROBE, l1tf=True, x86_cache_bits=46), mmio_caching=True)
    assert cfg.enable_mmio_caching
    assert cfg.shadow_nonpresent_or_rsvd_mask == rsvd_bits(41, 45)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("maxphyaddr", None, "no 'maxphyaddr'"),
        ("maxphyaddr", True, "expected int"),
        ("tdp_mmu", "N", "expected bool"),
        ("backend", "kvm_intel", "backend 'kvm_intel' unknown"),
        ("paging", "tdp", "paging 'tdp' unknown"),
        ("kernel", "linux", "not understood"),
        ("kernel", "5.15.0", "older than any profile"),
    ],
)
def test_from_probe_rejects(key: str, value: object, match: str) -> None:
    probe = dict(THIS_HOST_PROBE)
    if value is None:
        del probe[key]
    else:
        probe[key] = value
    with pytest.raises(MirrorConfigError, match=match) as exc:
        HostConfig.from_probe(probe)
    assert isinstance(exc.value, HostKvmError)


def test_from_probe_rejects_non_object() -> None:
    with pytest.raises(MirrorConfigError, match="JSON object"):
        HostConfig.from_probe([])  # type: ignore[arg-type]


def test_impossible_paging_backend_pairs() -> None:
    with pytest.raises(MirrorConfigError, match="impossible"):
        HostConfig(backend="svm", paging="ept")
    with pytest.raises(MirrorConfigError, match="impossible"):
        HostConfig(backend="pvm", paging="npt")


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        HOST_PVM_6_18.maxphyaddr = 52  # type: ignore[misc]


def test_shadow_and_npt_masks() -> None:
    for cfg in (
        HostConfig(backend="vmx", paging="shadow", maxphyaddr=46),
        HostConfig(backend="svm", paging="npt", maxphyaddr=48),
    ):
        assert cfg.shadow_mmio_value == (1 << 51) | 1
        assert cfg.shadow_mmio_mask == cfg.shadow_mmio_value
        assert cfg.shadow_mmio_access_mask == 6
        assert cfg.enable_mmio_caching


def test_ept_masks() -> None:
    cfg = HostConfig(backend="vmx", paging="ept", maxphyaddr=52)
    assert cfg.shadow_mmio_value == 0b110
    assert cfg.shadow_mmio_mask == VMX_EPT_RWX_MASK | VMX_EPT_SUPPRESS_VE_BIT
    assert cfg.shadow_mmio_access_mask == 0
    # EPT misconfig does not need a reserved PA bit: MAXPHYADDR 52 keeps caching on
    assert cfg.enable_mmio_caching
    assert cfg.max_gfn == (1 << 40) - 1


def test_maxphyaddr_52_forces_caching_off_for_shadow_and_npt() -> None:
    for paging, backend in (("shadow", "vmx"), ("npt", "svm")):
        cfg = HostConfig(backend=backend, paging=paging, maxphyaddr=52)
        assert not cfg.enable_mmio_caching
        assert cfg.shadow_mmio_value == 0
        assert "MAXPHYADDR is 52" in cfg.mmio_caching_off_reasons[0]


def test_sme_mask() -> None:
    # svm_adjust_mmio_mask(): reserved bits from x86_phys_bits to 51, plus P
    cfg = HostConfig(backend="svm", paging="npt", maxphyaddr=48, x86_phys_bits=43, sme=True, sme_c_bit=47)
    assert cfg.shadow_mmio_value == rsvd_bits(43, 51) | 1
    assert cfg.enable_mmio_caching
    # the mask bit moves up by one when it is the C-bit
    bumped = HostConfig(backend="svm", paging="npt", maxphyaddr=48, x86_phys_bits=47, sme=True, sme_c_bit=47)
    assert bumped.shadow_mmio_value == rsvd_bits(48, 51) | 1
    # ... and caching goes off when that pushes it to 52
    off = HostConfig(backend="svm", paging="npt", maxphyaddr=52, x86_phys_bits=51, sme=True, sme_c_bit=51)
    assert not off.enable_mmio_caching
    assert "SME" in off.mmio_caching_off_reasons[0]
    # without SME the shadow default stays
    assert HostConfig(backend="svm", paging="npt", x86_phys_bits=43).shadow_mmio_value == (1 << 51) | 1


def test_l1tf_split_only_when_affected_and_cache_bits_small() -> None:
    assert HostConfig(backend="vmx", paging="shadow", l1tf=False, x86_cache_bits=46).shadow_nonpresent_or_rsvd_mask == 0
    big = HostConfig(backend="vmx", paging="shadow", maxphyaddr=48, l1tf=True, x86_cache_bits=47)
    assert big.shadow_nonpresent_or_rsvd_mask == 0  # WARN: cache_bits >= 52 - 5
    small = HostConfig(backend="vmx", paging="shadow", maxphyaddr=46, l1tf=True, x86_cache_bits=46)
    assert small.shadow_nonpresent_or_rsvd_lower_gfn_mask == (1 << 41) - (1 << 12)


def test_mmio_caching_param_off() -> None:
    cfg = HostConfig(backend="vmx", paging="ept", mmio_caching=False)
    assert not cfg.enable_mmio_caching and cfg.shadow_mmio_value == 0


def test_address_spaces() -> None:
    assert HostConfig(smm=True).nr_address_spaces == 2
    assert HostConfig(smm=False).nr_address_spaces == 1
    assert HostConfig(smm=True, private_mem=True).nr_address_spaces == 1


def test_max_gfn_tdp_uses_host_maxphyaddr() -> None:
    assert HostConfig(backend="svm", paging="npt", maxphyaddr=40).max_gfn == (1 << 28) - 1


@pytest.mark.parametrize(
    ("release", "profile"),
    [
        ("6.1.0-56-amd64", PROFILE_6_1),
        ("6.11.3", PROFILE_6_1),
        ("6.12.117", PROFILE_6_12),
        ("6.18.44-fc-v669", PROFILE_6_12),
        ("6.19.1", PROFILE_6_12),
        ("7.3.4-amd64", PROFILE_7),
    ],
)
def test_profile_for_release(release: str, profile: object) -> None:
    assert profile_for_release(release) is profile


def test_profile_differences() -> None:
    assert PROFILE_6_1.frozen_spte == 0x5A0 and PROFILE_6_12.frozen_spte == (1 << 63) | 0x5A0
    assert PROFILE_7.spte_mmio_allowed_mask & (1 << 10)
    assert not PROFILE_6_12.spte_mmio_allowed_mask & (1 << 10)
    assert PROFILE_7.invalidate_mmio_sptes_checks_caching
    assert not PROFILE_6_12.invalidate_mmio_sptes_checks_caching
    assert not PROFILE_6_1.invlpg_syncs_mmio_spte and PROFILE_6_12.invlpg_syncs_mmio_spte


def test_quirks_from_backend() -> None:
    assert HostConfig(backend="pvm", paging="shadow").quirks is QUIRKS_PVM
    assert HostConfig(backend="vmx").quirks is QUIRKS_UPSTREAM
    assert {"kvm_exit", "kvm_entry", "kvm_page_fault"} <= QUIRKS_PVM.absent_tracepoints
    assert QUIRKS_PVM.cpl0_emulated and not QUIRKS_UPSTREAM.cpl0_emulated


def test_from_probe_reads_the_l1tf_vulnerability_text() -> None:
    from hostkvm.mirror import HostConfig

    base = {"kernel": "6.1.0-56-amd64", "api_version": 12, "backend": "svm", "paging": "npt",
            "tdp_mmu": True, "mmio_caching": True, "maxphyaddr": 40, "smm": True}
    assert HostConfig.from_probe({**base, "l1tf": "Not affected"}).shadow_nonpresent_or_rsvd_mask == 0
    affected = HostConfig.from_probe({**base, "l1tf": "Mitigation: PTE Inversion; VMX: conditional cache flushes"})
    assert affected.l1tf is True
    assert affected.shadow_nonpresent_or_rsvd_mask == 0xF800000000  # bits 35..39 for 40 cache bits
