"""Every event the mirror emits has exactly the fields the host's tracefs format declares,
and host quirks (not backend names) decide the flow."""

from __future__ import annotations

import re
from pathlib import Path as FsPath

from hostkvm.mirror import (
    EVENT_FIELDS,
    HOST_PVM_6_18,
    KVM_MEM_READONLY,
    MIRROR_EVENTS,
    QUIRKS_PVM,
    REFHOST_6_1_NPT,
    HostConfig,
    HostQuirks,
    MirrorVm,
    Path,
)
from hostkvm.mirror._model import EVENT_FIELDS as MODEL_FIELDS

FORMATS = FsPath(__file__).resolve().parents[1] / "data" / "tracefs-formats-6.18.txt"


def _format_fields() -> dict[str, set[str]]:
    fields: dict[str, set[str]] = {}
    name = None
    for line in FORMATS.read_text().splitlines():
        m = re.match(r"^name: (\w+)", line)
        if m:
            name = m.group(1)
            fields[name] = set()
            continue
        m = re.match(r"^\s*field:.*?(\w+)(\[\d*\])?;\s*offset", line)
        if m and name and not m.group(1).startswith("common_"):
            fields[name].add(m.group(1))
    return fields


def _scenario_events() -> list:
    events = []
    for cfg in (
        HOST_PVM_6_18,
        REFHOST_6_1_NPT,
        HostConfig(kernel="6.18.44", backend="vmx", paging="shadow", smm=False),
        HostConfig(kernel="6.18.44", backend="vmx", paging="ept", smm=False),
    ):
        vm = MirrorVm(cfg)
        vm.create_memslot(0, 0, 0x200000)
        vm.create_memslot(1, 0x400000, 0x1000, KVM_MEM_READONLY)
        for cpl in (3, 0):
            for kind, width in (("w", 4), ("r", 8), ("w", 16), ("r", 2)):
                for a in (0x10000000, 0x10000FFF, 0x10000000, 0x1FFFFC, 0x400000):
                    data = bytes(width) if kind == "w" else None
                    events += vm.access(0, a, a, width, kind, cpl, data).events
        vm.mark_unsync(0x10000000)
        events += vm.invlpg(0, 0x10000000).events
        events += vm.delete_memslot(1).events
        events += vm.zap_all().events
    return events


def test_event_fields_match_the_host_formats() -> None:
    assert EVENT_FIELDS is MODEL_FIELDS
    formats = _format_fields()
    for name, fields in EVENT_FIELDS.items():
        assert name in formats, f"{name} missing from {FORMATS.name}"
        assert set(fields) == formats[name], name


def test_every_emitted_event_is_complete_and_announced() -> None:
    events = _scenario_events()
    names = {e.name for e in events}
    assert names <= MIRROR_EVENTS
    # the scenarios reach every event the mirror knows
    assert names == set(EVENT_FIELDS)
    for e in events:
        assert tuple(e.fields) == EVENT_FIELDS[e.name]


def test_quirks_decide_the_flow_not_the_backend_name() -> None:
    pvm_like = HostConfig(kernel="6.18.44", backend="vmx", paging="shadow", smm=False, quirks=QUIRKS_PVM)
    vm = MirrorVm(pvm_like)
    p = vm.access(0, 0x10000000, 0x10000000, 4, "w", 0, bytes(4))
    assert p.path is Path.EMULATED
    assert "kvm_page_fault" not in vm.access(0, 0x10000000, 0x10000000, 4, "w", 3, bytes(4)).event_names()

    plain = HostConfig(
        kernel="6.18.44", backend="pvm", paging="shadow", mmio_caching=False, smm=False,
        quirks=HostQuirks(name="none"),
    )
    vm = MirrorVm(plain)
    q = vm.access(0, 0x10000000, 0x10000000, 4, "w", 0, bytes(4))
    assert q.path is Path.NOSLOT_NO_INSTALL
    assert q.event_names()[:2] == ["kvm_page_fault", "kvm_mmu_pagetable_walk"]


def test_event_names_filter() -> None:
    vm = MirrorVm(HOST_PVM_6_18)
    p = vm.access(0, 0x10000000, 0x10000000, 4, "w", 3, bytes(4))
    assert p.event_names({"kvm_mmio", "kvm_userspace_exit"}) == ["kvm_mmio", "kvm_userspace_exit"]
    assert "Prediction(path=NOSLOT_NO_INSTALL" in repr(p)
