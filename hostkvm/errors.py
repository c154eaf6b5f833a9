"""The one exception tree of hostkvm.

::

    HostKvmError
    ├── KvmUnavailableError        /dev/kvm missing or not openable (CLI exit status 3)
    ├── KvmIoctlError (OSError)    an ioctl failed; names the ioctl and its arguments
    ├── KvmAbiError                the kernel broke an ABI rule we check (API version,
    │                              binary stats layout, a required capability missing)
    ├── GuestMemoryError           a gpa access outside guest memory
    ├── GuestSetupError            guest construction refused (mappings, modes, layout)
    ├── PayloadError               a payload file is malformed; carries file:line (exit 2)
    │   └── AssemblyError          keystone rejected a statement
    ├── TraceError                 tracefs unusable, or events were lost
    ├── RefHostError               the reference host could not be built or booted
    └── ScenarioError              a scenario could not be run as written

Messages put the kernel name first, then what happened, then the context that
fixes it, e.g. ``KVM_SET_USER_MEMORY_REGION failed: errno 17 (File exists)
(slot 1, gpa 0x100000, size 0x200000)``.
"""

from __future__ import annotations

import errno as _errno
import os


class HostKvmError(Exception):
    """Root of every error hostkvm raises on purpose."""


class KvmUnavailableError(HostKvmError):
    """``/dev/kvm`` is missing or cannot be opened."""


class KvmIoctlError(HostKvmError, OSError):
    """An ioctl returned an error.

    ``ioctl`` is the kernel name of the request (``KVM_RUN``), ``context`` the
    arguments that identify the call (``slot 1, gpa 0x100000``).
    """

    def __init__(self, ioctl: str, err: int, context: str = "") -> None:
        self.ioctl = ioctl
        self.context = context
        name = _errno.errorcode.get(err, "?")
        msg = f"{ioctl} failed: errno {err} ({os.strerror(err)}, {name})"
        if context:
            msg += f" ({context})"
        OSError.__init__(self, err, msg)

    def __str__(self) -> str:
        return str(self.strerror)


class KvmAbiError(HostKvmError):
    """The kernel answered in a way the KVM ABI does not allow, or lacks a required capability."""


class GuestMemoryError(HostKvmError):
    """A guest-physical access that no guest memory backs."""


class GuestSetupError(HostKvmError):
    """A guest layout, mapping or mode that cannot be built."""


class PayloadError(HostKvmError):
    """A malformed payload. ``path`` and ``line`` point at the offending statement."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class AssemblyError(PayloadError):
    """keystone could not assemble a statement."""


class TraceError(HostKvmError):
    """tracefs cannot be used as asked, or the capture lost events."""


class RefHostError(HostKvmError):
    """The reference host could not be built, booted or driven."""


class ScenarioError(HostKvmError):
    """A scenario is malformed or could not be run."""
