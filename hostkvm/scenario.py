"""Scenarios: one description of an experiment from which both sides are derived.

A :class:`Scenario` is a list of guest steps (accesses, loops, sync points with host
actions, guest page-table services) over declared regions. From it hostkvm derives

* the payload the host runs (``Scenario.payload_text()``: a ``.S`` file in the payload
  format, so it can also be run by hand with ``hostkvm run``), and
* the stream of accesses and host actions the mirror replays (``Scenario.mirror_steps()``).

So the guest's behaviour is written once, and host and mirror see the same experiment.

Every scenario starts with a prologue that faults in the harness pages the measured part
uses (payload code, runtime, stack), then a ``begin`` sync point: exits, events and stats
are compared from there on. Write your own::

    from hostkvm.scenario import Scenario, CreateMemslot, register

    s = Scenario("my_scenario", "an MMIO store, then RAM appears under it")
    s.mmio(0x10000000, 0x1000)
    s.store(0x10000000, 4, 0x11223344)
    s.sync(CreateMemslot(0x10000000, 0x1000, fill=b"\\x5a"))
    s.load(0x10000000, 1, expect=0x5A)
    register(s)            # `hostkvm compare my_scenario` now finds it

Put such code in a module and pass ``--scenarios path/to/module.py`` to ``hostkvm compare``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hostkvm.errors import ScenarioError

if TYPE_CHECKING:
    from hostkvm.harness import Machine
    from hostkvm.mirror import MirrorVm

PAGE_SIZE = 4096
BEGIN_SYNC = 0xB0  # sync value of the prologue's end: comparison starts after it

# Registers by access width, for stores from rbx and loads into rbx.
_REG = {1: "bl", 2: "bx", 4: "ebx", 8: "rbx"}
_PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}


# --- host actions (run at a sync point, on the real VM and on the mirror) ------------------


class HostAction:
    """Something the host does at a sync point. ``apply_host`` acts on the real VM and
    returns what the mirror needs to replay it (e.g. the slot id KVM used);
    ``apply_mirror`` replays it on a :class:`~hostkvm.mirror.MirrorVm`."""

    def describe(self) -> str:
        raise NotImplementedError

    def apply_host(self, machine: Machine) -> Any:
        raise NotImplementedError

    def apply_mirror(self, mirror: MirrorVm, info: Any) -> list[Any]:
        """Replay on the mirror; return the trace events the mirror predicts for it."""
        raise NotImplementedError


def _slot_at(machine: Machine, gpa: int) -> int:
    assert machine.vm is not None
    ms = machine.vm.memslot_at(gpa)
    if ms is None:
        raise ScenarioError(f"no memslot covers gpa {gpa:#x} on the host")
    return ms.slot


@dataclass
class CreateMemslot(HostAction):
    """``KVM_SET_USER_MEMORY_REGION`` creating a slot at *gpa* filled with *fill* (repeated)."""

    gpa: int
    size: int
    fill: bytes = b"\0"
    flags: int = 0

    def describe(self) -> str:
        return f"create memslot gpa {self.gpa:#x} size {self.size:#x}"

    def apply_host(self, machine: Machine) -> Any:
        assert machine.vm is not None
        ms = machine.vm.add_memslot(self.gpa, self.size, flags=self.flags)
        ms.memory.write(self.gpa, (self.fill * (self.size // len(self.fill) + 1))[: self.size])
        return ms.slot

    def apply_mirror(self, mirror: MirrorVm, info: Any) -> list[Any]:
        return list(mirror.create_memslot(info, self.gpa, self.size, self.flags).events)


@dataclass
class DeleteMemslot(HostAction):
    gpa: int

    def describe(self) -> str:
        return f"delete the memslot at gpa {self.gpa:#x}"

    def apply_host(self, machine: Machine) -> Any:
        assert machine.vm is not None
        slot = _slot_at(machine, self.gpa)
        machine.vm.delete_memslot(slot)
        return slot

    def apply_mirror(self, mirror: MirrorVm, info: Any) -> list[Any]:
        return list(mirror.delete_memslot(info).events)


@dataclass
class MoveMemslot(HostAction):
    gpa: int
    new_gpa: int

    def describe(self) -> str:
        return f"move the memslot at gpa {self.gpa:#x} to {self.new_gpa:#x}"

    def apply_host(self, machine: Machine) -> Any:
        assert machine.vm is not None
        slot = _slot_at(machine, self.gpa)
        machine.vm.move_memslot(slot, self.new_gpa)
        return slot

    def apply_mirror(self, mirror: MirrorVm, info: Any) -> list[Any]:
        return list(mirror.move_memslot(info, self.new_gpa).events)


@dataclass
class SetMemslotFlags(HostAction):
    """Change a slot's flags in place (``KVM_MR_FLAGS_ONLY``), e.g. toggle dirty logging."""

    gpa: int
    flags: int
    times: int = 1  # alternate flags/0 this many times (generation churn)

    def describe(self) -> str:
        t = f" x{self.times}" if self.times != 1 else ""
        return f"set flags {self.flags:#x} on the memslot at gpa {self.gpa:#x}{t}"

    def _sequence(self) -> Iterator[int]:
        for i in range(self.times):
            yield self.flags if i % 2 == 0 else 0

    def apply_host(self, machine: Machine) -> Any:
        assert machine.vm is not None
        slot = _slot_at(machine, self.gpa)
        for flags in self._sequence():
            machine.vm.set_memslot_flags(slot, flags)
        return slot

    def apply_mirror(self, mirror: MirrorVm, info: Any) -> list[Any]:
        events: list[Any] = []
        for flags in self._sequence():
            events.extend(mirror.set_memslot_flags(info, flags).events)
        return events


# --- guest steps ---------------------------------------------------------------------------


@dataclass
class Access:
    """One guest load or store of *width* bytes at *gva* (identity-mapped: gpa = gva)."""

    gva: int
    width: int
    write: bool
    value: int = 0
    expect: int | None = None  # loads: the guest fails the run unless it reads this


@dataclass
class Repeat:
    """*count* iterations of *body* as a guest loop."""

    count: int
    body: list[Access]


@dataclass
class Sync:
    """A ucall sync point at which the host performs *actions*."""

    actions: list[HostAction]
    label: str = ""


@dataclass
class GuestPteWrite:
    """The guest (at CPL0, through the runtime's kernel service) rewrites the PTE that maps
    the page *gva* to point at *gpa*, optionally followed by INVLPG or a CR3 reload."""

    gva: int
    gpa: int
    flush: str = "invlpg"  # "invlpg" | "cr3" | "none"


Step = Access | Repeat | Sync | GuestPteWrite


@dataclass
class Scenario:
    """An experiment: regions, steps, and how it is judged. See the module docstring."""

    name: str
    description: str
    cpl: int = 3
    read_value: int = 0
    timeout: float = 10.0
    slow: bool = False
    regions: list[tuple[str, int, int, bool]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    review: str = ""  # the 2011 review point this scenario answers
    # Custom runner for scenarios that are not a single-vCPU replay (races, churn).
    runner: Callable[..., Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- declaration helpers --
    def mmio(self, gpa: int, size: int) -> Scenario:
        self.regions.append(("mmio", gpa, size, False))
        return self

    def ram(self, gpa: int, size: int, *, ro: bool = False) -> Scenario:
        self.regions.append(("ram", gpa, size, ro))
        return self

    def store(self, gva: int, width: int, value: int) -> Scenario:
        self.steps.append(Access(gva, width, True, value))
        return self

    def load(self, gva: int, width: int, *, expect: int | None = None) -> Scenario:
        self.steps.append(Access(gva, width, False, expect=expect))
        return self

    def repeat(self, count: int, *accesses: Access) -> Scenario:
        self.steps.append(Repeat(count, list(accesses)))
        return self

    def sync(self, *actions: HostAction, label: str = "") -> Scenario:
        self.steps.append(Sync(list(actions), label))
        return self

    def remap(self, gva: int, gpa: int, flush: str = "invlpg") -> Scenario:
        self.steps.append(GuestPteWrite(gva, gpa, flush))
        return self

    # -- derived --
    def syncs(self) -> list[Sync]:
        return [s for s in self.steps if isinstance(s, Sync)]

    def payload_text(self) -> str:
        """The payload (payload format) the host runs."""
        lines = [f";@ description: {self.description}", f";@ cpl: {self.cpl}", ";@ pages: 4k",
                 f";@ read: {self.read_value:#x}", f";@ timeout: {self.timeout:g}", ";@ expect: done"]
        for kind, gpa, size, ro in self.regions:
            lines.append(f";@ {kind}: {gpa:#x}+{size:#x}" + (" ro" if ro else ""))
        body: list[str] = [
            "; prologue: fault in the payload code pages, then the begin sync point",
            "    mov rax, 0x8000",
            "__prologue_touch:",
            "    mov bl, byte ptr [rax]",
            "    add rax, 0x1000",
            "    cmp rax, 0x10000",
            "    jb __prologue_touch",
        ]
        if any(isinstance(st, GuestPteWrite) for st in self.steps):
            # fault in what the kernel service runs on (kernel stack, IDT, exception frame)
            # by remapping the first payload code page onto itself, without a flush
            body += ["    mov rdi, 0x8000", "    mov rsi, 0x8000", "    mov rdx, 0", "    call kernel_remap"]
        body += [
            f"    mov rdi, {BEGIN_SYNC:#x}",
            "    call ucall_sync",
        ]
        fails: list[str] = []
        sync_index = 0
        for i, step in enumerate(self.steps):
            if isinstance(step, Access):
                body += _access_asm(step, f"s{i}", fails)
            elif isinstance(step, Repeat):
                body += [f"    mov r12, {step.count}", f"__loop_{i}:"]
                for j, a in enumerate(step.body):
                    body += _access_asm(a, f"s{i}_{j}", fails)
                body += ["    dec r12", f"    jnz __loop_{i}"]
            elif isinstance(step, Sync):
                body += [f"    mov rdi, {sync_index}", "    call ucall_sync"]
                sync_index += 1
            elif isinstance(step, GuestPteWrite):
                body += [
                    f"    mov rdi, {step.gva:#x}",
                    f"    mov rsi, {step.gpa:#x}",
                    f"    mov rdx, {_FLUSH[step.flush]}",
                    "    call kernel_remap",
                ]
        body.append("    jmp __end")
        body += fails
        body.append("__end:")
        return "\n".join(lines + body) + "\n"

    def mirror_steps(self) -> Iterator[Access | Sync | GuestPteWrite]:
        """The steps as the mirror replays them: loops unrolled."""
        for step in self.steps:
            if isinstance(step, Repeat):
                for _ in range(step.count):
                    yield from step.body
            else:
                yield step

    def accesses(self) -> int:
        return sum(1 for s in self.mirror_steps() if isinstance(s, Access))


_FLUSH = {"invlpg": 1, "cr3": 2, "none": 0}


def _access_asm(a: Access, tag: str, fails: list[str]) -> list[str]:
    if a.width not in _REG:
        raise ScenarioError(f"access width {a.width} not supported by scenarios (1, 2, 4 or 8)")
    out = [f"    mov rax, {a.gva:#x}"]
    ptr = f"{_PTR[a.width]} ptr [rax]"
    if a.write:
        out += [f"    mov rbx, {a.value:#x}", f"    mov {ptr}, {_REG[a.width]}"]
        return out
    if a.width in (1, 2):
        out.append(f"    movzx ebx, {ptr}")
    else:
        out.append(f"    mov {_REG[a.width]}, {ptr}")
    if a.expect is not None:
        msg = f"load of {a.width} bytes at {a.gva:#x} did not read {a.expect:#x}"
        out += [f"    mov rcx, {a.expect:#x}", "    cmp rbx, rcx", f"    jne __fail_{tag}"]
        fails += [f"__fail_{tag}:", f"    lea rdi, [rip + __msg_{tag}]", f"    mov rsi, {len(msg)}",
                  "    call ucall_fail", f"__msg_{tag}:", f'    .ascii "{msg}"']
    return out


# --- registry ------------------------------------------------------------------------------

_REGISTRY: dict[str, Scenario] = {}
_lock = threading.Lock()


def register(s: Scenario) -> Scenario:
    with _lock:
        if s.name in _REGISTRY:
            raise ScenarioError(f"scenario {s.name!r} is registered twice")
        _REGISTRY[s.name] = s
    return s


def registry() -> dict[str, Scenario]:
    from hostkvm import scenarios  # noqa: F401  (registers the built-in scenarios)

    return dict(_REGISTRY)
