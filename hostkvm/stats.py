"""KVM binary statistics (``KVM_GET_STATS_FD``), read with the ABI checks of the kernel's
``kvm_binary_stats_test``.

A :class:`StatsFd` parses the header and descriptors once (they are immutable) and then
re-reads the data block with one ``pread`` per snapshot.
"""

from __future__ import annotations

import ctypes
import os
import struct
import weakref
from dataclasses import dataclass

from hostkvm._uapi.constants import (
    KVM_STATS_BASE_MASK,
    KVM_STATS_BASE_SHIFT,
    KVM_STATS_TYPE_MASK,
    KVM_STATS_TYPE_SHIFT,
    KVM_STATS_UNIT_MASK,
    KVM_STATS_UNIT_SHIFT,
    KvmStatsBase,
    KvmStatsType,
    KvmStatsUnit,
)
from hostkvm._uapi.structs import kvm_stats_desc, kvm_stats_header
from hostkvm.errors import KvmAbiError

_HEADER_SIZE = ctypes.sizeof(kvm_stats_header)
_DESC_SIZE = ctypes.sizeof(kvm_stats_desc)


@dataclass(frozen=True, slots=True)
class StatDesc:
    """One ``kvm_stats_desc``: name, kind and where its u64 values live in the data block."""

    name: str
    type: KvmStatsType
    unit: KvmStatsUnit
    base: KvmStatsBase
    exponent: int
    size: int
    offset: int
    bucket_size: int

    @property
    def is_histogram(self) -> bool:
        return self.type in (KvmStatsType.KVM_STATS_TYPE_LINEAR_HIST, KvmStatsType.KVM_STATS_TYPE_LOG_HIST)


StatValue = int | tuple[int, ...]
Stats = dict[str, StatValue]


def _cstr(raw: bytes, what: str) -> str:
    nul = raw.find(b"\0")
    if nul < 0:
        raise KvmAbiError(f"KVM_GET_STATS_FD: {what} is not NUL-terminated within name_size")
    return raw[:nul].decode("ascii", "replace")


def parse_stats_layout(blob: bytes) -> tuple[str, list[StatDesc], int, int]:
    """Parse header, id and descriptors from the start of a stats fd.

    Returns ``(id, descriptors, data_offset, data_size)``. Raises KvmAbiError for any rule
    the ABI (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD") does not allow.
    """
    if len(blob) < _HEADER_SIZE:
        raise KvmAbiError(f"KVM_GET_STATS_FD: short header ({len(blob)} bytes)")
    hdr = kvm_stats_header.from_buffer_copy(blob, 0)
    if hdr.flags != 0:
        raise KvmAbiError(f"KVM_GET_STATS_FD: header flags {hdr.flags:#x}, expected 0")
    if hdr.name_size == 0 or hdr.num_desc == 0:
        raise KvmAbiError(f"KVM_GET_STATS_FD: name_size {hdr.name_size}, num_desc {hdr.num_desc}")
    for what, off in (("id_offset", hdr.id_offset), ("desc_offset", hdr.desc_offset),
                      ("data_offset", hdr.data_offset)):
        if off % 8 or off < _HEADER_SIZE:
            raise KvmAbiError(f"KVM_GET_STATS_FD: {what} {off:#x} not 8-byte aligned past the header")
    desc_stride = _DESC_SIZE + hdr.name_size
    desc_end = hdr.desc_offset + desc_stride * hdr.num_desc
    if hdr.id_offset + hdr.name_size > hdr.desc_offset or desc_end > hdr.data_offset:
        raise KvmAbiError(
            f"KVM_GET_STATS_FD: id/descriptor/data blocks overlap (id {hdr.id_offset:#x}, "
            f"desc {hdr.desc_offset:#x}..{desc_end:#x}, data {hdr.data_offset:#x})"
        )
    if len(blob) < desc_end:
        raise KvmAbiError(f"KVM_GET_STATS_FD: descriptors truncated ({len(blob)} < {desc_end})")
    ident = _cstr(blob[hdr.id_offset : hdr.id_offset + hdr.name_size], "id string")
    if not ident.startswith("kvm-"):
        raise KvmAbiError(f"KVM_GET_STATS_FD: id string {ident!r} does not start with 'kvm-'")

    descs: list[StatDesc] = []
    data_size = 0
    for i in range(hdr.num_desc):
        off = hdr.desc_offset + i * desc_stride
        d = kvm_stats_desc.from_buffer_copy(blob, off)
        name = _cstr(blob[off + _DESC_SIZE : off + desc_stride], f"descriptor {i} name")
        if not name:
            raise KvmAbiError(f"KVM_GET_STATS_FD: descriptor {i} has an empty name")
        t = (d.flags & KVM_STATS_TYPE_MASK) >> KVM_STATS_TYPE_SHIFT
        u = (d.flags & KVM_STATS_UNIT_MASK) >> KVM_STATS_UNIT_SHIFT
        b = (d.flags & KVM_STATS_BASE_MASK) >> KVM_STATS_BASE_SHIFT
        try:
            st, su, sb = KvmStatsType(t), KvmStatsUnit(u), KvmStatsBase(b)
        except ValueError:
            raise KvmAbiError(f"KVM_GET_STATS_FD: {name}: bad flags {d.flags:#x}") from None
        if su in (KvmStatsUnit.KVM_STATS_UNIT_NONE, KvmStatsUnit.KVM_STATS_UNIT_BOOLEAN):
            if d.exponent != 0:
                raise KvmAbiError(f"KVM_GET_STATS_FD: {name}: unitless stat with exponent {d.exponent}")
        if su == KvmStatsUnit.KVM_STATS_UNIT_SECONDS and d.exponent > 0:
            raise KvmAbiError(f"KVM_GET_STATS_FD: {name}: seconds with positive exponent {d.exponent}")
        if d.size == 0:
            raise KvmAbiError(f"KVM_GET_STATS_FD: {name}: size 0")
        is_hist = st in (KvmStatsType.KVM_STATS_TYPE_LINEAR_HIST, KvmStatsType.KVM_STATS_TYPE_LOG_HIST)
        if not is_hist and d.size != 1:
            raise KvmAbiError(f"KVM_GET_STATS_FD: {name}: non-histogram with size {d.size}")
        if st == KvmStatsType.KVM_STATS_TYPE_LINEAR_HIST and d.bucket_size == 0:
            raise KvmAbiError(f"KVM_GET_STATS_FD: {name}: linear histogram with bucket_size 0")
        if st != KvmStatsType.KVM_STATS_TYPE_LINEAR_HIST and d.bucket_size != 0:
            raise KvmAbiError(f"KVM_GET_STATS_FD: {name}: bucket_size {d.bucket_size} on a non-linear stat")
        if d.offset % 8:
            raise KvmAbiError(f"KVM_GET_STATS_FD: {name}: data offset {d.offset:#x} not 8-byte aligned")
        descs.append(StatDesc(name, st, su, sb, d.exponent, d.size, d.offset, d.bucket_size))
        data_size = max(data_size, d.offset + 8 * d.size)
    names = [d.name for d in descs]
    if len(set(names)) != len(names):
        raise KvmAbiError("KVM_GET_STATS_FD: duplicate stat names")
    return ident, descs, hdr.data_offset, data_size


def _close_fd(fd: int) -> None:
    os.close(fd)


class StatsFd:
    """A VM or vCPU binary stats file descriptor (takes ownership of *fd*)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._finalizer = weakref.finalize(self, _close_fd, fd)
        try:
            head = os.pread(fd, _HEADER_SIZE, 0)
            hdr = kvm_stats_header.from_buffer_copy(head) if len(head) == _HEADER_SIZE else None
            if hdr is None:
                raise KvmAbiError("KVM_GET_STATS_FD: short header")
            layout_end = hdr.data_offset if hdr.data_offset > _HEADER_SIZE else 1 << 16
            blob = os.pread(fd, layout_end, 0)
            self.id, self.descriptors, self._data_offset, self._data_size = parse_stats_layout(blob)
        except BaseException:
            self.close()
            raise
        self._by_name = {d.name: d for d in self.descriptors}
        self._words = self._data_size // 8
        self._unpack = struct.Struct(f"<{self._words}Q").unpack_from

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.descriptors]

    def descriptor(self, name: str) -> StatDesc:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no stat named {name!r} in {self.id} (have: {', '.join(self.names)})") from None

    def read_raw(self) -> tuple[int, ...]:
        """The whole data block as u64 words (one ``pread``)."""
        buf = os.pread(self.fd, self._data_size, self._data_offset)
        if len(buf) != self._data_size:
            raise KvmAbiError(f"KVM_GET_STATS_FD: short data read ({len(buf)} of {self._data_size})")
        return self._unpack(buf)

    def read(self) -> Stats:
        """Every stat by kernel name: an int, or a tuple for histograms."""
        words = self.read_raw()
        out: Stats = {}
        for d in self.descriptors:
            i = d.offset // 8
            out[d.name] = words[i : i + d.size] if d.is_histogram else words[i]
        return out

    def get(self, name: str) -> StatValue:
        d = self.descriptor(name)
        words = self.read_raw()
        i = d.offset // 8
        return words[i : i + d.size] if d.is_histogram else words[i]

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> StatsFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stats_delta(before: Stats, after: Stats, *, nonzero: bool = True) -> dict[str, int]:
    """``after - before`` for every scalar stat (histograms and INSTANT/PEAK values are
    differenced too: a peak's delta says how much it grew). With *nonzero*, drop zeros."""
    out: dict[str, int] = {}
    for name, a in after.items():
        b = before.get(name)
        if isinstance(a, tuple) or isinstance(b, tuple) or b is None:
            continue
        d = a - b
        if d or not nonzero:
            out[name] = d
    return out
