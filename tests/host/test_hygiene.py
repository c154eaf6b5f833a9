"""Bounded leak check: many create/run/close cycles leave fds and RSS flat."""

from __future__ import annotations

import gc
import os

import pytest

from hostkvm.exits import HltExit, MmioExit
from hostkvm.system import Kvm

from .kvmlayer import real_mode_vm

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

CYCLES = 1000


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def _cycle(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, "mov byte ptr [0xa000], 1\nhlt", ram_size=0xA000)
    with vm:
        vcpu.stats().read()
        vm.stats().read()
        assert isinstance(vcpu.run(), MmioExit)
        assert isinstance(vcpu.run(), HltExit)


def test_create_run_close_cycles_leak_nothing(kvm: Kvm) -> None:
    for _ in range(50):  # warm caches (keystone, ctypes types, allocator pools)
        _cycle(kvm)
    gc.collect()
    fds, rss = _open_fds(), _rss_kib()
    for _ in range(CYCLES):
        _cycle(kvm)
    gc.collect()
    assert _open_fds() == fds
    growth = _rss_kib() - rss
    assert growth < 5 * 1024, f"RSS grew by {growth} KiB over {CYCLES} cycles"


def test_unclosed_objects_are_released_by_their_finalizers(kvm: Kvm) -> None:
    gc.collect()
    fds = _open_fds()
    for _ in range(20):
        vm, vcpu = real_mode_vm(kvm, "hlt")
        vcpu.stats()
        del vm, vcpu  # never closed explicitly
    gc.collect()
    assert _open_fds() == fds
