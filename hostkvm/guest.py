"""Build a guest image from a payload: memory map, runtime, tables, initial CPU state,
and the ucall protocol the host speaks with the guest.

Nothing here touches KVM: :func:`build_guest` returns a :class:`GuestImage` (plain
data) that the run loop turns into memslots, memory contents and
``KVM_SET_SREGS``/``KVM_SET_REGS``.

Memory map (guest-physical; identity-mapped, so also guest-virtual)::

    0x00000-0x00fff  IVT_GPA           real-mode IVT (real16); not mapped with paging
    0x01000-0x01fff  GDT_GPA           flat GDT (hostkvm.x86.modes)
    0x02000-0x02fff  IDT_GPA           IDT, 32 exception gates
    0x03000-0x03fff  TSS_GPA           TSS (RSP0/ESP0 = KERNEL_STACK_TOP, IST1 = IST_STACK_TOP),
                                       then an I/O bitmap that opens UCALL_PORT to CPL3
    0x04000-0x07fff  RUNTIME_GPA       runtime code (ucall helpers, exception stubs)
    0x08000-0x3ffff  PAYLOAD_GPA       payload code (real16: must end below 0x10000)
    0x40000-0x4ffff  USER_STACK_GPA    CPL3 stack (real16: SS=0x4000, SP=0xfff0)
    0x50000-0x57fff  KERNEL_STACK_GPA  CPL0 stack; exception stubs run on it
    0x58000-0x5bfff  IST_STACK_GPA     #DF stack (IST1, long mode)
    0x5c000-0x5cfff  EXC_FRAME_GPA     register frame saved by the exception stubs
    0x5d000-0x5ffff  reserved
    0x60000-0x7ffff  PT_POOL_GPA       page-table pages
    0x80000-         free for the payload's ram:, mmio: and map: lines

Ucall protocol: the guest writes one byte, the ucall number, to :data:`UCALL_PORT`
with ``out dx, al`` (a ``KVM_EXIT_IO``, direction out, size 1, count 1). The
arguments are in the registers :data:`UCALL_ARG_REGS` (``rdi``, ``rsi``, ``rbx``,
``rcx``, ``rbp`` in that order), read with ``KVM_GET_REGS`` at the exit:

=================  ===========================================================
UCALL_DONE (1)     finished; never resumes
UCALL_FAIL (2)     arg0 = gva of a message, arg1 = its length; never resumes
UCALL_PRINT (3)    arg0 = gva of text, arg1 = its length; resume to continue
UCALL_SYNC (4)     arg0 = a value; the host may act, then resume; the guest's
                   ``ucall_sync`` returns ``rax`` as the host left it
UCALL_EXCEPTION    arg0 = vector, arg1 = error code (0 if none), arg2 = CR2,
(5)                arg3 = faulting RIP, arg4 = faulting CS; never resumes. In
                   prot32/long64 the interrupted registers are saved at
                   EXC_FRAME_GPA (:data:`EXC_FRAME_FIELDS`, 8 bytes each)
=================  ===========================================================

Message and text addresses are guest-virtual addresses that the harness
identity-maps (the payload's own code area or a ``ram:`` region), so they are also
the gpas to read; in real16 they are linear addresses.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field

from hostkvm._resources import guest_source
from hostkvm.asm import Assembled, Statement, assemble
from hostkvm.errors import GuestSetupError, PayloadError
from hostkvm.payload import HARNESS_GPA, HARNESS_SIZE, Payload
from hostkvm.x86.constants import (
    GATE_INTERRUPT,
    NR_EXCEPTION_VECTORS,
    PUD_SIZE,
    X86_TRAP_BP,
    X86_TRAP_DF,
    X86_TRAP_OF,
)
from hostkvm.x86.descriptors import (
    TSS32_SIZE,
    TSS64_SIZE,
    encode_idt_gate32,
    encode_idt_gate64,
    encode_io_bitmap,
    encode_ivt_entry,
    encode_tss32,
    encode_tss64,
)
from hostkvm.x86.modes import (
    GDT_KERNEL_CS32,
    GDT_KERNEL_CS64,
    GDT_KERNEL_DS,
    GDT_SIZE,
    MODE_BITS,
    flat_gdt,
    long64_state,
    prot32_state,
    real16_state,
)
from hostkvm.x86.paging import Mapping, PageTables32, PageTables64
from hostkvm.x86.state import KVM_REGS_FIELDS, CpuState, DescriptorTable

# -- memory map --------------------------------------------------------------------------
IVT_GPA = 0x0
GDT_GPA = 0x1000
IDT_GPA = 0x2000
TSS_GPA = 0x3000
RUNTIME_GPA = 0x4000
RUNTIME_END = 0x8000
PAYLOAD_GPA = 0x8000
PAYLOAD_END = 0x40000
PAYLOAD_END_REAL16 = 0x10000
USER_STACK_GPA = 0x40000
USER_STACK_TOP = 0x50000
KERNEL_STACK_GPA = 0x50000
KERNEL_STACK_TOP = 0x58000
IST_STACK_GPA = 0x58000
IST_STACK_TOP = 0x5C000
EXC_FRAME_GPA = 0x5C000
PT_POOL_GPA = 0x60000
PT_POOL_SIZE = 0x20000
REAL16_SS = 0x4000
REAL16_SP = 0xFFF0

assert PT_POOL_GPA + PT_POOL_SIZE == HARNESS_GPA + HARNESS_SIZE

# -- ucall protocol ------------------------------------------------------------------------
UCALL_PORT = 0x6A00
# long64: rax value that turns a `ud2` into a call of the runtime's kernel services
# (kernel_remap) instead of a #UD report
KERNEL_SERVICE_MAGIC = 0x6B766D73
UCALL_DONE = 1
UCALL_FAIL = 2
UCALL_PRINT = 3
UCALL_SYNC = 4
UCALL_EXCEPTION = 5
UCALL_NAMES: dict[int, str] = {
    UCALL_DONE: "UCALL_DONE", UCALL_FAIL: "UCALL_FAIL", UCALL_PRINT: "UCALL_PRINT",
    UCALL_SYNC: "UCALL_SYNC", UCALL_EXCEPTION: "UCALL_EXCEPTION",
}
#: the registers that carry ucall arguments 0..4
UCALL_ARG_REGS: tuple[str, ...] = ("rdi", "rsi", "rbx", "rcx", "rbp")
#: the access size of a ucall ``out``
UCALL_IO_SIZE = 1
#: 8-byte slots at EXC_FRAME_GPA: the interrupted kvm_regs, then the exception
EXC_FRAME_FIELDS: tuple[str, ...] = KVM_REGS_FIELDS + ("vector", "error_code", "cr2", "cs", "ss")
#: the real16 exception stubs report this vector for an interrupt above 31
VECTOR_OTHER = 256

#: The TSS (32- and 64-bit alike) is followed by an I/O permission bitmap that lets CPL3
#: reach :data:`UCALL_PORT`. RFLAGS.IOPL is 3 as well, which suffices on bare metal, but
#: PVM runs CPL3 code natively with the host's IOPL 0 and ignores the guest's IOPL there:
#: without the bitmap, ``out`` at CPL3 raises #GP. Ports past the TSS limit are denied,
#: so the bitmap stops after the ucall port's byte (plus the all-ones byte the CPU may
#: read past the end).
TSS_IO_BITMAP = encode_io_bitmap([UCALL_PORT])[: UCALL_PORT // 8 + 1] + b"\xff"
#: TR's byte limit: the TSS and its I/O bitmap (within the TSS page)
TSS_LIMIT = TSS64_SIZE + len(TSS_IO_BITMAP) - 1
assert TSS_GPA + TSS_LIMIT < RUNTIME_GPA

#: names a payload may use without defining them
PAYLOAD_SYMBOLS: tuple[str, ...] = (
    "ucall_done", "ucall_fail", "ucall_print", "ucall_sync",
    "UCALL_PORT", "UCALL_DONE", "UCALL_FAIL", "UCALL_PRINT", "UCALL_SYNC", "UCALL_EXCEPTION",
    "kernel_remap",  # long64 only
)

_UCALL_CONSTANTS = {
    "UCALL_PORT": UCALL_PORT, "UCALL_DONE": UCALL_DONE, "UCALL_FAIL": UCALL_FAIL,
    "UCALL_PRINT": UCALL_PRINT, "UCALL_SYNC": UCALL_SYNC, "UCALL_EXCEPTION": UCALL_EXCEPTION,
}


@dataclass(frozen=True)
class Ucall:
    """A decoded ucall: its number, name and the five argument registers."""

    number: int
    name: str
    args: tuple[int, ...]


def decode_ucall(data: bytes, regs: MappingABC[str, int]) -> Ucall:
    """The ucall in a ``KVM_EXIT_IO`` to :data:`UCALL_PORT`: ``data`` is the byte written,
    ``regs`` the ``kvm_regs`` fields read at the exit. Unknown numbers are named
    ``UCALL_UNKNOWN``."""
    if len(data) != UCALL_IO_SIZE:
        raise ValueError(f"ucall write must be {UCALL_IO_SIZE} byte, got {len(data)}")
    number = data[0]
    return Ucall(number, UCALL_NAMES.get(number, "UCALL_UNKNOWN"),
                 tuple(regs[r] for r in UCALL_ARG_REGS))


# -- the image -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryRegion:
    """A guest-physical range to set up: ``harness`` and ``ram`` get a memslot (zero-filled;
    ``readonly`` means ``KVM_MEM_READONLY``), ``mmio`` gets none."""

    gpa: int
    size: int
    kind: str  # "harness" | "ram" | "mmio"
    readonly: bool = False

    @property
    def end(self) -> int:
        return self.gpa + self.size


@dataclass(frozen=True)
class Blob:
    """Bytes to copy to ``gpa`` (always inside a ``harness`` region)."""

    gpa: int
    data: bytes


@dataclass(frozen=True)
class LineEntry:
    """Where the bytes at ``[gpa, gpa+size)`` came from. ``line`` is None for code the
    harness appended (the final done ucall)."""

    gpa: int
    size: int
    path: str
    line: int | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path


@dataclass(frozen=True)
class GuestImage:
    """Everything the run loop needs to start a payload; plain data, no KVM."""

    payload: Payload
    mode: str
    bits: int
    cpl: int
    paging: bool
    regions: tuple[MemoryRegion, ...]
    blobs: tuple[Blob, ...]
    cpu: CpuState
    ucall_port: int
    mappings: tuple[Mapping, ...]
    line_table: tuple[LineEntry, ...]
    symbols: dict[str, int] = field(default_factory=dict)
    entry: int = PAYLOAD_GPA
    exc_frame_gpa: int = EXC_FRAME_GPA

    def gva_to_gpa(self, gva: int) -> int | None:
        """The gpa that ``gva`` (a linear address in real16) reaches, or None if unmapped.
        Without paging linear addresses are physical."""
        if not self.paging:
            return gva
        starts = [m.gva for m in self.mappings]
        i = bisect.bisect_right(starts, gva) - 1
        return self.mappings[i].translate(gva) if i >= 0 else None

    def line_for_gpa(self, gpa: int) -> LineEntry | None:
        """The payload statement whose bytes include ``gpa``."""
        starts = [e.gpa for e in self.line_table]
        i = bisect.bisect_right(starts, gpa) - 1
        if i >= 0 and gpa < self.line_table[i].gpa + self.line_table[i].size:
            return self.line_table[i]
        return None

    def region_for_gpa(self, gpa: int) -> MemoryRegion | None:
        for region in self.regions:
            if region.gpa <= gpa < region.end:
                return region
        return None


# -- building --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Runtime:
    code: Assembled
    tables: tuple[Blob, ...]  # IVT or GDT/IDT/TSS, fixed per mode


@functools.lru_cache(maxsize=None)
def _runtime(mode: str) -> _Runtime:
    """The assembled runtime and descriptor tables of ``mode`` (cached; CPL-independent)."""
    bits = MODE_BITS[mode]
    path, text = guest_source(f"runtime{bits}.S")
    export = ["ucall_done", "ucall_fail", "ucall_print", "ucall_sync"]
    export += [f"exc_{v}" for v in range(NR_EXCEPTION_VECTORS)]
    if mode == "long64":
        export += ["kernel_remap"]
    if mode == "real16":
        export.append("exc_other")
    symbols = dict(_UCALL_CONSTANTS, EXC_FRAME=EXC_FRAME_GPA, KERNEL_SERVICE_MAGIC=KERNEL_SERVICE_MAGIC)
    code = assemble(text, address=RUNTIME_GPA, bits=bits, path=str(path), symbols=symbols,
                    export=export)
    if code.end > RUNTIME_END:
        raise GuestSetupError(f"runtime{bits}.S is {len(code.code)} bytes; it must end by "
                              f"{RUNTIME_END:#x}")
    stubs = [code.symbols[f"exc_{v}"] for v in range(NR_EXCEPTION_VECTORS)]
    tables: list[Blob] = []
    if mode == "real16":
        ivt = b"".join(encode_ivt_entry(stubs[v] if v < NR_EXCEPTION_VECTORS
                                        else code.symbols["exc_other"], 0) for v in range(256))
        tables.append(Blob(IVT_GPA, ivt))
    elif mode == "prot32":
        tables.append(Blob(GDT_GPA, flat_gdt(tss_base=TSS_GPA, tss_limit=TSS_LIMIT,
                                             long_mode=False)))
        idt = b"".join(encode_idt_gate32(stubs[v], GDT_KERNEL_CS32, type=GATE_INTERRUPT,
                                         dpl=3 if v in (X86_TRAP_BP, X86_TRAP_OF) else 0)
                       for v in range(NR_EXCEPTION_VECTORS))
        tables.append(Blob(IDT_GPA, idt))
    else:
        tables.append(Blob(GDT_GPA, flat_gdt(tss_base=TSS_GPA, tss_limit=TSS_LIMIT,
                                             long_mode=True)))
        idt = b"".join(encode_idt_gate64(stubs[v], GDT_KERNEL_CS64, type=GATE_INTERRUPT,
                                         dpl=3 if v in (X86_TRAP_BP, X86_TRAP_OF) else 0,
                                         ist=1 if v == X86_TRAP_DF else 0)
                       for v in range(NR_EXCEPTION_VECTORS))
        tables.append(Blob(IDT_GPA, idt))
        tables.append(Blob(TSS_GPA, encode_tss64(rsp0=KERNEL_STACK_TOP, ist=[IST_STACK_TOP],
                                                     iomap_base=TSS64_SIZE) + TSS_IO_BITMAP))
    return _Runtime(code, tuple(tables))


def _epilogue() -> list[Statement]:
    """Appended after the payload body: report done, forever."""
    return [Statement(text, None, "<harness>") for text in (
        "__hostkvm_done:",
        "mov eax, UCALL_DONE",
        "mov edx, UCALL_PORT",
        "out dx, al",
        "jmp __hostkvm_done",
    )]


def _idt_limit(mode: str) -> int:
    return NR_EXCEPTION_VECTORS * (16 if mode == "long64" else 8) - 1


def _harness_mappings(pt: PageTables32 | PageTables64, cpl: int, nx: bool) -> None:
    user = cpl == 3
    # (start, end, writable, user, nx); page 0 stays unmapped (null guard)
    layout = (
        (GDT_GPA, RUNTIME_GPA, True, False, nx),
        (RUNTIME_GPA, RUNTIME_END, False, user, False),
        (PAYLOAD_GPA, PAYLOAD_END, True, user, False),
        (USER_STACK_GPA, USER_STACK_TOP, True, user, nx),
        (KERNEL_STACK_GPA, PT_POOL_GPA, True, False, nx),
        (PT_POOL_GPA, PT_POOL_GPA + PT_POOL_SIZE, True, False, nx),
    )
    for start, end, writable, u, x in layout:
        pt.map(start, start, end - start, writable=writable, user=u, nx=x)


def build_guest(payload: Payload, *, cpu_has_pdpe1gb: bool = False) -> GuestImage:
    """Assemble ``payload`` and lay out its guest.

    ``cpu_has_pdpe1gb`` says whether the vCPU's CPUID offers 1 GiB pages (it does not on
    this project's PVM hosts); a payload asking for ``pages: 1g`` without it is refused.
    Raises :class:`AssemblyError`/:class:`PayloadError` (file:line) for the payload's
    faults and :class:`GuestSetupError` for layouts that cannot be built.
    """
    mode, cpl = payload.mode, payload.cpl
    bits = MODE_BITS[mode]
    runtime = _runtime(mode)
    rt = runtime.code.symbols
    symbols = dict(_UCALL_CONSTANTS)
    symbols.update({name: rt[name] for name in ("ucall_done", "ucall_fail", "ucall_print",
                                                 "ucall_sync", "kernel_remap") if name in rt})
    code = assemble(list(payload.statements) + _epilogue(), address=PAYLOAD_GPA, bits=bits,
                    path=payload.path, symbols=symbols, placements=True)
    limit = PAYLOAD_END_REAL16 if mode == "real16" else PAYLOAD_END
    if code.end > limit:
        last = payload.statements[-1].line if payload.statements else None
        raise PayloadError(f"payload code is {len(code.code)} bytes and ends at {code.end:#x}, "
                           f"past {limit:#x} (the payload code area in {mode}); move data to "
                           "a ram: region", payload.path, last)
    line_table = tuple(LineEntry(p.address, p.size, p.statement.path, p.statement.line,
                                 p.statement.text) for p in code.placed if p.size)

    blobs: list[Blob] = list(runtime.tables)
    blobs.append(Blob(RUNTIME_GPA, runtime.code.code))
    blobs.append(Blob(PAYLOAD_GPA, code.code))
    gdt = DescriptorTable(GDT_GPA, GDT_SIZE - 1)
    idt = DescriptorTable(IDT_GPA, _idt_limit(mode))
    stack = KERNEL_STACK_TOP if cpl == 0 else USER_STACK_TOP
    user = cpl == 3
    mappings: tuple[Mapping, ...] = ()

    if mode == "real16":
        cpu = real16_state(ip=PAYLOAD_GPA, sp=REAL16_SP, ss=REAL16_SS)
    else:
        pt: PageTables32 | PageTables64 | None = None
        if mode == "long64":
            if payload.page_size == PUD_SIZE and not cpu_has_pdpe1gb:
                raise PayloadError("pages: 1g needs 1 GiB pages (CPUID PDPE1GB), which this "
                                   "vCPU does not offer; use 2m", payload.path,
                                   payload.header_lines.get("pages"))
            pt = PageTables64(PT_POOL_GPA, PT_POOL_SIZE, pdpe1gb=cpu_has_pdpe1gb)
        elif payload.paging:
            pt = PageTables32(PT_POOL_GPA, PT_POOL_SIZE, pse=True)
        if pt is not None:
            nx = mode == "long64"
            _harness_mappings(pt, cpl, nx)
            for r in payload.regions:
                pt.map(r.gpa, r.gpa, r.size, writable=True, user=user,
                       max_page_size=payload.page_size)
            for a in payload.aliases:
                pt.map(a.gva, a.gpa, a.size, writable=a.writable, user=user and not a.supervisor,
                       nx=a.nx, max_page_size=payload.page_size)
            blobs.extend(Blob(gpa, data) for gpa, data in pt.pages())
            mappings = pt.mappings
        if mode == "long64":
            assert pt is not None
            cpu = long64_state(cpl=cpl, entry=PAYLOAD_GPA, stack=stack, gdt=gdt, idt=idt,
                               tss_base=TSS_GPA, tss_limit=TSS_LIMIT, cr3=pt.cr3)
        else:
            cr3 = pt.cr3 if pt is not None else None
            blobs.append(Blob(TSS_GPA, encode_tss32(esp0=KERNEL_STACK_TOP, ss0=GDT_KERNEL_DS,
                                                    cr3=cr3 or 0, iomap_base=TSS32_SIZE)
                              + TSS_IO_BITMAP))
            cpu = prot32_state(cpl=cpl, entry=PAYLOAD_GPA, stack=stack, gdt=gdt, idt=idt,
                               tss_base=TSS_GPA, tss_limit=TSS_LIMIT, cr3=cr3)

    regions = [MemoryRegion(HARNESS_GPA, HARNESS_SIZE, "harness")]
    regions += [MemoryRegion(r.gpa, r.size, r.kind, r.readonly) for r in payload.regions]
    regions.sort(key=lambda r: r.gpa)
    image_symbols = dict(rt)
    image_symbols.update(payload_entry=PAYLOAD_GPA, payload_end=code.end)
    return GuestImage(
        payload=payload, mode=mode, bits=bits, cpl=cpl, paging=payload.paging,
        regions=tuple(regions), blobs=tuple(blobs), cpu=cpu, ucall_port=UCALL_PORT,
        mappings=mappings, line_table=line_table, symbols=image_symbols,
    )
