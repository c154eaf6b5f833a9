"""Host configurations measured on this project's machines (see HOST.md and the reference
host recipe): ready-made :class:`HostConfig` values for tests and examples."""

from __future__ import annotations

from hostkvm.mirror._config import HostConfig

__all__ = ["HOST_PVM_6_18", "REFHOST_6_1_NPT", "REFHOST_6_1_SHADOW"]

#: This project's hosts: PVM on 6.18.44, shadow paging only, mmio_caching=N, no SMM,
#: 48-bit MAXPHYADDR, not L1TF-affected.
HOST_PVM_6_18 = HostConfig(
    kernel="6.18.44-fc-v669",
    backend="pvm",
    paging="shadow",
    tdp_mmu=False,
    mmio_caching=False,
    maxphyaddr=48,
    smm=False,
)

#: The reference host: Debian 6.1 kvm_amd under QEMU TCG (qemu64,+svm,+npt: 40-bit
#: MAXPHYADDR), npt=1 with the TDP MMU, SMM built in (2 address spaces).
REFHOST_6_1_NPT = HostConfig(
    kernel="6.1.0-56-amd64",
    backend="svm",
    paging="npt",
    tdp_mmu=True,
    mmio_caching=True,
    maxphyaddr=40,
    smm=True,
)

#: The reference host with npt=0 (shadow MMU).
REFHOST_6_1_SHADOW = HostConfig(
    kernel="6.1.0-56-amd64",
    backend="svm",
    paging="shadow",
    tdp_mmu=True,
    mmio_caching=True,
    maxphyaddr=40,
    smm=True,
)
