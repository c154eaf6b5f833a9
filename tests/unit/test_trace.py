"""Unit tests of hostkvm.trace: format parsing, ring-buffer page decoding on synthetic pages,
lost-event detection, attribution helpers and the capture's cleanup on a fake tracefs."""

from __future__ import annotations

import bisect
import functools
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostkvm import _native
from hostkvm import trace as T
from hostkvm.errors import TraceError
from hostkvm.trace import (
    EventFormat,
    LostEventsError,
    PageLayout,
    TraceCapture,
    TraceEvent,
    TraceEvents,
    attribute_to_windows,
    build_decoder,
    decode_pages,
    parse_cpu_stats,
    parse_format,
    parse_header_page,
    remove_stale_instances,
    split_on_userspace_exit,
)

DATA = Path(__file__).parent / "data" / "tracefs-formats-6.18.txt"


def _sections() -> dict[str, str]:
    out: dict[str, str] = {}
    name = None
    for line in DATA.read_text().splitlines(keepends=True):
        if line.startswith("=== "):
            name = line[4:].strip()
            out[name] = ""
        elif name is not None:
            out[name] += line
    return out


SECTIONS = _sections()


def fmt(full: str) -> EventFormat:
    system = full.split("/")[0]
    return parse_format(SECTIONS[full], system)


# --- format files -----------------------------------------------------------------------------

def test_kvm_mmio_format_matches_the_host_file() -> None:
    f = fmt("kvm/kvm_mmio")
    assert (f.system, f.name, f.id, f.full_name) == ("kvm", "kvm_mmio", 38, "kvm:kvm_mmio")
    assert [(x.name, x.offset, x.size, x.signed) for x in f.fields] == [
        ("type", 8, 4, False), ("len", 12, 4, False), ("gpa", 16, 8, False), ("val", 24, 8, False)]
    assert [x.name for x in f.common] == ["common_type", "common_flags", "common_preempt_count", "common_pid"]
    assert f.common_field("common_pid").signed


def test_every_stored_format_parses_and_builds_a_decoder() -> None:
    for name, text in SECTIONS.items():
        if name.startswith("header_"):
            continue
        f = parse_format(text, name.split("/")[0])
        assert f.name == name.split("/")[1]
        assert f.id > 0
        d = build_decoder(f)
        assert d.size >= 8


def test_array_and_dynamic_fields_are_recognised() -> None:
    insn = fmt("kvm/kvm_emulate_insn").fields
    by = {x.name: x for x in insn}
    assert (by["insn"].kind, by["insn"].count, by["insn"].elem_size) == ("array", 15, 1)
    exe = {x.name: x for x in fmt("sched/sched_process_exec").fields}
    assert (exe["filename"].kind, exe["filename"].type, exe["filename"].is_string) == ("data_loc", "char", True)
    rename = {x.name: x for x in fmt("task/task_rename").fields}
    assert rename["newcomm"].is_string and rename["newcomm"].count == 16


def test_not_a_format_file_raises() -> None:
    with pytest.raises(TraceError, match="not an event format"):
        parse_format("hello\n", "x")


def test_header_page_layout() -> None:
    lay = parse_header_page(SECTIONS["header_page"], SECTIONS["header_event"])
    assert lay == PageLayout(0, 8, 8, 8, 16, 4080)
    assert lay.page_size == 4096
    with pytest.raises(TraceError, match="header_event"):
        parse_header_page(SECTIONS["header_page"], "type_len : 4 bits\n")
    with pytest.raises(TraceError, match="commit"):
        parse_header_page("\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n")


# --- synthetic ring-buffer pages --------------------------------------------------------------

Decode = Callable[..., TraceEvents]


@pytest.fixture(params=["c-walk", "python-walk"])
def decode(request: pytest.FixtureRequest) -> Decode:
    """decode_pages() with the event headers walked in C (hostkvm/_native/ringbuf.c) or in
    Python: every page test runs against both."""
    native = request.param == "c-walk"
    if native:
        assert _native.load() is not None, _native.unavailable_reason()
    return functools.partial(decode_pages, native=native)


def record(f: EventFormat, pid: int, payload: bytes) -> bytes:
    """A record: the common header then *payload* laid out from offset 8."""
    return struct.pack("<HBBi", f.id, 0, 0, pid) + payload


def data_event(rec: bytes, delta: int, *, big: bool = False) -> bytes:
    padded = rec + bytes(-len(rec) % 4)
    if big or len(padded) > 28 * 4:
        return struct.pack("<II", delta << 5, len(rec) + 4) + padded
    return struct.pack("<I", (delta << 5) | (len(padded) // 4)) + padded


def time_extend(delta: int) -> bytes:
    return struct.pack("<II", ((delta & ((1 << 27) - 1)) << 5) | 30, delta >> 27)


def time_stamp(ts: int) -> bytes:
    return struct.pack("<II", ((ts & ((1 << 27) - 1)) << 5) | 31, ts >> 27)


def discarded(nbytes: int, delta: int = 7) -> bytes:
    """A discarded event: array[0] counts the bytes after the header, itself included."""
    return struct.pack("<II", (delta << 5) | 29, nbytes) + b"\xee" * (nbytes - 4)


def page(ts: int, body: bytes, *, commit_flags: int = 0, size: int = 4096, missed: int | None = None) -> bytes:
    commit = len(body) | commit_flags
    if commit_flags & T.RB_MISSED_EVENTS:
        commit -= 1 << 32  # the kernel stores the int flag sign-extended in a long
    extra = struct.pack("<Q", missed) if missed is not None else b""
    p = struct.pack("<Qq", ts, commit) + body + extra
    return p + bytes(size - len(p))


MMIO = fmt("kvm/kvm_mmio")
EXIT = fmt("kvm/kvm_userspace_exit")
MATCH = fmt("kvm/vcpu_match_mmio")
SPTE = fmt("kvmmmu/kvm_mmu_set_spte")
FPF = fmt("kvmmmu/fast_page_fault")
INSN = fmt("kvm/kvm_emulate_insn")
EXEC = fmt("sched/sched_process_exec")
RENAME = fmt("task/task_rename")
DECODERS = {f.id: build_decoder(f) for f in (MMIO, EXIT, MATCH, SPTE, FPF, INSN, EXEC, RENAME)}


def mmio_rec(gpa: int, val: int, pid: int = 42) -> bytes:
    return record(MMIO, pid, struct.pack("<IIQQ", 2, 4, gpa, val))


def exit_rec(reason: int = 6, err: int = 0, pid: int = 42) -> bytes:
    return record(EXIT, pid, struct.pack("<Ii", reason, err))


def test_decode_small_events_and_timestamps(decode: Decode) -> None:
    body = (data_event(mmio_rec(0x1000, 0xAB), 5)
            + data_event(exit_rec(), 10)
            + data_event(mmio_rec(0x2000, 0xCD), 1))
    evs = decode([(3, page(1_000, body))], DECODERS)
    assert isinstance(evs, TraceEvents)
    assert [(e.name, e.ts, e.cpu, e.pid) for e in evs] == [
        ("kvm_mmio", 1005, 3, 42), ("kvm_userspace_exit", 1015, 3, 42), ("kvm_mmio", 1016, 3, 42)]
    assert evs[0].fields == {"type": 2, "len": 4, "gpa": 0x1000, "val": 0xAB}
    assert evs[2]["gpa"] == 0x2000
    assert evs[1].fields == {"reason": 6, "errno": 0}
    assert evs.names() == ["kvm_mmio", "kvm_userspace_exit", "kvm_mmio"]
    assert evs.counts() == {"kvm_mmio": 2, "kvm_userspace_exit": 1}
    assert evs.ts == [1005, 1015, 1016]
    with pytest.raises(KeyError, match="no field 'nope'"):
        evs[0]["nope"]
    assert evs[0].get("nope", 7) == 7


def test_signed_bool_and_char_fields(decode: Decode) -> None:
    spte = record(SPTE, 1, struct.pack("<QQQBBBb", 0x10, 0x8000_0000_0000_0067, 0xFFFF_8880_0000_1000, 1, 1, 0, -1))
    fpf = record(FPF, 1, struct.pack("<i4xQQQQQi", -3, 0x2000, 0x6, 0xFF, 1, 2, -22))
    match = record(MATCH, 1, struct.pack("<QQ??", 0x7000, 0x1_0000, True, False))
    exit_err = exit_rec(reason=0, err=-4, pid=1)
    body = b"".join(data_event(r, 1) for r in (spte, fpf, match, exit_err))
    a, b, c, d = decode([(0, page(0, body))], DECODERS)
    assert a.fields == {"gfn": 0x10, "spte": 0x8000_0000_0000_0067, "sptep": 0xFFFF_8880_0000_1000,
                        "level": 1, "r": True, "x": False, "u": -1}
    assert a["r"] is True
    assert b["vcpu_id"] == -3 and b["ret"] == -22 and b["error_code"] == 6
    assert c.fields == {"gva": 0x7000, "gpa": 0x1_0000, "write": True, "gpa_match": False}
    assert d["errno"] == -4


def test_fixed_arrays_and_data_loc_strings(decode: Decode) -> None:
    insn = record(INSN, 9, struct.pack("<QIB15sBB", 0x1000, 0, 2, b"\x88\x07", 0, 0))
    rename = record(RENAME, 9, struct.pack("<i16s16sh", 9, b"python3", b"vcpu0", 0))
    # sched_process_exec: __data_loc char[] filename at 8, then pid, old_pid; string after.
    name = b"/bin/true\0"
    fixed = 8 + 4 + 4 + 4
    exe = record(EXEC, 9, struct.pack("<Iii", (len(name) << 16) | fixed, 9, 9) + name)
    body = b"".join(data_event(r, 2) for r in (insn, rename, exe))
    a, b, c = decode([(1, page(100, body))], DECODERS)
    assert a["insn"] == b"\x88\x07" + bytes(13) and a["len"] == 2
    assert b["oldcomm"] == "python3" and b["newcomm"] == "vcpu0"
    assert c["filename"] == "/bin/true"
    assert a.to_dict()["insn"] == "8807" + "00" * 13


def test_rel_loc_and_wide_arrays(decode: Decode) -> None:
    text = """name: synth
ID: 999
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:u32 regs[3];\toffset:8;\tsize:12;\tsigned:0;
\tfield:__rel_loc u16[] vals;\toffset:20;\tsize:4;\tsigned:0;
\tfield:s16 tail;\toffset:24;\tsize:2;\tsigned:1;

print fmt: ""
"""
    f = parse_format(text, "test")
    dyn = struct.pack("<3H", 1, 2, 0xFFFF)
    # rel_loc offset counts from the end of the field (offset 24): the data sits at 28.
    payload = struct.pack("<3IIh2x", 7, 8, 9, (len(dyn) << 16) | 4, -5) + dyn
    (ev,) = decode([(0, page(0, data_event(record(f, 5, payload), 3)))], {f.id: build_decoder(f)})
    assert ev.fields == {"regs": (7, 8, 9), "vals": (1, 2, 0xFFFF), "tail": -5}
    assert ev.to_dict()["regs"] == [7, 8, 9]


def test_type_len_zero_time_extend_absolute_and_discarded(decode: Decode) -> None:
    body = (data_event(mmio_rec(0x1000, 1), 4, big=True)
            + time_extend(5 << 27 | 3)
            + data_event(exit_rec(), 2)
            + discarded(24)
            + data_event(mmio_rec(0x3000, 3), 1)
            + time_stamp(9_000_000_000)
            + data_event(mmio_rec(0x4000, 4), 6))
    evs = decode([(0, page(50, body))], DECODERS)
    t1 = 54
    t2 = t1 + (5 << 27 | 3) + 2
    assert evs.ts == [t1, t2, t2 + 1, 9_000_000_006]
    assert [e["gpa"] for e in evs if e.name == "kvm_mmio"] == [0x1000, 0x3000, 0x4000]


def test_null_padding_ends_the_page_and_pages_chain(decode: Decode) -> None:
    p1 = page(10, data_event(mmio_rec(0x1, 0), 1) + struct.pack("<I", 29) + b"\xff" * 12)
    p2 = page(40, data_event(mmio_rec(0x2, 0), 2))
    evs = decode([(0, p1), (0, p2)], DECODERS)
    assert evs.ts == [11, 42]


def test_multi_cpu_pages_merge_by_timestamp(decode: Decode) -> None:
    c0 = page(100, data_event(mmio_rec(0xA, 0), 0) + data_event(mmio_rec(0xC, 0), 20))
    c1 = page(110, data_event(mmio_rec(0xB, 0), 0) + data_event(mmio_rec(0xD, 0), 20))
    evs = decode([(0, c0), (1, c1)], DECODERS)
    assert [(e.ts, e.cpu, e["gpa"]) for e in evs] == [(100, 0, 0xA), (110, 1, 0xB), (120, 0, 0xC), (130, 1, 0xD)]


def test_unknown_ids_are_skipped_or_looked_up(decode: Decode) -> None:
    body = data_event(mmio_rec(0x1, 0), 1) + data_event(exit_rec(), 1)
    only_mmio = {MMIO.id: DECODERS[MMIO.id]}
    assert decode([(0, page(0, body))], only_mmio).names() == ["kvm_mmio"]
    asked: list[int] = []

    def unknown(i: int) -> T.Decoder | None:
        asked.append(i)
        return DECODERS.get(i)

    evs = decode([(0, page(0, body + data_event(exit_rec(), 1)))], only_mmio, unknown=unknown)
    assert evs.names() == ["kvm_mmio", "kvm_userspace_exit", "kvm_userspace_exit"]
    assert asked == [EXIT.id]


def test_missed_events_flag_raises(decode: Decode) -> None:
    p = page(0, data_event(mmio_rec(1, 1), 1), commit_flags=T.RB_MISSED_EVENTS | T.RB_MISSED_STORED, missed=17)
    with pytest.raises(LostEventsError, match=r"cpu2.*\(17 events\).*RB_MISSED_EVENTS"):
        decode([(2, p)], DECODERS)
    p = page(0, data_event(mmio_rec(1, 1), 1), commit_flags=T.RB_MISSED_EVENTS)
    with pytest.raises(LostEventsError):
        decode([(0, p)], DECODERS)


def test_malformed_pages_raise(decode: Decode) -> None:
    # a time extend whose second word would be past the page
    body = data_event(mmio_rec(1, 1), 1) + struct.pack("<I", 30)
    with pytest.raises(TraceError, match="truncated time stamp"):
        decode([(0, struct.pack("<Qq", 0, len(body)) + body)], DECODERS)
    with pytest.raises(TraceError, match="bad size"):
        decode([(0, b"\0" * 10)], DECODERS)
    bad = struct.pack("<Qq", 0, 5000) + bytes(4080)
    with pytest.raises(TraceError, match="commits 5000 bytes"):
        decode([(0, bad)], DECODERS)
    short = record(MMIO, 1, b"\0" * 4)  # 12 bytes, kvm_mmio needs 32
    with pytest.raises(TraceError, match="kvm_mmio record of 12 bytes"):
        decode([(0, page(0, data_event(short, 1)))], DECODERS)


# The C walk against the Python walk: the same events from any well-formed pages, and on
# arbitrary bytes either the same events or a refusal (then the Python walk has the word).

_EVENT = st.one_of(
    st.builds(lambda gpa, val, d, big: data_event(mmio_rec(gpa, val), d, big=big),
              st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, (1 << 27) - 1), st.booleans()),
    st.builds(lambda r, d: data_event(exit_rec(reason=r), d), st.integers(0, 2**32 - 1), st.integers(0, 99)),
    st.builds(time_extend, st.integers(0, 2**59 - 1)),
    st.builds(time_stamp, st.integers(0, 2**59 - 1)),
    st.builds(discarded, st.sampled_from([8, 12, 24, 40])),
)
_PAGES = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**40), st.lists(_EVENT, max_size=40)),
                  max_size=4)


def _both(pages: list[tuple[int, bytes]], decoders: dict[int, T.Decoder] = DECODERS
          ) -> tuple[TraceEvents | None, TraceEvents | TraceError]:
    lib = _native.load()
    assert lib is not None, _native.unavailable_reason()
    native = T._decode_pages_native(lib, pages, decoders, PageLayout(), None)
    try:
        python: TraceEvents | TraceError = T._decode_pages(pages, decoders, PageLayout(), None)
    except TraceError as e:
        python = e
    return native, python


@given(_PAGES)
@settings(max_examples=300, deadline=None)
def test_c_walk_matches_the_python_walk(spec: list[tuple[int, int, list[bytes]]]) -> None:
    pages = [(cpu, page(ts, b"".join(body))) for cpu, ts, body in spec]
    native, python = _both(pages)
    assert native is not None, "the C walk refused well-formed pages"
    assert isinstance(python, TraceEvents)
    assert list(native) == list(python)


@given(st.lists(st.tuples(st.integers(0, 1), st.binary(min_size=16, max_size=256), st.booleans()), max_size=3))
@settings(max_examples=1000, deadline=None)
def test_c_walk_on_garbage_agrees_or_refuses(raw: list[tuple[int, bytes, bool]]) -> None:
    pages = []
    for cpu, b, full in raw:
        b = b[: len(b) // 4 * 4]
        # a commit that fills the page, or a random one (mostly within it)
        commit = len(b) - 16 if full else struct.unpack_from("<I", b, 8)[0] % (len(b) + 8)
        pages.append((cpu, b[:8] + struct.pack("<q", commit) + b[16:]))
    native, python = _both(pages)  # the Python walk raises TraceError or decodes, nothing else
    if native is not None:
        assert isinstance(python, TraceEvents), f"C accepted what Python rejects: {python}"
        assert list(native) == list(python)


def test_cpu_stats_parse() -> None:
    text = ("entries: 0\noverrun: 12\ncommit overrun: 0\nbytes: 0\noldest event ts:     0.000000\n"
            "now ts:   481.058027\ndropped events: 3\nread events: 5\n")
    st = parse_cpu_stats(text)
    assert st["overrun"] == 12 and st["dropped events"] == 3 and st["read events"] == 5
    assert "now ts" not in st


# --- attribution ------------------------------------------------------------------------------

def ev(f: EventFormat, ts: int, pid: int = 1, **fields: int) -> TraceEvent:
    return TraceEvent.make(f, ts, 0, pid, [fields.get(x.name, 0) for x in f.fields])


def test_attribute_to_windows() -> None:
    evs = [ev(MMIO, 5), ev(MMIO, 10), ev(EXIT, 12), ev(MMIO, 15), ev(MMIO, 20), ev(EXIT, 30), ev(MMIO, 41)]
    att = attribute_to_windows(evs, [(10, 12), (20, 30), (35, 40)])
    assert att.counts() == [2, 2, 0]
    assert [e.ts for e in att.per_window[0]] == [10, 12]
    assert [e.ts for e in att.per_window[1]] == [20, 30]
    assert len(att.per_window[2]) == 0
    assert [e.ts for e in att.outside] == [5, 15, 41]
    assert [len(w) for w in att.per_window[0:2]] == [2, 2]


@given(st.lists(st.integers(0, 2**64 - 1)), st.lists(st.integers(0, 2**64 - 1)))
def test_cut_windows_is_bisect(ts: list[int], edges: list[int]) -> None:
    """The C merge walk that cuts event timestamps at window edges is bisect_left at each
    start and bisect_right at each end, also with repeated timestamps on the edges."""
    assert _native.load() is not None, _native.unavailable_reason()
    ts.sort()
    for ts_, edges_ in ((ts, sorted(edges)), (sorted(ts + ts[: len(ts) // 2]), sorted(edges + ts))):
        edges_ = edges_[: len(edges_) // 2 * 2]
        windows = list(zip(edges_[0::2], edges_[1::2]))
        first, end = T._cut_windows(ts_, windows)
        assert first == [bisect.bisect_left(ts_, s) for s, _ in windows]
        assert end == [bisect.bisect_right(ts_, e) for _, e in windows]


@pytest.mark.parametrize("native", [True, False], ids=["c-cut", "bisect"])
def test_cut_windows_rejects_unsorted_input(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not native:
        monkeypatch.setattr(_native, "load", lambda: None)
    assert T._cut_windows([1, 2, 2, 9], [(0, 2), (2, 5)]) == ([0, 1], [3, 3])
    with pytest.raises(ValueError, match="sorted by ts"):
        T._cut_windows([1, 3, 2], [(0, 5)])
    with pytest.raises(ValueError, match="window 1 ends before it starts"):
        T._cut_windows([1], [(0, 1), (5, 4)])
    with pytest.raises(ValueError, match="window 2 starts before window 1 ends"):
        T._cut_windows([1], [(0, 1), (2, 6), (5, 7)])
    # Values no u64 holds go the bisect way, with the same answers.
    assert T._cut_windows([-5, 1], [(-9, -5), (0, 2**64)]) == ([0, 1], [1, 2])


def test_attribute_to_windows_by_pid() -> None:
    evs = TraceEvents.from_events([ev(MMIO, 10, pid=1), ev(MMIO, 11, pid=2), ev(EXIT, 12, pid=1)])
    att = attribute_to_windows(evs, [(10, 12)], pid=1)
    assert [(e.ts, e.pid) for e in att.per_window[0]] == [(10, 1), (12, 1)]
    assert [(e.ts, e.pid) for e in att.outside] == [(11, 2)]


def test_attribute_to_windows_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="window 0 ends before it starts"):
        attribute_to_windows([], [(5, 4)])
    with pytest.raises(ValueError, match="window 1 starts before window 0 ends"):
        attribute_to_windows([], [(0, 10), (5, 20)])
    with pytest.raises(ValueError, match="sorted"):
        attribute_to_windows([ev(MMIO, 9), ev(MMIO, 3)], [(0, 10)])


def test_split_on_userspace_exit() -> None:
    evs = [ev(MATCH, 1), ev(MMIO, 2), ev(EXIT, 3), ev(MMIO, 4, pid=2), ev(MMIO, 5), ev(EXIT, 6), ev(MMIO, 7)]
    groups, trailing = split_on_userspace_exit(evs, pid=1)
    assert [[e.name for e in g] for g in groups] == [
        ["vcpu_match_mmio", "kvm_mmio", "kvm_userspace_exit"], ["kvm_mmio", "kvm_userspace_exit"]]
    assert [e.ts for e in trailing] == [7]
    groups, trailing = split_on_userspace_exit([ev(MMIO, 1)])
    assert groups == [] and [e.ts for e in trailing] == [1]


def test_trace_events_sequence() -> None:
    evs = TraceEvents.from_events([ev(MMIO, 1, gpa=0x10), ev(EXIT, 2, reason=6)])
    assert len(evs) == 2 and evs[1]["reason"] == 6 and evs[-1].name == "kvm_userspace_exit"
    assert evs[0:1] == [ev(MMIO, 1, gpa=0x10)]
    assert evs.select([1, 0]).ts == [2, 1]
    assert evs.pids == [1, 1]
    assert "gpa=0x10" in repr(evs[0])
    with pytest.raises(ValueError, match="fields"):
        TraceEvent.make(MMIO, 0, 0, 0, [1])



def test_trace_events_concat_sorts_stably_and_merges_formats() -> None:
    a = TraceEvents.from_events([ev(MMIO, 1, gpa=0x10), ev(EXIT, 5, reason=6)])
    b = TraceEvents.from_events([ev(EXIT, 3, reason=2), ev(MMIO, 5, gpa=0x20)])
    both = TraceEvents.concat([a, b])
    assert both.ts == [1, 3, 5, 5]
    # The tie at 5 keeps the order of the parts: a's exit, then b's mmio.
    assert both.names() == ["kvm_mmio", "kvm_userspace_exit", "kvm_userspace_exit", "kvm_mmio"]
    assert list(both) == [a[0], b[0], a[1], b[1]]
    assert len(TraceEvents.concat([])) == 0
    assert list(TraceEvents.concat([a])) == list(a)

# --- tracefs discovery and capture lifecycle without a real tracefs --------------------------

def test_tracefs_mounts_parse(tmp_path: Path) -> None:
    m = tmp_path / "mounts"
    m.write_text("proc /proc proc rw 0 0\nnodev /sys/kernel/tracing tracefs rw,relatime 0 0\n"
                 "tracefs /a\\040b tracefs rw 0 0\n")
    assert T._tracefs_mounts(str(m)) == ["/sys/kernel/tracing", "/a b"]


def test_find_tracefs_without_root_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "_tracefs_mounts", lambda *a: [])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TraceError, match="needs root.*uid 1000"):
        T.find_tracefs()
    with pytest.raises(TraceError, match="not mounted"):
        T.find_tracefs(mount=False)


def test_find_tracefs_existing_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "instances").mkdir()
    monkeypatch.setattr(T, "_tracefs_mounts", lambda *a: [str(tmp_path)])
    assert T.find_tracefs() == T.Tracefs(str(tmp_path), False)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_remove_stale_instances(tmp_path: Path) -> None:
    inst = tmp_path / "instances"
    inst.mkdir()
    dead = dead_pid()
    names = [f"hostkvm-{dead}-0", f"hostkvm-{dead}-3", f"hostkvm-{os.getpid()}-0", "other", f"hostkvm-{dead}-x"]
    for n in names:
        (inst / n).mkdir()
    assert remove_stale_instances(str(tmp_path)) == [f"hostkvm-{dead}-0", f"hostkvm-{dead}-3"]
    assert sorted(os.listdir(inst)) == sorted(names[2:])


def test_capture_removes_instance_when_setup_fails(tmp_path: Path) -> None:
    (tmp_path / "instances").mkdir()
    cap = TraceCapture(tracefs=T.Tracefs(str(tmp_path)))
    with pytest.raises(TraceError, match="tracing_on"):
        cap.start()
    assert os.listdir(tmp_path / "instances") == []
    cap.close()  # idempotent after a failed start


def test_capture_rejects_bad_event_names() -> None:
    with pytest.raises(TraceError, match="'kvm_mmio' is not 'system:name'"):
        TraceCapture(["kvm_mmio"])


def test_defaults_name_the_issue_events() -> None:
    assert "kvm:kvm_userspace_exit" in T.DEFAULT_EVENTS and len(set(T.DEFAULT_EVENTS)) == 15
    assert all(e.startswith("kvmmmu:") for e in T.PAGETABLE_WALK_EVENTS)
