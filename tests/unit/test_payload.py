from pathlib import Path

import pytest

from hostkvm.errors import PayloadError
from hostkvm.payload import (
    DEFAULT_TIMEOUT,
    Alias,
    ExpectedExit,
    Region,
    parse_payload,
    parse_payload_text,
)

DATA = Path(__file__).parent / "data"


def test_defaults():
    p = parse_payload_text("nop\n", "d.S")
    assert (p.mode, p.cpl, p.paging, p.page_size, p.timeout) == ("long64", 3, True, 1 << 21,
                                                                 DEFAULT_TIMEOUT)
    assert p.regions == () and p.expect is None and p.read_value == 0 and p.name == "d"
    assert [s.line for s in p.statements] == [1]


def test_full_header():
    p = parse_payload(DATA / "long64_cpl3_store.S")
    assert p.regions == (Region(0xD0000000, 0x1000, "mmio", False, 4),
                         Region(0x100000, 0x1000, "ram", False, 5))
    assert p.read_data(8) == bytes.fromhex("8877665544332211") and p.read_data(2) == b"\x88\x77"
    assert p.timeout == 5.0 and p.description.startswith("one 4-byte store")
    assert p.expect.outcome == "done"
    assert p.expect.exit_list[0] == ExpectedExit(1, True, 0xD0000000, 4,
                                                 bytes.fromhex("0df0feca"), 0, 9)
    assert p.statements[0].line == 11


def test_alias_ro_and_sizes():
    p = parse_payload_text(";@ ram: 0x100000+2M ro\n;@ mmio: 0x1_0000_0000+64K\n"
                           ";@ map: 0x40000000+4K -> 0x100000 ro nx super\nnop\n")
    assert p.regions[0] == Region(0x100000, 0x200000, "ram", True, 1)
    assert p.regions[1].gpa == 0x100000000 and p.regions[1].size == 0x10000
    assert p.aliases == (Alias(0x40000000, 0x1000, 0x100000, False, True, True, 3),)


def test_expectations():
    p = parse_payload_text(
        ";@ mmio: 0xd0000000+0x1000\n"
        ";@ expect: exception #GP error=0 cr2=0x10\n"
        ";@ exits: 5\n"
        ";@ exit: 4x write 0xd0000000 1 ab stride=1\n"
        ";@ exit: read 0xd0000010 8 *\n")
    e = p.expect
    assert (e.outcome, e.vector, e.error_code, e.cr2, e.exits) == ("exception", 13, 0, 0x10, 5)
    assert e.expanded_exits()[3] == (0xD0000003, 1, True, b"\xab")
    assert e.expanded_exits()[4] == (0xD0000010, 8, False, None)
    good = [(0xD0000000 + i, 1, True, b"\xab") for i in range(4)] + [(0xD0000010, 8, 0, b"x" * 8)]
    assert e.check_exits(good) == []
    bad = list(good)
    bad[2] = (0xD0000002, 1, True, b"\xac")
    assert e.check_exits(bad) == ["exit 2: expected write 0xd0000002 1 ab, got write 0xd0000002 1 ac"]
    assert e.check_exits(good[:4]) == ["expected 5 MMIO exits, got 4"]
    f = parse_payload_text(";@ expect: fail bad value here\n").expect
    assert (f.outcome, f.message) == ("fail", "bad value here")
    assert parse_payload_text(";@ expect: internal_error 1\n").expect.suberror == 1
    assert parse_payload_text(";@ expect: exception 14\n").expect.vector == 14


@pytest.mark.parametrize("text,line,fragment", [
    (";@ colour: red\nnop", 1, "unknown header key 'colour'"),
    ("nop\n;@ mode: long64\n", 2, "header line after the first statement"),
    (";@ mode: long32\n", 1, "not real16, prot32 or long64"),
    (";@ cpl: 1\n", 1, "not 0 or 3"),
    (";@ mode: real16\n;@ cpl: 3\n", 2, "cpl 3 cannot work in real16"),
    (";@ mode: real16\n", 1, "cpl 3 cannot work in real16"),
    (";@ cpl: 0\n;@ cpl: 3\n", 2, "given twice (first at line 1)"),
    (";@ mmio: 0xd000000g+0x1000\n", 1, "bad number"),
    (";@ mmio: 0xd0000000\n", 1, "GPA+SIZE"),
    (";@ mmio: 0xd0000800+0x1000\n", 1, "4 KiB aligned"),
    (";@ ram: 0x100000+4K rw\n", 1, "ram: expected"),
    (";@ ram: 0x40000+0x1000\n", 1, "collides with the harness"),
    (";@ ram: 0x100000+8K\n\n;@ mmio: 0x101000+4K\n", 3, "overlaps ram 0x100000+0x2000 (line 1)"),
    (";@ mode: real16\n;@ cpl: 0\n;@ mmio: 0xf0000+0x20000\n", 3, "not reachable in real16"),
    (";@ mode: prot32\n;@ mmio: 0x100000000+4K\n", 2, "not reachable in prot32"),
    (";@ mmio: 0x800000000000+4K\n", 1, "not reachable in long64"),
    (";@ mode: prot32\n;@ paging: off\n;@ mmio: 0xd0000000+4K\n;@ map: 0x200000+4K -> 0xd0000000\n",
     4, "aliases need paging"),
    (";@ paging: off\n", 1, "only prot32 may choose"),
    (";@ mmio: 0xd0000000+4K\n;@ map: 0xd0000000+4K -> 0xd0000000\n", 2, "overlaps mmio"),
    (";@ mmio: 0xd0000000+4K\n;@ map: 0x200000+8K -> 0xd0000000\n", 2, "not inside one declared"),
    (";@ map: 0x200000+4K -> 0xd0000000 rx\n", 1, "unknown flag 'rx'"),
    (";@ pages: 2m\n;@ mode: prot32\n", 1, "not available in prot32"),
    (";@ read: 0x1_0000_0000_0000_0000_0000_0000_0000_0000\n", 1, "wider than 16 bytes"),
    (";@ timeout: soon\n", 1, "timeout: bad number"),
    (";@ timeout: -1\n", 1, "out of range"),
    (";@ expect: maybe\n", 1, "outcome must be one of"),
    (";@ expect: exception #XX\n", 1, "unknown exception vector"),
    (";@ expect: exception 40\n", 1, "not an exception vector"),
    (";@ expect: done now\n", 1, "takes no arguments"),
    (";@ exits: 1\n", 1, "need an 'expect:'"),
    (";@ mmio: 0xd0000000+4K\n;@ expect: done\n;@ exits: 2\n;@ exit: write 0xd0000000 4\n", 3,
     "disagrees"),
    (";@ mmio: 0xd0000000+4K\n;@ expect: done\n;@ exit: write 0xd0000000 3\n", 3, "length 3"),
    (";@ mmio: 0xd0000000+4K\n;@ expect: done\n;@ exit: write 0xd0000000 4 abcd\n", 3,
     "8 hex digits"),
    (";@ mmio: 0xd0000000+4K\n;@ expect: done\n;@ exit: write 0xd0000000 1 0x100\n", 3,
     "does not fit"),
    (";@ mmio: 0xd0000000+4K\n;@ expect: done\n;@ exit: 2x write 0xd0000ffc 4 stride=4\n", 3,
     "not inside an mmio region"),
    (";@ ram: 0x100000+4K\n;@ expect: done\n;@ exit: write 0x100000 4\n", 3,
     "not inside an mmio region or a ro ram region"),
    (";@ garbage\n", 1, "must read ';@ key: value'"),
])
def test_errors_have_file_and_line(text, line, fragment):
    with pytest.raises(PayloadError) as info:
        parse_payload_text(text, "bad.S")
    err = info.value
    assert (err.path, err.line) == ("bad.S", line), str(err)
    assert fragment in str(err)
    assert str(err).startswith(f"bad.S:{line}: ")


def test_write_to_ro_ram_may_be_expected():
    p = parse_payload_text(";@ ram: 0x100000+4K ro\n;@ expect: done\n"
                           ";@ exit: write 0x100000 4 0x1\n")
    assert p.expect.exit_list[0].data == b"\x01\x00\x00\x00"


def test_missing_file():
    with pytest.raises(PayloadError, match="cannot read payload"):
        parse_payload(DATA / "no-such.S")


def test_check_exits_takes_recorded_exits():
    """Objects with gpa/len/is_write/data (the harness's RecordedExit) work like tuples."""
    from types import SimpleNamespace

    p = parse_payload_text(";@ mmio: 0xd0000000+0x1000\n;@ expect: done\n"
                           ";@ exit: write 0xd0000000 2 0x1234\nnop\n")
    good = SimpleNamespace(gpa=0xD0000000, len=2, is_write=True, data=b"\x34\x12")
    assert p.expect.check_exits([good]) == []
    bad = SimpleNamespace(gpa=0xD0000000, len=2, is_write=False, data=b"\x34\x12")
    assert p.expect.check_exits([bad]) == [
        "exit 0: expected write 0xd0000000 2 3412, got read 0xd0000000 2 3412"]
