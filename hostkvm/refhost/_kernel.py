"""The guest kernel image: unpack ``vmlinux`` from a ``bzImage`` for a direct PVH boot.

QEMU can start an ELF ``vmlinux`` that carries a Xen PVH entry note
(``XEN_ELFNOTE_PHYS32_ENTRY``) straight in 32-bit protected mode, skipping the
firmware's real-mode loader and the kernel's own decompressor: under TCG that
saves about three seconds per boot. Pure functions over bytes.
"""

from __future__ import annotations

import struct

from hostkvm.errors import RefHostError

XEN_ELFNOTE_PHYS32_ENTRY = 18
_PT_NOTE = 4


def bzimage_payload(bzimage: bytes) -> bytes:
    """The decompressed ``vmlinux`` inside a ``bzImage`` (gzip or xz payloads).

    Reads ``setup_sects``, ``payload_offset`` and ``payload_length`` from the
    boot protocol's setup header (``Documentation/arch/x86/boot.rst``).
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise RefHostError("vmlinuz: not a bzImage (no HdrS setup header)")
    version = struct.unpack_from("<H", bzimage, 0x206)[0]
    if version < 0x208:
        raise RefHostError(f"vmlinuz: boot protocol {version >> 8}.{version & 0xff} has no payload fields")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    import gzip
    import lzma

    if payload[:2] == b"\x1f\x8b":
        return gzip.decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        # The kernel's xz stream may carry trailing size bytes; read up to the stream's end.
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    raise RefHostError(f"vmlinuz: payload compression {payload[:6].hex()} not supported (gzip or xz)")


def elf_notes(elf: bytes) -> list[tuple[str, int, bytes]]:
    """``(owner, type, desc)`` of every note in the PT_NOTE segments of a 64-bit little-endian ELF."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise RefHostError("vmlinux: not a 64-bit little-endian ELF file")
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    notes = []
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            pos += 12
            name = elf[pos : pos + namesz].rstrip(b"\0").decode(errors="replace")
            pos += (namesz + 3) & ~3
            desc = elf[pos : pos + descsz]
            pos += (descsz + 3) & ~3
            notes.append((name, ntype, desc))
    return notes


def has_pvh_entry(elf: bytes) -> bool:
    """Whether the kernel ELF can be booted directly (Xen PVH entry point note)."""
    return any(owner == "Xen" and t == XEN_ELFNOTE_PHYS32_ENTRY for owner, t, _ in elf_notes(elf))
