"""hostkvm compare inside the reference host (stock kvm_amd under QEMU TCG), npt=0 and npt=1:
every fast scenario matches the mirror, and the mmio-spte fast path really fires there."""

from __future__ import annotations

import shutil

import pytest

from hostkvm.cli_compare import run_refhost

pytestmark = [pytest.mark.refhost, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _need_qemu(request: pytest.FixtureRequest) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        msg = "qemu-system-x86_64 not installed (scripts/setup installs qemu-system-x86)"
        if request.config.getoption("require_kvm"):
            pytest.fail(f"--require-kvm: {msg}", pytrace=False)
        pytest.skip(msg)


@pytest.mark.parametrize(("host", "paging"), [("ref-npt0", "shadow"), ("ref-npt1", "npt")])
def test_reference_host_matches_the_mirror_and_shows_the_fast_path(host: str, paging: str) -> None:
    run = run_refhost(host, [], slow=False, trace=True, progress=False)
    assert run["host"]["backend"] == "svm" and run["host"]["paging"] == paging
    assert run["host"]["mmio_caching"] is True
    verdicts = {c["name"]: c["verdict"] for c in run["scenarios"]}
    bad = {c["name"]: c["divergences"][:3] or c["error"] for c in run["scenarios"]
           if c["verdict"] not in ("match", "skipped")}
    assert not bad, bad
    assert verdicts["generation_wraparound"] == "skipped"  # opt-in: about 85 s under TCG
    many = next(c for c in run["scenarios"] if c["name"] == "mmio_many_pages")
    fp = many["fastpath"]
    assert fp["pf_mmio_spte_created"] == 8 and fp["mark_mmio_spte"] == 8
    assert fp["check_mmio_spte"] == fp["handle_mmio_page_fault"] == 24
    assert many["paths"] == {"noslot_slow_path_install": 8, "mmio_spte_hit": 24}
