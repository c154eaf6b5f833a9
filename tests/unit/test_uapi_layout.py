"""Check every ctypes mirror in hostkvm._uapi against the machine's <linux/kvm.h>:
size of every struct, offset and size of every field, by compiling a C probe with gcc."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostkvm._uapi.cpuid import kvm_cpuid2, kvm_cpuid_entry2
from hostkvm._uapi.ioctls import KvmIoctl
from hostkvm._uapi.structs import ALL_STRUCTS, kvm_run

STRUCTS = dict(ALL_STRUCTS, kvm_cpuid2=kvm_cpuid2, kvm_cpuid_entry2=kvm_cpuid_entry2)


def _fields(cls: type[ctypes.Structure | ctypes.Union], prefix: str, base: int) -> Iterator[tuple[str, int, int]]:
    """(C member path, offset, size) for every field, recursing into nested structs/unions.
    ctypes' named union `u` in kvm_run is the kernel's anonymous union: it has no C name."""
    for name, ftype in cls._fields_:  # type: ignore[misc]
        desc = getattr(cls, name)
        off = base + desc.offset
        cname = prefix if (cls is kvm_run and name == "u") else f"{prefix}{name}"
        if isinstance(ftype, type) and issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            if not (cls is kvm_run and name == "u"):
                yield cname, off, desc.size
            yield from _fields(ftype, cname + ("." if cname else ""), off)
        else:
            yield cname, off, desc.size


def _checks() -> list[tuple[str, str, int, int]]:
    out = []
    for sname, cls in STRUCTS.items():
        out.append((sname, "", 0, ctypes.sizeof(cls)))
        out.extend((sname, path, off, size) for path, off, size in _fields(cls, "", 0))
    return out


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[int, int]]:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to check the uapi layouts (apt-get install gcc linux-libc-dev)"
    assert Path("/usr/include/linux/kvm.h").exists(), "no <linux/kvm.h>: apt-get install linux-libc-dev"
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for sname, path, _, _ in _checks():
        if path:
            lines.append(
                f'printf("{sname} {path} %zu %zu\\n", offsetof(struct {sname}, {path}), '
                f"sizeof(((struct {sname} *)0)->{path}));"
            )
        else:
            lines.append(f'printf("{sname} - 0 %zu\\n", sizeof(struct {sname}));')
    for req in KvmIoctl:
        lines.append(f'printf("ioctl {req.name} %lu 0\\n", (unsigned long){req.name});')
    lines += ["return 0; }"]
    d = tmp_path_factory.mktemp("layout")
    src, exe = d / "probe.c", d / "probe"
    src.write_text("\n".join(lines) + "\n")
    cc = subprocess.run([gcc, "-O0", "-o", str(exe), str(src)], capture_output=True, text=True)
    assert cc.returncode == 0, f"layout probe did not compile:\n{cc.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        s, p, a, b = line.split()
        table[(s, "" if p == "-" else p)] = (int(a), int(b))
    return table


@pytest.mark.parametrize(("sname", "path", "off", "size"), _checks(), ids=lambda v: str(v))
def test_layout_matches_kernel_header(c_layout: dict[tuple[str, str], tuple[int, int]],
                                      sname: str, path: str, off: int, size: int) -> None:
    c_off, c_size = c_layout[(sname, path)]
    assert (off, size) == (c_off, c_size), f"struct {sname} {path or '(sizeof)'}: ctypes {off}/{size}, C {c_off}/{c_size}"


@pytest.mark.parametrize("req", list(KvmIoctl), ids=lambda r: r.name)
def test_ioctl_numbers_match_kernel_header(c_layout: dict[tuple[str, str], tuple[int, int]], req: KvmIoctl) -> None:
    assert int(req) == c_layout[("ioctl", req.name)][0]
