"""pytest plugin (entry point ``pytest11``): the ``kvm`` marker and ``--require-kvm``.

Tests marked ``@pytest.mark.kvm`` need a working ``/dev/kvm``. Without one they are
skipped with the reason; ``--require-kvm`` turns that skip into a failure, so a CI runner
that is supposed to have KVM cannot go green by skipping.
"""

from __future__ import annotations

import functools

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


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kvm") is None:
        return
    reason = kvm_unusable_reason()
    if reason is None:
        return
    if item.config.getoption("require_kvm"):
        pytest.fail(f"--require-kvm: {reason}", pytrace=False)
    pytest.skip(f"no usable /dev/kvm: {reason}")
