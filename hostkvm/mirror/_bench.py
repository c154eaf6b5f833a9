"""Throughput of the mirror's fault flow (called by ``hostkvm bench``; no timing in tests)."""

from __future__ import annotations

import time

from hostkvm.mirror._config import HostConfig
from hostkvm.mirror._model import AccessKind, MirrorVm
from hostkvm.mirror._presets import HOST_PVM_6_18

__all__ = ["bench_throughput"]


def bench_throughput(n: int = 200_000, config: HostConfig | None = None) -> float:
    """Simulate ``n`` guest accesses and return accesses per second.

    The mix is a CPL3 MMIO loop: 4-byte writes round-robin over 4 unbacked pages, every
    fourth access an 8-byte read, with RAM hits in between, on ``config`` (default: this
    project's host).
    """
    cfg = config or HOST_PVM_6_18
    vm = MirrorVm(cfg)
    vm.create_memslot(0, 0, 0x200000)
    vcpu = vm.vcpus[0]
    data = b"\x01\x02\x03\x04"
    mmio = [0x10000000 + (i << 12) for i in range(4)]
    write = AccessKind.WRITE
    read = AccessKind.READ
    access = vm.access
    access(vcpu, 0x1000, 0x1000, 8, write, 3, b"\0" * 8)
    t0 = time.perf_counter()
    for i in range(n):
        j = i & 7
        if j == 7:
            access(vcpu, 0x1000, 0x1000, 8, read, 3)
        elif j == 3:
            a = mmio[i & 3]
            access(vcpu, a, a, 8, read, 3)
        else:
            a = mmio[i & 3]
            access(vcpu, a, a, 4, write, 3, data)
    dt = time.perf_counter() - t0
    return n / dt if dt > 0 else float("inf")
