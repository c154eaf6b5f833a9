"""The typed KVM layer against the real /dev/kvm: exits, memslots, readonly memory,
dirty log, ioeventfd, coalesced MMIO and stats, each asserted exactly."""

from __future__ import annotations

import errno
import os

import pytest

from hostkvm._uapi.constants import KvmCap, KvmMemFlag
from hostkvm.errors import GuestSetupError, KvmIoctlError
from hostkvm.exits import IoExit, MmioExit
from hostkvm.stats import stats_delta
from hostkvm.system import Kvm

from .kvmlayer import CODE_GPA, RAM_SIZE, real_mode_vm, run_to_hlt

pytestmark = pytest.mark.kvm


def test_api_version_and_required_caps(kvm: Kvm) -> None:
    assert kvm.api_version == 12
    assert kvm.check_extension(KvmCap.KVM_CAP_IMMEDIATE_EXIT) == 1
    assert kvm.check_extension(KvmCap.KVM_CAP_BINARY_STATS_FD) == 1
    assert kvm.vcpu_mmap_size >= 4096


def test_mmio_write_read_port_io_and_hlt(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, """
        mov ax, 0x1234
        mov [0xa000], ax
        mov al, [0xb004]
        out 0x10, al
        mov dx, 0x3f8
        mov eax, 0xdeadbeef
        out dx, eax
        hlt
    """, ram_size=0xa000)
    with vm:
        t = run_to_hlt(vcpu, read_value=b"\x5a")
        assert t.exits == [
            MmioExit(0xA000, 2, True, b"\x34\x12"),
            MmioExit(0xB004, 1, False, t.exits[1].data),  # read: data is what KVM left there
            IoExit(True, 1, 0x10, 1, t.exits[2].data_offset, b"\x5a"),  # the completed read came back
            IoExit(True, 4, 0x3F8, 1, t.exits[3].data_offset, bytes.fromhex("efbeadde")),
        ]
        assert vcpu.get_regs().rax & 0xFFFFFFFF == 0xDEADBEEF


def test_port_io_in_is_completed_before_reentry(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, "in al, 0x20\nmov [0xa000], al\nhlt", ram_size=0xa000)
    with vm:
        e = vcpu.run()
        assert isinstance(e, IoExit) and not e.is_out and e.port == 0x20 and e.size == 1
        vcpu.complete_io_in(e.data_offset, b"\x77")
        t = run_to_hlt(vcpu)
        assert t.exits == [MmioExit(0xA000, 1, True, b"\x77")]


def test_memslot_add_move_delete_observed_by_guest(kvm: Kvm) -> None:
    # The guest reads gpa 0x20000 three times, with an out between reads so the host can act.
    src = """
        mov ax, 0x2000
        mov ds, ax
        mov al, [0]
        out 0x10, al
        mov al, [0]
        out 0x10, al
        mov al, [0]
        out 0x10, al
        hlt
    """
    vm, vcpu = real_mode_vm(kvm, src)
    with vm:
        extra = vm.add_memslot(0x20000, 0x1000)
        extra.memory.write(0x20000, b"\xa1")
        e1 = vcpu.run()
        assert e1 == IoExit(True, 1, 0x10, 1, e1.data_offset, b"\xa1")  # RAM: no MMIO exit
        vm.move_memslot(extra.slot, 0x30000)  # 0x20000 is now unbacked
        e2 = vcpu.run()
        assert isinstance(e2, MmioExit) and (e2.gpa, e2.len, e2.is_write) == (0x20000, 1, False)
        vcpu.complete_mmio_read(b"\xb2")
        assert vcpu.run() == IoExit(True, 1, 0x10, 1, e1.data_offset, b"\xb2")
        assert vm.read(0x30000, 1) == b"\xa1"  # the moved slot kept its contents
        vm.delete_memslot(extra.slot)
        e3 = vcpu.run()
        assert isinstance(e3, MmioExit) and e3.gpa == 0x20000
        vcpu.complete_mmio_read(b"\xc3")
        assert vcpu.run() == IoExit(True, 1, 0x10, 1, e1.data_offset, b"\xc3")


def test_readonly_slot_writes_exit_reads_do_not(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, """
        mov ax, 0x2000
        mov ds, ax
        mov al, [0x10]
        mov byte ptr [0x10], 0x99
        mov bl, [0x10]
        out 0x10, al
        mov al, bl
        out 0x11, al
        hlt
    """)
    with vm:
        ro = vm.add_memslot(0x20000, 0x1000, flags=KvmMemFlag.KVM_MEM_READONLY)
        ro.memory.write(0x20010, b"\x42")
        t = run_to_hlt(vcpu)
        assert t.mmio == [MmioExit(0x20010, 1, True, b"\x99")]
        assert [e.data for e in t.io] == [b"\x42", b"\x42"]  # the write did not land
        assert ro.memory.read(0x20010, 1) == b"\x42"


def test_dirty_log_reports_exactly_the_written_pages(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, """
        mov ax, 0x2000
        mov ds, ax
        mov al, [0x0000]
        mov byte ptr [0x1000], 1
        mov byte ptr [0x3ff8], 2
        mov byte ptr [0x7000], 3
        mov byte ptr [0x7001], 4
        hlt
    """)
    with vm:
        slot = vm.add_memslot(0x20000, 0x10000, flags=KvmMemFlag.KVM_MEM_LOG_DIRTY_PAGES)
        assert vm.get_dirty_log(slot.slot) == []
        run_to_hlt(vcpu)
        assert vm.get_dirty_log(slot.slot) == [0x21000, 0x23000, 0x27000]
        assert vm.get_dirty_log(slot.slot) == []  # GET_DIRTY_LOG re-protects and resets


def test_clear_dirty_log_with_manual_protect(kvm: Kvm) -> None:
    if not kvm.check_extension(KvmCap.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2):
        pytest.skip("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 not offered by this host")
    vm, vcpu = real_mode_vm(kvm, """
        mov ax, 0x2000
        mov ds, ax
        mov byte ptr [0x1000], 1
        mov byte ptr [0x2000], 2
        hlt
    """)
    with vm:
        vm.enable_manual_dirty_log_protect()
        slot = vm.add_memslot(0x20000, 0x10000, flags=KvmMemFlag.KVM_MEM_LOG_DIRTY_PAGES)
        # Manual protect without INITIALLY_SET: the log starts clean.
        run_to_hlt(vcpu)
        assert vm.get_dirty_log(slot.slot) == [0x21000, 0x22000]
        # Without a clear the bits stay set (GET no longer resets them) ...
        assert vm.get_dirty_log(slot.slot) == [0x21000, 0x22000]
        vm.clear_dirty_log(slot.slot, 0, slot.npages, pages=[1])
        assert vm.get_dirty_log(slot.slot) == [0x22000]


def test_ioeventfd_datamatch_fires_instead_of_exit(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, """
        mov ax, 0x2000
        mov ds, ax
        mov dword ptr [0x40], 0x1234
        mov dword ptr [0x40], 0x5678
        mov dword ptr [0x44], 0x1234
        hlt
    """)
    with vm:
        ev = vm.register_ioeventfd(0x20040, 4, datamatch=0x1234)
        ev_any = vm.register_ioeventfd(0x20044, 4)
        t = run_to_hlt(vcpu)
        assert t.mmio == [MmioExit(0x20040, 4, True, (0x5678).to_bytes(4, "little"))]
        assert ev.count() == 1
        assert ev_any.count() == 1
        vm.unregister_ioeventfd(ev)
        with pytest.raises(OSError):
            os.fstat(ev.fd)  # closed


def test_coalesced_mmio_ring_holds_the_writes(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, """
        mov ax, 0x2000
        mov ds, ax
        mov byte ptr [0x10], 0x11
        mov word ptr [0x20], 0x2222
        mov dword ptr [0x30], 0x33333333
        mov al, [0x10]
        hlt
    """)
    with vm:
        vm.register_coalesced_mmio(0x20000, 0x1000)
        t = run_to_hlt(vcpu, read_value=b"\x99")
        # Writes are queued, not exited; the read still exits.
        assert [(e.gpa, e.is_write) for e in t.mmio] == [(0x20010, False)]
        ring = vcpu.drain_coalesced_mmio()
        assert [(c.gpa, c.len, c.data) for c in ring] == [
            (0x20010, 1, b"\x11"),
            (0x20020, 2, b"\x22\x22"),
            (0x20030, 4, b"\x33\x33\x33\x33"),
        ]
        assert vcpu.drain_coalesced_mmio() == []


def test_stats_deltas_agree_with_exits(kvm: Kvm) -> None:
    n = 7
    vm, vcpu = real_mode_vm(kvm, "\n".join(f"mov byte ptr [{0xA000 + i}], {i}" for i in range(n)) + "\nhlt",
                            ram_size=0xA000)
    with vm:
        st = vcpu.stats()
        assert st.id.startswith("kvm-")
        for name in ("exits", "mmio_exits", "halt_exits", "pf_taken", "pf_emulate"):
            st.descriptor(name)
        before = st.read()
        t = run_to_hlt(vcpu)
        after = st.read()
        d = stats_delta(before, after)
        assert len(t.mmio) == n
        assert d["mmio_exits"] == n
        assert d["halt_exits"] == 1
        vm_stats = vm.stats()
        assert vm_stats.id.startswith("kvm-")
        assert "remote_tlb_flush" in vm_stats.names


def test_failed_ioctl_names_ioctl_and_arguments(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        vm.add_memslot(0x100000, 0x200000, slot=1)
        with pytest.raises(KvmIoctlError) as ei:
            vm.set_user_memory_region(2, 0, 0x100000, 0x200000, vm.memslots[1].memory.hva)
        e = ei.value
        assert e.errno == errno.EEXIST
        assert isinstance(e, OSError)
        assert str(e) == (
            "KVM_SET_USER_MEMORY_REGION failed: errno 17 (File exists, EEXIST) "
            "(slot 2, flags 0x0, gpa 0x100000, size 0x200000)"
        )
        with pytest.raises(GuestSetupError, match="memslot 1 already exists"):
            vm.add_memslot(0x400000, 0x1000, slot=1)


def test_runaway_guest_stops_at_deadline(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, "spin: jmp spin")
    with vm:
        from hostkvm.exits import IntrExit

        with vcpu.deadline(0.3):
            e = vcpu.run()
        assert isinstance(e, IntrExit)
        assert vcpu.timed_out


def test_close_is_idempotent_and_closes_vcpus_first(kvm: Kvm) -> None:
    vm, vcpu = real_mode_vm(kvm, "hlt")
    fds = [vm.fd, vcpu.fd]
    vm.close()
    vm.close()
    assert vcpu.closed and vm.closed
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert RAM_SIZE and CODE_GPA  # layout constants stay importable for other tests


def test_sync_regs_give_rip_at_each_exit_without_an_ioctl(kvm: Kvm) -> None:
    from hostkvm._uapi.constants import KVM_SYNC_X86_REGS

    assert kvm.check_extension(KvmCap.KVM_CAP_SYNC_REGS) & KVM_SYNC_X86_REGS
    vm, vcpu = real_mode_vm(kvm, "mov byte ptr [0xa000], 1\nnop\nmov byte ptr [0xa001], 2\nhlt", ram_size=0xA000)
    with vm:
        vcpu.set_sync_regs(KVM_SYNC_X86_REGS)
        rips = []
        for _ in range(2):
            assert isinstance(vcpu.run(), MmioExit)
            rips.append(vcpu.synced_rip())
            assert vcpu.synced_regs().rip == vcpu.get_regs().rip
        # Each exit is reported after the store completed: RIP is past the 5-byte store.
        assert rips == [CODE_GPA + 5, CODE_GPA + 11]
