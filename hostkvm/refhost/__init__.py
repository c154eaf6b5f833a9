"""The reference host: stock Debian kernel, upstream ``kvm_amd``, under QEMU TCG.

This machine's KVM may not cache MMIO (``mmio_caching=N``); the reference host
is a stock upstream KVM where the mmio-spte fast path runs, for ``npt=1`` (TDP
MMU) and ``npt=0`` (shadow MMU). Build it once, then run commands inside::

    from hostkvm.refhost import build_refhost, run_in_refhost

    build_refhost()                                   # cached after the first time
    status, out = run_in_refhost(["python3", "-m", "hostkvm.cli", "probe", "--json"], npt=1)

Importing this package does no work; the build and the boot happen on call.
See ``docs/refhost.md``.
"""

from __future__ import annotations

from collections.abc import Callable

from hostkvm.refhost._build import RefHostImage, cache_root, cached_images, ensure_image
from hostkvm.refhost._run import CPU_MODEL, DEFAULT_TIMEOUT, RefHostResult, run_in_refhost

REFHOST_NAMES = {"ref-npt0": 0, "ref-npt1": 1}
"""The names ``hostkvm compare --host`` uses for the two configurations, and their npt."""


def build_refhost(*, force: bool = False, progress: Callable[[str], None] | None = None) -> tuple[RefHostImage, bool]:
    """Build (or find cached) the reference host; returns ``(image, built_now)``.

    ``progress`` is a callable taking one line of text (``None``: quiet).
    """
    if progress is None:
        return ensure_image(force=force)
    return ensure_image(force=force, progress=progress)


__all__ = [
    "CPU_MODEL",
    "DEFAULT_TIMEOUT",
    "REFHOST_NAMES",
    "RefHostImage",
    "RefHostResult",
    "build_refhost",
    "cache_root",
    "cached_images",
    "ensure_image",
    "run_in_refhost",
]
