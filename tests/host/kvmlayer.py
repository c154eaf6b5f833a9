"""A minimal real-mode guest for the KVM-layer host tests: one RAM slot at gpa 0 with the
code at 0x1000, flat segments. (Payload guests use hostkvm.guest; these tests exercise the
KVM layer on its own.)"""

from __future__ import annotations

from dataclasses import dataclass, field

import keystone

from hostkvm.exits import Exit, HltExit, IntrExit, IoExit, MmioExit, ShutdownExit
from hostkvm.system import Kvm
from hostkvm.vcpu import Vcpu
from hostkvm.vm import Vm

CODE_GPA = 0x1000
RAM_SIZE = 0x10000

_ks16 = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_16)


def asm16(source: str, addr: int = CODE_GPA) -> bytes:
    code, _ = _ks16.asm(source, addr)
    return bytes(code or b"")


@dataclass
class Trace:
    exits: list[Exit] = field(default_factory=list)

    @property
    def mmio(self) -> list[MmioExit]:
        return [e for e in self.exits if isinstance(e, MmioExit)]

    @property
    def io(self) -> list[IoExit]:
        return [e for e in self.exits if isinstance(e, IoExit)]


def real_mode_vm(kvm: Kvm, source: str, ram_size: int = RAM_SIZE) -> tuple[Vm, Vcpu]:
    vm = kvm.create_vm()
    try:
        ms = vm.add_memslot(0, ram_size)
        ms.memory.write(CODE_GPA, asm16(source))
        vcpu = vm.create_vcpu()
        sregs = vcpu.get_sregs()
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
            seg.base = 0
            seg.selector = 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip = CODE_GPA
        regs.rflags = 0x2
        regs.rsp = 0x8000
        vcpu.set_regs(regs)
    except BaseException:
        vm.close()
        raise
    return vm, vcpu


def run_to_hlt(vcpu: Vcpu, *, read_value: bytes = b"\0" * 8, timeout: float = 5.0,
               max_exits: int = 10_000) -> Trace:
    """Run until HLT; complete MMIO reads with *read_value*; fail on anything unexpected."""
    t = Trace()
    with vcpu.deadline(timeout):
        for _ in range(max_exits):
            e = vcpu.run()
            if isinstance(e, HltExit):
                return t
            if isinstance(e, IntrExit):
                raise AssertionError(f"guest timed out after {timeout}s; exits so far {t.exits}")
            if isinstance(e, ShutdownExit):
                raise AssertionError(f"guest shut down; exits so far {t.exits}")
            t.exits.append(e)
            if isinstance(e, MmioExit) and not e.is_write:
                vcpu.complete_mmio_read(read_value[: e.len])
            elif not isinstance(e, (MmioExit, IoExit)):
                raise AssertionError(f"unexpected exit {e}")
    raise AssertionError(f"no HLT after {max_exits} exits")
