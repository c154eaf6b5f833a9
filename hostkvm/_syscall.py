"""The only place hostkvm calls ``fcntl.ioctl``.

Every request goes through :func:`ioctl`, which checks the argument's size against
the size encoded in the request number and turns a failure into
:class:`~hostkvm.errors.KvmIoctlError` naming the ioctl and its context.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
from collections.abc import Callable

from hostkvm._uapi.ioctls import KvmIoctl
from hostkvm.errors import KvmIoctlError

_IOC_SIZESHIFT = 16
_IOC_SIZEMASK = (1 << 14) - 1


def ioctl_arg_size(request: KvmIoctl) -> int:
    """The argument size encoded in *request* (``_IOC_SIZE``)."""
    return (int(request) >> _IOC_SIZESHIFT) & _IOC_SIZEMASK


def ioctl(
    fd: int,
    request: KvmIoctl,
    arg: int | ctypes.Structure | ctypes.Array = 0,  # type: ignore[type-arg]
    context: str | Callable[[], str] = "",
) -> int:
    """Issue *request* on *fd*.

    *arg* is an integer, or a ctypes object the kernel reads and/or writes in place.
    *context* (a string, or a callable producing one only on failure) names the
    arguments in the error message.
    """
    if isinstance(arg, int):
        if arg == 0:
            # Without an argument fcntl.ioctl passes 0 and skips probing it as a buffer.
            try:
                return fcntl.ioctl(fd, request)
            except OSError as e:
                raise ioctl_error(request, e, context) from None
    else:
        want = ioctl_arg_size(request)
        have = ctypes.sizeof(arg)
        if want and have < want:
            raise TypeError(f"{request.name}: argument of {have} bytes, the request encodes {want}")
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise ioctl_error(request, e, context) from None


def ioctl_error(request: KvmIoctl, err: OSError, context: str | Callable[[], str] = "") -> KvmIoctlError:
    """The :class:`KvmIoctlError` for *err*, an ``OSError`` raised by *request*."""
    ctx = context() if callable(context) else context
    return KvmIoctlError(request.name, err.errno or errno.EIO, ctx)


def ioctl_noarg(fd: int, request: KvmIoctl) -> Callable[[], int]:
    """A callable issuing *request* on *fd* with argument 0, for hot loops (``KVM_RUN``).

    It is ``fcntl.ioctl`` bound to its arguments: no Python frame per call, and no
    argument probing (``fcntl.ioctl`` tries an integer argument as a writable then a
    read-only buffer before taking it as an integer, which costs more than the call).
    A failure raises a plain ``OSError``; convert it with :func:`ioctl_error`.
    """
    return functools.partial(fcntl.ioctl, fd, int(request))

