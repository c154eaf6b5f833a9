"""Pure parts of the comparison: round-trip grouping, what is stripped as harness transport,
the mirror replay of a scenario, path timing, the JUnit writer and the report merger."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import pytest

from hostkvm.cli_compare import junit, side_by_side
from hostkvm.cli_report import load_runs
from hostkvm.compare import (
    KERNEL_SERVICE_MARK,
    _Divs,
    _groups,
    _strip_kernel_service,
    _strip_ucall_emulation,
    compare_events,
    guest_pt_pages,
    paths_differ,
    replay_on_mirror,
)
from hostkvm.errors import ScenarioError
from hostkvm.guest import build_guest
from hostkvm.mirror import HOST_PVM_6_18, REFHOST_6_1_NPT, REFHOST_6_1_SHADOW
from hostkvm.payload import parse_payload_text
from hostkvm.scenario import CreateMemslot, Scenario, registry


@dataclass
class Ev:
    name: str
    fields: dict[str, Any] = field(default_factory=dict)


def walk(addr: int, pferr: int) -> Ev:
    return Ev("kvm_mmu_pagetable_walk", {"addr": addr, "pferr": pferr})


def uexit(reason: int) -> Ev:
    return Ev("kvm_userspace_exit", {"reason": reason, "errno": 0})


def test_groups_end_at_each_userspace_exit() -> None:
    evs = [walk(1, 4), uexit(6), walk(2, 4), Ev("kvm_mmio"), uexit(2), walk(3, 4)]
    assert [[e.name for e in g] for g in _groups(evs)] == [
        ["kvm_mmu_pagetable_walk", "kvm_userspace_exit"],
        ["kvm_mmu_pagetable_walk", "kvm_mmio", "kvm_userspace_exit"],
        ["kvm_mmu_pagetable_walk"],
    ]


def test_ucall_emulation_is_stripped_only_from_ucall_round_trips() -> None:
    # a RAM first touch, then the ucall's own walks: walk(rip, U), walk(rip, U|F), TSS reads
    group = [walk(0x20000000, 6), walk(0x4035, 4), walk(0x4035, 0x14), walk(0x3066, 0), walk(0x3DA8, 0), uexit(2)]
    assert _strip_ucall_emulation(group) == [group[0], group[-1]]
    mmio = [walk(0x10000000, 6), walk(0x8007, 0x14), Ev("kvm_mmio"), uexit(6)]
    assert _strip_ucall_emulation(mmio) == mmio  # an MMIO round trip is the guest's own
    odd = [walk(0x4035, 4), walk(0x4035, 0x14), Ev("kvm_mmio"), uexit(2)]
    assert _strip_ucall_emulation(odd) == odd  # only walks may follow the pair


def test_kernel_service_strip_keeps_the_guests_user_accesses() -> None:
    group = [walk(0x41F0, 4), walk(0x41F0, 0x14), walk(0x60000, 0), Ev("kvm_page_fault", {"error_code": 2}),
             walk(0x10000000, 6), Ev("kvm_page_fault", {"error_code": 6}), uexit(6)]
    assert _strip_kernel_service(group) == [group[4], group[5], group[6]]


def test_compare_events_reports_sequences_and_fields() -> None:
    from hostkvm.compare import _RoundTrip
    from hostkvm.mirror import TraceEvent

    predicted = [TraceEvent("kvm_mmio", {"type": 2, "len": 4, "gpa": 0x1000, "val": None}),
                 TraceEvent("kvm_userspace_exit", {"reason": 6, "errno": 0})]
    host_prologue = [uexit(2)]  # the begin sync's ucall: dropped
    good = host_prologue + [Ev("kvm_mmio", {"type": 2, "len": 4, "gpa": 0x1000, "val": 7}), uexit(6)]
    divs = _Divs()
    trips = [_RoundTrip("exit", "store", "reasoning")]
    assert compare_events(good, predicted, HOST_PVM_6_18, trips, divs) == (2, 2)
    assert divs.items == []
    bad = host_prologue + [Ev("kvm_mmio", {"type": 2, "len": 4, "gpa": 0x2000, "val": 7}), uexit(6)]
    assert compare_events(bad, predicted, HOST_PVM_6_18, trips, divs) == (2, 1)
    (d,) = divs.items
    assert (d.level, d.index, d.expected, d.observed) == ("events", 0, {"gpa": 0x1000}, {"gpa": 0x2000})
    assert d.reasoning == "reasoning"


def test_divergences_are_capped_per_level() -> None:
    from hostkvm.compare import MAX_DIVERGENCES, Divergence

    divs = _Divs()
    for i in range(MAX_DIVERGENCES + 5):
        divs.add(Divergence("exits", i, "x", 1, 2))
    divs.add(Divergence("stats", None, "y", 1, 2))
    assert len(divs.items) == MAX_DIVERGENCES + 1 and divs.dropped == 5


def test_payload_text_of_a_scenario_builds_and_states_its_regions() -> None:
    s = registry()["memslot_create_covers_mmio"]
    text = s.payload_text()
    assert ";@ mmio: 0x10000000+0x1000" in text
    image = build_guest(parse_payload_text(text))
    assert any(r.kind == "mmio" and r.gpa == 0x10000000 for r in image.regions)
    with pytest.raises(ScenarioError, match="width 3"):
        Scenario("x", "y").store(0x10000000, 3, 0).payload_text()


def test_guest_pt_pages_follow_the_images_page_tables() -> None:
    image = build_guest(parse_payload_text(";@ pages: 4k\n;@ mmio: 0x10000000+0x1000\nnop\n"))
    pages = guest_pt_pages(image, 0x10000000)
    assert len(pages) == 4 and pages[0] == image.cpu.cr3 & ~0xFFF
    assert all(0x60000 <= p < 0x80000 for p in pages)  # the page-table pool
    assert guest_pt_pages(image, 0x8000)[:3] == pages[:3]  # same PML4, PDPT and PD


@pytest.mark.parametrize("cfg", [HOST_PVM_6_18, REFHOST_6_1_SHADOW, REFHOST_6_1_NPT], ids=lambda c: c.paging)
def test_replay_of_memslot_creation(cfg: Any) -> None:
    s = Scenario("t", "store, create a slot, load")
    s.mmio(0x10000000, 0x1000)
    s.store(0x10000000, 4, 5)
    s.sync(CreateMemslot(0x10000000, 0x1000))
    s.load(0x10000000, 4, expect=0)
    image = build_guest(parse_payload_text(s.payload_text()))
    run = replay_on_mirror(s, cfg, image, [[len([r for r in image.regions if r.kind != "mmio"])]])
    assert [(e.gpa, e.len, e.is_write) for e in run.exits] == [(0x10000000, 4, True)]
    assert [t.kind for t in run.round_trips] == ["exit", "sync", "done"]
    assert run.vcpu_stats.get("mmio_exits") == 1
    assert sum(e.name == "kvm_userspace_exit" for e in run.events) == 3
    install = "noslot_slow_path_install" if cfg.enable_mmio_caching else "noslot_slow_path_no_install"
    assert run.paths.get(install) == 1


def test_paths_differ_needs_five_samples_and_says_when_they_separate() -> None:
    ns = [100] * 10 + [1000] * 10 + [5] * 3
    paths = ["a"] * 10 + ["b"] * 10 + ["c"] * 3
    (pair,) = paths_differ(ns, paths)
    assert (pair["a"], pair["b"], pair["p50_a"], pair["p50_b"], pair["distinct"]) == ("a", "b", 100, 1000, True)
    (same,) = paths_differ(list(range(100, 120)) + list(range(105, 125)), ["a"] * 20 + ["b"] * 20)
    assert same["distinct"] is False  # interquartile ranges overlap


def _run(key: str, verdicts: list[str]) -> dict[str, Any]:
    return {"host_key": key, "host_label": f"{key}: x", "seconds": 1.0, "scenarios": [
        {"name": f"s{i}", "verdict": v, "exits": i, "divergences": [], "missing": [], "error": "boom" if v == "error" else "",
         "paths": {"per_vcpu_cache_hit": 1}, "seconds": 0.1} for i, v in enumerate(verdicts)]}


def test_junit_has_one_case_per_scenario(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "j.xml"
    junit({"runs": [_run("local", ["match", "diverge", "error", "skipped"])]}, str(path))
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "1", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["s0", "s1", "s2", "s3"]
    assert cases[1].find("failure") is not None and cases[2].find("error") is not None


def test_side_by_side_and_report_loading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = side_by_side([_run("local", ["match"]), _run("ref-npt1", ["diverge"])])
    assert rows[0].split() == ["scenario", "local", "ref-npt1"]
    assert rows[1].split()[:5] == ["s0", "match", "0x", "[cache]", "diverge"]
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"runs": [_run("local", ["match"])]}))
    assert load_runs(str(f))[0]["host_key"] == "local"
    f.write_text("[]")
    with pytest.raises(ScenarioError, match="not the output of hostkvm compare"):
        load_runs(str(f))
    with pytest.raises(ScenarioError, match="No such file"):
        load_runs(str(tmp_path / "missing.json"))
    assert KERNEL_SERVICE_MARK.startswith("__")
