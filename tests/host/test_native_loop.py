"""The native run loop (hostkvm/_native/runloop.c) and the Python loop record the same run."""

from __future__ import annotations

import pytest

from hostkvm import _native
from hostkvm.harness import run_payload
from hostkvm.payload import parse_payload, parse_payload_text

pytestmark = pytest.mark.kvm

PAYLOADS = ["load_u32_cpl3", "store_u64_cpl0", "rep_stosb_mmio_cpl3", "sse_store_16_cpl3",
            "rmw_lock_cmpxchg_mmio_cpl3", "straddle_store_u64_ram_to_mmio_cpl3", "print_then_fail_cpl3",
            "real16_rep_stosb_vga_cpl0", "prot32_nopaging_store_load_u32_cpl3", "exception_ud_cpl3"]


def _signature(r):  # type: ignore[no-untyped-def]
    return (r.outcome.to_json(), r.prints, r.syncs,
            [(e.reason, e.gpa, e.len, e.is_write, e.data, e.port, e.insn_rip, e.insn) for e in r.exits])


@pytest.fixture
def python_loop(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def run(payload):  # type: ignore[no-untyped-def]
        with monkeypatch.context() as m:
            m.setattr(_native, "load", lambda: None)
            return run_payload(payload)
    return run


def test_native_loop_is_available_here() -> None:
    assert _native.load() is not None, _native.unavailable_reason()


@pytest.mark.parametrize("name", PAYLOADS)
def test_native_and_python_loops_agree(name: str, python_loop) -> None:  # type: ignore[no-untyped-def]
    from hostkvm._resources import resolve_payload

    payload = parse_payload(resolve_payload(name))
    native = run_payload(payload)
    assert _signature(native) == _signature(python_loop(payload))


def test_syncs_reads_and_batches_across_the_native_boundary(python_loop) -> None:  # type: ignore[no-untyped-def]
    from hostkvm import harness

    text = """
;@ mmio: 0x10000000+0x1000
;@ read: 0x8877665544332211
    mov rbx, 0x10000000
    mov r12, 40
again:
    mov eax, dword ptr [rbx]
    mov dword ptr [rbx + 8], eax
    dec r12
    jnz again
    mov rdi, 7
    call ucall_sync
    mov qword ptr [rbx], rax
"""
    payload = parse_payload_text(text)
    old = harness.NATIVE_BATCH
    harness.NATIVE_BATCH = 7  # force many batch boundaries
    try:
        native = run_payload(payload)
    finally:
        harness.NATIVE_BATCH = old
    assert _signature(native) == _signature(python_loop(payload))
    assert native.syncs == [7]
    assert len(native.exits) == 81
    assert native.exits[0].data == bytes.fromhex("11223344") and native.exits[1].data == bytes.fromhex("11223344")
    t0s = [e.ns for e in native.exits]
    assert all(ns > 0 for ns in t0s)


def test_native_loop_stops_at_the_timeout() -> None:
    r = run_payload(parse_payload_text(";@ timeout: 0.3\n;@ mmio: 0x10000000+0x1000\nmov rbx, 0x10000000\n"
                                       "spin:\nmov dword ptr [rbx], 1\njmp spin\n"))
    assert r.outcome.kind == "timeout"
    assert len(r.exits) > 10
