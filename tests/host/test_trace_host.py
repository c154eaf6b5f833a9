"""Host tests of hostkvm.trace on the real tracefs: private instances, pid filtering,
the mono clock, binary decoding checked against the kernel's own text output, lost
events, cleanup on Ctrl-C / kill, and KVM events from a tiny guest.

Every test checks that the top-level tracing state and the instance list are exactly
as before it ran."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from hostkvm import trace as T
from hostkvm.errors import TraceError
from hostkvm.trace import (
    LostEventsError,
    TraceCapture,
    attribute_to_windows,
    find_tracefs,
    remove_stale_instances,
    split_on_userspace_exit,
)

pytestmark = pytest.mark.kvm

if os.geteuid() != 0:
    pytest.skip("tracefs instances need root", allow_module_level=True)

TOP_LEVEL = ("tracing_on", "set_event", "buffer_size_kb", "buffer_total_size_kb", "current_tracer",
             "trace_clock", "set_event_pid", "tracing_cpumask", "buffer_percent")
GETPPID = "syscalls:sys_enter_getppid"


@pytest.fixture(scope="module")
def tracefs() -> T.Tracefs:
    try:
        return find_tracefs()
    except TraceError as e:
        pytest.skip(f"observation missing: {e}")


def snapshot(root: str) -> dict[str, object]:
    snap: dict[str, object] = {}
    for name in TOP_LEVEL:
        path = os.path.join(root, name)
        if os.path.exists(path):
            with open(path) as f:
                snap[name] = f.read()
    snap["instances"] = sorted(os.listdir(os.path.join(root, "instances")))
    return snap


@pytest.fixture(autouse=True)
def untouched_top_level(tracefs: T.Tracefs) -> Iterator[None]:
    before = snapshot(tracefs.path)
    yield
    assert snapshot(tracefs.path) == before


def instances(tracefs: T.Tracefs) -> list[str]:
    return sorted(os.listdir(os.path.join(tracefs.path, "instances")))


def test_capture_counts_exactly_our_syscalls(tracefs: T.Tracefs) -> None:
    n = 500
    with TraceCapture([GETPPID, "nosuch:event"], tracefs=tracefs) as cap:
        assert cap.name is not None and cap.name.startswith(f"hostkvm-{os.getpid()}-")
        assert cap.name in instances(tracefs)
        assert cap.enabled == (GETPPID,) and cap.absent == ("nosuch:event",)
        with open(os.path.join(cap.path or "", "trace_clock")) as f:
            assert "[mono]" in f.read()
        t0 = time.monotonic_ns()
        for _ in range(n):
            os.getppid()
        t1 = time.monotonic_ns()
        events = cap.collect()
    assert cap.name not in instances(tracefs)
    assert len(events) == n
    assert set(events.pids) == {threading.get_native_id()}
    assert all(t0 <= ts <= t1 for ts in events.ts)  # mono clock == time.monotonic_ns()
    assert events.ts == sorted(events.ts)
    assert {e["__syscall_nr"] for e in events} == {events[0]["__syscall_nr"]}


def test_binary_decode_matches_the_kernel_text(tracefs: T.Tracefs) -> None:
    """The instance's text ``trace`` file (non-consuming) and the decoded raw pages agree
    record for record: name, pid, cpu, timestamp (to the µs) and a field."""
    events_wanted = [GETPPID, "syscalls:sys_exit_getppid", "task:task_rename"]
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    with TraceCapture(events_wanted, tracefs=tracefs, drain_interval=None) as cap:
        for i in range(50):
            os.getppid()
            libc.prctl(15, f"hk-{i}".encode(), 0, 0, 0)  # PR_SET_NAME: task_rename
        libc.prctl(15, b"python-test", 0, 0, 0)
        cap.stop()
        with open(os.path.join(cap.path or "", "trace")) as f:
            text = [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]
        events = cap.collect()
    assert len(events) == len(text) == 50 * 3 + 1
    line_re = re.compile(r"^\s*(.+?)-(\d+)\s+\[(\d+)\].*?\s(\d+)\.(\d{6}):\s+(.*)$")
    # Syscall events print as "sys_getppid()" / "sys_getppid -> 0x..", others as "name: ...".
    shown = {"sys_enter_getppid": "sys_getppid(", "sys_exit_getppid": "sys_getppid ->",
             "task_rename": "task_rename:"}
    for ev, line in zip(events, text):
        m = line_re.match(line)
        assert m is not None, line
        _, pid, cpu, sec, usec, rest = m.groups()
        assert rest.startswith(shown[ev.name]), (ev, line)
        assert (ev.pid, ev.cpu) == (int(pid), int(cpu))
        assert (ev.ts + 500) // 1000 == int(sec) * 1_000_000 + int(usec)  # ns2usecs() rounds
        if ev.name == "task_rename":
            assert f"newcomm={ev['newcomm']}" in rest
            assert ev["newcomm"].startswith(("hk-", "python-test"))
        elif ev.name == "sys_exit_getppid":
            assert int(rest.split("->")[1], 16) == ev["ret"] == os.getppid()


def test_only_listed_threads_are_traced(tracefs: T.Tracefs) -> None:
    def worker(out: list[int], n: int) -> None:
        out.append(threading.get_native_id())
        for _ in range(n):
            os.getppid()

    with TraceCapture([GETPPID], tracefs=tracefs) as cap:
        ignored: list[int] = []
        t = threading.Thread(target=worker, args=(ignored, 30))
        t.start()
        t.join()
        added: list[int] = []
        ready, go = threading.Event(), threading.Event()

        def added_worker() -> None:
            added.append(threading.get_native_id())
            ready.set()
            go.wait()
            for _ in range(20):
                os.getppid()

        t2 = threading.Thread(target=added_worker)
        t2.start()
        ready.wait()
        cap.add_pid(added[0])
        go.set()
        t2.join()
        for _ in range(10):
            os.getppid()
        events = cap.collect()
    by_pid: dict[int, int] = {}
    for p in events.pids:
        by_pid[p] = by_pid.get(p, 0) + 1
    assert by_pid == {added[0]: 20, threading.get_native_id(): 10}
    assert ignored[0] not in by_pid


def test_lost_events_fail_the_capture(tracefs: T.Tracefs) -> None:
    with TraceCapture([GETPPID], tracefs=tracefs, buffer_size_kb=8, drain_interval=None) as cap:
        for _ in range(20_000):
            os.getppid()
        with pytest.raises(LostEventsError, match="lost events"):
            cap.collect()


def test_collect_removes_the_instance_in_the_background(tracefs: T.Tracefs) -> None:
    """collect() starts the instance's removal while it decodes; close() waits for it, the
    lost-event counters stay readable and the capture cannot be read again."""
    cap = TraceCapture([GETPPID], tracefs=tracefs)
    cap.start()
    try:
        for _ in range(100):
            os.getppid()
        assert len(cap.collect()) == 100
        assert cap.lost_events() == {}
        with pytest.raises(T.TraceError, match="collected"):
            cap.drain()
    finally:
        cap.close()
    assert cap.name not in instances(tracefs)
    assert not [t for t in threading.enumerate() if t.name.startswith(cap.name or "?")]


@pytest.mark.parametrize("decode_in_background", [False, True], ids=["decode-at-collect", "decode-in-drain"])
def test_background_drain_keeps_a_small_buffer_lossless(tracefs: T.Tracefs, decode_in_background: bool) -> None:
    n = 0
    with TraceCapture([GETPPID], tracefs=tracefs, buffer_size_kb=64, drain_interval=0.005) as cap:
        cap.decode_in_background = decode_in_background
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            for _ in range(200):
                os.getppid()
            n += 200
            time.sleep(0.002)  # let the drain thread run
        events = cap.collect()
    assert len(events) == n
    assert events.ts == sorted(events.ts)
    assert set(events.names()) == {"sys_enter_getppid"}


def test_keyboard_interrupt_removes_the_instance(tracefs: T.Tracefs) -> None:
    with pytest.raises(KeyboardInterrupt):
        with TraceCapture([GETPPID], tracefs=tracefs) as cap:
            assert cap.name in instances(tracefs)
            raise KeyboardInterrupt
    assert cap.name not in instances(tracefs)


CHILD = textwrap.dedent("""
    import os, sys, time
    from hostkvm.trace import TraceCapture
    cap = TraceCapture(["syscalls:sys_enter_getppid"]).start()
    print(cap.name, flush=True)
    try:
        while True:
            os.getppid(); time.sleep(0.001)
    finally:
        cap.close()
""")


def _child() -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert p.stdout is not None
    name = p.stdout.readline().strip()
    assert name.startswith(f"hostkvm-{p.pid}-"), name
    return p, name


def test_ctrl_c_in_a_run_removes_its_instance(tracefs: T.Tracefs) -> None:
    p, name = _child()
    assert name in instances(tracefs)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert p.returncode != 0
    assert name not in instances(tracefs)


def test_killed_run_leaves_a_stale_instance_that_cleanup_removes(tracefs: T.Tracefs) -> None:
    p, name = _child()
    p.kill()
    p.communicate(timeout=30)
    assert name in instances(tracefs)
    assert name in remove_stale_instances(tracefs)
    assert name not in instances(tracefs)


# --- KVM events -------------------------------------------------------------------------------

# Real mode at 0x1000: mov al, 0; 1: mov [bx], al; inc al; jmp 1b  (DS base 0x20000: no memslot)
GUEST = bytes.fromhex("b000" "8807" "fec0" "ebfa")
MMIO_GPA = 0x20000


@pytest.fixture()
def vcpu() -> Iterator[object]:
    if not os.path.exists("/dev/kvm"):
        pytest.skip("/dev/kvm missing")
    from hostkvm.system import Kvm

    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.add_memslot(0, 0x10000)
        vm.write(0x1000, GUEST)
        v = vm.create_vcpu()
        s = v.get_sregs()
        for seg in (s.cs, s.ds, s.es, s.ss):
            seg.base, seg.selector = 0, 0
        s.ds.base, s.ds.selector = MMIO_GPA, MMIO_GPA >> 4
        v.set_sregs(s)
        r = v.get_regs()
        r.rip, r.rflags, r.rbx = 0x1000, 2, 0
        v.set_regs(r)
        yield v


def test_kvm_mmio_exits_are_attributed_per_round_trip(tracefs: T.Tracefs, vcpu: object) -> None:
    from hostkvm.exits import MmioExit

    n = 50
    windows = []
    exits = []
    with TraceCapture(tracefs=tracefs) as cap:
        assert cap.absent == ()  # every default event exists on this kernel
        for _ in range(n):
            t0 = time.monotonic_ns()
            exits.append(vcpu.run())  # type: ignore[attr-defined]
            windows.append((t0, time.monotonic_ns()))
        events = cap.collect()
    assert all(isinstance(e, MmioExit) and e.gpa == MMIO_GPA for e in exits)
    att = attribute_to_windows(events, windows, pid=threading.get_native_id())
    assert len(att.outside) == 0
    for k, win in enumerate(att.per_window):
        mmio = [e for e in win if e.name == "kvm_mmio"]
        ends = [e for e in win if e.name == "kvm_userspace_exit"]
        assert len(mmio) == 1 and len(ends) == 1, (k, list(win))
        assert mmio[0].fields == {"type": 2, "len": 1, "gpa": MMIO_GPA, "val": k}  # KVM_TRACE_MMIO_WRITE
        assert ends[0]["reason"] == 6 and ends[0]["errno"] == 0  # KVM_EXIT_MMIO
        assert win[-1].name == "kvm_userspace_exit"
    groups, trailing = split_on_userspace_exit(events)
    assert len(groups) == n and len(trailing) == 0
    assert [g.ts for g in groups] == [w.ts for w in att.per_window]
