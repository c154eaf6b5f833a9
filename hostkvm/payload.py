"""The payload file format (a public interface; described in docs/payload-format.md).

A payload is a ``.S`` file in keystone's Intel syntax. Header lines ``;@ key: value``
come before the first statement; the body is plain instructions, and running off
its end reports ``done``. :func:`parse_payload` checks everything that can be
checked without assembling and raises :class:`~hostkvm.errors.PayloadError` with
``file:line``; :func:`hostkvm.guest.build_guest` assembles the body.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hostkvm.asm import Statement, split_statements
from hostkvm.errors import PayloadError
from hostkvm.x86.constants import EXCEPTION_NAMES, PAGE_SIZE, PGDIR32_SIZE, PMD_SIZE, PUD_SIZE

#: The harness owns guest-physical (and, identity-mapped, guest-virtual) memory
#: ``[HARNESS_GPA, HARNESS_GPA + HARNESS_SIZE)``; no declared region may touch it.
HARNESS_GPA = 0x0
HARNESS_SIZE = 0x80000

DEFAULT_MODE = "long64"
DEFAULT_CPL = 3
DEFAULT_TIMEOUT = 10.0

#: highest end (exclusive) of an identity-mapped region per mode
MODE_ADDRESS_LIMIT = {"real16": 1 << 20, "prot32": 1 << 32, "long64": 1 << 47}

OUTCOMES = ("done", "fail", "exception", "shutdown", "internal_error", "timeout")

_PAGE_SIZE_WORDS = {"4k": PAGE_SIZE, "2m": PMD_SIZE, "4m": PGDIR32_SIZE, "1g": PUD_SIZE}
_PAGE_SIZES_BY_MODE = {"prot32": ("4k", "4m"), "long64": ("4k", "2m", "1g")}
_DEFAULT_PAGES = {"prot32": "4m", "long64": "2m"}

_HEADER_RE = re.compile(r"^\s*;@(.*)$")
_KEY_RE = re.compile(r"^\s*([A-Za-z][\w-]*)\s*:\s*(.*?)\s*$")
_NUM_RE = re.compile(r"^(0[xX][0-9a-fA-F_]+|0[bB][01_]+|[0-9][0-9_]*)([KkMmGg]?)$")
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class Region:
    """A declared ``ram:`` or ``mmio:`` region, identity-mapped (gva == gpa)."""

    gpa: int
    size: int
    kind: str  # "ram" | "mmio"
    readonly: bool = False
    line: int = 0

    @property
    def end(self) -> int:
        return self.gpa + self.size


@dataclass(frozen=True)
class Alias:
    """A ``map:`` line: ``[gva, gva+size)`` reaches ``[gpa, gpa+size)``."""

    gva: int
    size: int
    gpa: int
    writable: bool = True
    nx: bool = False
    supervisor: bool = False
    line: int = 0


@dataclass(frozen=True)
class ExpectedExit:
    """One ``exit:`` line: ``count`` MMIO exits, the k-th at ``gpa + k*stride``."""

    count: int
    is_write: bool
    gpa: int
    len: int
    data: bytes | None = None  # None: not checked
    stride: int = 0
    line: int = 0


@dataclass(frozen=True)
class Expectation:
    """What a payload states it must produce.

    ``outcome`` is one of :data:`OUTCOMES`; ``vector``/``error_code``/``cr2`` refine
    ``exception``, ``message`` refines ``fail``, ``suberror`` refines ``internal_error``
    (``None`` = not checked). ``exits`` is the exact number of MMIO exits (``None`` =
    not checked); ``exit_list``, when not empty, is the exact sequence.
    """

    outcome: str
    vector: int | None = None
    error_code: int | None = None
    cr2: int | None = None
    message: str | None = None
    suberror: int | None = None
    exits: int | None = None
    exit_list: tuple[ExpectedExit, ...] = ()
    line: int = 0

    def expanded_exits(self) -> list[tuple[int, int, bool, bytes | None]]:
        """``exit_list`` unrolled: ``(gpa, len, is_write, data or None)`` per exit."""
        out = []
        for e in self.exit_list:
            for k in range(e.count):
                out.append((e.gpa + k * e.stride, e.len, e.is_write, e.data))
        return out

    def check_exits(self, observed: Sequence[object]) -> list[str]:
        """Differences between ``observed`` MMIO exits and what is expected; an empty list
        means they match. Each exit is a ``(gpa, len, is_write, data)`` tuple or an object
        with those attributes (the harness's ``RecordedExit``)."""
        observed = [_exit_tuple(o) for o in observed]
        problems: list[str] = []
        if self.exits is not None and len(observed) != self.exits:
            problems.append(f"expected {self.exits} MMIO exits, got {len(observed)}")
        if not self.exit_list:
            return problems
        expected = self.expanded_exits()
        for i, (exp, obs) in enumerate(zip(expected, observed)):
            gpa, length, is_write, data = exp
            ogpa, olen, owrite, odata = obs
            if (gpa, length, is_write) != (ogpa, olen, bool(owrite)) or (
                data is not None and bytes(odata) != data
            ):
                want = _describe_exit(gpa, length, is_write, data)
                got = _describe_exit(ogpa, olen, bool(owrite), bytes(odata))
                problems.append(f"exit {i}: expected {want}, got {got}")
        if len(expected) != len(observed) and self.exits is None:
            problems.append(f"expected {len(expected)} MMIO exits, got {len(observed)}")
        return problems


def _exit_tuple(obs: object) -> tuple[int, int, bool, bytes]:
    if isinstance(obs, tuple):
        return obs  # type: ignore[return-value]
    return (obs.gpa, obs.len, obs.is_write, obs.data)  # type: ignore[attr-defined]


def _describe_exit(gpa: int, length: int, is_write: bool, data: bytes | None) -> str:
    text = f"{'write' if is_write else 'read'} {gpa:#x} {length}"
    return text + (f" {data.hex()}" if data is not None else "")


@dataclass(frozen=True)
class Payload:
    """A parsed payload file."""

    path: str
    text: str
    mode: str = DEFAULT_MODE
    cpl: int = DEFAULT_CPL
    paging: bool = True
    #: largest page the harness may use for declared regions and aliases
    page_size: int = PMD_SIZE
    regions: tuple[Region, ...] = ()
    aliases: tuple[Alias, ...] = ()
    read_value: int = 0
    timeout: float = DEFAULT_TIMEOUT
    description: str = ""
    expect: Expectation | None = None
    statements: tuple[Statement, ...] = field(default=(), repr=False)
    #: line of each single-valued header key that was given (``{"mode": 1, ...}``)
    header_lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def read_data(self, length: int) -> bytes:
        """The bytes returned to an MMIO read of ``length`` bytes: the low ``length``
        bytes of ``read:`` in little-endian order (zero-extended)."""
        return self.read_value.to_bytes(max(length, 16), "little")[:length]

    def region_at(self, gpa: int) -> Region | None:
        for region in self.regions:
            if region.gpa <= gpa < region.end:
                return region
        return None


# -- parsing ----------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.values: dict[str, tuple[str, int]] = {}
        self.regions: list[Region] = []
        self.aliases: list[Alias] = []
        self.exit_list: list[ExpectedExit] = []
        self.description: list[str] = []

    def error(self, message: str, line: int | None) -> PayloadError:
        return PayloadError(message, self.path, line)

    # numbers ---------------------------------------------------------------------------
    def number(self, word: str, line: int, what: str, *, suffix: bool = False) -> int:
        m = _NUM_RE.match(word.strip())
        if not m or (m.group(2) and not suffix):
            raise self.error(f"{what}: bad number '{word.strip()}'", line)
        return int(m.group(1).replace("_", ""), 0) * _SUFFIX[m.group(2).lower()]

    def range_(self, word: str, line: int, what: str) -> tuple[int, int]:
        if "+" not in word:
            raise self.error(f"{what}: expected GPA+SIZE, got '{word}'", line)
        base_s, size_s = word.split("+", 1)
        base = self.number(base_s, line, what)
        size = self.number(size_s, line, what, suffix=True)
        if size <= 0:
            raise self.error(f"{what}: size must be positive", line)
        if base % PAGE_SIZE or size % PAGE_SIZE:
            raise self.error(f"{what}: {base:#x}+{size:#x} must be 4 KiB aligned "
                             "(address and size)", line)
        return base, size

    # header ------------------------------------------------------------------------------
    def parse(self) -> Payload:
        lines = self.text.splitlines()
        body_start: int | None = None
        for number, raw in enumerate(lines, start=1):
            m = _HEADER_RE.match(raw)
            if m:
                if body_start is not None:
                    raise self.error("header line after the first statement (line "
                                     f"{body_start}); move it to the top", number)
                self.header(m.group(1), number)
                continue
            if body_start is None and split_statements(raw):
                body_start = number
        statements = tuple(split_statements(self.text, self.path))
        return self.finish(statements)

    SINGLE = ("mode", "cpl", "paging", "read", "timeout", "pages", "expect", "exits")

    def header(self, content: str, line: int) -> None:
        m = _KEY_RE.match(content)
        if not m:
            raise self.error(f"header line must read ';@ key: value', got ';@{content}'", line)
        key, value = m.group(1).lower(), m.group(2)
        if key in self.SINGLE:
            if key in self.values:
                raise self.error(f"'{key}' given twice (first at line {self.values[key][1]})",
                                 line)
            self.values[key] = (value, line)
        elif key == "ram":
            words = value.split()
            if not words or any(w != "ro" for w in words[1:]):
                raise self.error("ram: expected 'GPA+SIZE [ro]'", line)
            gpa, size = self.range_(words[0], line, "ram")
            self.regions.append(Region(gpa, size, "ram", "ro" in words[1:], line))
        elif key == "mmio":
            words = value.split()
            if len(words) != 1:
                raise self.error("mmio: expected 'GPA+SIZE'", line)
            gpa, size = self.range_(words[0], line, "mmio")
            self.regions.append(Region(gpa, size, "mmio", False, line))
        elif key == "map":
            self.alias(value, line)
        elif key == "exit":
            self.exit_line(value, line)
        elif key == "description":
            self.description.append(value)
        else:
            raise self.error(
                f"unknown header key '{key}' (known: mode, cpl, paging, pages, ram, mmio, map, "
                "read, timeout, description, expect, exits, exit)", line)

    def alias(self, value: str, line: int) -> None:
        m = re.match(r"^(\S+)\s*->\s*(\S+)((?:\s+\S+)*)$", value)
        if not m:
            raise self.error("map: expected 'GVA+SIZE -> GPA [ro] [nx] [super]'", line)
        gva, size = self.range_(m.group(1), line, "map")
        gpa = self.number(m.group(2), line, "map")
        if gpa % PAGE_SIZE:
            raise self.error(f"map: gpa {gpa:#x} must be 4 KiB aligned", line)
        flags = m.group(3).split()
        unknown = [f for f in flags if f not in ("ro", "nx", "super")]
        if unknown:
            raise self.error(f"map: unknown flag '{unknown[0]}' (known: ro, nx, super)", line)
        self.aliases.append(Alias(gva, size, gpa, "ro" not in flags, "nx" in flags,
                                  "super" in flags, line))

    def exit_line(self, value: str, line: int) -> None:
        words = value.split()
        count = 1
        if words and re.fullmatch(r"\d+x", words[0]):
            count = int(words[0][:-1])
            words = words[1:]
            if count < 1:
                raise self.error("exit: count must be at least 1", line)
        stride = 0
        if words and words[-1].startswith("stride="):
            stride = self.number(words[-1][len("stride="):], line, "exit stride")
            words = words[:-1]
        if len(words) not in (3, 4) or words[0] not in ("read", "write"):
            raise self.error("exit: expected '[Nx] read|write GPA LEN [DATA] [stride=S]'", line)
        gpa = self.number(words[1], line, "exit gpa")
        length = self.number(words[2], line, "exit length")
        if length not in (1, 2, 4, 8, 16):
            raise self.error(f"exit: length {length} is not 1, 2, 4, 8 or 16", line)
        data: bytes | None = None
        if len(words) == 4 and words[3] != "*":
            data = self.data(words[3], length, line)
        self.exit_list.append(ExpectedExit(count, words[0] == "write", gpa, length, data,
                                           stride, line))

    def data(self, word: str, length: int, line: int) -> bytes:
        if word.lower().startswith("0x"):
            value = self.number(word, line, "exit data")
            if value >> (8 * length):
                raise self.error(f"exit: data {word} does not fit in {length} bytes", line)
            return value.to_bytes(length, "little")
        if not re.fullmatch(r"[0-9a-fA-F]+", word) or len(word) != 2 * length:
            raise self.error(f"exit: data '{word}' must be {2 * length} hex digits (bytes, "
                             "lowest address first) or a 0x-prefixed little-endian value", line)
        return bytes.fromhex(word)

    # checks ------------------------------------------------------------------------------
    def get(self, key: str) -> tuple[str, int] | None:
        return self.values.get(key)

    def finish(self, statements: tuple[Statement, ...]) -> Payload:
        mode, mode_line = DEFAULT_MODE, None
        if (v := self.get("mode")) is not None:
            mode, mode_line = v[0].lower(), v[1]
            if mode not in MODE_ADDRESS_LIMIT:
                raise self.error(f"mode: '{v[0]}' is not real16, prot32 or long64", v[1])
        cpl, cpl_line = DEFAULT_CPL, mode_line
        if (v := self.get("cpl")) is not None:
            if v[0] not in ("0", "3"):
                raise self.error(f"cpl: '{v[0]}' is not 0 or 3", v[1])
            cpl, cpl_line = int(v[0]), v[1]
        if mode == "real16" and cpl == 3:
            raise self.error("cpl 3 cannot work in real16: real mode always runs at CPL0 "
                             "(write ';@ cpl: 0')", cpl_line)
        paging = mode != "real16"
        if (v := self.get("paging")) is not None:
            if mode != "prot32":
                raise self.error(f"paging: only prot32 may choose (paging is "
                                 f"{'off' if mode == 'real16' else 'on'} in {mode})", v[1])
            if v[0] not in ("on", "off"):
                raise self.error(f"paging: '{v[0]}' is not on or off", v[1])
            paging = v[0] == "on"
        page_size = _PAGE_SIZE_WORDS.get(_DEFAULT_PAGES.get(mode, "4k"), PAGE_SIZE)
        if (v := self.get("pages")) is not None:
            allowed = _PAGE_SIZES_BY_MODE.get(mode, ()) if paging else ()
            if v[0].lower() not in allowed:
                raise self.error(f"pages: '{v[0]}' is not available in {mode}"
                                 f"{'' if paging else ' without paging'}"
                                 f"{' (choose ' + ', '.join(allowed) + ')' if allowed else ''}",
                                 v[1])
            page_size = _PAGE_SIZE_WORDS[v[0].lower()]
        read_value = 0
        if (v := self.get("read")) is not None:
            read_value = self.number(v[0], v[1], "read")
            if read_value >> 128:
                raise self.error("read: value wider than 16 bytes", v[1])
        timeout = DEFAULT_TIMEOUT
        if (v := self.get("timeout")) is not None:
            try:
                timeout = float(v[0])
            except ValueError:
                raise self.error(f"timeout: bad number '{v[0]}'", v[1]) from None
            if not 0 < timeout < 1e6:
                raise self.error(f"timeout: {v[0]} seconds is out of range", v[1])
        limit = MODE_ADDRESS_LIMIT[mode]
        harness_end = HARNESS_GPA + HARNESS_SIZE
        placed: list[tuple[int, int, str, int]] = []  # (start, end, what, line)

        def claim(start: int, end: int, what: str, line: int) -> None:
            if start < harness_end and HARNESS_GPA < end:
                raise self.error(f"{what} {start:#x}+{end - start:#x} collides with the "
                                 f"harness's memory [{HARNESS_GPA:#x}, {harness_end:#x})",
                                 line)
            for ostart, oend, owhat, oline in placed:
                if start < oend and ostart < end:
                    raise self.error(f"{what} {start:#x}+{end - start:#x} overlaps {owhat} "
                                     f"{ostart:#x}+{oend - ostart:#x} (line {oline})", line)
            placed.append((start, end, what, line))

        for r in self.regions:
            if r.end > limit:
                raise self.error(f"{r.kind} {r.gpa:#x}+{r.size:#x} is not reachable in {mode} "
                                 f"(identity-mapped regions must end by {limit:#x})", r.line)
            claim(r.gpa, r.end, r.kind, r.line)
        for a in self.aliases:
            if not paging:
                raise self.error(f"map: aliases need paging, which {mode} "
                                 f"{'has not' if mode == 'real16' else 'has off here'}", a.line)
            if a.gva + a.size > limit:
                raise self.error(f"map: gva {a.gva:#x}+{a.size:#x} is beyond {limit:#x} in "
                                 f"{mode}", a.line)
            claim(a.gva, a.gva + a.size, "map", a.line)
            target = next((r for r in self.regions if r.gpa <= a.gpa and
                           a.gpa + a.size <= r.end), None)
            if target is None:
                raise self.error(f"map: gpa {a.gpa:#x}+{a.size:#x} is not inside one declared "
                                 "ram or mmio region", a.line)
        expect = self.expectation()
        if expect is not None:
            for e in expect.exit_list:
                for k in (0, e.count - 1):
                    gpa = e.gpa + k * e.stride
                    r = next((r for r in self.regions if r.gpa <= gpa and gpa + e.len <= r.end),
                             None)
                    if r is None or not (r.kind == "mmio" or (r.readonly and e.is_write)):
                        raise self.error(f"exit: {'write' if e.is_write else 'read'} at gpa "
                                         f"{gpa:#x}+{e.len} is not inside an mmio region"
                                         f"{' or a ro ram region' if e.is_write else ''}",
                                         e.line)
        return Payload(
            path=self.path, text=self.text, mode=mode, cpl=cpl, paging=paging,
            page_size=page_size, regions=tuple(self.regions), aliases=tuple(self.aliases),
            read_value=read_value, timeout=timeout, description=" ".join(self.description),
            expect=expect, statements=statements,
            header_lines={key: line for key, (_, line) in self.values.items()},
        )

    def expectation(self) -> Expectation | None:
        v = self.get("expect")
        exits_v = self.get("exits")
        if v is None:
            if exits_v is not None or self.exit_list:
                line = exits_v[1] if exits_v else self.exit_list[0].line
                raise self.error("exits/exit lines need an 'expect:' outcome line", line)
            return None
        words = v[0].split()
        line = v[1]
        if not words or words[0] not in OUTCOMES:
            raise self.error(f"expect: outcome must be one of {', '.join(OUTCOMES)}", line)
        kind, rest = words[0], words[1:]
        kwargs: dict[str, object] = {}
        if kind == "fail":
            if rest:
                kwargs["message"] = v[0].split(None, 1)[1]
        elif kind == "exception":
            if not rest:
                raise self.error("expect: exception needs a vector (#PF, GP, 14 ...)", line)
            kwargs["vector"] = self.vector(rest[0], line)
            for word in rest[1:]:
                key, _, val = word.partition("=")
                if key not in ("error", "cr2") or not val:
                    raise self.error(f"expect: '{word}' is not error=N or cr2=N", line)
                kwargs["error_code" if key == "error" else "cr2"] = self.number(
                    val, line, f"expect {key}")
        elif kind == "internal_error":
            if len(rest) > 1:
                raise self.error("expect: internal_error takes at most a suberror", line)
            if rest:
                kwargs["suberror"] = self.number(rest[0], line, "expect suberror")
        elif rest:
            raise self.error(f"expect: '{kind}' takes no arguments", line)
        exits: int | None = None
        if exits_v is not None:
            exits = self.number(exits_v[0], exits_v[1], "exits")
            total = sum(e.count for e in self.exit_list)
            if self.exit_list and total != exits:
                raise self.error(f"exits: {exits} disagrees with the {total} exits the "
                                 "exit lines list", exits_v[1])
        return Expectation(kind, exits=exits, exit_list=tuple(self.exit_list), line=line,
                           **kwargs)  # type: ignore[arg-type]

    def vector(self, word: str, line: int) -> int:
        name = word.lstrip("#").upper()
        for vec, known in EXCEPTION_NAMES.items():
            if known == name:
                return vec
        try:
            vec = self.number(word, line, "expect vector")
        except PayloadError:
            raise self.error(f"expect: unknown exception vector '{word}'", line) from None
        if not 0 <= vec < 32:
            raise self.error(f"expect: vector {vec} is not an exception vector (0-31)", line)
        return vec


def parse_payload_text(text: str, path: str = "<string>") -> Payload:
    """Parse payload source ``text``; ``path`` names it in errors."""
    return _Parser(text, path).parse()


def parse_payload(path: str | Path) -> Payload:
    """Read and parse the payload file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise PayloadError(f"cannot read payload: {err.strerror}", str(path)) from None
    except UnicodeDecodeError as err:
        raise PayloadError(f"payload is not UTF-8: {err}", str(path)) from None
    return parse_payload_text(text, str(path))
