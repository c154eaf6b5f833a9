"""hostkvm compare on this host: every built-in scenario matches the mirror, the plugin's
fixtures work, and the CLI's JSON/JUnit/exit status say so."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from hostkvm.scenario import Scenario, registry

pytestmark = pytest.mark.kvm

FAST = [s.name for s in registry().values() if not s.slow]


@pytest.mark.parametrize("name", FAST)
def test_builtin_scenario_matches_the_mirror(compare, name: str) -> None:  # type: ignore[no-untyped-def]
    result = compare(name)
    assert result.verdict == "match", "\n".join(d.describe() for d in result.divergences) or result.error
    assert result.exits > 0
    assert not [m for m in result.missing if not m.startswith("churn")], result.missing


def test_plugin_fixtures_write_a_host_vs_mirror_test(compare, run_payload, vcpu) -> None:  # type: ignore[no-untyped-def]
    s = Scenario("plugin_example", "a store and a load on one MMIO page", read_value=0x42)
    s.mmio(0x10000000, 0x1000)
    s.store(0x10000000, 4, 0x1234)
    s.load(0x10000000, 1)
    result = compare(s)
    assert result.verdict == "match"
    assert (result.exits, result.predicted_exits) == (2, 2)
    assert result.events_compared == result.events_matched > 0
    r = run_payload(s.payload_text())
    assert r.outcome.kind == "done"
    assert [(e.gpa, e.len, e.is_write) for e in r.mmio_exits] == [(0x10000000, 4, True), (0x10000000, 1, False)]
    assert r.mmio_exits[1].data == b"\x42"
    assert vcpu.id == 0


def test_a_mirror_configured_for_another_host_diverges_with_its_reasoning(kvm, host_probe) -> None:  # type: ignore[no-untyped-def]
    """Compare this host against a mirror that believes in another host (mmio caching on
    where it is off, or off where it is on): the comparison must say so, at the events level,
    with the mirror's reasoning."""
    from hostkvm.compare import compare_scenario
    from hostkvm.mirror import HostConfig

    wrong = HostConfig.from_probe(host_probe, mmio_caching=not host_probe["mmio_caching"],
                                  backend="svm", paging="npt" if host_probe["paging"] == "shadow" else "shadow")
    result = compare_scenario(registry()["mmio_many_pages"], kvm, host_probe, wrong, host_label="wrong mirror")
    assert result.verdict == "diverge"
    levels = {d.level for d in result.divergences}
    assert "events" in levels
    assert all(d.reasoning for d in result.divergences if d.level == "events")
    assert result.exits == result.predicted_exits == 32  # the exits themselves still agree


def test_cli_compare_json_junit_and_status(tmp_path) -> None:  # type: ignore[no-untyped-def]
    junit = tmp_path / "out.xml"
    names = ["mmio_widths", "memslot_create_covers_mmio"]
    r = subprocess.run([sys.executable, "-m", "hostkvm.cli", "compare", *names, "--json", "--junit", str(junit)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["host"]["api_version"] == 12
    assert [c["name"] for c in data["scenarios"]] == names
    assert all(c["verdict"] == "match" for c in data["scenarios"])
    assert all({"name", "verdict", "exits", "divergences"} <= set(c) for c in data["scenarios"])
    cases = ET.parse(junit).getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == names
    assert r.stderr == ""  # quiet under --json


def test_cli_compare_unknown_scenario_is_bad_input() -> None:
    r = subprocess.run([sys.executable, "-m", "hostkvm.cli", "compare", "no_such_scenario"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "unknown scenario(s): no_such_scenario" in r.stderr


def test_cli_compare_user_scenario_file_that_diverges(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A user scenario whose guest check fails: the load expects a value the host never
    # returns, so the run ends in `fail` and compare reports the divergence with status 1.
    f = tmp_path / "mine.py"
    f.write_text(
        "from hostkvm.scenario import Scenario, register\n"
        "s = Scenario('mine_wrong_read', 'expects 0x99 where reads return 0', read_value=0)\n"
        "s.mmio(0x10000000, 0x1000)\n"
        "s.load(0x10000000, 1, expect=0x99)\n"
        "register(s)\n"
    )
    r = subprocess.run([sys.executable, "-m", "hostkvm.cli", "compare", "--scenarios-from", str(f),
                        "mine_wrong_read", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    c = json.loads(r.stdout)["scenarios"][0]
    assert c["verdict"] == "diverge"
    assert c["divergences"][0]["level"] == "outcome"
    assert "did not read 0x99" in c["divergences"][0]["observed"]
