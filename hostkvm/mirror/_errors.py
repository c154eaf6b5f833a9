"""The mirror's one error: a host configuration it cannot model."""

from __future__ import annotations

from hostkvm.errors import HostKvmError

__all__ = ["MirrorConfigError"]


class MirrorConfigError(HostKvmError, ValueError):
    """A host configuration, probe result or model request the mirror cannot represent.

    Also a :class:`ValueError`, since it always names a bad argument.
    """
