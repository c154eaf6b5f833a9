"""Locate the guest runtime sources (``guests/``) and the payload library (``payloads/``).

In an installed wheel they are package data under ``hostkvm/_data/guests`` and
``hostkvm/_data/payloads``; in a source checkout they are the ``guests/`` and
``payloads/`` folders at the repository root, next to the ``hostkvm`` package. The
installed copy wins when both exist.
"""

from __future__ import annotations

import functools
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"hostkvm data folder '{name}' not found (looked in {_PACKAGE_DIR / '_data' / name} "
        f"and {_PACKAGE_DIR.parent / name}); reinstall hostkvm or run from a checkout"
    )


@functools.cache
def guests_dir() -> Path:
    """The folder holding the guest runtime sources (``runtime64.S`` …)."""
    return _find("guests")


@functools.cache
def payloads_dir() -> Path:
    """The folder holding the payload library (``*.S``)."""
    return _find("payloads")


def guest_source(name: str) -> tuple[Path, str]:
    """``(path, text)`` of one guest runtime source file, e.g. ``"runtime64.S"``."""
    path = guests_dir() / name
    return path, path.read_text(encoding="utf-8")


def library_payloads() -> list[Path]:
    """Every payload of the library, sorted by name."""
    return sorted(payloads_dir().glob("*.S"))


def resolve_payload(name: str) -> Path:
    """A payload path from a file path, or from a library name (``store_u32_cpl3`` or
    ``store_u32_cpl3.S``). A name that is neither raises PayloadError."""
    from hostkvm.errors import PayloadError

    path = Path(name)
    if path.is_file():
        return path
    lib = payloads_dir() / (name if name.endswith(".S") else name + ".S")
    if "/" not in name and lib.is_file():
        return lib
    raise PayloadError(
        f"no payload file '{name}' (and no library payload of that name in {payloads_dir()}); "
        "give a path to a .S file or a name listed by `ls` in the payload library"
    )
