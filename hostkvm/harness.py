"""The harness: turn a :class:`~hostkvm.guest.GuestImage` into a VM, run it, record every
exit, and report the outcome.

Layering: the CLI and scenarios call this module; it calls the KVM layer
(:mod:`hostkvm.system`, :mod:`hostkvm.vm`, :mod:`hostkvm.vcpu`), the guest builder and
the decoder. It never calls ``fcntl.ioctl`` itself.

The hot loop (one iteration per ``KVM_RUN``) does as little as it can: registers come from
``kvm_run.s.regs`` (``KVM_CAP_SYNC_REGS``) instead of ``KVM_GET_REGS``, MMIO exits are
recorded as plain tuples, and decoding instructions for reports happens afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hostkvm import _gc, _native
from hostkvm._syscall import ioctl_error
from hostkvm._uapi.constants import KVM_SYNC_X86_REGS, KvmCap, KvmMemFlag
from hostkvm._uapi.ioctls import KvmIoctl
from hostkvm._uapi.structs import kvm_regs, kvm_sregs
from hostkvm.asm import decode_one
from hostkvm.errors import HostKvmError, TraceError
from hostkvm.exits import (
    MMIO_DATA_OFFSET,
    MMIO_EXIT_REGS,
    MMIO_EXIT_REGS_OFFSET,
    HltExit,
    InternalErrorExit,
    IntrExit,
    IoExit,
    ShutdownExit,
    decode_exit,
    exit_reason_name,
)
from hostkvm.guest import (
    UCALL_DONE,
    UCALL_EXCEPTION,
    UCALL_FAIL,
    UCALL_PRINT,
    UCALL_SYNC,
    GuestImage,
    build_guest,
)
from hostkvm.payload import Payload
from hostkvm.stats import stats_delta
from hostkvm.system import X86_FEATURE_GBPAGES, Kvm
if TYPE_CHECKING:
    from hostkvm.trace import TraceCapture
from hostkvm.vcpu import Vcpu
from hostkvm.vm import Vm
from hostkvm.x86.state import KVM_REGS_FIELDS, KVM_SREGS_DTABLES, KVM_SREGS_SCALARS, KVM_SREGS_SEGMENTS

_monotonic_ns = time.monotonic_ns
_INTR = IntrExit()

X86_EXCEPTION_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
    19: "#XM", 20: "#VE", 21: "#CP",
}


# --- records --------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordedExit:
    """One exit of the payload (ucalls excluded), in order.

    ``rip`` is the guest RIP when ``KVM_RUN`` returned; ``insn_rip`` the start of the
    instruction that caused the exit (for an MMIO write KVM has already retired it, so RIP
    points past it); ``ns`` the host time spent in that ``KVM_RUN``; ``events`` the trace
    events of its round trip when traced (a :class:`~hostkvm.trace.TraceEvents` slice of the
    run's events, cut when first looked at), else empty.
    """

    index: int
    reason: str
    gpa: int = 0
    len: int = 0
    is_write: bool = False
    data: bytes = b""
    port: int | None = None
    rip: int = 0
    insn_rip: int = 0
    insn: str = ""
    where: str = ""
    ns: int = 0
    run_index: int = 0
    kernel_ns: int | None = None
    stats: dict[str, int] | None = None
    # The run's events and this round trip's (first, end) index range in them.
    trace_events: Sequence[Any] = ()
    trace_span: tuple[int, int] = (0, 0)

    @property
    def events(self) -> Sequence[Any]:
        i, j = self.trace_span
        return self.trace_events[i:j]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "reason": self.reason}
        if self.reason == "KVM_EXIT_MMIO":
            d.update(gpa=self.gpa, len=self.len, is_write=self.is_write, data=self.data.hex())
        elif self.reason == "KVM_EXIT_IO":
            d.update(port=self.port, len=self.len, is_write=self.is_write, data=self.data.hex())
        d.update(rip=self.insn_rip, insn=self.insn, ns=self.ns)
        if self.kernel_ns is not None:
            d["kernel_ns"] = self.kernel_ns
        if self.where:
            d["where"] = self.where
        if self.events:
            d["events"] = [e.to_dict() for e in self.events]
        if self.stats is not None:
            d["stats"] = self.stats
        return d


@dataclass(slots=True)
class Outcome:
    """How the run ended. ``kind`` is one of done, fail, exception, shutdown,
    internal_error, timeout, unexpected_exit."""

    kind: str
    message: str = ""
    vector: int | None = None
    error_code: int | None = None
    cr2: int | None = None
    rip: int | None = None
    insn: str = ""
    where: str = ""
    suberror: int | None = None
    suberror_name: str = ""
    insn_bytes: bytes = b""
    reason: str = ""

    def to_json(self) -> str | dict[str, Any]:
        if self.kind == "done":
            return "done"
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "fail":
            d["message"] = self.message
        elif self.kind == "exception":
            d.update(vector=self.vector, name=X86_EXCEPTION_NAMES.get(self.vector or 0, "?"),
                     error_code=self.error_code, cr2=self.cr2, rip=self.rip, insn=self.insn)
        elif self.kind == "internal_error":
            d.update(suberror=self.suberror, suberror_name=self.suberror_name,
                     insn_bytes=self.insn_bytes.hex(), insn=self.insn, rip=self.rip)
        elif self.kind == "timeout":
            d["message"] = self.message
        elif self.kind == "unexpected_exit":
            d.update(reason=self.reason, rip=self.rip)
        if self.where:
            d["where"] = self.where
        return d

    def describe(self) -> str:
        if self.kind == "done":
            return "done"
        if self.kind == "fail":
            return f"fail: {self.message}"
        if self.kind == "exception":
            name = X86_EXCEPTION_NAMES.get(self.vector or 0, "?")
            return (f"exception {name} (vector {self.vector}) error_code {self.error_code:#x} "
                    f"cr2 {self.cr2:#x} rip {self.rip:#x}: {self.insn}"
                    + (f" ({self.where})" if self.where else ""))
        if self.kind == "internal_error":
            return (f"internal_error {self.suberror_name} rip {self.rip:#x} insn bytes "
                    f"{self.insn_bytes.hex() or '(none)'}: {self.insn}"
                    + (f" ({self.where})" if self.where else ""))
        if self.kind == "timeout":
            return f"timeout: {self.message}"
        if self.kind == "unexpected_exit":
            return f"unexpected exit {self.reason} at rip {self.rip:#x}"
        return self.kind


@dataclass(slots=True)
class RunResult:
    """Everything one payload run produced."""

    image: GuestImage
    outcome: Outcome
    exits: list[RecordedExit]
    vcpu_stats: dict[str, int]
    vm_stats: dict[str, int]
    prints: list[str]
    syncs: list[int]
    wall_ns: int
    runs: int  # KVM_RUN calls, ucalls included
    windows: list[tuple[int, int]] = field(default_factory=list)  # monotonic ns per KVM_RUN
    trace: TraceInfo | None = None
    missing: list[str] = field(default_factory=list)  # observations asked for but not made, and why

    @property
    def mmio_exits(self) -> list[RecordedExit]:
        return [e for e in self.exits if e.reason == "KVM_EXIT_MMIO"]


@dataclass(slots=True)
class TraceInfo:
    """What the trace capture of a run enabled and saw."""

    enabled: tuple[str, ...]
    absent: tuple[str, ...]
    mounted_here: bool
    total: int
    outside: Any  # TraceEvents outside every KVM_RUN window (e.g. host actions at a sync)
    events: Any = None  # every captured TraceEvents of the run, in time order


# SyncHandler(machine, vcpu, value) -> value for the guest's rax (None: leave it).
SyncHandler = Callable[["Machine", Vcpu, int], "int | None"]


# --- the machine --------------------------------------------------------------------------------


def _apply_cpu_state(vcpu: Vcpu, image: GuestImage) -> None:
    cpu = image.cpu
    sregs: kvm_sregs = vcpu.get_sregs()
    for name in KVM_SREGS_SEGMENTS:
        seg = getattr(cpu, name)
        dst = getattr(sregs, name)
        for f in ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable"):
            setattr(dst, f, getattr(seg, f))
    for name in KVM_SREGS_DTABLES:
        t = getattr(cpu, name)
        getattr(sregs, name).base = t.base
        getattr(sregs, name).limit = t.limit
    for name in KVM_SREGS_SCALARS:
        setattr(sregs, name, getattr(cpu, name))
    vcpu.set_sregs(sregs)
    regs = kvm_regs()
    for name in KVM_REGS_FIELDS:
        setattr(regs, name, cpu.regs.get(name, 0))
    vcpu.set_regs(regs)


def regs_dict(regs: kvm_regs) -> dict[str, int]:
    return {name: getattr(regs, name) for name in KVM_REGS_FIELDS}


class Machine:
    """A VM built from a guest image: its memslots, blobs and vCPUs in the image's state.

    ``Machine(image)`` opens ``/dev/kvm`` (or uses *kvm*), creates the VM, one memslot per
    ``harness``/``ram`` region (``ro`` → ``KVM_MEM_READONLY``), copies the blobs and
    creates *nr_vcpus* vCPUs in the initial state. Close it (or use ``with``).
    """

    def __init__(self, image: GuestImage, *, kvm: Kvm | None = None, nr_vcpus: int = 1) -> None:
        self.image = image
        self._own_kvm = kvm is None
        self.kvm = Kvm() if kvm is None else kvm
        self.vm: Vm | None = None
        try:
            self.vm = self.kvm.create_vm()
            for region in image.regions:
                if region.kind == "mmio":
                    continue
                flags = KvmMemFlag.KVM_MEM_READONLY if region.readonly else 0
                self.vm.add_memslot(region.gpa, region.size, flags=flags)
            for blob in image.blobs:
                self.vm.write(blob.gpa, blob.data)
            self._cpuid = self.kvm.get_supported_cpuid()
            self.vcpus = [self.add_vcpu() for _ in range(nr_vcpus)]
        except BaseException:
            self.close()
            raise

    def add_vcpu(self) -> Vcpu:
        assert self.vm is not None
        vcpu = self.vm.create_vcpu()
        vcpu.set_cpuid2(self._cpuid)
        _apply_cpu_state(vcpu, self.image)
        vcpu.set_sync_regs(KVM_SYNC_X86_REGS)
        return vcpu

    def close(self) -> None:
        if self.vm is not None:
            self.vm.close()
        if self._own_kvm:
            self.kvm.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- guest memory by gva --------------------------------------------------------------------
    def read_gva(self, gva: int, length: int) -> bytes:
        """Read guest memory through the image's mappings (identity for the harness)."""
        assert self.vm is not None
        gpa = self.image.gva_to_gpa(gva)
        if gpa is None:
            raise HostKvmError(f"gva {gva:#x} is not mapped by the payload's page tables")
        return self.vm.read(gpa, length)

    def decode_at(self, gva: int) -> tuple[str, int]:
        """``("mnemonic operands", length)`` of the instruction at *gva* (length 0 if unreadable)."""
        try:
            code = self.read_gva(gva, 15)
        except HostKvmError:
            try:
                code = self.read_gva(gva, 1)
            except HostKvmError:
                return "(not in guest memory)", 0
        insn = decode_one(code, gva, self.image.bits)
        if insn is None:
            return f"(undecodable: {code.hex()})", 0
        return insn.text, insn.size

    def where(self, gva: int) -> str:
        gpa = self.image.gva_to_gpa(gva)
        entry = self.image.line_for_gpa(gpa) if gpa is not None else None
        return f"{entry.where}: {entry.text.strip()}" if entry is not None and entry.line is not None else ""

    def instruction_for_exit(self, rip: int, is_write: bool) -> tuple[int, str]:
        """The start and text of the instruction behind an MMIO exit.

        KVM's emulator retires an MMIO write before the exit (``x86.c:x86_emulate_instruction()``
        writes back RIP unless a read is pending), so RIP points past the instruction; a
        read leaves RIP on it. A ``rep`` string instruction is restarted between
        iterations, so RIP stays on it: an exit whose RIP is on a ``rep`` string
        instruction is attributed to it.
        """
        text, _ = self.decode_at(rip)
        if not is_write or text.startswith("rep"):
            return rip, text
        gpa = self.image.gva_to_gpa(rip)
        entry = self.image.line_table and self.image.line_for_gpa(gpa - 1) if gpa is not None else None
        if entry and entry.gpa + entry.size == gpa:
            start = rip - entry.size
            return start, self.decode_at(start)[0]
        # Not payload code (or no line table): find an instruction that ends exactly at RIP.
        for back in range(1, 16):
            t, n = self.decode_at(rip - back)
            if n == back:
                return rip - back, t
        return rip, text

    def linear(self, rip: int) -> int:
        """Linear address of *rip* (real16: CS base + IP)."""
        return (self.image.cpu.cs.base + rip) if self.image.mode == "real16" else rip


# --- running ----------------------------------------------------------------------------------


def run_machine(
    machine: Machine,
    *,
    vcpu: Vcpu | None = None,
    timeout: float | None = None,
    on_sync: SyncHandler | None = None,
    capture: TraceCapture | None = None,
    stats_per_exit: bool = False,
    max_exits: int | None = None,
) -> RunResult:
    """Run *vcpu* (default: the first) until the payload ends or *timeout* expires.

    MMIO reads are completed with the payload's ``read:`` value; port-I/O INs with zeros.
    *on_sync* is called at every ``UCALL_SYNC`` (the host may change memslots, memory...).
    With a started *capture*, the events of each ``KVM_RUN`` round trip are attached to
    its exit (the capture is collected, which stops it; while the native loop runs, the
    capture's drain thread also decodes, see ``TraceCapture.decode_in_background``). With
    *stats_per_exit*, each exit carries the vCPU stats delta of its round trip (one
    ``pread`` per ``KVM_RUN``).

    The cyclic garbage collector is paused for the whole call (see :mod:`hostkvm._gc`).
    """
    with _gc.paused():
        return _run_machine(machine, vcpu, timeout, on_sync, capture, stats_per_exit, max_exits)


def _run_machine(machine: Machine, vcpu: Vcpu | None, timeout: float | None, on_sync: SyncHandler | None,
                 capture: TraceCapture | None, stats_per_exit: bool, max_exits: int | None) -> RunResult:
    image = machine.image
    payload = image.payload
    vcpu = machine.vcpus[0] if vcpu is None else vcpu
    timeout = payload.timeout if timeout is None else timeout
    ucall_port = image.ucall_port
    read_cache: dict[int, bytes] = {}

    stats = vcpu.stats()
    assert machine.vm is not None
    vm_stats = machine.vm.stats()
    vm_before, before = vm_stats.read(), stats.read()
    raw_stats = stats.read_raw if stats_per_exit else None
    per_run_stats: list[tuple[int, ...]] = [stats.read_raw()] if stats_per_exit else []

    # One record per KVM_RUN, in order: (t0, t1, reason, gpa, len, is_write, data, rip, rcx,
    # port) with monotonic ns around the call. reason 6: an MMIO exit (data: a write's 8 bytes
    # of kvm_run.mmio.data, a read's completion value); 2: a port-I/O exit of the payload; 0: a ucall that resumed;
    # -1: the last run (final ucall or terminal exit), which belongs to no exit.
    records: list[tuple[Any, ...]] = []
    record = records.append
    prints: list[str] = []
    syncs: list[int] = []
    outcome: Outcome | None = None
    limit = sys.maxsize if max_exits is None else max_exits
    kvm_run, page = vcpu.run_handles()
    unpack = MMIO_EXIT_REGS.unpack_from
    unpack_at = MMIO_EXIT_REGS_OFFSET
    mono = _monotonic_ns
    native = None if stats_per_exit else _native.load()
    mmio_count = 0
    if capture is not None and native is not None:
        # KVM_RUN batches run in C without the GIL: the drain thread can decode meanwhile.
        capture.decode_in_background = True

    def other_exit(e: object, t0: int, t1: int) -> Outcome | None:
        """Everything but an MMIO exit: ucalls, the payload's port I/O, the end of the run."""
        if type(e) is IoExit:
            if e.port == ucall_port and e.is_out and e.size == 1:
                o = _ucall(machine, vcpu, e.data[0], vcpu.synced_regs(), on_sync, prints, syncs)
                # A resumed ucall's round trip belongs to no exit of the payload (0); the
                # last one ends the run (-1).
                record((t0, t1, 0 if o is None else -1, 0, 0, False, b"", 0, 0, None))
                return o
            regs = vcpu.synced_regs()
            record((t0, t1, 2, 0, e.size * e.count, e.is_out, e.data, regs.rip, regs.rcx, e.port))
            if not e.is_out:
                vcpu.complete_io_in(e.data_offset, bytes(e.size * e.count))
            return None
        record((t0, t1, -1, 0, 0, False, b"", 0, 0, None))
        return _terminal(machine, vcpu, e, timeout)

    t_start = mono()
    with vcpu.deadline(timeout):
        if native is not None:
            # MMIO exits in C (hostkvm/_native/runloop.c), the rest here.
            batch = (_native.HkRec * NATIVE_BATCH)()
            batch_at = ctypes.addressof(batch)
            last = (ctypes.c_uint64 * 2)()
            err = ctypes.c_int()
            read8 = (ctypes.c_uint8 * 8).from_buffer_copy(payload.read_data(8))
            run_mmio, fd, run_at = native.hk_run_mmio, vcpu.fd, vcpu.run_page_address()
            args = (ctypes.addressof(read8), batch_at)
            last_at, err_ref = ctypes.addressof(last), ctypes.byref(err)
            while outcome is None:
                n = run_mmio(fd, run_at, args[0], args[1], min(NATIVE_BATCH, limit - mmio_count),
                             last_at, err_ref)
                if n:
                    record((_NATIVE, ctypes.string_at(batch_at, n * _native.REC_SIZE)))
                    mmio_count += n
                if last[0] == 0:  # the batch (or max_exits) is full, not a non-MMIO exit
                    if mmio_count >= limit:
                        outcome = Outcome("timeout", message=f"stopped after {max_exits} exits")
                    continue
                if err.value == errno.EINTR:
                    vcpu.clear_immediate_exit()
                    e: object = _INTR
                elif err.value:
                    raise ioctl_error(KvmIoctl.KVM_RUN, OSError(err.value, os.strerror(err.value)),
                                      f"vcpu {vcpu.id}")
                else:
                    e = decode_exit(page)
                outcome = other_exit(e, last[0], last[1])
        else:
            while True:
                t0 = mono()
                e = None
                try:
                    kvm_run()
                except OSError as error:
                    if error.errno != errno.EINTR:
                        raise ioctl_error(KvmIoctl.KVM_RUN, error, f"vcpu {vcpu.id}") from None
                    vcpu.clear_immediate_exit()
                    e = _INTR
                t1 = mono()
                if raw_stats is not None:
                    per_run_stats.append(raw_stats())
                if e is None:
                    reason, gpa, data, length, is_write, rcx, rip = unpack(page, unpack_at)
                    if reason == 6:  # KVM_EXIT_MMIO: the hot path
                        if not is_write:
                            # record the value the read completes with, not what kvm_run held
                            data = read_cache.get(length)
                            if data is None:
                                data = read_cache[length] = payload.read_data(length)
                            page[MMIO_DATA_OFFSET : MMIO_DATA_OFFSET + length] = data
                        record((t0, t1, 6, gpa, length, is_write, data, rip, rcx, None))
                        mmio_count += 1
                        if mmio_count >= limit:
                            outcome = Outcome("timeout", message=f"stopped after {max_exits} exits")
                            break
                        continue
                    e = decode_exit(page)
                outcome = other_exit(e, t0, t1)
                if outcome is not None:
                    break
    wall = mono() - t_start
    if native is not None:
        records = _expand_native(records)

    windows = [(r[0], r[1]) for r in records]
    attribution = None
    trace_info = None
    if capture is not None:
        from hostkvm.trace import attribute_to_windows

        events = capture.collect()
        attribution = attribute_to_windows(events, windows, pid=capture.pids[0])
        trace_info = TraceInfo(
            enabled=capture.enabled, absent=capture.absent,
            mounted_here=bool(capture.tracefs and capture.tracefs.mounted_here),
            total=len(events), outside=attribution.outside, events=events,
        )
    if attribution is not None:
        first, end, window_events, event_ts = attribution.first, attribution.end, attribution.events, attribution.events.ts
    # Stats that moved at all during the run: only they can have a nonzero delta per exit.
    moving: list[tuple[str, int]] = []
    if stats_per_exit:
        columns = list(zip(*per_run_stats))
        moving = [(d.name, d.offset // 8) for d in stats.descriptors
                  if not d.is_histogram and min(columns[d.offset // 8]) != max(columns[d.offset // 8])]
    # Exits at the same RIP decode alike: memory is read after the run either way.
    decoded: dict[tuple[int, bool], tuple[int, str, str]] = {}
    cs_base = machine.linear(0)  # real16: RIP is an offset in CS
    names = {6: exit_reason_name(6), 2: exit_reason_name(2)}
    exits = []
    for run_index, (t0, t1, reason, gpa, length, is_write, data, rip, _rcx, port) in enumerate(records):
        if reason <= 0:
            continue
        if reason == 6:
            is_write = bool(is_write)
            data = data[:length]
        lin = rip + cs_base
        key = (lin, is_write if reason == 6 else True)
        d = decoded.get(key)
        if d is None:
            insn_rip, insn = machine.instruction_for_exit(lin, key[1])
            d = decoded[key] = (insn_rip, insn, machine.where(insn_rip))
        rec = RecordedExit(len(exits), names[reason], gpa, length, is_write, data, port, lin,
                           d[0], d[1], d[2], t1 - t0, run_index)
        if attribution is not None:
            # Sliced (and the event objects built) only when someone looks at them.
            rec.trace_events = window_events
            rec.trace_span = i, j = first[run_index], end[run_index]
            if j > i:
                rec.kernel_ns = event_ts[j - 1] - event_ts[i]
        if stats_per_exit:
            a, b = per_run_stats[run_index], per_run_stats[run_index + 1]
            rec.stats = {name: b[i] - a[i] for name, i in moving if b[i] != a[i]}
        exits.append(rec)
    return RunResult(
        image=image,
        outcome=outcome,
        exits=exits,
        vcpu_stats=stats_delta(before, stats.read()),
        vm_stats=stats_delta(vm_before, vm_stats.read()),
        prints=prints,
        syncs=syncs,
        wall_ns=wall,
        runs=len(windows),
        windows=windows,
        trace=trace_info,
    )


# MMIO exits per call of the native loop (56 bytes each).
NATIVE_BATCH = 16384
_NATIVE = "native"  # marks a batch of native MMIO records among the loop's records


def _expand_native(records: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Turn each batch of native ``hk_rec`` records into the loop's record tuples, in order."""
    out: list[tuple[Any, ...]] = []
    add = out.append
    for r in records:
        if r[0] is _NATIVE:
            for t0, t1, gpa, data, rip, rcx, length, is_write in struct.iter_unpack(_native.REC_FORMAT, r[1]):
                add((t0, t1, 6, gpa, length, is_write, data, rip, rcx, None))
        else:
            add(r)
    return out


def _ucall(machine: Machine, vcpu: Vcpu, number: int, regs: kvm_regs, on_sync: SyncHandler | None,
           prints: list[str], syncs: list[int]) -> Outcome | None:
    args = (regs.rdi, regs.rsi, regs.rbx, regs.rcx, regs.rbp)
    if number == UCALL_DONE:
        return Outcome("done")
    if number in (UCALL_FAIL, UCALL_PRINT):
        try:
            text = machine.read_gva(args[0], min(args[1], 4096)).decode("utf-8", "replace")
        except HostKvmError as err:
            text = f"(unreadable message at {args[0]:#x}: {err})"
        if number == UCALL_FAIL:
            return Outcome("fail", message=text)
        prints.append(text)
        return None
    if number == UCALL_SYNC:
        syncs.append(args[0])
        if on_sync is not None:
            value = on_sync(machine, vcpu, args[0])
            if value is not None:
                r = vcpu.get_regs()
                r.rax = value
                vcpu.set_regs(r)
        return None
    if number == UCALL_EXCEPTION:
        vector, error_code, cr2, rip, _cs = args
        lin = rip if machine.image.mode != "real16" else rip  # stubs report linear RIP
        insn, _ = machine.decode_at(lin)
        return Outcome("exception", vector=vector, error_code=error_code, cr2=cr2, rip=lin, insn=insn,
                       where=machine.where(lin))
    return Outcome("fail", message=f"unknown ucall number {number}")


def _terminal(machine: Machine, vcpu: Vcpu, e: object, timeout: float) -> Outcome:
    if isinstance(e, IntrExit):
        if vcpu.timed_out:
            return Outcome("timeout", message=f"no end after {timeout:g}s (rip {machine.linear(vcpu.get_regs().rip):#x})")
        return Outcome("unexpected_exit", reason="KVM_EXIT_INTR", rip=machine.linear(vcpu.get_regs().rip))
    rip = machine.linear(vcpu.get_regs().rip)
    if isinstance(e, ShutdownExit):
        return Outcome("shutdown", rip=rip, where=machine.where(rip))
    if isinstance(e, InternalErrorExit):
        insn = ""
        if e.insn_bytes:
            d = decode_one(e.insn_bytes, rip, machine.image.bits)
            insn = d.text if d is not None else f"(undecodable: {e.insn_bytes.hex()})"
        else:
            insn, _ = machine.decode_at(rip)
        return Outcome("internal_error", suberror=e.suberror, suberror_name=e.suberror_name,
                       insn_bytes=e.insn_bytes, insn=insn, rip=rip, where=machine.where(rip))
    if isinstance(e, HltExit):
        return Outcome("unexpected_exit", reason="KVM_EXIT_HLT", rip=rip, where=machine.where(rip))
    reason = getattr(e, "reason", 0)
    return Outcome("unexpected_exit", reason=exit_reason_name(int(reason)), rip=rip)


def run_payload(payload: Payload, *, kvm: Kvm | None = None, timeout: float | None = None,
                on_sync: SyncHandler | None = None, trace: bool = False,
                stats_per_exit: bool = False) -> RunResult:
    """Build *payload*, run it once on this host, and return what happened.

    With *trace*, tracefs events are captured per round trip; if tracing cannot be used
    (not root, no tracefs) the run still happens and ``result.missing`` says why.
    """
    own = kvm is None
    kvm = Kvm() if kvm is None else kvm
    try:
        image = build_guest(payload, cpu_has_pdpe1gb=kvm.cpuid_has(X86_FEATURE_GBPAGES))
        with Machine(image, kvm=kvm) as machine:
            missing: list[str] = []
            capture = start_capture(None, missing) if trace else None
            try:
                result = run_machine(machine, timeout=timeout, on_sync=on_sync, capture=capture,
                                     stats_per_exit=stats_per_exit)
            finally:
                if capture is not None:
                    capture.close()
            result.missing = missing
            return result
    finally:
        if own:
            kvm.close()


# Per-CPU ring buffer of a run's capture; the capture also drains it in the background.
TRACE_BUFFER_KB = 8192


def start_capture(events: Sequence[str] | None, missing: list[str]) -> TraceCapture | None:
    """A started capture of *events* (default: ``hostkvm.trace.DEFAULT_EVENTS``) for this
    thread, or None with the reason appended to *missing* when tracing cannot be used here
    (not root, no tracefs): the run goes on. Instances that killed runs left behind are
    removed first."""
    from hostkvm.trace import DEFAULT_EVENTS, TraceCapture, find_tracefs, remove_stale_instances

    try:
        tracefs = find_tracefs()
        remove_stale_instances(tracefs)
        capture = TraceCapture(DEFAULT_EVENTS if events is None else events,
                               buffer_size_kb=TRACE_BUFFER_KB, tracefs=tracefs)
        capture.start()
    except TraceError as e:
        missing.append(f"trace: {e}")
        return None
    return capture


__all__ = ["KvmCap", "Machine", "Outcome", "RecordedExit", "RunResult", "run_machine", "run_payload"]
