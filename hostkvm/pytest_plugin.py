"""pytest plugin (entry point ``pytest11``): fixtures and markers for host-vs-mirror tests.

Markers
-------
``@pytest.mark.kvm``
    the test needs a working ``/dev/kvm``. Without one it is skipped with the reason;
    ``--require-kvm`` turns that skip into a failure, so a runner that is supposed to have
    KVM cannot go green by skipping.

Fixtures
--------
``kvm``          a :class:`hostkvm.system.Kvm` (``/dev/kvm``), closed afterwards
``vm``           an empty :class:`hostkvm.vm.Vm` of that ``kvm``
``vcpu``         vCPU 0 of ``vm``
``host_probe``   this host's ``hostkvm probe`` dict (session-wide)
``mirror_config`` the :class:`hostkvm.mirror.HostConfig` built from it
``run_payload``  ``run_payload(path_or_text, *, trace=False) -> RunResult``
``compare``      ``compare(scenario_or_name, *, trace=True) -> ScenarioResult``

A host-vs-mirror test in a few lines::

    import pytest
    from hostkvm.scenario import Scenario

    @pytest.mark.kvm
    def test_store_then_load(compare):
        s = Scenario("store_then_load", "a store and a load on one MMIO page")
        s.mmio(0x10000000, 0x1000)
        s.store(0x10000000, 4, 0x1234)
        s.load(0x10000000, 4)
        result = compare(s)
        assert result.verdict == "match", [d.describe() for d in result.divergences]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hostkvm")
    group.addoption(
        "--require-kvm",
        action="store_true",
        default=False,
        help="fail (instead of skip) tests marked 'kvm' when /dev/kvm is not usable",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvm: needs a working /dev/kvm (see --require-kvm)")


@functools.cache
def kvm_unusable_reason() -> str | None:
    """Why /dev/kvm cannot be used here, or None if it can."""
    from hostkvm.errors import HostKvmError
    from hostkvm.system import Kvm

    try:
        Kvm().close()
    except HostKvmError as e:
        return str(e)
    return None


def _need_kvm(config: pytest.Config) -> None:
    reason = kvm_unusable_reason()
    if reason is None:
        return
    if config.getoption("require_kvm"):
        pytest.fail(f"--require-kvm: {reason}", pytrace=False)
    pytest.skip(f"no usable /dev/kvm: {reason}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm") is not None:
        _need_kvm(item.config)


@pytest.fixture
def kvm(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``/dev/kvm`` as a :class:`hostkvm.system.Kvm`."""
    _need_kvm(request.config)
    from hostkvm.system import Kvm

    with Kvm() as k:
        yield k


@pytest.fixture
def vm(kvm: Any) -> Iterator[Any]:
    """An empty VM (no memslots, no vCPUs)."""
    with kvm.create_vm() as v:
        yield v


@pytest.fixture
def vcpu(vm: Any) -> Any:
    """vCPU 0 of ``vm`` (closed with the VM)."""
    return vm.create_vcpu()


@pytest.fixture(scope="session")
def host_probe(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``hostkvm probe`` of this host."""
    _need_kvm(request.config)
    from hostkvm.probe import probe

    return probe()


@pytest.fixture(scope="session")
def mirror_config(host_probe: dict[str, Any]) -> Any:
    """The mirror's :class:`~hostkvm.mirror.HostConfig` for this host."""
    from hostkvm.mirror import HostConfig

    return HostConfig.from_probe(host_probe)


@pytest.fixture
def run_payload(kvm: Any) -> Callable[..., Any]:
    """``run_payload(path_or_text, *, trace=False, timeout=None) -> RunResult``: a payload
    file, a library name, or payload text (anything with a newline)."""
    from hostkvm._resources import resolve_payload
    from hostkvm.harness import run_payload as _run
    from hostkvm.payload import parse_payload, parse_payload_text

    def run(source: str | Path, *, trace: bool = False, timeout: float | None = None) -> Any:
        text = str(source)
        payload = parse_payload_text(text) if "\n" in text else parse_payload(resolve_payload(text))
        return _run(payload, kvm=kvm, trace=trace, timeout=timeout)

    return run


@pytest.fixture
def compare(kvm: Any, host_probe: dict[str, Any], mirror_config: Any) -> Callable[..., Any]:
    """``compare(scenario_or_name, *, trace=True) -> ScenarioResult`` on this host."""
    from hostkvm.compare import compare_scenario, host_label
    from hostkvm.scenario import Scenario, registry

    def run(scenario: Scenario | str, *, trace: bool = True) -> Any:
        s = registry()[scenario] if isinstance(scenario, str) else scenario
        return compare_scenario(s, kvm, host_probe, mirror_config, host_label=host_label(host_probe),
                                trace=trace)

    return run
