"""ctypes mirrors of the KVM uapi (``linux/kvm.h``, x86-64 ``asm/kvm.h``).

Nothing outside this package declares ``_fields_`` for a kernel structure.
"""

from hostkvm._uapi.constants import *  # noqa: F403
from hostkvm._uapi.cpuid import *  # noqa: F403
from hostkvm._uapi.ioctls import KvmIoctl as KvmIoctl
from hostkvm._uapi.structs import *  # noqa: F403

