"""The MMIO SPTE encoding: spte.h static_asserts, the digest's worked examples (§1.4) and
hypothesis round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostkvm.mirror import (
    ACC_ALL,
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    PROFILE_6_1,
    PROFILE_6_12,
    PROFILE_7,
    PROFILES,
    SPTE_MMU_PRESENT_MASK,
    HostConfig,
    MirrorConfigError,
    check_mmio_spte,
    generation_mmio_spte_mask,
    genmask_ull,
    get_mmio_spte_access,
    get_mmio_spte_generation,
    get_mmio_spte_gfn,
    is_mmio_spte,
    is_shadow_present_pte,
    make_mmio_spte,
    mark_mmio_spte_access,
    rsvd_bits,
)

SHADOW = HostConfig(kernel="6.18.44", backend="pvm", paging="shadow", tdp_mmu=False, maxphyaddr=48)
NPT = HostConfig(kernel="6.18.44", backend="svm", paging="npt", maxphyaddr=48)
EPT = HostConfig(kernel="6.18.44", backend="vmx", paging="ept", maxphyaddr=46)
L1TF = HostConfig(
    kernel="6.18.44", backend="vmx", paging="shadow", maxphyaddr=46, l1tf=True, x86_cache_bits=46
)
SME = HostConfig(kernel="6.18.44", backend="svm", paging="npt", maxphyaddr=48, x86_phys_bits=43, sme=True, sme_c_bit=47)
SHADOW_7 = HostConfig(kernel="7.3.4", backend="vmx", paging="shadow", maxphyaddr=48)
CONFIGS = {"shadow": SHADOW, "npt": NPT, "ept": EPT, "l1tf": L1TF, "sme": SME, "shadow-7.x": SHADOW_7}


# ---------------------------------------------------------------- spte.h static_asserts


@pytest.mark.parametrize("cfg", list(CONFIGS.values()), ids=list(CONFIGS))
def test_static_assert_present_bit_outside_generation(cfg: HostConfig) -> None:
    # static_assert(!(SPTE_MMU_PRESENT_MASK & (MMIO_SPTE_GEN_LOW_MASK | MMIO_SPTE_GEN_HIGH_MASK)))
    assert not SPTE_MMU_PRESENT_MASK & (cfg.mmio_spte_gen_low_mask | cfg.mmio_spte_gen_high_mask)


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_static_assert_allowed_mask_disjoint(profile) -> None:
    cfg = HostConfig(kernel="6.18", backend="vmx", paging="shadow", profile=profile)
    # static_assert(!(SPTE_MMIO_ALLOWED_MASK & (SPTE_MMU_PRESENT_MASK | gen masks)))
    assert not profile.spte_mmio_allowed_mask & (
        SPTE_MMU_PRESENT_MASK | cfg.mmio_spte_gen_low_mask | cfg.mmio_spte_gen_high_mask
    )


def test_static_assert_generation_bit_counts() -> None:
    # static_assert(MMIO_SPTE_GEN_LOW_BITS == 8 && MMIO_SPTE_GEN_HIGH_BITS == 11) up to 6.18
    for p in (PROFILE_6_1, PROFILE_6_12):
        assert p.mmio_spte_gen_low_bits == 8
        assert p.mmio_spte_gen_bits - p.mmio_spte_gen_low_bits == 11
        assert p.mmio_spte_gen_mask == 0x7FFFF
    # 7.x: MMIO_SPTE_GEN_LOW_END 9, an 18-bit generation
    assert PROFILE_7.mmio_spte_gen_low_bits == 7
    assert PROFILE_7.mmio_spte_gen_mask == 0x3FFFF


def test_static_assert_ret_pf_continue_is_zero() -> None:
    # static_assert(RET_PF_CONTINUE == 0); the 6.18 values come from the host's BTF
    for p in PROFILES.values():
        ret = dict(p.ret_pf)
        assert ret["RET_PF_CONTINUE"] == 0
        assert all(v >= 0 for v in ret.values())
    assert dict(PROFILE_6_12.ret_pf) == {
        "RET_PF_CONTINUE": 0, "RET_PF_RETRY": 1, "RET_PF_EMULATE": 2, "RET_PF_WRITE_PROTECTED": 3,
        "RET_PF_INVALID": 4, "RET_PF_FIXED": 5, "RET_PF_SPURIOUS": 6,
    }


def test_generation_layout_6_18() -> None:
    assert SHADOW.mmio_spte_gen_low_mask == genmask_ull(10, 3)
    assert SHADOW.mmio_spte_gen_high_mask == genmask_ull(62, 52)
    assert SHADOW.mmio_spte_gen_low_shift == 3
    assert SHADOW.mmio_spte_gen_high_shift == 44


def test_generation_layout_7x() -> None:
    assert SHADOW_7.mmio_spte_gen_low_mask == genmask_ull(9, 3)
    assert SHADOW_7.mmio_spte_gen_high_shift == 45
    assert generation_mmio_spte_mask(SHADOW_7, 0x7F) == 0x7F << 3
    assert generation_mmio_spte_mask(SHADOW_7, 0x80) == 1 << 52


def test_genmask_and_rsvd_bits() -> None:
    assert genmask_ull(51, 12) == 0x000FFFFFFFFFF000
    assert rsvd_bits(41, 45) == 0x3E0000000000
    assert rsvd_bits(5, 4) == 0


# ---------------------------------------------------------------- digest §1.4 worked examples

GEN, GFN = 0x12345, 0xFEE00


def test_worked_example_shadow_maxphyaddr_48() -> None:
    spte = make_mmio_spte(SHADOW, GFN, ACC_ALL, GEN)
    assert spte == 0x12380000FEE0022F
    assert make_mmio_spte(NPT, GFN, ACC_ALL, GEN) == 0x12380000FEE0022F


def test_worked_example_ept() -> None:
    assert make_mmio_spte(EPT, GFN, ACC_ALL, GEN) == 0x12300000FEE0022E


def test_worked_example_l1tf_cache_bits_46() -> None:
    assert L1TF.shadow_nonpresent_or_rsvd_mask == rsvd_bits(41, 45)
    assert make_mmio_spte(L1TF, GFN, ACC_ALL, GEN) == 0x12383E00FEE0022F


def test_mark_mmio_spte_access_is_raw_low_bits() -> None:
    # the tracepoint gotcha: 7 for shadow (P bit of the value), 6 for EPT (the WX bits)
    assert mark_mmio_spte_access(make_mmio_spte(SHADOW, GFN, ACC_ALL, GEN)) == 7
    assert mark_mmio_spte_access(make_mmio_spte(EPT, GFN, ACC_ALL, GEN)) == 6
    assert get_mmio_spte_access(SHADOW, make_mmio_spte(SHADOW, GFN, ACC_ALL, GEN)) == 6
    assert get_mmio_spte_access(EPT, make_mmio_spte(EPT, GFN, ACC_ALL, GEN)) == 0


def test_reference_host_spte_values() -> None:
    # spte values the 6.1 reference host traced (check_mmio_spte): gen 2, gfn 8, access 7 / 3
    ref = HostConfig(kernel="6.1.0-56-amd64", backend="svm", paging="shadow", maxphyaddr=40)
    assert make_mmio_spte(ref, 0x8, ACC_ALL, 2) == 0x8000000008017
    assert make_mmio_spte(ref, 0x200, 3, 2) == 0x8000000200013


def test_generation_update_in_progress_bit_is_dropped() -> None:
    assert make_mmio_spte(SHADOW, GFN, ACC_ALL, GEN | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS) == make_mmio_spte(
        SHADOW, GFN, ACC_ALL, GEN
    )


def test_generation_mmio_spte_mask_refuses_wide_generation() -> None:
    with pytest.raises(MirrorConfigError, match="MMIO_SPTE_GEN_MASK"):
        generation_mmio_spte_mask(SHADOW, 0x80000)


def test_check_mmio_spte() -> None:
    spte = make_mmio_spte(SHADOW, GFN, ACC_ALL, GEN)
    assert check_mmio_spte(SHADOW, spte, GEN)
    assert check_mmio_spte(SHADOW, spte, GEN + 0x80000)  # only the low 19 bits are compared
    assert not check_mmio_spte(SHADOW, spte, GEN + 1)
    assert not check_mmio_spte(SHADOW, spte, GEN | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS)


def test_is_mmio_spte() -> None:
    spte = make_mmio_spte(SHADOW, GFN, ACC_ALL, GEN)
    assert is_mmio_spte(SHADOW, spte)
    assert not is_shadow_present_pte(spte)
    assert not is_mmio_spte(SHADOW, (GFN << 12) | SPTE_MMU_PRESENT_MASK | 7)
    assert not is_mmio_spte(SHADOW, 0)
    # caching off: nothing is an MMIO SPTE, not even what the encoder makes
    off = HostConfig(kernel="6.18.44", backend="pvm", paging="shadow", mmio_caching=False)
    assert not is_mmio_spte(off, make_mmio_spte(SHADOW, GFN, ACC_ALL, GEN))
    # TDX-style per-VM value 0 under the EPT mask
    assert is_mmio_spte(EPT, make_mmio_spte(EPT, GFN, 0, GEN, mmio_value=0), mmio_value=0)


# ---------------------------------------------------------------- round trips

gens = st.integers(min_value=0, max_value=(1 << 64) - 1)
accesses = st.integers(min_value=0, max_value=7)


@pytest.mark.parametrize("name", list(CONFIGS))
@given(data=st.data(), gen=gens, access=accesses)
def test_round_trip(name: str, data: st.DataObject, gen: int, access: int) -> None:
    cfg = CONFIGS[name]
    gfn_bits = (cfg.x86_cache_bits if cfg.l1tf else cfg.x86_phys_bits) - 12  # type: ignore[operator]
    gfn = data.draw(st.integers(min_value=0, max_value=(1 << gfn_bits) - 1))
    spte = make_mmio_spte(cfg, gfn, access, gen)
    assert is_mmio_spte(cfg, spte)
    assert not is_shadow_present_pte(spte)
    assert get_mmio_spte_gfn(cfg, spte) == gfn
    assert get_mmio_spte_access(cfg, spte) == access & cfg.shadow_mmio_access_mask
    assert get_mmio_spte_generation(cfg, spte) == gen & cfg.mmio_spte_gen_mask
    assert check_mmio_spte(cfg, spte, gen & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS)
    assert spte < 1 << 64


@given(gen=st.integers(min_value=0, max_value=0x7FFFF))
def test_generation_mask_round_trip(gen: int) -> None:
    mask = generation_mmio_spte_mask(SHADOW, gen)
    assert not mask & ~(SHADOW.mmio_spte_gen_low_mask | SHADOW.mmio_spte_gen_high_mask)
    assert get_mmio_spte_generation(SHADOW, mask) == gen
