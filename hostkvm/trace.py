"""Trace KVM tracepoints from a private tracefs instance, and read them back as typed events.

Three parts:

* **tracefs** -- :func:`find_tracefs` finds a mounted tracefs, or mounts it (as root) and says
  so; :func:`remove_stale_instances` removes instances that killed runs left behind.
* **capture** -- :class:`TraceCapture` creates ``instances/hostkvm-<pid>-<n>``, sets its
  ``trace_clock`` to ``mono`` (so timestamps are ``time.monotonic_ns()`` values), restricts it
  to the harness's threads with ``set_event_pid``, enables only the requested events and
  always removes the instance again. It never writes a top-level tracing file.
* **decoding** -- the binary ring-buffer pages of ``per_cpu/cpuN/trace_pipe_raw`` are decoded
  with the layouts the running kernel publishes (``events/header_page``, ``header_event`` and
  each event's ``format`` file); nothing is hard-coded to one kernel. Lost events (the
  ``RB_MISSED_EVENTS`` flag of a page, or the ``overrun`` / ``dropped events`` counters of
  ``per_cpu/cpuN/stats``) raise :class:`~hostkvm.errors.TraceError`.

The per-exit helpers :func:`attribute_to_windows` and :func:`split_on_userspace_exit` are pure
functions over decoded events.

Typical use::

    with TraceCapture() as cap:          # the calling thread is traced
        for _ in range(n):
            t0 = time.monotonic_ns(); vcpu.run(); windows.append((t0, time.monotonic_ns()))
        events = cap.collect()
    per_exit = attribute_to_windows(events, windows).per_window
"""

from __future__ import annotations

import array
import bisect
import collections
import ctypes
import ctypes.util
import errno
import functools
import itertools
import operator
import os
import re
import signal
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, overload

from hostkvm import _gc
from hostkvm.errors import TraceError

TRACEFS_DEFAULT_PATH = "/sys/kernel/tracing"
INSTANCE_PREFIX = "hostkvm-"

#: The events a capture enables unless told otherwise (``system:name``).
DEFAULT_EVENTS: tuple[str, ...] = (
    "kvm:kvm_mmio",
    "kvm:kvm_userspace_exit",
    "kvm:vcpu_match_mmio",
    "kvm:kvm_page_fault",
    "kvm:kvm_exit",
    "kvm:kvm_entry",
    "kvm:kvm_fast_mmio",
    "kvmmmu:mark_mmio_spte",
    "kvmmmu:check_mmio_spte",
    "kvmmmu:handle_mmio_page_fault",
    "kvmmmu:fast_page_fault",
    "kvmmmu:kvm_mmu_set_spte",
    "kvmmmu:kvm_mmu_get_page",
    "kvmmmu:kvm_mmu_prepare_zap_page",
    "kvmmmu:kvm_mmu_zap_all_fast",
)

#: Optional guest page-table walk events (``paging_tmpl.h:walk_addr_generic()``).
PAGETABLE_WALK_EVENTS: tuple[str, ...] = (
    "kvmmmu:kvm_mmu_pagetable_walk",
    "kvmmmu:kvm_mmu_paging_element",
    "kvmmmu:kvm_mmu_walker_error",
)

#: Per-CPU ring buffer size of a capture instance, in KiB. With the background drain
#: (every ``drain_interval`` seconds) this holds far more than one interval of KVM events.
DEFAULT_BUFFER_SIZE_KB = 4096
DEFAULT_DRAIN_INTERVAL = 0.05

# ring_buffer.c: flags in the high bits of a read page's ``commit`` word.
RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30
_COMMIT_SIZE_MASK = RB_MISSED_STORED - 1

# ring_buffer.c: enum ring_buffer_type (the 5-bit type_len of an event header).
RINGBUF_TYPE_DATA_TYPE_LEN_MAX = 28
RINGBUF_TYPE_PADDING = 29
RINGBUF_TYPE_TIME_EXTEND = 30
RINGBUF_TYPE_TIME_STAMP = 31
_TS_SHIFT = 27  # ring_buffer.c: TS_SHIFT, the width of time_delta

_U32 = struct.Struct("=I").unpack_from
_U16 = struct.Struct("=H").unpack_from


# ------------------------------------------------------------------------------------------
# tracefs discovery
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tracefs:
    """A usable tracefs mount. ``mounted_here`` is true when :func:`find_tracefs` mounted it
    (the CLI reports that)."""

    path: str
    mounted_here: bool = False


def _tracefs_mounts(proc_mounts: str = "/proc/mounts") -> list[str]:
    paths = []
    try:
        with open(proc_mounts, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "tracefs":
                    paths.append(parts[1].replace("\\040", " "))
    except OSError:
        pass
    return paths


def _mount_tracefs(target: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    rc = libc.mount(b"nodev", target.encode(), b"tracefs", ctypes.c_ulong(0), None)
    if rc != 0:
        err = ctypes.get_errno()
        raise TraceError(
            f"tracefs: mount on {target} failed: errno {err} ({os.strerror(err)}); "
            f"mount it by hand: mount -t tracefs nodev {target}"
        )


def find_tracefs(*, mount: bool = True, default_path: str = TRACEFS_DEFAULT_PATH) -> Tracefs:
    """Find a mounted tracefs with an ``instances`` directory this process may write.

    When none is mounted and *mount* is true, mount one at *default_path* (root only) and
    return it with ``mounted_here=True``. Raise :class:`TraceError` saying why tracing is
    unavailable (not root, no tracefs in the kernel, mount refused); callers report that
    as a missing observation and carry on without tracing.
    """
    mounts = _tracefs_mounts()
    for path in mounts:
        inst = os.path.join(path, "instances")
        if os.path.isdir(inst):
            if os.access(inst, os.W_OK):
                return Tracefs(path)
    if mounts:
        raise TraceError(
            f"tracefs: mounted at {mounts[0]} but its instances directory is not writable by "
            f"uid {os.geteuid()}: run as root"
        )
    if not mount:
        raise TraceError(f"tracefs: not mounted (mount -t tracefs nodev {default_path})")
    if os.geteuid() != 0:
        raise TraceError(
            f"tracefs: not mounted, and mounting it needs root (running as uid {os.geteuid()})"
        )
    if not os.path.isdir(default_path):
        raise TraceError(
            f"tracefs: {default_path} does not exist: this kernel has no tracefs "
            "(CONFIG_TRACING off)"
        )
    _mount_tracefs(default_path)
    if not os.path.isdir(os.path.join(default_path, "instances")):
        raise TraceError(f"tracefs: mounted at {default_path} but it has no instances directory")
    return Tracefs(default_path, mounted_here=True)


# ------------------------------------------------------------------------------------------
# format files
# ------------------------------------------------------------------------------------------

_FIELD_RE = re.compile(
    r"^\s*field:\s*(?P<decl>[^;]*);\s*offset:\s*(?P<offset>\d+);\s*size:\s*(?P<size>\d+);"
    r"(?:\s*signed:\s*(?P<signed>\d+);)?"
)
_ARRAY_RE = re.compile(r"^(?P<name>\w+)\s*\[(?P<len>[^\]]*)\]$")

# Element sizes of the C types that dynamic arrays (``__data_loc u32[] x``) use.
_C_TYPE_SIZES = {
    "char": 1, "signed char": 1, "unsigned char": 1, "u8": 1, "__u8": 1, "s8": 1, "__s8": 1,
    "bool": 1, "short": 2, "unsigned short": 2, "u16": 2, "__u16": 2, "s16": 2, "__s16": 2,
    "int": 4, "unsigned int": 4, "unsigned": 4, "u32": 4, "__u32": 4, "s32": 4, "__s32": 4,
    "pid_t": 4, "long": 8, "unsigned long": 8, "long long": 8, "unsigned long long": 8,
    "u64": 8, "__u64": 8, "s64": 8, "__s64": 8,
}
_INT_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
              (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}


@dataclass(frozen=True, slots=True)
class FormatField:
    """One ``field:`` line of a ``format`` file.

    ``kind`` is ``"scalar"``, ``"array"`` (fixed ``type name[N]``), ``"data_loc"``
    (``__data_loc type[] name``: a u32 of offset | length << 16 from the record start) or
    ``"rel_loc"`` (``__rel_loc``: the offset counts from the end of the field).
    """

    name: str
    type: str
    offset: int
    size: int
    signed: bool
    kind: str = "scalar"
    count: int = 0  # elements of a fixed array

    @property
    def is_string(self) -> bool:
        """``char`` arrays decode to ``str`` (up to the first NUL)."""
        return self.kind != "scalar" and self.type.split()[-1] == "char"

    @property
    def elem_size(self) -> int:
        """Element size of an array field (0 when unknown: the value stays ``bytes``)."""
        if self.kind == "array":
            return self.size // self.count if self.count else 0
        if self.kind in ("data_loc", "rel_loc"):
            return _C_TYPE_SIZES.get(self.type, 0)
        return self.size


def parse_field_line(line: str) -> FormatField | None:
    """Parse one ``field:TYPE NAME; offset:N; size:N; signed:N;`` line (``None`` if it is not one)."""
    m = _FIELD_RE.match(line)
    if m is None:
        return None
    decl = m["decl"].strip()
    offset, size = int(m["offset"]), int(m["size"])
    signed = m["signed"] == "1"
    kind, count = "scalar", 0
    if decl.startswith(("__data_loc ", "__rel_loc ")):
        loc, rest = decl.split(None, 1)
        kind = "data_loc" if loc == "__data_loc" else "rel_loc"
        ctype, _, name = rest.rpartition(" ")
        ctype = ctype.strip()
        if ctype.endswith("[]"):
            ctype = ctype[:-2].strip()
        return FormatField(name, ctype, offset, size, signed, kind)
    ctype, _, name = decl.rpartition(" ")
    am = _ARRAY_RE.match(name)
    if am is not None:
        name = am["name"]
        try:
            count = int(am["len"], 0)
        except ValueError:
            count = 0  # a length the kernel printed as an expression: bytes
        kind = "array"
    return FormatField(name, ctype.strip(), offset, size, signed, kind, count)


@dataclass(frozen=True, slots=True)
class EventFormat:
    """An event's ``format`` file: ``system:name``, its ID (``common_type``) and fields.

    ``fields`` excludes the ``common_*`` fields; ``common`` holds them.
    """

    system: str
    name: str
    id: int
    fields: tuple[FormatField, ...]
    common: tuple[FormatField, ...]

    @property
    def full_name(self) -> str:
        return f"{self.system}:{self.name}"

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def common_field(self, name: str) -> FormatField:
        for f in self.common:
            if f.name == name:
                return f
        raise TraceError(f"{self.full_name}: format has no {name} field")


def parse_format(text: str, system: str = "") -> EventFormat:
    """Parse the text of ``events/<system>/<name>/format``."""
    name = ""
    ev_id = -1
    fields: list[FormatField] = []
    common: list[FormatField] = []
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("ID:"):
            ev_id = int(line.split(":", 1)[1])
        elif line.startswith("print fmt:"):
            break
        else:
            f = parse_field_line(line)
            if f is not None:
                (common if f.name.startswith("common_") else fields).append(f)
    if not name or ev_id < 0:
        raise TraceError(f"{system or '?'}: not an event format file (no name/ID line)")
    return EventFormat(system, name, ev_id, tuple(fields), tuple(common))


@dataclass(frozen=True, slots=True)
class PageLayout:
    """The ring-buffer sub-buffer layout from ``events/header_page`` and ``header_event``."""

    timestamp_offset: int = 0
    timestamp_size: int = 8
    commit_offset: int = 8
    commit_size: int = 8
    data_offset: int = 16
    data_size: int = 4080

    @property
    def page_size(self) -> int:
        return self.data_offset + self.data_size


def parse_header_page(text: str, header_event: str | None = None) -> PageLayout:
    """Parse ``events/header_page`` (and check ``events/header_event`` describes the
    5-bit type_len / 27-bit time_delta header this decoder knows)."""
    got: dict[str, FormatField] = {}
    for line in text.splitlines():
        f = parse_field_line(line)
        if f is not None and f.name not in got:
            got[f.name] = f
    for need in ("timestamp", "commit", "data"):
        if need not in got:
            raise TraceError(f"tracefs: events/header_page has no {need} field")
    if header_event is not None and not (
        re.search(r"type_len\s*:\s*5 bits", header_event)
        and re.search(r"time_delta\s*:\s*27 bits", header_event)
    ):
        raise TraceError(
            "tracefs: events/header_event is not the 5-bit type_len / 27-bit time_delta "
            "layout this decoder reads"
        )
    ts, commit, data = got["timestamp"], got["commit"], got["data"]
    return PageLayout(ts.offset, ts.size, commit.offset, commit.size, data.offset, data.size)


# ------------------------------------------------------------------------------------------
# events and their decoders
# ------------------------------------------------------------------------------------------


class TraceEvent:
    """One decoded trace record.

    ``name`` is the event name (``kvm_mmio``), ``ts`` the ring-buffer timestamp in ns (on a
    capture's ``mono`` clock: comparable with ``time.monotonic_ns()``), ``cpu`` and ``pid``
    (the thread id, ``common_pid``) where it fired. :attr:`values` are the field values in
    ``format`` order; :attr:`fields` builds a dict, ``event["gpa"]`` reads one field.

    Field values: integers (``bool`` for ``bool`` fields), ``str`` for ``char`` arrays,
    ``bytes`` for ``u8`` arrays, tuples of integers for other arrays.
    """

    __slots__ = ("name", "ts", "cpu", "_raw", "format")

    def __init__(self, name: str, ts: int, cpu: int, raw: tuple[Any, ...], format: EventFormat) -> None:
        # raw is (common_pid, *field values): one tuple straight from the decoder.
        self.name = name
        self.ts = ts
        self.cpu = cpu
        self._raw = raw
        self.format = format

    @classmethod
    def make(cls, format: EventFormat, ts: int, cpu: int, pid: int, values: Sequence[Any]) -> TraceEvent:
        """Build an event by hand (tests, synthetic traces)."""
        if len(values) != len(format.fields):
            raise ValueError(f"{format.full_name} has {len(format.fields)} fields, got {len(values)} values")
        return cls(format.name, ts, cpu, (pid, *values), format)

    @property
    def pid(self) -> int:
        return self._raw[0]  # type: ignore[no-any-return]

    @property
    def values(self) -> tuple[Any, ...]:
        return self._raw[1:]

    @property
    def system(self) -> str:
        return self.format.system

    @property
    def fields(self) -> dict[str, Any]:
        return dict(zip(self.format.field_names, self._raw[1:]))

    def __getitem__(self, key: str) -> Any:
        try:
            return self._raw[1 + self.format.field_names.index(key)]
        except ValueError:
            raise KeyError(f"{self.format.full_name} has no field {key!r}") from None

    def get(self, key: str, default: Any = None) -> Any:
        names = self.format.field_names
        return self._raw[1 + names.index(key)] if key in names else default

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``name``, ``ts``, ``cpu``, ``pid`` and the fields
        (``bytes`` become hex strings, tuples lists)."""
        d: dict[str, Any] = {"name": self.name, "ts": self.ts, "cpu": self.cpu, "pid": self._raw[0]}
        for k, v in zip(self.format.field_names, self._raw[1:]):
            if isinstance(v, bytes):
                v = v.hex()
            elif isinstance(v, tuple):
                v = list(v)
            d[k] = v
        return d

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TraceEvent):
            return NotImplemented
        return (self.name, self.ts, self.cpu, self._raw) == (other.name, other.ts, other.cpu, other._raw)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = " ".join(
            f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v!r}"
            for k, v in zip(self.format.field_names, self._raw[1:])
        )
        return f"<{self.name} ts={self.ts} cpu={self.cpu} pid={self._raw[0]} {body}>"


Converter = Callable[[Any, int, tuple[Any, ...]], tuple[Any, ...]]


def _decode_array(raw: bytes, f: FormatField) -> Any:
    if f.is_string:
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    es = f.elem_size
    if es == 1 and not f.signed:
        return bytes(raw)
    code = _INT_CODES.get((es, f.signed))
    if code is None or len(raw) % es:
        return bytes(raw)
    return struct.unpack(f"={len(raw) // es}{code}", raw)


def _needs_conversion(f: FormatField) -> bool:
    """Whether a flat struct's value for *f* (``Ns`` bytes / u32) needs post-processing."""
    if f.kind in ("data_loc", "rel_loc"):
        return True
    if f.kind == "array":
        return f.is_string or not (f.elem_size == 1 and not f.signed)
    return False


def _make_converter(slots: list[tuple[int, FormatField]]) -> Converter | None:
    """Post-processing for fields a flat struct cannot express: ``char`` arrays (bytes →
    str), arrays of wider integers (bytes → tuple) and dynamic ``__data_loc`` /
    ``__rel_loc`` arrays (u32 → their data)."""
    if not slots:
        return None

    def convert(buf: Any, rec: int, vals: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(vals)
        for idx, f in slots:
            v = out[idx]
            if f.kind == "array":
                out[idx] = _decode_array(v, f)
            else:
                off, length = v & 0xFFFF, v >> 16
                if f.kind == "rel_loc":
                    off += f.offset + f.size
                out[idx] = _decode_array(bytes(buf[rec + off : rec + off + length]), f)
        return tuple(out)

    return convert


@dataclass(frozen=True, slots=True)
class Decoder:
    """How to turn one event's record into values: ``unpack(buf, rec)`` returns
    ``(common_pid, *fields)``; ``convert`` (if any) fixes arrays and dynamic fields."""

    name: str
    unpack: Callable[[Any, int], tuple[Any, ...]]
    convert: Converter | None
    format: EventFormat
    size: int  # bytes of the record this decoder reads


def build_decoder(fmt: EventFormat) -> Decoder:
    """A precompiled ``struct`` unpacker for *fmt*, laid out from its ``format`` offsets."""
    pid = fmt.common_field("common_pid")
    wanted = [pid, *fmt.fields]
    order = sorted(range(len(wanted)), key=lambda i: wanted[i].offset)
    overlaps = any(wanted[order[k]].offset < wanted[order[k - 1]].offset + wanted[order[k - 1]].size
                   for k in range(1, len(order)))

    def code_of(f: FormatField) -> str:
        if f.kind in ("data_loc", "rel_loc"):
            return "I"
        if f.kind == "array":
            return f"{f.size}s"
        if f.type == "bool" and f.size == 1:
            return "?"
        return _INT_CODES.get((f.size, f.signed), f"{f.size}s")

    conv_slots = [(i, f) for i, f in enumerate(wanted) if _needs_conversion(f)]
    size = max(f.offset + f.size for f in wanted)
    unpack: Callable[[Any, int], tuple[Any, ...]]
    if not overlaps and order == list(range(len(wanted))):
        parts, cur = [], 0
        for f in wanted:
            if f.offset > cur:
                parts.append(f"{f.offset - cur}x")
            parts.append(code_of(f))
            cur = f.offset + f.size
        unpack = struct.Struct("=" + "".join(parts)).unpack_from
    else:
        # Fields out of order or overlapping (unions): one unpack per field.
        singles = [(struct.Struct("=" + code_of(f)).unpack_from, f.offset) for f in wanted]

        def unpack(buf: Any, rec: int) -> tuple[Any, ...]:
            return tuple(u(buf, rec + off)[0] for u, off in singles)

    return Decoder(fmt.name, unpack, _make_converter(conv_slots), fmt, size)


class TraceEvents(Sequence[TraceEvent]):
    """Decoded events in timestamp order, stored by column.

    A sequence of :class:`TraceEvent`: ``events[i]`` builds the event object on access, so
    hundreds of thousands of records cost a few flat lists, not as many objects. ``ts``,
    ``cpus`` and :meth:`names` give whole columns; slicing gives another ``TraceEvents``.
    """

    __slots__ = ("ts", "cpus", "_raw", "_kind", "_decoders")

    def __init__(self, ts: list[int], cpus: list[int], raw: list[tuple[Any, ...]],
                 kind: list[int], decoders: tuple[Decoder, ...]) -> None:
        if not len(ts) == len(cpus) == len(raw) == len(kind):
            raise ValueError("TraceEvents columns differ in length")
        self.ts = ts
        self.cpus = cpus
        self._raw = raw
        self._kind = kind
        self._decoders = decoders

    @classmethod
    def from_events(cls, events: Iterable[TraceEvent]) -> TraceEvents:
        """Columns from event objects (e.g. synthetic ones built with :meth:`TraceEvent.make`)."""
        ts: list[int] = []
        cpus: list[int] = []
        raw: list[tuple[Any, ...]] = []
        kind: list[int] = []
        decs: list[Decoder] = []
        index: dict[int, int] = {}
        for ev in events:
            k = index.get(id(ev.format))
            if k is None:
                k = index[id(ev.format)] = len(decs)
                decs.append(Decoder(ev.format.name, _no_unpack, None, ev.format, 0))
            ts.append(ev.ts)
            cpus.append(ev.cpu)
            raw.append(ev._raw)
            kind.append(k)
        return cls(ts, cpus, raw, kind, tuple(decs))

    @classmethod
    def concat(cls, parts: Sequence[TraceEvents]) -> TraceEvents:
        """The events of *parts* together, in timestamp order (stable: the order of *parts*
        breaks ties)."""
        kinds: list[Decoder] = []
        index: dict[int, int] = {}
        ts: list[int] = []
        cpus: list[int] = []
        raw: list[tuple[Any, ...]] = []
        kind: list[int] = []
        for part in parts:
            remap = []
            for d in part._decoders:
                k = index.get(id(d))
                if k is None:
                    k = index[id(d)] = len(kinds)
                    kinds.append(d)
                remap.append(k)
            ts += part.ts
            cpus += part.cpus
            raw += part._raw
            kind += part._kind if remap == list(range(len(remap))) else map(remap.__getitem__, part._kind)
        return _by_timestamp(ts, cpus, raw, kind, tuple(kinds))

    def __len__(self) -> int:
        return len(self.ts)

    @overload
    def __getitem__(self, i: int) -> TraceEvent: ...
    @overload
    def __getitem__(self, i: slice) -> TraceEvents: ...

    def __getitem__(self, i: int | slice) -> TraceEvent | TraceEvents:
        if isinstance(i, slice):
            return TraceEvents(self.ts[i], self.cpus[i], self._raw[i], self._kind[i], self._decoders)
        d = self._decoders[self._kind[i]]
        return TraceEvent(d.name, self.ts[i], self.cpus[i], self._raw[i], d.format)

    def __iter__(self) -> Iterator[TraceEvent]:
        Event = TraceEvent
        decs = [(d.name, d.format) for d in self._decoders]
        for ts, cpu, raw, k in zip(self.ts, self.cpus, self._raw, self._kind):
            name, fmt = decs[k]
            yield Event(name, ts, cpu, raw, fmt)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<TraceEvents: {len(self)} events>"

    @property
    def pids(self) -> list[int]:
        return [r[0] for r in self._raw]

    def names(self) -> list[str]:
        """The event name of every record."""
        names = [d.name for d in self._decoders]
        return [names[k] for k in self._kind]

    def counts(self) -> dict[str, int]:
        """How many records of each event name."""
        out: dict[str, int] = {}
        for k, n in collections.Counter(self._kind).items():
            name = self._decoders[k].name
            out[name] = out.get(name, 0) + n
        return out

    def select(self, indexes: Iterable[int]) -> TraceEvents:
        """The records at *indexes* (in the order given)."""
        idx = list(indexes)
        return TraceEvents([self.ts[i] for i in idx], [self.cpus[i] for i in idx],
                           [self._raw[i] for i in idx], [self._kind[i] for i in idx], self._decoders)


def _no_unpack(buf: Any, rec: int) -> tuple[Any, ...]:
    raise TraceError("this decoder only labels events built by hand")


class LostEventsError(TraceError):
    """The ring buffer dropped or overwrote events: the capture is incomplete."""


def decode_pages(pages: Iterable[tuple[int, bytes]], decoders: dict[int, Decoder],
                 layout: PageLayout = PageLayout(), *,
                 unknown: Callable[[int], Decoder | None] | None = None,
                 native: bool = True) -> TraceEvents:
    """Decode raw ring-buffer pages (``(cpu, page_bytes)`` as read from
    ``per_cpu/cpuN/trace_pipe_raw``, in read order per CPU) into events sorted by
    timestamp (stable, so equal timestamps keep per-CPU order).

    *decoders* maps an event ID (``common_type``) to its :func:`build_decoder` result;
    *unknown* is asked once per unknown ID (``None`` skips those records). A page with
    ``RB_MISSED_EVENTS`` raises :class:`LostEventsError`; a malformed page raises
    :class:`TraceError`.

    The event headers are walked in C (``hostkvm/_native/ringbuf.c``) when the native
    library is available and *native* is true, else in Python; the fields are decoded in
    Python either way. Both give the same events; pages the C walk refuses are decoded in
    Python, which says what is wrong with them.
    """
    if layout.data_offset % 4 or layout.timestamp_size != 8:
        raise TraceError(f"ring buffer: page layout {layout} is not one this decoder reads")
    pages = list(pages)
    # Hundreds of thousands of new objects would trigger the cyclic GC over and over (it
    # more than doubles the decode time); none of them can form a cycle.
    with _gc.paused():
        if native:
            from hostkvm import _native

            lib = _native.load()
            if lib is not None:
                events = _decode_pages_native(lib, pages, decoders, layout, unknown)
                if events is not None:
                    return events
        return _decode_pages(pages, decoders, layout, unknown)


def _unpack_convert(d: Decoder) -> Callable[[Any, int], tuple[Any, ...]]:
    unpack, convert = d.unpack, d.convert
    if convert is None:
        return unpack

    def both(buf: Any, rec: int) -> tuple[Any, ...]:
        return convert(buf, rec, unpack(buf, rec))

    return both


def _decode_pages_native(lib: Any, pages: list[tuple[int, bytes]], decoders: dict[int, Decoder],
                         layout: PageLayout, unknown: Callable[[int], Decoder | None] | None
                         ) -> TraceEvents | None:
    """The C walk of the pages, then the fields in Python; None if the walk (or a record's
    size) is not right, for :func:`_decode_pages` to report."""
    from hostkvm._native import HkRbLayout

    if layout.commit_size not in (4, 8):
        return None
    lens = array.array("I", [len(p) for _, p in pages])
    starts = array.array("Q", itertools.accumulate(lens, initial=0))
    cpus = array.array("I", [c for c, _ in pages])
    buf = b"".join(p for _, p in pages)
    lay = HkRbLayout(layout.timestamp_offset, layout.commit_offset, layout.commit_size, layout.data_offset)
    head = (buf, starts.buffer_info()[0], lens.buffer_info()[0], cpus.buffer_info()[0], len(pages),
            ctypes.byref(lay))
    n = lib.hk_rb_walk(*head, None, None, None, None, None)
    if n < 0:
        return None
    ts, types, recs, sizes, cpu_of = (array.array(c, bytes(8 * n if c == "Q" else 4 * n))
                                      for c in ("Q", "I", "Q", "I", "I"))
    if lib.hk_rb_walk(*head, *(a.buffer_info()[0] for a in (ts, types, recs, sizes, cpu_of))) != n:
        return None
    ts_col, type_col, rec_col, cpu_col = ts.tolist(), types.tolist(), recs.tolist(), cpu_of.tolist()

    kinds: list[Decoder] = list(decoders.values())
    kind_of = {t: k for k, t in enumerate(decoders)}
    missing = set()
    for t in sorted(set(type_col)):
        if t not in kind_of:
            d = unknown(t) if unknown is not None else None
            if d is None:
                missing.add(t)
            else:
                kind_of[t] = len(kinds)
                kinds.append(d)
    if missing:
        keep = [i for i, t in enumerate(type_col) if t not in missing]
        ts_col, type_col, rec_col, cpu_col = ([c[i] for i in keep] for c in (ts_col, type_col, rec_col, cpu_col))
        size_col = [sizes[i] for i in keep]
    else:
        size_col = sizes.tolist()
    # Every record must hold what its format says (else the Python walk reports it).
    smallest = min(size_col, default=0)
    for t in set(type_col):
        need = kinds[kind_of[t]].size
        if smallest < need and min(itertools.compress(size_col, map(operator.eq, type_col, itertools.repeat(t)))) < need:
            return None
    read = {t: _unpack_convert(kinds[k]) for t, k in kind_of.items()}
    raw_col = [read[t](buf, r) for t, r in zip(type_col, rec_col)]
    kind_col = list(map(kind_of.__getitem__, type_col))
    return _by_timestamp(ts_col, cpu_col, raw_col, kind_col, tuple(kinds))


def _by_timestamp(ts_col: list[int], cpu_col: list[int], raw_col: list[tuple[Any, ...]], kind_col: list[int],
                  kinds: tuple[Decoder, ...]) -> TraceEvents:
    """The decoded columns as :class:`TraceEvents`, merged by timestamp when the pages of
    several CPUs were decoded one after the other (stable: per-CPU order is kept)."""
    if ts_col != sorted(ts_col):
        order = sorted(range(len(ts_col)), key=ts_col.__getitem__)
        ts_col = [ts_col[i] for i in order]
        cpu_col = [cpu_col[i] for i in order]
        raw_col = [raw_col[i] for i in order]
        kind_col = [kind_col[i] for i in order]
    return TraceEvents(ts_col, cpu_col, raw_col, kind_col, kinds)


def _decode_pages(pages: Iterable[tuple[int, bytes]], decoders: dict[int, Decoder],
                  layout: PageLayout, unknown: Callable[[int], Decoder | None] | None
                  ) -> TraceEvents:
    ts_col: list[int] = []
    cpu_col: list[int] = []
    raw_col: list[tuple[Any, ...]] = []
    kind_col: list[int] = []
    add_ts, add_cpu, add_raw, add_kind = ts_col.append, cpu_col.append, raw_col.append, kind_col.append
    kinds: list[Decoder] = []
    ts_unpack = struct.Struct("=Q").unpack_from
    commit_unpack = struct.Struct("=Q" if layout.commit_size == 8 else "=I").unpack_from
    ts_off, commit_off, data_off = layout.timestamp_offset, layout.commit_offset, layout.data_offset
    table: dict[int, tuple[int, Any, Any, int, str]] = {}

    def entry(d: Decoder) -> tuple[int, Any, Any, int, str]:
        kinds.append(d)
        return (len(kinds) - 1, d.unpack, d.convert, d.size, d.name)

    for i, d in decoders.items():
        table[i] = entry(d)
    missing: set[int] = set()
    page_no = 0
    for cpu, page in pages:
        page_no += 1
        if len(page) < data_off or len(page) % 4:
            raise TraceError(f"ring buffer cpu{cpu}: page {page_no} has a bad size ({len(page)} bytes)")
        ts = ts_unpack(page, ts_off)[0]
        commit = commit_unpack(page, commit_off)[0] & 0xFFFFFFFF
        size = commit & _COMMIT_SIZE_MASK
        if commit & RB_MISSED_EVENTS:
            n = ""
            if commit & RB_MISSED_STORED and data_off + size + 8 <= len(page):
                n = f" ({struct.unpack_from('=Q', page, data_off + size)[0]} events)"
            raise LostEventsError(
                f"ring buffer cpu{cpu}: events were lost before page {page_no}{n} "
                "(RB_MISSED_EVENTS): raise buffer_size_kb or drain more often"
            )
        if data_off + size > len(page):
            raise TraceError(f"ring buffer cpu{cpu}: page {page_no} commits {size} bytes, "
                             f"more than its {len(page) - data_off}")
        w = memoryview(page).cast("I")
        k = data_off >> 2
        end = (data_off + size) >> 2
        while k < end:
            hdr = w[k]
            type_len = hdr & 31
            if type_len and type_len <= RINGBUF_TYPE_DATA_TYPE_LEN_MAX:
                rec = k + 1
                k = rec + type_len
            elif type_len == 0:
                if k + 1 >= end:
                    raise TraceError(f"ring buffer cpu{cpu}: page {page_no}: truncated event header")
                rec = k + 2
                k = rec + ((w[k + 1] - 4 + 3) >> 2)
            elif k + 1 >= end and type_len != RINGBUF_TYPE_PADDING:
                raise TraceError(f"ring buffer cpu{cpu}: page {page_no}: truncated time stamp")
            elif type_len == RINGBUF_TYPE_TIME_EXTEND:
                ts += (w[k + 1] << _TS_SHIFT) + (hdr >> 5)
                k += 2
                continue
            elif type_len == RINGBUF_TYPE_TIME_STAMP:
                # An absolute timestamp: the kernel keeps only its low 59 bits.
                ts = ((w[k + 1] << _TS_SHIFT) + (hdr >> 5)) | (ts & ~((1 << 59) - 1))
                k += 2
                continue
            else:  # RINGBUF_TYPE_PADDING
                if hdr >> 5 == 0 or k + 1 >= end:
                    break  # the null event: nothing more on this page
                k += 1 + ((w[k + 1] + 3) >> 2)  # a discarded event; its delta does not count
                continue
            if k > end or rec >= end:
                raise TraceError(f"ring buffer cpu{cpu}: page {page_no}: an event is empty or runs past the commit")
            ts += hdr >> 5
            etype = w[rec] & 0xFFFF
            ent = table.get(etype)
            if ent is None:
                if etype in missing:
                    continue
                d = unknown(etype) if unknown is not None else None
                if d is None:
                    missing.add(etype)
                    continue
                ent = table[etype] = entry(d)
            kind, unpack, convert, need, name = ent
            if (k - rec) << 2 < need:
                raise TraceError(f"ring buffer cpu{cpu}: page {page_no}: {name} record of "
                                 f"{(k - rec) << 2} bytes, its format needs {need}")
            add_ts(ts)
            add_cpu(cpu)
            add_kind(kind)
            if convert is None:
                add_raw(unpack(page, rec << 2))
            else:
                add_raw(convert(page, rec << 2, unpack(page, rec << 2)))
        w.release()
    return _by_timestamp(ts_col, cpu_col, raw_col, kind_col, tuple(kinds))


def _ts_key(e: TraceEvent) -> int:
    return e.ts



# ------------------------------------------------------------------------------------------
# the capture
# ------------------------------------------------------------------------------------------


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        raise TraceError(f"tracefs: cannot open {path}: {e.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise TraceError(f"tracefs: writing {value.strip()!r} to {path} failed: {e.strerror}") from None
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise TraceError(f"tracefs: cannot read {path}: {e.strerror}") from None


_STATS_LOST = ("overrun", "commit overrun", "dropped events")


def parse_cpu_stats(text: str) -> dict[str, int]:
    """Parse ``per_cpu/cpuN/stats`` (integer counters only)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and v.strip().isdigit():
            out[k.strip()] = int(v)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_INSTANCE_RE = re.compile(rf"^{re.escape(INSTANCE_PREFIX)}(\d+)-(\d+)$")


def remove_stale_instances(tracefs: Tracefs | str) -> list[str]:
    """Remove ``instances/hostkvm-<pid>-<n>`` left by processes that no longer exist.
    Returns the names removed. Instances of live processes (this one included) stay."""
    root = tracefs.path if isinstance(tracefs, Tracefs) else tracefs
    inst_dir = os.path.join(root, "instances")
    removed = []
    try:
        names = os.listdir(inst_dir)
    except OSError as e:
        raise TraceError(f"tracefs: cannot list {inst_dir}: {e.strerror}") from None
    for name in sorted(names):
        m = _INSTANCE_RE.match(name)
        if m is None or _pid_alive(int(m[1])):
            continue
        try:
            os.rmdir(os.path.join(inst_dir, name))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise TraceError(f"tracefs: cannot remove stale instance {name}: {e.strerror}") from None
        removed.append(name)
    return removed


_instance_counter = itertools.count()


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block ends, so setup and teardown run to completion."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _teardown(state: dict[str, Any]) -> None:
    """Close the readers and remove the instance. Shared by close(), the finalizer and the
    background removal that collect() starts; must not reference the capture."""
    remover = state.get("remover")
    if remover is not None and remover is not threading.current_thread():
        remover.join()  # collect() started the removal: wait for it, then check what is left
    stop = state.get("drain_stop")
    if stop is not None:
        stop.set()
    thread = state.get("drain_thread")
    if thread is not None and thread is not threading.current_thread():
        thread.join()
    for fd in state.pop("fds", {}).values():
        try:
            os.close(fd)
        except OSError:
            pass
    path = state.pop("path", None)
    if path is None:
        return
    try:
        _write(os.path.join(path, "tracing_on"), "0")
    except TraceError:
        pass
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                state["rmdir_error"] = e.strerror
                return
            threading.Event().wait(0.01)
    state["rmdir_error"] = "busy"


def _drain_loop(ref: weakref.ref[TraceCapture], stop: threading.Event, interval: float) -> None:
    """The background drain: holds only a weak reference, so a forgotten capture is still
    finalized (and its instance removed)."""
    while not stop.wait(interval):
        cap = ref()
        if cap is None or cap.path is None:
            return
        try:
            cap.drain()
            if cap.decode_in_background:
                cap._decode_drained()
        except BaseException as e:  # reported by collect()
            cap._drain_error = e
            return
        del cap


class TraceCapture:
    """A private tracefs instance that records *events* from the given threads.

    * ``events``: ``"system:name"`` strings (default :data:`DEFAULT_EVENTS`); those the
      running kernel lacks are listed in :attr:`absent`, not an error.
    * ``pids``: thread ids to trace (``set_event_pid``); default the calling thread, which
      is where ``KVM_RUN`` runs when it calls ``Vcpu.run()``. :meth:`add_pid` adds vCPU
      threads started later.
    * ``buffer_size_kb``: the instance's per-CPU ring buffer.
    * ``drain_interval``: seconds between background reads of the ring buffer into memory
      (``None``: read only in :meth:`drain` / :meth:`collect`; size the buffer for the
      whole run then).

    :attr:`decode_in_background` (default False): the background drain also decodes what it
    read, so that :meth:`collect` only decodes the last pages. Set it while the traced
    thread runs without the GIL (the native run loop does): in a thread that needs the GIL
    between ``KVM_RUN`` calls, the decoding would delay it.

    Entering creates the instance and starts tracing; :meth:`collect` stops it and returns
    the events; leaving (also on errors and Ctrl-C) removes the instance. Only files inside
    the instance are written.
    """

    def __init__(self, events: Iterable[str] = DEFAULT_EVENTS, *, pids: Iterable[int] | None = None,
                 buffer_size_kb: int = DEFAULT_BUFFER_SIZE_KB,
                 drain_interval: float | None = DEFAULT_DRAIN_INTERVAL,
                 tracefs: Tracefs | None = None, clock: str = "mono") -> None:
        self.requested: tuple[str, ...] = tuple(events)
        for ev in self.requested:
            if ev.count(":") != 1 or not all(ev.split(":")):
                raise TraceError(f"tracefs: event {ev!r} is not 'system:name'")
        self.pids: list[int] = list(pids) if pids is not None else [threading.get_native_id()]
        self.buffer_size_kb = buffer_size_kb
        self.drain_interval = drain_interval
        self.clock = clock
        self._tracefs = tracefs
        self.tracefs: Tracefs | None = None
        self.name: str | None = None
        self.path: str | None = None
        self.enabled: tuple[str, ...] = ()
        self.absent: tuple[str, ...] = ()
        self.formats: dict[int, EventFormat] = {}
        self.layout = PageLayout()
        self._decoders: dict[int, Decoder] = {}
        self._pages: list[tuple[int, bytes]] = []
        self._pages_lock = threading.Lock()
        self.decode_in_background = False
        self._decoded: list[TraceEvents] = []  # what the background drain decoded, in read order
        self._unknown: dict[int, Decoder | None] = {}
        self._drain_error: BaseException | None = None
        self._cpus: list[int] = []
        self._state: dict[str, Any] = {}
        self._finalizer: weakref.finalize[Any, Any] | None = None  # armed in start()
        self._stopped = False
        self._lost: dict[int, dict[str, int]] | None = None  # the counters collect() saw

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> TraceCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> TraceCapture:
        """Create and configure the instance, enable the events and start tracing."""
        if self.path is not None:
            raise TraceError(f"tracefs: capture {self.name} already started")
        with _sigint_deferred():
            self.tracefs = self._tracefs or find_tracefs()
            self._state.clear()
            self._finalizer = weakref.finalize(self, _teardown, self._state)
            try:
                self._create_instance()
                self._configure()
            except BaseException:
                _teardown(self._state)
                raise
        return self

    def _create_instance(self) -> None:
        assert self.tracefs is not None
        inst_dir = os.path.join(self.tracefs.path, "instances")
        for _ in range(1000):
            name = f"{INSTANCE_PREFIX}{os.getpid()}-{next(_instance_counter)}"
            path = os.path.join(inst_dir, name)
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            except OSError as e:
                raise TraceError(f"tracefs: cannot create instance {path}: {e.strerror}") from None
            self.name, self.path = name, path
            self._state["path"] = path
            return
        raise TraceError(f"tracefs: no free instance name under {inst_dir}")

    def _configure(self) -> None:
        assert self.path is not None and self.tracefs is not None
        p = self.path
        _write(os.path.join(p, "tracing_on"), "0")
        clocks = _read(os.path.join(p, "trace_clock"))
        if self.clock not in clocks.replace("[", " ").replace("]", " ").split():
            raise TraceError(f"tracefs: trace_clock {self.clock!r} not offered (have: {clocks.strip()})")
        _write(os.path.join(p, "trace_clock"), self.clock)
        _write(os.path.join(p, "buffer_size_kb"), str(self.buffer_size_kb))
        _write(os.path.join(p, "set_event_pid"), " ".join(str(t) for t in self.pids) + "\n")
        events_root = os.path.join(self.tracefs.path, "events")
        self.layout = parse_header_page(_read(os.path.join(events_root, "header_page")),
                                        _read(os.path.join(events_root, "header_event")))
        subbuf = os.path.join(p, "buffer_subbuf_size_kb")
        if os.path.exists(subbuf):
            size = int(_read(subbuf).split()[0]) * 1024
            self.layout = PageLayout(self.layout.timestamp_offset, self.layout.timestamp_size,
                                     self.layout.commit_offset, self.layout.commit_size,
                                     self.layout.data_offset, size - self.layout.data_offset)
        enabled, absent = [], []
        for ev in self.requested:
            system, name = ev.split(":")
            edir = os.path.join(p, "events", system, name)
            if not os.path.isdir(edir):
                absent.append(ev)
                continue
            fmt = parse_format(_read(os.path.join(edir, "format")), system)
            self.formats[fmt.id] = fmt
            self._decoders[fmt.id] = build_decoder(fmt)
            enabled.append(ev)
        self.enabled, self.absent = tuple(enabled), tuple(absent)
        self._cpus = sorted(int(d[3:]) for d in os.listdir(os.path.join(p, "per_cpu"))
                            if d.startswith("cpu") and d[3:].isdigit())
        self._state["fds"] = {}
        for ev in self.enabled:
            system, name = ev.split(":")
            _write(os.path.join(p, "events", system, name, "enable"), "1")
        if self.drain_interval is not None:
            stop = threading.Event()
            self._state["drain_stop"] = stop
            t = threading.Thread(target=_drain_loop, args=(weakref.ref(self), stop, self.drain_interval),
                                 name=f"{self.name}-drain", daemon=True)
            self._state["drain_thread"] = t
            t.start()
        _write(os.path.join(p, "tracing_on"), "1")

    def add_pid(self, tid: int) -> None:
        """Also trace thread *tid* (e.g. a vCPU thread: ``threading.get_native_id()`` in it)."""
        if self.path is None:
            self.pids.append(tid)
            return
        fd = os.open(os.path.join(self.path, "set_event_pid"), os.O_WRONLY)  # no O_TRUNC: appends
        try:
            os.write(fd, f"{tid}\n".encode())
        except OSError as e:
            raise TraceError(f"tracefs: adding pid {tid} to {self.name}/set_event_pid failed: "
                             f"{e.strerror}") from None
        finally:
            os.close(fd)
        self.pids.append(tid)

    def close(self) -> None:
        """Stop tracing, close the readers and remove the instance. Idempotent."""
        if self._finalizer is not None:
            with _sigint_deferred():
                self._finalizer()
        err = self._state.pop("rmdir_error", None)
        self.path = None
        if err is not None:
            raise TraceError(f"tracefs: instance {self.name} could not be removed: {err}")

    # --- reading ---------------------------------------------------------------------------
    def _fd(self, cpu: int) -> int | None:
        fds: dict[int, int] = self._state.setdefault("fds", {})
        fd = fds.get(cpu)
        if fd is None and self.path is not None:
            try:
                fd = os.open(os.path.join(self.path, "per_cpu", f"cpu{cpu}", "trace_pipe_raw"),
                             os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                return None
            fds[cpu] = fd
        return fd

    def drain(self) -> int:
        """Move every page now in the ring buffers into memory (non-blocking). Returns the
        number of pages read. Cheap: no decoding happens here."""
        if self.path is None or self._lost is not None:
            raise TraceError("tracefs: drain() on a capture that is not running (closed or collected)")
        page_size = self.layout.page_size
        got = []
        for cpu in self._cpus:
            fd = self._fd(cpu)
            if fd is None:
                continue
            while True:
                try:
                    b = os.read(fd, page_size)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.ENODEV, errno.EINTR):
                        break
                    raise TraceError(f"tracefs: reading {self.name}/per_cpu/cpu{cpu}/trace_pipe_raw "
                                     f"failed: {e.strerror}") from None
                if not b:
                    break
                got.append((cpu, b))
        with self._pages_lock:
            self._pages.extend(got)
        return len(got)

    def lost_events(self) -> dict[int, dict[str, int]]:
        """Per CPU, the non-zero ``overrun`` / ``commit overrun`` / ``dropped events`` counters
        (after :meth:`collect`: as it read them, before the instance went away)."""
        if self._lost is not None:
            return self._lost
        if self.path is None:
            raise TraceError("tracefs: lost_events() on a capture that is not running")
        lost: dict[int, dict[str, int]] = {}
        for cpu in self._cpus:
            st = parse_cpu_stats(_read(os.path.join(self.path, "per_cpu", f"cpu{cpu}", "stats")))
            bad = {k: st[k] for k in _STATS_LOST if st.get(k)}
            if bad:
                lost[cpu] = bad
        return lost

    def stop(self) -> None:
        """Stop recording (the instance's ``tracing_on``) and the background drain."""
        if self.path is None or self._lost is not None:
            raise TraceError("tracefs: stop() on a capture that is not running (closed or collected)")
        _write(os.path.join(self.path, "tracing_on"), "0")
        stop = self._state.get("drain_stop")
        if stop is not None:
            stop.set()
            self._state["drain_thread"].join()
        self._stopped = True

    def collect(self) -> TraceEvents:
        """Stop, read what is left, check that nothing was lost and decode everything into
        events sorted by timestamp. Raise :class:`LostEventsError` if events were lost.

        Once the pages and the lost-event counters are read the instance is of no more use:
        its removal (an ``rmdir`` that waits on the kernel for tens of ms) starts in the
        background while the pages are decoded; :meth:`close` waits for it."""
        if not self._stopped:
            self.stop()
        self.drain()
        drain_error = self._drain_error
        if drain_error is not None and not isinstance(drain_error, TraceError):
            raise TraceError(f"tracefs: background drain of {self.name} failed: "
                             f"{drain_error}") from drain_error
        lost = self._lost = self.lost_events()
        if "path" in self._state and "remover" not in self._state:
            remover = threading.Thread(target=_teardown, args=(self._state,), name=f"{self.name}-remove")
            self._state["remover"] = remover
            remover.start()
        if lost:
            desc = "; ".join(f"cpu{c}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                             for c, d in sorted(lost.items()))
            raise LostEventsError(
                f"ring buffer of {self.name} lost events ({desc}): raise buffer_size_kb "
                f"(now {self.buffer_size_kb}) or drain more often"
            )
        if drain_error is not None:
            raise drain_error  # the background decoding found a bad page (or lost events)
        self._decode_drained()
        parts, self._decoded = self._decoded, []
        return TraceEvents.concat(parts)

    def _decode_drained(self) -> None:
        """Decode the pages drained so far (the drain thread, or collect() after it stopped)."""
        with self._pages_lock:
            pages, self._pages = self._pages, []
        if pages:
            # Stable sort by CPU keeps each CPU's pages in read order.
            pages.sort(key=lambda cp: cp[0])
            self._decoded.append(decode_pages(pages, self._decoders, self.layout, unknown=self._unknown_decoder))

    def _unknown_decoder(self, ev_id: int) -> Decoder | None:
        """Find the format of an event ID nobody asked for (e.g. ``ftrace:print``); looked
        up once per capture."""
        if ev_id not in self._unknown:
            self._unknown[ev_id] = self._find_decoder(ev_id)
        return self._unknown[ev_id]

    def _find_decoder(self, ev_id: int) -> Decoder | None:
        assert self.tracefs is not None
        root = os.path.join(self.tracefs.path, "events")
        for system in sorted(os.listdir(root)):
            sdir = os.path.join(root, system)
            if not os.path.isdir(sdir):
                continue
            for name in os.listdir(sdir):
                idf = os.path.join(sdir, name, "id")
                try:
                    with open(idf) as f:
                        if int(f.read()) != ev_id:
                            continue
                except (OSError, ValueError):
                    continue
                fmt = parse_format(_read(os.path.join(sdir, name, "format")), system)
                self.formats[fmt.id] = fmt
                return build_decoder(fmt)
        return None


# ------------------------------------------------------------------------------------------
# per-exit attribution (pure)
# ------------------------------------------------------------------------------------------


class Attribution:
    """The result of :func:`attribute_to_windows`.

    ``per_window[k]`` is a :class:`TraceEvents` of the events inside window *k* (sliced on
    access); ``first[k]`` / ``end[k]`` (and ``bounds[k]``, the pair) its index range in
    ``events``; ``outside`` the events that fell in no window (sorted by ``ts``).
    """

    __slots__ = ("events", "first", "end", "outside")

    def __init__(self, events: TraceEvents, first: list[int], end: list[int], outside: TraceEvents) -> None:
        self.events = events
        self.first = first
        self.end = end
        self.outside = outside

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return list(zip(self.first, self.end))

    @property
    def per_window(self) -> _WindowSlices:
        return _WindowSlices(self.events, self.bounds)

    def counts(self) -> list[int]:
        """Number of events in each window."""
        return list(map(operator.sub, self.end, self.first))


class _WindowSlices(Sequence[TraceEvents]):
    __slots__ = ("_events", "_bounds")

    def __init__(self, events: TraceEvents, bounds: list[tuple[int, int]]) -> None:
        self._events = events
        self._bounds = bounds

    def __len__(self) -> int:
        return len(self._bounds)

    @overload
    def __getitem__(self, k: int) -> TraceEvents: ...
    @overload
    def __getitem__(self, k: slice) -> list[TraceEvents]: ...

    def __getitem__(self, k: int | slice) -> TraceEvents | list[TraceEvents]:
        if isinstance(k, slice):
            return [self._events[i:j] for i, j in self._bounds[k]]
        i, j = self._bounds[k]
        return self._events[i:j]


def _as_columns(events: Sequence[TraceEvent]) -> TraceEvents:
    return events if isinstance(events, TraceEvents) else TraceEvents.from_events(events)


def _cut_windows(ts: list[int], windows: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """``(first, end)``: window ``k`` holds ``ts[first[k]:end[k]]`` (start and end included).
    Raises ValueError if *ts* is not sorted or the windows are not in order."""
    from hostkvm import _native

    lib = _native.load()
    if lib is not None:
        try:
            aa = array.array("Q", ts)
            edges = array.array("Q", itertools.chain.from_iterable(windows))
        except OverflowError:  # a negative or 65-bit value: bisect copes
            pass
        else:
            if len(edges) != 2 * len(windows):
                raise ValueError("windows must be (start_ns, end_ns) pairs")
            cut = array.array("Q", bytes(len(edges) * 8))
            if lib.hk_cut_windows(aa.buffer_info()[0], len(aa), edges.buffer_info()[0], len(windows),
                                  cut.buffer_info()[0]) == 0:
                both = cut.tolist()
                return both[0::2], both[1::2]
            # Unsorted input: the checks below say where.
    starts = [w[0] for w in windows]
    ends = [w[1] for w in windows]
    if not all(map(operator.le, starts, ends)):
        i = next(k for k, (s, e) in enumerate(zip(starts, ends)) if e < s)
        raise ValueError(f"window {i} ends before it starts ({starts[i]} > {ends[i]})")
    if not all(map(operator.le, ends[:-1], starts[1:])):
        i = next(k for k in range(1, len(starts)) if starts[k] < ends[k - 1])
        raise ValueError(f"window {i} starts before window {i - 1} ends")
    if ts != sorted(ts):
        raise ValueError("events must be sorted by ts")
    return (list(map(functools.partial(bisect.bisect_left, ts), starts)),
            list(map(functools.partial(bisect.bisect_right, ts), ends)))


def attribute_to_windows(events: Sequence[TraceEvent], windows: Sequence[tuple[int, int]],
                         *, pid: int | None = None) -> Attribution:
    """Give each ``(start_ns, end_ns)`` window (e.g. ``time.monotonic_ns()`` at ``KVM_RUN``
    entry and return, one per round trip) the events with ``start <= ts <= end``.

    *events* must be sorted by ``ts`` (as :meth:`TraceCapture.collect` returns them);
    *windows* must be in order and must not overlap (one vCPU thread). With *pid*, only
    that thread's events are attributed; the others go to ``outside``. The timestamps are
    cut at every window edge in one merge walk in C (``hk_cut_windows``; ``bisect`` without
    the native library).
    """
    cols = _as_columns(events)
    others: list[int] = []
    if pid is not None:
        pids = cols.pids
        if pids.count(pid) != len(pids):
            others = [i for i, p in enumerate(pids) if p != pid]
            cols, all_cols = cols.select(i for i, p in enumerate(pids) if p == pid), cols
    ts = cols.ts
    first, end = _cut_windows(ts, windows)
    out_idx: list[int] = []
    if sum(map(operator.sub, end, first)) != len(ts):
        prev = 0
        for i, j in zip(first, end):
            if i > prev:
                out_idx.extend(range(prev, i))
            prev = j
        out_idx.extend(range(prev, len(ts)))
    outside = cols.select(out_idx)
    if others:
        extra = all_cols.select(others)
        merged = sorted(range(len(outside) + len(extra)),
                        key=(outside.ts + extra.ts).__getitem__)
        both = TraceEvents.from_events([*outside, *extra])
        outside = both.select(merged)
    return Attribution(cols, first, end, outside)


def split_on_userspace_exit(events: Sequence[TraceEvent], *, pid: int | None = None,
                            delimiter: str = "kvm_userspace_exit"
                            ) -> tuple[list[TraceEvents], TraceEvents]:
    """Cut a thread's events into round trips: each group ends with (and includes) a
    *delimiter* event (``kvm_userspace_exit``: ``x86.c:kvm_arch_vcpu_ioctl_run()`` going
    back to userspace). Returns ``(groups, trailing)``, *trailing* being what followed the
    last delimiter. With *pid*, only that thread's events are used; without, the events
    must come from one vCPU thread.
    """
    cols = _as_columns(events)
    if pid is not None:
        cols = cols.select(i for i, p in enumerate(cols.pids) if p == pid)
    cuts = [i + 1 for i, name in enumerate(cols.names()) if name == delimiter]
    groups = [cols[i:j] for i, j in zip([0, *cuts], cuts)]
    return groups, cols[cuts[-1] if cuts else 0 :]


__all__ = [
    "DEFAULT_BUFFER_SIZE_KB",
    "DEFAULT_DRAIN_INTERVAL",
    "DEFAULT_EVENTS",
    "PAGETABLE_WALK_EVENTS",
    "Attribution",
    "Decoder",
    "EventFormat",
    "FormatField",
    "LostEventsError",
    "PageLayout",
    "TraceCapture",
    "TraceEvent",
    "TraceEvents",
    "Tracefs",
    "attribute_to_windows",
    "build_decoder",
    "decode_pages",
    "find_tracefs",
    "parse_cpu_stats",
    "parse_format",
    "parse_header_page",
    "remove_stale_instances",
    "split_on_userspace_exit",
]
