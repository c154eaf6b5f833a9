"""Run every payload of the library on this host and check exactly what its header states.

Each ``payloads/*.S`` file declares its outcome (``expect:``, with vector, error code, CR2,
message or suberror), the number of MMIO exits (``exits:``) and every exit (``exit:``);
:func:`check_run` compares a run with all of it.

Benchmark payloads (``bench_*``) make 100000 round trips each. Measured here: about 15 s
for ``bench_*_cpl3`` (a shadow page fault per access) and about 4.6 s for ``bench_*_cpl0``.
The rule: a ``bench_`` payload at CPL3 is skipped (> 5 s) unless
``HOSTKVM_BENCH_PAYLOADS=1`` is set; the CPL0 ones always run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hostkvm.harness import RunResult, run_payload
from hostkvm.payload import Payload, parse_payload, parse_payload_text
from hostkvm.x86.constants import EFER_LMA, X86_CR0_PE, X86_CR0_PG

pytestmark = pytest.mark.kvm

PAYLOAD_DIR = Path(__file__).resolve().parents[2] / "payloads"
PAYLOADS = sorted(PAYLOAD_DIR.glob("*.S"))


def check_run(payload: Payload, result: RunResult) -> list[str]:
    """Everything in ``result`` that differs from the payload's stated expectation."""
    expect = payload.expect
    assert expect is not None, f"{payload.path}: no 'expect:' line"
    out = result.outcome
    problems = []
    if out.kind != expect.outcome:
        problems.append(f"outcome {out.describe()!r}, expected {expect.outcome}")
    else:
        for name, want, got in (
            ("vector", expect.vector, out.vector),
            ("error code", expect.error_code, out.error_code),
            ("cr2", expect.cr2, out.cr2),
            ("suberror", expect.suberror, out.suberror),
            ("message", expect.message, out.message),
        ):
            if want is not None and want != got:
                problems.append(f"{name} {got!r}, expected {want!r} ({out.describe()})")
    problems += expect.check_exits(result.mmio_exits)
    return problems


def test_library_is_complete() -> None:
    assert len(PAYLOADS) >= 20
    for path in PAYLOADS:
        p = parse_payload(path)
        assert p.expect is not None, f"{path.name}: states no expectation"
        assert p.expect.exits is not None, f"{path.name}: states no exit count"
        assert p.description, f"{path.name}: has no description"
    modes = {parse_payload(path).mode for path in PAYLOADS}
    assert modes == {"real16", "prot32", "long64"}


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.name)
def test_payload(path: Path) -> None:
    payload = parse_payload(path)
    result = run_payload(payload)
    problems = check_run(payload, result)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


def test_check_run_detects_a_wrong_exit() -> None:
    """The checker itself can fail: the same run against a header that states one byte
    differently is refused."""
    path = PAYLOAD_DIR / "store_u8_cpl3.S"
    payload = parse_payload(path)
    result = run_payload(payload)
    assert check_run(payload, result) == []
    wrong = parse_payload_text(payload.text.replace("1 0x5a", "1 0x5b"), str(path))
    assert any("exit 0" in p for p in check_run(wrong, result))
    wrong = parse_payload_text(payload.text.replace("exits: 1", "exits: 2")
                               .replace(";@ exit: write", ";@ exit: 2x write"), str(path))
    assert check_run(wrong, result) != []


def test_runaway_payload_stops_at_its_timeout() -> None:
    payload = parse_payload_text(";@ description: runaway\n;@ timeout: 0.5\n"
                                 ";@ expect: timeout\nspin:\n    jmp spin\n", "runaway.S")
    result = run_payload(payload)
    assert result.outcome.kind == "timeout", result.outcome.describe()
    assert result.mmio_exits == []
    assert check_run(payload, result) == []


def test_runaway_payload_at_cpl0_stops_too() -> None:
    payload = parse_payload_text(";@ cpl: 0\n;@ timeout: 0.5\nspin:\n    jmp spin\n", "runaway0.S")
    result = run_payload(payload)
    assert result.outcome.kind == "timeout", result.outcome.describe()


# --- one host test per mode: the guest reports its own CR0/EFER/CS through ucall_sync ---

def _syncs(text: str) -> list[int]:
    payload = parse_payload_text(text, "mode.S")
    result = run_payload(payload)
    assert result.outcome.kind == "done", result.outcome.describe()
    return result.syncs


def test_real_mode() -> None:
    cr0, cs, linear = _syncs(
        ";@ mode: real16\n;@ cpl: 0\n;@ mmio: 0xa0000+0x10000\n"
        "    mov eax, cr0\n    mov edi, eax\n    call ucall_sync\n"
        "    xor edi, edi\n    mov di, cs\n    call ucall_sync\n"
        "    mov ax, 0xa000\n    mov ds, ax\n    mov byte ptr [0x20], 1\n"
        "    mov edi, 0x1234\n    call ucall_sync\n")
    assert not cr0 & X86_CR0_PE and cs == 0 and linear == 0x1234


def test_real_mode_segments_form_linear_addresses() -> None:
    payload = parse_payload_text(
        ";@ mode: real16\n;@ cpl: 0\n;@ mmio: 0xa0000+0x10000\n"
        ";@ expect: done\n;@ exits: 1\n;@ exit: write 0xa1230 1 0x01\n"
        "    mov ax, 0xa123\n    mov ds, ax\n    mov byte ptr [0], 1\n", "seg.S")
    result = run_payload(payload)
    assert check_run(payload, result) == []


@pytest.mark.parametrize("cpl", [0, 3])
def test_protected_mode(cpl: int) -> None:
    text = (f";@ mode: prot32\n;@ cpl: {cpl}\n;@ paging: off\n"
            "    xor edi, edi\n    mov di, cs\n    call ucall_sync\n")
    if cpl == 0:
        text += "    mov edi, cr0\n    call ucall_sync\n"
    syncs = _syncs(text)
    assert syncs[0] & 3 == cpl and syncs[0] in (0x08, 0x23)
    if cpl == 0:
        assert syncs[1] & X86_CR0_PE and not syncs[1] & X86_CR0_PG


def test_protected_mode_with_paging_is_refused_by_this_host() -> None:
    """PVM keeps CR0.PG clear without EFER.LME and shuts the vCPU down (see the payload
    prot32_paging_unsupported_shutdown_cpl3.S). If a host runs it, this test says so."""
    payload = parse_payload_text(";@ mode: prot32\n;@ cpl: 0\n;@ paging: on\n    nop\n", "pg.S")
    result = run_payload(payload)
    assert result.outcome.kind == "shutdown", result.outcome.describe()


@pytest.mark.parametrize("cpl", [0, 3])
def test_long_mode(cpl: int) -> None:
    text = f";@ mode: long64\n;@ cpl: {cpl}\n    xor edi, edi\n    mov di, cs\n    call ucall_sync\n"
    if cpl == 0:
        text += ("    mov rdi, cr0\n    call ucall_sync\n    mov ecx, 0xc0000080\n"
                 "    rdmsr\n    mov edi, eax\n    call ucall_sync\n")
    syncs = _syncs(text)
    assert syncs[0] == (0x18 if cpl == 0 else 0x33)
    if cpl == 0:
        assert syncs[1] & X86_CR0_PG and syncs[2] & EFER_LMA


def test_cpl3_payloads_exercise_the_shadow_mmu() -> None:
    """At CPL3 an MMIO store goes through a real guest page fault (pf_taken); at CPL0 PVM
    emulates every instruction and takes none."""
    stats = {}
    for cpl in (0, 3):
        result = run_payload(parse_payload(PAYLOAD_DIR / f"store_u32_cpl{cpl}.S"))
        stats[cpl] = result.vcpu_stats
    assert stats[3].get("pf_taken", 0) >= 1 and stats[3].get("pf_emulate", 0) >= 1
    assert stats[0].get("pf_taken", 0) == 0 and stats[0].get("insn_emulation", 0) >= 3

