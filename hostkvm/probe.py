"""``hostkvm probe``: what this host's KVM is and offers.

Reads sysfs, procfs and ``/dev/kvm``; changes nothing (tracefs is looked at, never mounted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from hostkvm._uapi.constants import KvmCap
from hostkvm.system import X86_FEATURE_GBPAGES, Kvm

SYS_MODULE = Path("/sys/module")
TRACEFS_MOUNTPOINTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _yes(value: str | None) -> bool:
    return value is not None and value.upper() in ("Y", "1", "YES", "TRUE")


def module_params(module: str, root: Path = SYS_MODULE) -> dict[str, str] | None:
    """A (possibly built-in) module's parameters, or None if the module is not present."""
    mod = root / module
    if not mod.is_dir():
        return None
    params = {}
    pdir = mod / "parameters"
    if pdir.is_dir():
        for p in sorted(pdir.iterdir()):
            v = _read(p)
            if v is not None:
                params[p.name] = v
    return params


def cpu_flags(cpuinfo: str) -> set[str]:
    m = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    return set(m.group(1).split()) if m else set()


def host_maxphyaddr(cpuinfo: str) -> int | None:
    m = re.search(r"^address sizes\s*:\s*(\d+) bits physical", cpuinfo, re.M)
    return int(m.group(1)) if m else None


def detect_backend(modules: dict[str, dict[str, str] | None], flags: set[str]) -> str:
    """``pvm``, ``vmx``, ``svm`` or ``other``: the loaded vendor module first, CPU flags second."""
    if modules.get("kvm_pvm") is not None:
        return "pvm"
    if modules.get("kvm_intel") is not None:
        return "vmx"
    if modules.get("kvm_amd") is not None:
        return "svm"
    if "vmx" in flags:
        return "vmx"
    if "svm" in flags:
        return "svm"
    return "other"


def detect_paging(backend: str, modules: dict[str, dict[str, str] | None]) -> str:
    """``ept``/``npt`` when the vendor module has two-dimensional paging on, else ``shadow``."""
    if backend == "vmx" and _yes((modules.get("kvm_intel") or {}).get("ept")):
        return "ept"
    if backend == "svm" and _yes((modules.get("kvm_amd") or {}).get("npt")):
        return "npt"
    return "shadow"


def tracefs_state() -> dict[str, Any]:
    """Where tracefs is mounted, whether it could be mounted, and whether kvm events exist."""
    mounts = _read(Path("/proc/mounts")) or ""
    path = None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "tracefs":
            path = parts[1]
            break
    supported = "tracefs" in (_read(Path("/proc/filesystems")) or "")
    state: dict[str, Any] = {
        "mounted": path is not None,
        "path": path,
        "mountable": supported and os.geteuid() == 0
        and Path(TRACEFS_MOUNTPOINTS[0]).is_dir(),
        "events": None,
    }
    if path is not None:
        ev = Path(path) / "events"
        state["events"] = {sub: (ev / sub).is_dir() for sub in ("kvm", "kvmmmu")}
    return state


def probe(kvm: Kvm | None = None) -> dict[str, Any]:
    """Describe this host's KVM. Raises KvmUnavailableError when /dev/kvm cannot be used."""
    own = kvm is None
    kvm = Kvm() if kvm is None else kvm
    try:
        cpuinfo = _read(Path("/proc/cpuinfo")) or ""
        flags = cpu_flags(cpuinfo)
        modules = {m: module_params(m) for m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")}
        kvm_params = modules["kvm"] or {}
        backend = detect_backend(modules, flags)
        caps = {c.name: kvm.check_extension(c) for c in KvmCap}
        paging = detect_paging(backend, modules)
        vendor = {m: p for m, p in modules.items() if m != "kvm" and p is not None}
        return {
            "kernel": os.uname().release,
            "api_version": kvm.api_version,
            "backend": backend,
            "paging": paging,
            # kvm.tdp_mmu is the admin's wish; the TDP MMU runs only with EPT/NPT
            # (mmu.c: tdp_mmu_enabled = tdp_mmu_allowed && tdp_enabled).
            "tdp_mmu": _yes(kvm_params.get("tdp_mmu")) and paging != "shadow",
            "mmio_caching": _yes(kvm_params.get("mmio_caching")),
            "maxphyaddr": host_maxphyaddr(cpuinfo),
            "smm": caps["KVM_CAP_X86_SMM"] > 0 and caps["KVM_CAP_MULTI_ADDRESS_SPACE"] > 1,
            "l1tf": _read(Path("/sys/devices/system/cpu/vulnerabilities/l1tf")),
            "sme": "sme" in flags,
            "guest_pdpe1gb": kvm.cpuid_has(X86_FEATURE_GBPAGES),
            "tracefs": tracefs_state(),
            "caps": caps,
            "kvm_params": kvm_params,
            "vendor_params": vendor,
        }
    finally:
        if own:
            kvm.close()


def format_probe(p: dict[str, Any]) -> str:
    t = p["tracefs"]
    if t["mounted"]:
        ev = t["events"] or {}
        trace = f"mounted at {t['path']}; kvm events {'yes' if ev.get('kvm') else 'no'}, " \
                f"kvmmmu events {'yes' if ev.get('kvmmmu') else 'no'}"
    else:
        trace = "not mounted (" + ("mountable as root" if t["mountable"] else "not mountable here") + ")"
    rows = [
        ("kernel", p["kernel"]),
        ("api_version", p["api_version"]),
        ("backend", p["backend"]),
        ("paging", p["paging"]),
        ("tdp_mmu", p["tdp_mmu"]),
        ("mmio_caching", p["mmio_caching"]),
        ("maxphyaddr", p["maxphyaddr"]),
        ("smm", p["smm"]),
        ("l1tf", p["l1tf"]),
        ("guest 1G pages", p["guest_pdpe1gb"]),
        ("tracefs", trace),
    ]
    out = [f"{k:<15} {v}" for k, v in rows]
    out.append("caps")
    out += [f"  {k:<36} {v}" for k, v in p["caps"].items()]
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    p = probe()
    print(json.dumps(p, indent=2) if args.json else format_probe(p))
    return 0
