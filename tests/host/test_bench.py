"""hostkvm bench on this host: the C loop replays exactly what the harness runs, and the
quick bench produces a well-formed report (its figures are not judged here)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from hostkvm import bench
from hostkvm.guest import build_guest
from hostkvm.harness import Machine, run_machine
from hostkvm.system import Kvm

pytestmark = pytest.mark.kvm

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the C loop")


@needs_gcc
@pytest.mark.parametrize("cpl", [0, 3])
def test_c_loop_makes_the_harness_exits(kvm: Kvm, tmp_path: Path, cpl: int) -> None:
    exe = bench.build_c_loop()
    image = build_guest(bench.bench_payload(cpl, 300))
    with Machine(image, kvm=kvm) as m:
        path = bench.write_image(m, tmp_path / "g.img")
        regs = bytes(m.vcpus[0].get_regs())
    assert bench.parse_image(path.read_bytes())["regs"].rip == image.cpu.regs["rip"]
    assert bytes(bench.parse_image(path.read_bytes())["regs"]) == regs
    c = bench.run_c_loop(exe, path)
    with Machine(image, kvm=kvm) as m:
        r = run_machine(m)
    assert r.outcome.kind == "done"
    assert c["exits"] == len(r.mmio_exits) == 300
    assert c["loop_ns"] > 0 and c["total_ns"] >= c["loop_ns"]


@needs_gcc
def test_c_loop_refuses_a_bad_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"HKVMIMG1\x01\x00")
    with pytest.raises(bench.BenchError, match="truncated"):
        bench.run_c_loop(bench.build_c_loop(), bad)


@needs_gcc
def test_quick_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    from hostkvm import cli_bench

    status = cli_bench.main(argparse.Namespace(json=True, quick=True, reps=1, no_suite=True))
    report = json.loads(capsys.readouterr().out)
    names = [b["name"] for b in report["benchmarks"]]
    assert len(names) == 9
    for b in report["benchmarks"]:
        assert {"name", "ours", "reference", "ratio", "target", "unit", "met"} <= b.keys()
    measured = [b for b in report["benchmarks"] if b["measured"]]
    assert len(measured) == 7  # the two `hostkvm compare` figures are skipped with --no-suite
    for b in measured:
        assert b["ours"] > 0
    obs = [b for b in report["benchmarks"] if b["name"].startswith("observation")]
    assert all(b["lost_events"] == 0 and b["missing_round_trips"] == 0 for b in obs)
    assert status == (0 if report["all_met"] else 1)
