"""Run scenarios on this host and on the mirror, and report where they disagree.

Three levels, each from the scenario's ``begin`` sync point to its end:

* **exits**: the ``KVM_EXIT_MMIO`` exits, exactly (gpa, length, direction, written data);
* **events**: the trace events the mirror models (``hostkvm.mirror.MIRROR_EVENTS`` minus
  those the host's backend never emits), round trip by round trip (a round trip ends with
  ``kvm_userspace_exit``), field by field where the mirror predicts the field;
* **stats**: the vCPU and VM binary-stats deltas of the counters the mirror models.

A divergence names the scenario, the host configuration, the exit (or round trip) index,
the instruction, what the mirror expected, what the host did, and the mirror's reasoning.
Timing is reported per predicted path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hostkvm import timing as timing_mod
from hostkvm.errors import HostKvmError
from hostkvm.mirror import (
    KVM_PAGE_FAULT_ERROR_CODE_MASK,
    MIRROR_EVENTS,
    PFERR_FETCH_MASK,
    PFERR_USER_MASK,
    VCPU_STATS_MODELLED,
    VM_STATS_MODELLED,
    HostConfig,
    MirrorVm,
)
from hostkvm.mirror import TraceEvent as MirrorEvent
from hostkvm.scenario import BEGIN_SYNC, Access, GuestPteWrite, Scenario, Sync

KVM_EXIT_IO = 2
FASTPATH_EVENTS = ("mark_mmio_spte", "check_mmio_spte", "handle_mmio_page_fault", "kvm_fast_mmio")
MAX_DIVERGENCES = 20  # per scenario and level; the count says how many more there were


@dataclass
class Divergence:
    level: str  # "outcome" | "exits" | "events" | "stats" | "invariant"
    index: int | None  # exit index (exits), round trip index (events), None otherwise
    what: str
    expected: Any
    observed: Any
    insn: str = ""
    reasoning: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "index": self.index, "what": self.what,
                "expected": _jsonable(self.expected), "observed": _jsonable(self.observed),
                "insn": self.insn, "reasoning": self.reasoning}

    def describe(self) -> str:
        where = f" #{self.index}" if self.index is not None else ""
        insn = f" [{self.insn}]" if self.insn else ""
        text = f"{self.level}{where}: {self.what}{insn}: expected {_short(self.expected)}, observed {_short(self.observed)}"
        if self.reasoning:
            text += f"\n      mirror: {self.reasoning}"
        return text


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _short(v: Any) -> str:
    s = repr(_jsonable(v))
    return s if len(s) < 300 else s[:297] + "..."


@dataclass
class ScenarioResult:
    name: str
    verdict: str  # match | diverge | error | skipped
    host: str  # host configuration label
    description: str = ""
    exits: int = 0
    predicted_exits: int | None = 0  # None: the scenario checks invariants, not a prediction
    events_compared: int = 0
    events_matched: int = 0
    divergences: list[Divergence] = field(default_factory=list)
    more_divergences: int = 0
    missing: list[str] = field(default_factory=list)
    error: str = ""
    timing: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)  # predicted path -> accesses
    fastpath: dict[str, int] = field(default_factory=dict)  # observed mmio-spte activity
    extra: dict[str, Any] = field(default_factory=dict)  # scenario-specific observations
    seconds: float = 0.0
    mirror_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "verdict": self.verdict, "description": self.description,
            "host": self.host, "exits": self.exits, "predicted_exits": self.predicted_exits,
            "events_compared": self.events_compared, "events_matched": self.events_matched,
            "divergences": [d.to_json() for d in self.divergences],
            "more_divergences": self.more_divergences, "missing": self.missing,
            "error": self.error, "paths": self.paths, "fastpath": self.fastpath, "extra": self.extra,
            "timing": self.timing,
            "seconds": round(self.seconds, 3), "mirror_seconds": round(self.mirror_seconds, 4),
        }


class _Divs:
    """Collects divergences, capped per level."""

    def __init__(self) -> None:
        self.items: list[Divergence] = []
        self.dropped = 0
        self._per_level: dict[str, int] = {}

    def add(self, d: Divergence) -> None:
        n = self._per_level.get(d.level, 0)
        self._per_level[d.level] = n + 1
        if n < MAX_DIVERGENCES:
            self.items.append(d)
        else:
            self.dropped += 1


# --- the mirror side ------------------------------------------------------------------------


@dataclass
class _RoundTrip:
    """One predicted round trip: an MMIO exit or a ucall, and the events that lead to it."""

    kind: str  # "exit" | "sync" | "done"
    label: str
    reasoning: str = ""
    path: str = ""


@dataclass
class MirrorRun:
    exits: list[Any]  # mirror MmioExit per predicted exit, in order
    exit_paths: list[str]  # predicted path per exit
    exit_reasoning: list[str]
    events: list[MirrorEvent]
    round_trips: list[_RoundTrip]
    vcpu_stats: dict[str, int]
    vm_stats: dict[str, int]
    paths: dict[str, int]


# Harness pages every round trip after a sync runs on: the runtime's ucall code, the user
# stack, the payload code (hostkvm.guest memory map). Their exact fault addresses vary, so
# the walk events they cause are compared by name only.
HARNESS_PAGES = (0x4000, 0x4F000, 0x8000)


def _unpredict_addr(e: MirrorEvent) -> MirrorEvent:
    if e.name not in ("kvm_mmu_pagetable_walk", "kvm_page_fault"):
        return e
    return MirrorEvent(e.name, {k: None for k in e.fields})


# Marks, in the predicted stream, where the guest ran the runtime's kernel service.
KERNEL_SERVICE_MARK = "__kernel_service"
# The stores kernel_service makes besides the PTE: push rax/rbx/rcx/rsi, add [rsp+32]
# (guests/runtime64.S).
KERNEL_SERVICE_STACK_STORES = 5


def kernel_service(vm: MirrorVm, step: GuestPteWrite, unsync_tables: set[int]) -> None:
    """The runtime's kernel_remap as the host sees it: CPL3 `ud2` -> #UD -> the CPL0 stub
    stores the new gPTE, then INVLPG or a CR3 reload.

    * Where CPL0 is emulated (PVM), the `ud2` is first handed to the emulator, which fails
      (``x86.c:handle_emulation_failure()``: insn_emulation_fail), and every CPL0 store is
      an emulated write that goes through ``mmu.c:kvm_mmu_track_write()`` (mmu_pte_write
      counts each, shadowed gfn or not), which zaps the leaf at once.
    * With native CPL0 and shadow paging, the first store to a shadowed last-level guest
      page table faults and is fixed by unsyncing that shadow page
      (``mmu.c:mmu_try_to_unsync_pages()``: pf_taken, pf_fixed, no emulation); later stores
      to it do not fault. The old translation stays until INVLPG (``FNAME(sync_spte)``) or
      a CR3 load (``kvm_mmu_sync_roots()``, which also resyncs the page).
    * With TDP the guest's page tables are not shadowed, and INVLPG/CR3 loads do not exit.
    *unsync_tables* holds the last-level tables (gva >> 21) unsynced so far.
    """
    cfg = vm.config
    v = vm.vcpus[0]
    if cfg.quirks.cpl0_emulated:
        v.stat["insn_emulation_fail"] = v.stat.get("insn_emulation_fail", 0) + 1
        vm.stat["mmu_pte_write"] = vm.stat.get("mmu_pte_write", 0) + KERNEL_SERVICE_STACK_STORES
        vm.track_write(step.gva)
    elif not cfg.tdp_enabled:
        if step.gva >> 21 not in unsync_tables:
            v.stat["pf_taken"] = v.stat.get("pf_taken", 0) + 1
            v.stat["pf_fixed"] = v.stat.get("pf_fixed", 0) + 1
            unsync_tables.add(step.gva >> 21)
        vm.mark_unsync(step.gva)
    if step.flush == "invlpg":
        vm.invlpg(0, step.gva, gpa=step.gpa)
    elif step.flush == "cr3":
        vm.load_cr3(0)
        if not cfg.tdp_enabled:
            vm.sync_roots(0)
            unsync_tables.clear()


def _strip_kernel_service(group: list[Any]) -> list[Any]:
    """Drop what the kernel service itself causes from a host round trip: supervisor walks
    and faults (CPL0 instructions fetched and run by the emulator, the store to the page
    table) and walks of the runtime's code (the `ud2`)."""
    out = []
    for e in group:
        if e.name == "kvm_mmu_pagetable_walk" and (
                not e.fields.get("pferr", 0) & PFERR_USER_MASK or 0x4000 <= e.fields.get("addr", 0) < 0x8000):
            continue
        if e.name == "kvm_page_fault" and not e.fields.get("error_code", 0) & PFERR_USER_MASK:
            continue
        out.append(e)
    return out


def _ucall_exit() -> MirrorEvent:
    return MirrorEvent("kvm_userspace_exit", {"reason": KVM_EXIT_IO, "errno": 0})


def guest_pt_pages(image: Any, gva: int) -> list[int]:
    """The gpas of the guest page-table pages a hardware walk of *gva* reads (PML4 down to
    the last level used), from the page tables in the guest image."""
    mem: dict[int, bytes] = {}
    for b in image.blobs:
        for off in range(0, len(b.data), 4096):
            mem[b.gpa + off] = b.data[off:off + 4096]
    pages = []
    table = image.cpu.cr3 & ~0xFFF
    for level in (4, 3, 2, 1):
        pages.append(table)
        page = mem.get(table)
        if page is None:
            break
        index = (gva >> (12 + 9 * (level - 1))) & 0x1FF
        entry = int.from_bytes(page[index * 8:index * 8 + 8], "little")
        if not entry & 1 or (level in (3, 2) and entry & 0x80):
            break
        table = entry & 0x000FFFFFFFFFF000
    return pages


def replay_on_mirror(s: Scenario, cfg: HostConfig, image: Any,
                     action_infos: Sequence[Sequence[Any]]) -> MirrorRun:
    """Replay scenario *s* on a fresh mirror VM configured like the host.

    *image* is the guest image the host ran (its regions are the memslots the harness
    created, in order); *action_infos* what each sync's host actions returned on the real
    host. With TDP the CPU's own walk of the guest page tables faults on table pages the
    TDP MMU has not mapped (yet, or since a zap): those accesses are replayed before each
    guest access.
    """
    vm = MirrorVm(cfg)
    tdp = cfg.tdp_enabled
    pt_cache: dict[int, list[int]] = {}

    def access(gva: int, gpa: int, width: int, kind: str, data: bytes | None) -> Any:
        events: list[MirrorEvent] = []
        if tdp:
            pts = pt_cache.get(gva >> 12)
            if pts is None:
                pts = pt_cache[gva >> 12] = guest_pt_pages(image, gva)
            for pt in pts:
                # the table walk is the CPU's: its exact error code is not predicted
                events.extend(MirrorEvent(e.name, {k: None for k in e.fields})
                              for e in vm.access(0, pt, pt, 8, "r", s.cpl).events)
        return events, vm.access(0, gva, gpa, width, kind, s.cpl, data)

    slot = 0
    for r in image.regions:
        if r.kind == "mmio":
            continue
        vm.create_memslot(slot, r.gpa, r.size, 2 if r.readonly else 0)
        slot += 1
    # The prologue faulted in the harness pages the measured part runs on; do the same here
    # and drop the predictions.
    for gva in HARNESS_PAGES:
        access(gva, gva, 1, "r", None)
    base_stats = dict(vm.vcpus[0].stat)
    vm_base_stats = dict(vm.stat)
    remapped: dict[int, int] = {}  # gva page -> gpa page after the guest's kernel_remap
    unsync_tables: set[int] = set()
    exits: list[Any] = []
    exit_paths: list[str] = []
    exit_reasoning: list[str] = []
    events: list[MirrorEvent] = []
    trips: list[_RoundTrip] = []
    paths: dict[str, int] = {}
    read_bytes = s.read_value.to_bytes(8, "little")
    sync_i = 0
    for step in s.mirror_steps():
        if isinstance(step, Access):
            data = step.value.to_bytes(step.width, "little") if step.write else read_bytes[: step.width]
            gpa = (remapped.get(step.gva >> 12, step.gva >> 12) << 12) | (step.gva & 0xFFF)
            pt_events, p = access(step.gva, gpa, step.width, "w" if step.write else "r", data)
            events.extend(pt_events)
            paths[p.path.value] = paths.get(p.path.value, 0) + 1
            events.extend(p.events)
            what = f"{'store' if step.write else 'load'} {step.width}B at {step.gva:#x}"
            for e in p.exits:
                exits.append(e)
                exit_paths.append(p.path.value)
                exit_reasoning.append(p.reasoning)
                trips.append(_RoundTrip("exit", what, p.reasoning, p.path.value))
        elif isinstance(step, Sync):
            events.append(_ucall_exit())
            trips.append(_RoundTrip("sync", f"sync {sync_i}" + (f" ({step.label})" if step.label else "")))
            infos = action_infos[sync_i] if sync_i < len(action_infos) else [None] * len(step.actions)
            for action, info in zip(step.actions, infos, strict=True):
                events.extend(action.apply_mirror(vm, info))
            sync_i += 1
            # The guest resumes in the runtime's ucall_sync (fetch, stack read) and returns
            # to the payload code: harness pages that a zap dropped are faulted in again.
            for gva in HARNESS_PAGES:
                pt_events, p = access(gva, gva, 1, "r", None)
                events.extend(pt_events)
                events.extend(_unpredict_addr(e) for e in p.events)
        elif isinstance(step, GuestPteWrite):
            kernel_service(vm, step, unsync_tables)
            remapped[step.gva >> 12] = step.gpa >> 12
            events.append(MirrorEvent(KERNEL_SERVICE_MARK, {}))
    events.append(_ucall_exit())
    trips.append(_RoundTrip("done", "done"))
    vmstats = {k: vm.stat.get(k, 0) - vm_base_stats.get(k, 0) for k in VM_STATS_MODELLED}
    vstats = {k: v - base_stats.get(k, 0) for k, v in vm.vcpus[0].stat.items() if v != base_stats.get(k, 0)}
    return MirrorRun(exits, exit_paths, exit_reasoning, events, trips, vstats, vmstats, paths)


# --- the host side --------------------------------------------------------------------------


@dataclass
class HostRun:
    result: Any  # harness.RunResult
    action_infos: list[list[Any]]
    begin_vcpu: dict[str, Any]
    begin_vm: dict[str, Any]
    end_vcpu: dict[str, Any]
    end_vm: dict[str, Any]
    image: Any  # the GuestImage the host ran
    missing: list[str]


def run_on_host(s: Scenario, kvm: Any, *, trace: bool = True) -> HostRun:
    from hostkvm.guest import build_guest
    from hostkvm.harness import Machine, run_machine, start_capture
    from hostkvm.payload import parse_payload_text
    from hostkvm.system import X86_FEATURE_GBPAGES
    from hostkvm.trace import DEFAULT_EVENTS, PAGETABLE_WALK_EVENTS

    payload = parse_payload_text(s.payload_text(), path=f"<scenario {s.name}>")
    image = build_guest(payload, cpu_has_pdpe1gb=kvm.cpuid_has(X86_FEATURE_GBPAGES))
    syncs = s.syncs()
    infos: list[list[Any]] = []
    begin: dict[str, dict[str, Any]] = {}
    missing: list[str] = []

    def on_sync(machine: Machine, vcpu: Any, value: int) -> None:
        if value == BEGIN_SYNC:
            begin["vcpu"] = vcpu.stats().read()
            begin["vm"] = machine.vm.stats().read() if machine.vm is not None else {}
            return None
        if value >= len(syncs):
            raise HostKvmError(f"scenario {s.name}: guest reached unknown sync point {value}")
        infos.append([a.apply_host(machine) for a in syncs[value].actions])
        return None

    with Machine(image, kvm=kvm) as machine:
        capture = start_capture(DEFAULT_EVENTS + PAGETABLE_WALK_EVENTS, missing) if trace else None
        try:
            result = run_machine(machine, on_sync=on_sync, capture=capture)
        finally:
            if capture is not None:
                capture.close()
        assert machine.vm is not None
        end_vcpu = machine.vcpus[0].stats().read()
        end_vm = machine.vm.stats().read()
    if "vcpu" not in begin:
        begin["vcpu"], begin["vm"] = end_vcpu, end_vm
        missing.append("stats: the guest never reached the begin sync point")
    return HostRun(result, infos, begin["vcpu"], begin["vm"], end_vcpu, end_vm, image, missing)


# --- comparing ------------------------------------------------------------------------------


def _norm(v: Any) -> Any:
    return int(v) if isinstance(v, bool) else v


def _groups(events: Iterable[Any]) -> list[list[Any]]:
    out: list[list[Any]] = [[]]
    for e in events:
        out[-1].append(e)
        if e.name == "kvm_userspace_exit":
            out.append([])
    if not out[-1]:
        out.pop()
    return out


def _strip_ucall_emulation(group: list[Any]) -> list[Any]:
    """Drop the events of the ucall instruction itself from a round trip that ends in a
    ucall (``kvm_userspace_exit`` reason ``KVM_EXIT_IO``): the harness's ``out`` is emulated
    (a CPL3 ``out`` traps; ``emulate.c`` walks the guest page tables to fetch it and to read
    the TSS I/O bitmap). Those walks start with the pair walk(RIP) + walk(RIP, PFERR_FETCH).
    The mirror models the guest's accesses, not the harness's transport."""
    if not group or group[-1].name != "kvm_userspace_exit" or group[-1].fields.get("reason") != KVM_EXIT_IO:
        return group
    for i in range(len(group) - 2, 0, -1):
        a, b = group[i - 1], group[i]
        if (a.name == b.name == "kvm_mmu_pagetable_walk" and a.fields.get("addr") == b.fields.get("addr")
                and b.fields.get("pferr", 0) & PFERR_FETCH_MASK and not a.fields.get("pferr", 0) & PFERR_FETCH_MASK):
            if all(e.name == "kvm_mmu_pagetable_walk" for e in group[i + 1:-1]):
                return group[: i - 1] + [group[-1]]
    return group


def compare_events(host_events: Iterable[Any], predicted: Sequence[MirrorEvent], cfg: HostConfig,
                   trips: Sequence[_RoundTrip], divs: _Divs) -> tuple[int, int]:
    """Compare round trip by round trip; returns (events compared, events matched)."""
    absent = set(cfg.quirks.absent_tracepoints)
    keep = MIRROR_EVENTS - absent
    host = [e for e in host_events if e.name in keep]
    host_groups = _groups(host)
    # Drop the prologue: everything up to and including the begin sync's ucall exit.
    for i, g in enumerate(host_groups):
        if g and g[-1].name == "kvm_userspace_exit" and g[-1].fields.get("reason") == KVM_EXIT_IO:
            host_groups = host_groups[i + 1:]
            break
    host_groups = [_strip_ucall_emulation(g) for g in host_groups]
    pred_groups = _groups(e for e in predicted if e.name in keep or e.name == KERNEL_SERVICE_MARK)
    for gi, pg in enumerate(pred_groups):
        if any(e.name == KERNEL_SERVICE_MARK for e in pg):
            pred_groups[gi] = [e for e in pg if e.name != KERNEL_SERVICE_MARK]
            if gi < len(host_groups):
                host_groups[gi] = _strip_kernel_service(host_groups[gi])
    compared = matched = 0
    for gi in range(max(len(host_groups), len(pred_groups))):
        hg = host_groups[gi] if gi < len(host_groups) else []
        pg = pred_groups[gi] if gi < len(pred_groups) else []
        trip = trips[gi] if gi < len(trips) else _RoundTrip("?", "past the predicted end")
        hn, pn = [e.name for e in hg], [e.name for e in pg]
        if hn != pn:
            compared += len(pg)
            matched += sum(1 for a, b in zip(hn, pn) if a == b)
            divs.add(Divergence("events", gi, f"round trip {gi} ({trip.label}): event sequence",
                                pn, hn, reasoning=trip.reasoning))
            continue
        for he, pe in zip(hg, pg):
            compared += 1
            bad = {}
            for k, v in pe.fields.items():
                if v is None:
                    continue
                hv = he.fields.get(k)
                if pe.name == "kvm_page_fault" and k == "error_code" and hv is not None:
                    hv, v = hv & KVM_PAGE_FAULT_ERROR_CODE_MASK, v & KVM_PAGE_FAULT_ERROR_CODE_MASK
                if _norm(hv) != _norm(v):
                    bad[k] = (v, hv)
            if bad:
                divs.add(Divergence(
                    "events", gi, f"round trip {gi} ({trip.label}): {pe.name} fields",
                    {k: a for k, (a, _) in bad.items()}, {k: b for k, (_, b) in bad.items()},
                    reasoning=trip.reasoning))
            else:
                matched += 1
    return compared, matched


def compare_scenario(s: Scenario, kvm: Any, probe: dict[str, Any], cfg: HostConfig, *,
                     host_label: str, trace: bool = True) -> ScenarioResult:
    """Run *s* on the host and the mirror and compare them."""
    t0 = time.perf_counter()
    res = ScenarioResult(s.name, "match", host_label, s.description)
    if s.runner is not None:
        try:
            s.runner(s, kvm, cfg, res)
        except HostKvmError as e:
            res.verdict, res.error = "error", str(e)
        res.seconds = time.perf_counter() - t0
        if res.verdict == "match" and res.divergences:
            res.verdict = "diverge"
        return res
    try:
        host = run_on_host(s, kvm, trace=trace)
    except HostKvmError as e:
        res.verdict, res.error = "error", str(e)
        res.seconds = time.perf_counter() - t0
        return res
    r = host.result
    res.missing = host.missing + list(r.missing)
    tm = time.perf_counter()
    mirror = replay_on_mirror(s, cfg, host.image, host.action_infos)
    divs = _Divs()

    if r.outcome.kind != "done":
        divs.add(Divergence("outcome", None, "payload outcome", "done", r.outcome.describe()))

    # exits
    mmio = [e for e in r.exits if e.reason == "KVM_EXIT_MMIO"]
    res.exits, res.predicted_exits = len(mmio), len(mirror.exits)
    for i in range(max(len(mmio), len(mirror.exits))):
        h = mmio[i] if i < len(mmio) else None
        p = mirror.exits[i] if i < len(mirror.exits) else None
        reasoning = mirror.exit_reasoning[i] if i < len(mirror.exit_reasoning) else ""
        if h is None:
            assert p is not None
            divs.add(Divergence("exits", i, "missing exit", _exit_tuple(p), None, reasoning=reasoning))
            continue
        obs = (h.gpa, h.len, "write" if h.is_write else "read", h.data.hex() if h.is_write else None)
        if p is None:
            divs.add(Divergence("exits", i, "unexpected exit", None, obs, insn=h.insn))
            continue
        exp = _exit_tuple(p)
        if exp[3] is None or obs[3] is None:
            obs = obs[:3] + (exp[3],) if exp[3] is None else obs
        if exp != obs:
            divs.add(Divergence("exits", i, "KVM_EXIT_MMIO", exp, obs, insn=h.insn, reasoning=reasoning))

    # events
    if r.trace is not None and r.trace.events is not None:
        res.events_compared, res.events_matched = compare_events(
            r.trace.events, mirror.events, cfg, mirror.round_trips, divs)
    elif not any(m.startswith("trace") for m in res.missing):
        res.missing.append("events: not traced")

    # what the host's mmio-spte fast path did, measured part only
    res.fastpath = {"pf_mmio_spte_created": host.end_vcpu.get("pf_mmio_spte_created", 0)
                    - host.begin_vcpu.get("pf_mmio_spte_created", 0)}
    if r.trace is not None and r.trace.events is not None:
        counts = r.trace.events.counts()
        for name in FASTPATH_EVENTS:
            res.fastpath[name] = counts.get(name, 0)

    # stats
    for name in VCPU_STATS_MODELLED:
        if name not in host.end_vcpu:
            continue
        got = host.end_vcpu[name] - host.begin_vcpu.get(name, 0)
        want = mirror.vcpu_stats.get(name, 0)
        if got != want:
            divs.add(Divergence("stats", None, f"vcpu {name} delta", want, got))
    for name in VM_STATS_MODELLED:
        if name not in host.end_vm or name not in mirror.vm_stats:
            continue
        got = host.end_vm[name] - host.begin_vm.get(name, 0)
        if got != mirror.vm_stats[name]:
            divs.add(Divergence("stats", None, f"vm {name} delta", mirror.vm_stats[name], got))
    res.mirror_seconds = time.perf_counter() - tm

    # timing per predicted path (when host and mirror exits line up)
    res.paths = mirror.paths
    if len(mmio) == len(mirror.exits) and mmio:
        ns = [e.ns for e in mmio]
        res.timing = {"by_path": timing_mod.group(ns, mirror.exit_paths)}
        res.timing["paths_differ"] = paths_differ(ns, mirror.exit_paths)
    res.divergences, res.more_divergences = divs.items, divs.dropped
    if res.divergences:
        res.verdict = "diverge"
    res.seconds = time.perf_counter() - t0
    return res


def _exit_tuple(p: Any) -> tuple[int, int, str, str | None]:
    data = p.data.hex() if (p.is_write and p.data is not None) else None
    return (p.gpa, p.len, "write" if p.is_write else "read", data)


def paths_differ(ns: Sequence[int], paths: Sequence[str]) -> list[dict[str, Any]]:
    """For each pair of predicted paths with at least 5 samples each: their medians, the
    ratio, and whether the measured latencies separate (interquartile ranges disjoint)."""
    by: dict[str, list[int]] = {}
    for v, p in zip(ns, paths, strict=True):
        by.setdefault(p, []).append(v)
    out = []
    names = sorted(k for k, v in by.items() if len(v) >= 5)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            va, vb = sorted(by[a]), sorted(by[b])
            qa = (timing_mod.percentile(va, 25), timing_mod.percentile(va, 75))
            qb = (timing_mod.percentile(vb, 25), timing_mod.percentile(vb, 75))
            ma, mb = timing_mod.percentile(va, 50), timing_mod.percentile(vb, 50)
            out.append({"a": a, "b": b, "p50_a": ma, "p50_b": mb, "ratio": round(ma / mb, 3) if mb else None,
                        "distinct": qa[1] < qb[0] or qb[1] < qa[0]})
    return out


def host_label(probe: dict[str, Any]) -> str:
    caching = "mmio_caching=Y" if probe.get("mmio_caching") else "mmio_caching=N"
    return f"{probe.get('backend')}/{probe.get('paging')} {caching} {probe.get('kernel')}"
