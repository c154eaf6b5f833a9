"""hostkvm: drive the host's /dev/kvm from Python and compare what it does on MMIO
with a mirror of KVM's mmio-spte fast path."""

from hostkvm.errors import (
    AssemblyError,
    GuestMemoryError,
    GuestSetupError,
    HostKvmError,
    KvmAbiError,
    KvmIoctlError,
    KvmUnavailableError,
    PayloadError,
    RefHostError,
    ScenarioError,
    TraceError,
)

__version__ = "0.1.0"

__all__ = [
    "AssemblyError",
    "GuestMemoryError",
    "GuestSetupError",
    "HostKvmError",
    "KvmAbiError",
    "KvmIoctlError",
    "KvmUnavailableError",
    "PayloadError",
    "RefHostError",
    "ScenarioError",
    "TraceError",
    "__version__",
]
