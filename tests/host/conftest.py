from __future__ import annotations

from collections.abc import Iterator

import pytest

from hostkvm.system import Kvm


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    with Kvm() as k:
        yield k
