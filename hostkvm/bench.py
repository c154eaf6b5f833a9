"""``hostkvm bench``: what the harness costs, measured side by side on this host.

Every figure is taken over several repetitions (min / median / max) and, where it is a
comparison, the two sides are interleaved within one repetition (their order alternating
between repetitions), so that a noisy, shared host slows both alike:

1. **exit round trip**: :func:`hostkvm.harness.run_machine` (as ``hostkvm run`` uses it,
   no trace) against a minimal C ``KVM_RUN`` loop (``scripts/kvm_run_loop.c``, compiled
   with ``gcc`` here) on the same 100,000-exit MMIO payload, at CPL0 and at CPL3;
2. **observation overhead**: the same run with the trace capture and the timing
   summaries on (what ``hostkvm run --trace --timing`` adds), against off; the run's
   stats delta is read on both sides; lost events are counted;
3. **mirror throughput** (and, from ``hostkvm compare``, the share of its time spent in
   the mirror and the comparison);
4. **VM setup**: ``Machine(image)`` + ``close()``;
5. **whole process**: ``hostkvm run`` as a process against the C program as a process;
6. **suite**: wall time of ``hostkvm compare``.

The C side loads a guest image file that :func:`write_image` writes from a
:class:`~hostkvm.harness.Machine`: the memslots and their contents, and the registers
read back from the vCPU the harness set up (so both sides start from the same state).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostkvm.errors import HostKvmError

IMAGE_MAGIC = b"HKVMIMG1"
C_LOOP_SOURCE = "kvm_run_loop.c"
BENCH_PAYLOADS = {0: "bench_mmio_store_100k_cpl0", 3: "bench_mmio_store_100k_cpl3"}
BENCH_EXITS = 100_000

_SLOT = struct.Struct("<IIQQQ")  # slot, flags, gpa, size, len
_TAIL = struct.Struct("<HH8s")  # ucall port, read length, read value


class BenchError(HostKvmError):
    """The benchmark could not be set up or one of its runs went wrong."""


# --- the guest image file of the C loop --------------------------------------------------------


def image_bytes(machine: Any) -> bytes:
    """The guest image of *machine* (a :class:`~hostkvm.harness.Machine`) in the format
    ``scripts/kvm_run_loop.c`` reads: memslots with their contents (trailing zeros
    trimmed), then ``struct kvm_regs`` and ``struct kvm_sregs`` as its first vCPU holds
    them now (``KVM_GET_REGS``/``KVM_GET_SREGS``), the ucall port and the read value."""
    vm = machine.vm
    if vm is None or not machine.vcpus:
        raise BenchError("guest image: the machine has no VM or no vCPU (closed?)")
    out = [IMAGE_MAGIC, struct.pack("<I", len(vm.memslots))]
    for ms in sorted(vm.memslots.values(), key=lambda m: m.slot):
        data = ms.memory.read(ms.gpa, ms.size).rstrip(b"\0")
        out.append(_SLOT.pack(ms.slot, int(ms.flags), ms.gpa, ms.size, len(data)))
        out.append(data)
    vcpu = machine.vcpus[0]
    out.append(bytes(vcpu.get_regs()))
    out.append(bytes(vcpu.get_sregs()))
    out.append(_TAIL.pack(machine.image.ucall_port, 8, machine.image.payload.read_data(8)))
    return b"".join(out)


def write_image(machine: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`image_bytes` of *machine* to *path*; return the path."""
    p = Path(path)
    p.write_bytes(image_bytes(machine))
    return p


def parse_image(blob: bytes) -> dict[str, Any]:
    """Read an image back (for tests): slots, regs and sregs bytes, ucall port, read value."""
    from hostkvm._uapi.structs import kvm_regs, kvm_sregs

    if blob[:8] != IMAGE_MAGIC:
        raise BenchError("guest image: bad magic")
    (n,) = struct.unpack_from("<I", blob, 8)
    off = 12
    slots = []
    for _ in range(n):
        slot, flags, gpa, size, length = _SLOT.unpack_from(blob, off)
        off += _SLOT.size
        slots.append({"slot": slot, "flags": flags, "gpa": gpa, "size": size,
                      "data": blob[off : off + length]})
        off += length
    regs = kvm_regs.from_buffer_copy(blob, off)
    off += len(bytes(regs))
    sregs = kvm_sregs.from_buffer_copy(blob, off)
    off += len(bytes(sregs))
    port, read_len, value = _TAIL.unpack_from(blob, off)
    if off + _TAIL.size != len(blob):
        raise BenchError(f"guest image: {len(blob) - off - _TAIL.size} bytes after the end")
    return {"slots": slots, "regs": regs, "sregs": sregs, "ucall_port": port,
            "read_len": read_len, "read_value": value}


# --- the C loop ----------------------------------------------------------------------------------


def c_loop_source() -> Path:
    """``scripts/kvm_run_loop.c`` of this checkout."""
    p = Path(__file__).resolve().parent.parent / "scripts" / C_LOOP_SOURCE
    if not p.is_file():
        raise BenchError(f"{C_LOOP_SOURCE}: not found at {p}; `hostkvm bench` runs from a source "
                         "checkout (the C reference loop lives in scripts/)")
    return p


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hostkvm" / "bench"


def build_c_loop(source: Path | None = None, *, cc: str | None = None) -> Path:
    """Compile the C loop with ``gcc -O2`` into the user's cache folder (a temporary one if
    that is not writable), once per source text; return the executable."""
    src = source or c_loop_source()
    cc = cc or os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise BenchError(f"{cc}: no C compiler found; `hostkvm bench` compiles {C_LOOP_SOURCE} "
                         "(install gcc or set CC)")
    text = src.read_bytes()
    tag = hashlib.sha256(text + cc.encode()).hexdigest()[:16]
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"hostkvm-bench-{os.getuid()}"):
        exe = folder / f"kvm_run_loop-{tag}"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        tmp = folder / f".kvm_run_loop-{tag}-{os.getpid()}"
        r = subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"{cc}: compiling {src} failed (status {r.returncode}): {r.stderr.strip()}")
        os.replace(tmp, exe)
        return exe
    raise BenchError(f"no writable folder to build {C_LOOP_SOURCE} in (tried {cache_dir()})")


def run_c_loop(exe: Path, image: Path) -> dict[str, int]:
    """Run the C loop on *image*; ``{"exits", "loop_ns", "total_ns", "process_ns"}``."""
    t0 = time.perf_counter_ns()
    r = subprocess.run([str(exe), str(image)], capture_output=True, text=True)
    t1 = time.perf_counter_ns()
    if r.returncode != 0:
        raise BenchError(f"{exe.name} {image.name} exited {r.returncode}: {r.stderr.strip()}")
    try:
        d = {k: int(v) for k, v in (kv.split("=") for kv in r.stdout.split())}
        return {"exits": d["exits"], "loop_ns": d["loop_ns"], "total_ns": d["total_ns"],
                "process_ns": t1 - t0}
    except (ValueError, KeyError):
        raise BenchError(f"{exe.name}: unexpected output {r.stdout!r}") from None


# --- figures -------------------------------------------------------------------------------------


@dataclass
class Summary:
    values: list[float]

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def to_json(self, digits: int = 4) -> dict[str, Any]:
        return {"min": round(self.min, digits), "median": round(self.median, digits),
                "max": round(self.max, digits), "n": len(self.values)}


@dataclass
class Figure:
    """One row of the table. For a comparison, ``ratio`` is ours / reference per
    repetition and the target applies to its median; otherwise it applies to ``ours``."""

    name: str
    unit: str
    target_op: str  # "<=" or ">="
    target: float
    ours: Summary | None = None
    reference: Summary | None = None
    ratio: Summary | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def judged(self) -> float | None:
        s = self.ratio if self.reference is not None else self.ours
        return None if s is None else s.median

    @property
    def met(self) -> bool:
        v = self.judged
        if v is None:
            return False
        return v <= self.target if self.target_op == "<=" else v >= self.target

    @property
    def target_text(self) -> str:
        what = "ratio" if self.reference is not None or self.unit.endswith("ratio") else self.unit
        return f"{what} {self.target_op} {self.target:g}"

    def to_json(self) -> dict[str, Any]:
        def med(s: Summary | None) -> float | None:
            return None if s is None else round(s.median, 4)

        d: dict[str, Any] = {
            "name": self.name,
            "ours": med(self.ours),
            "reference": med(self.reference),
            "ratio": med(self.ratio),
            "target": self.target_text,
            "unit": self.unit,
            "met": self.met,
            "measured": self.ours is not None,
        }
        for key, s in (("ours_detail", self.ours), ("reference_detail", self.reference),
                       ("ratio_detail", self.ratio)):
            if s is not None:
                d[key] = s.to_json()
        if self.note:
            d["note"] = self.note
        d.update(self.extra)
        return d


# --- the runs ------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    exits: int = BENCH_EXITS
    reps: int = 5
    setup_vms: int = 200
    mirror_accesses: int = 200_000
    compare_reps: int = 5
    whole_process: bool = True
    suite: bool = True

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(exits=2_000, reps=3, setup_vms=20, mirror_accesses=20_000, compare_reps=1)


def bench_payload(cpl: int, exits: int) -> Any:
    """The library's 100,000-exit MMIO store loop at *cpl*, with *exits* iterations."""
    from hostkvm._resources import resolve_payload
    from hostkvm.payload import parse_payload, parse_payload_text

    payload = parse_payload(resolve_payload(BENCH_PAYLOADS[cpl]))
    if exits == BENCH_EXITS:
        return payload
    text = payload.text.replace(str(BENCH_EXITS), str(exits))
    return parse_payload_text(text, payload.path)


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"bench: {text}", file=sys.stderr, flush=True)


def _run_ours(kvm: Any, image: Any, exits: int, *, observe: bool = False,
              stats_per_exit: bool = False) -> tuple[float, float, dict[str, int]]:
    """One harness run of *image*: ``(loop seconds, call seconds, info)``: the run loop's
    own time (``RunResult.wall_ns``, like the C loop's ``loop_ns``) and the whole
    ``run_machine`` call, with *observe* also the trace capture and the timing summaries
    (what ``hostkvm run --trace --timing`` adds; the run's stats delta is taken either way),
    and with *stats_per_exit* a stats ``pread`` per round trip."""
    from hostkvm.harness import TRACE_BUFFER_KB, Machine, run_machine
    from hostkvm.trace import LostEventsError, TraceCapture

    info: dict[str, int] = {}
    with Machine(image, kvm=kvm) as m:
        if not observe:
            t0 = time.perf_counter()
            r = run_machine(m)
            seconds = time.perf_counter() - t0
        else:
            from hostkvm.cli_run import timing_json

            t0 = time.perf_counter()
            capture = TraceCapture(buffer_size_kb=TRACE_BUFFER_KB)
            capture.start()
            try:
                try:
                    r = run_machine(m, capture=capture, stats_per_exit=stats_per_exit)
                except LostEventsError:
                    lost = capture.lost_events()
                    raise BenchError(f"trace lost events: {lost}") from None
                timing_json(r)
                lost_counts = capture.lost_events()
            finally:
                capture.close()
            seconds = time.perf_counter() - t0
            info["lost"] = sum(sum(v.values()) for v in lost_counts.values())
            assert r.trace is not None and r.trace.events is not None
            delims = r.trace.events.counts().get("kvm_userspace_exit", 0)
            info["events"] = r.trace.total
            info["missing_delimiters"] = r.runs - delims
            info["exits_with_stats"] = sum(1 for e in r.exits if e.stats)
    info["native"] = int(_native_loop_used(stats_per_exit))
    if r.outcome.kind != "done" or len(r.exits) != exits:
        raise BenchError(f"{image.payload.name}: the harness run ended {r.outcome.describe()} after "
                         f"{len(r.exits)} exits (expected done after {exits})")
    return r.wall_ns / 1e9, seconds, info


def _native_loop_used(stats_per_exit: bool) -> bool:
    from hostkvm import _native

    return not stats_per_exit and _native.load() is not None


def _interleaved(reps: int, ours: Callable[[], float], ref: Callable[[], float]) -> tuple[Summary, Summary, Summary]:
    a, b, ratios = [], [], []
    for i in range(reps):
        if i % 2 == 0:
            x, y = ours(), ref()
        else:
            y, x = ref(), ours()
        a.append(x)
        b.append(y)
        ratios.append(x / y)
    return Summary(a), Summary(b), Summary(ratios)


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> list[Figure]:
    from hostkvm.guest import build_guest
    from hostkvm.harness import Machine
    from hostkvm.system import X86_FEATURE_GBPAGES, Kvm

    figures: list[Figure] = []
    exe = build_c_loop()
    work = Path(tempfile.mkdtemp(prefix="hostkvm-bench-"))
    try:
        with Kvm() as kvm:
            pdpe1gb = kvm.cpuid_has(X86_FEATURE_GBPAGES)
            images, files, payloads = {}, {}, {}
            for cpl in (0, 3):
                payloads[cpl] = bench_payload(cpl, cfg.exits)
                images[cpl] = build_guest(payloads[cpl], cpu_has_pdpe1gb=pdpe1gb)
                with Machine(images[cpl], kvm=kvm) as m:
                    files[cpl] = write_image(m, work / f"cpl{cpl}.img")

            # 1. exit round trip
            for cpl in (0, 3):
                progress(f"exit round trip at CPL{cpl}: {cfg.reps} x {cfg.exits} exits, each side")

                def ours(cpl: int = cpl) -> float:
                    return _run_ours(kvm, images[cpl], cfg.exits)[0] * 1e6 / cfg.exits

                def ref(cpl: int = cpl) -> float:
                    d = run_c_loop(exe, files[cpl])
                    if d["exits"] != cfg.exits:
                        raise BenchError(f"{exe.name}: {d['exits']} exits, expected {cfg.exits}")
                    return d["loop_ns"] / 1e3 / d["exits"]

                o, r, q = _interleaved(cfg.reps, ours, ref)
                figures.append(Figure(f"exit round trip, CPL{cpl} (hostkvm run loop vs C KVM_RUN loop)",
                                      "us/exit", "<=", 1.05, o, r, q))

            # 2. observation overhead
            infos: list[dict[str, int]] = []
            for cpl in (0, 3):
                progress(f"observation overhead at CPL{cpl}: trace + timing on vs off")

                def on(cpl: int = cpl) -> float:
                    _, s, info = _run_ours(kvm, images[cpl], cfg.exits, observe=True)
                    infos.append(info)
                    return s * 1e6 / cfg.exits

                def off(cpl: int = cpl) -> float:
                    return _run_ours(kvm, images[cpl], cfg.exits)[1] * 1e6 / cfg.exits

                o, r, q = _interleaved(cfg.reps, on, off)
                lost = sum(i["lost"] for i in infos)
                missing = sum(i["missing_delimiters"] for i in infos)
                fig = Figure(f"observation overhead, CPL{cpl} (trace + timing on vs off; run stats delta in both)",
                             "us/exit", "<=", 1.3, o, r, q,
                             note=f"lost events {lost}, round trips without kvm_userspace_exit {missing}",
                             extra={"lost_events": lost, "missing_round_trips": missing,
                                    "events_per_run": infos[-1]["events"]})
                if lost or missing:
                    fig.target = 0.0  # lost events fail the target whatever the time
                figures.append(fig)
                infos.clear()

            # 3. mirror throughput
            progress(f"mirror throughput: {cfg.reps} x {cfg.mirror_accesses} accesses")
            from hostkvm.mirror import bench_throughput

            figures.append(Figure("mirror throughput (simulated accesses)", "accesses/s", ">=", 200_000,
                                  Summary([bench_throughput(cfg.mirror_accesses) for _ in range(cfg.reps)])))

            # 4. VM setup
            progress(f"VM setup: {cfg.reps} x {cfg.setup_vms} VMs")
            setup = []
            for _ in range(cfg.reps):
                t0 = time.perf_counter()
                for _ in range(cfg.setup_vms):
                    Machine(images[3], kvm=kvm).close()
                setup.append((time.perf_counter() - t0) * 1e3 / cfg.setup_vms)
            figures.append(Figure("VM setup (VM + memslots + vCPU + payload loaded, and closed)",
                                  "ms/VM", "<=", 2.0, Summary(setup)))

        # 5. whole process
        if cfg.whole_process:
            progress(f"whole process at CPL3: {cfg.reps} x `hostkvm run` vs the C program")
            src = work / "bench_cpl3.S"
            src.write_text(payloads[3].text, encoding="utf-8")

            def whole_ours() -> float:
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "hostkvm.cli", "run", str(src)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                t = time.perf_counter() - t0
                if r.returncode != 0:
                    raise BenchError(f"hostkvm run {src.name} exited {r.returncode}: {r.stderr.strip()}")
                return t

            def whole_ref() -> float:
                return run_c_loop(exe, files[3])["process_ns"] / 1e9

            o, r, q = _interleaved(cfg.reps, whole_ours, whole_ref)
            figures.append(Figure(f"whole process, CPL3, {cfg.exits} exits (`hostkvm run` vs C program)",
                                  "s", "<=", 1.10, o, r, q))
        figures += _compare_figures(cfg, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def _compare_figures(cfg: BenchConfig, progress: Callable[[str], None]) -> list[Figure]:
    """Share of ``hostkvm compare`` spent in the mirror and the comparison, and its wall
    time, from whole ``hostkvm compare --json`` processes."""
    share = Figure("share of a local `hostkvm compare` in mirror + comparison", "%", "<=", 20.0)
    suite = Figure("suite: wall time of `hostkvm compare` (local)", "s", "<=", 30.0)
    if not cfg.suite:
        share.note = suite.note = "not measured (--no-suite)"
        return [share, suite]
    try:
        import hostkvm.cli_compare  # noqa: F401
        import hostkvm.compare  # noqa: F401
    except ImportError as e:
        share.note = suite.note = f"not measured: hostkvm compare is not available ({e})"
        return [share, suite]
    shares, walls = [], []
    for i in range(cfg.compare_reps):
        progress(f"hostkvm compare {i + 1}/{cfg.compare_reps}")
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "hostkvm.cli", "compare", "--json"],
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        try:
            data = json.loads(r.stdout)
        except json.JSONDecodeError:
            share.note = suite.note = (f"not measured: hostkvm compare exited {r.returncode} without "
                                       f"JSON: {r.stderr.strip()[-300:]}")
            return [share, suite]
        runs = data["runs"] if "runs" in data else [data]
        scen = [s for run in runs for s in run.get("scenarios", [])]
        total = sum(float(run.get("seconds", 0)) for run in runs)
        mirror = sum(float(s.get("mirror_seconds", 0)) for s in scen)
        if total > 0:
            shares.append(100.0 * mirror / total)
        walls.append(wall)
        verdicts: dict[str, int] = {}
        for s in scen:
            verdicts[s.get("verdict", "?")] = verdicts.get(s.get("verdict", "?"), 0) + 1
        suite.extra = {"scenarios": len(scen), "verdicts": verdicts, "compare_status": r.returncode}
    if shares:
        share.ours = Summary(shares)
    suite.ours = Summary(walls)
    return [share, suite]


# --- output ------------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.3f}"


def _cell(s: Summary | None) -> str:
    if s is None:
        return "-"
    return f"{_fmt(s.median)} ({_fmt(s.min)}–{_fmt(s.max)})"


def format_table(figures: Sequence[Figure]) -> str:
    """A Markdown table: median (min–max) of each side and of the ratio."""
    rows = ["| benchmark | unit | ours | reference | ratio | target | met |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        met = "yes" if f.met else ("not measured" if f.ours is None else "**no**")
        name = f.name + (f" — {f.note}" if f.note else "")
        rows.append(f"| {name} | {f.unit} | {_cell(f.ours)} | {_cell(f.reference)} | {_cell(f.ratio)} "
                    f"| {f.target_text} | {met} |")
    return "\n".join(rows)


def report_json(figures: Sequence[Figure], cfg: BenchConfig) -> dict[str, Any]:
    return {"benchmarks": [f.to_json() for f in figures],
            "config": {"exits": cfg.exits, "reps": cfg.reps, "setup_vms": cfg.setup_vms,
                       "mirror_accesses": cfg.mirror_accesses},
            "all_met": all(f.met for f in figures)}


__all__ = ["BenchConfig", "BenchError", "Figure", "Summary", "build_c_loop", "format_table",
           "image_bytes", "parse_image", "report_json", "run_bench", "run_c_loop", "write_image"]
