"""Kernel module bookkeeping for the reference host's initramfs (pure functions).

The Debian kernel package ships no ``modules.dep`` (``depmod`` makes it on
install), so the load order is worked out from each module's ``.modinfo``
``depends=`` field, the way ``depmod`` reads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from hostkvm.errors import RefHostError

# What the guest needs: 9p over virtio-pci for the root, the checkout and the
# run directory, and kvm_amd (loaded last, with npt=, by the guest's init).
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "kvm_amd")
# Loaded by the guest's init itself, with parameters, after everything else.
KVM_MODULES = ("kvm", "kvm_amd")

_DEPENDS_RE = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")


def module_name(path: str) -> str:
    """``kernel/arch/x86/kvm/kvm-amd.ko`` -> ``kvm_amd`` (the kernel's spelling)."""
    base = path.rsplit("/", 1)[-1]
    for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return base.replace("-", "_")


def modinfo_depends(ko: bytes) -> list[str]:
    """The ``depends=`` list of a module's ``.modinfo`` (empty when it has none)."""
    m = _DEPENDS_RE.search(ko)
    if m is None or not m.group(1):
        return []
    return [module_name(d.decode()) for d in m.group(1).split(b",") if d]


def load_order(
    wanted: Iterable[str],
    depends: Mapping[str, list[str]],
    builtin: Iterable[str] = (),
) -> list[str]:
    """Modules to ``insmod``, dependencies first, each once.

    ``depends`` maps every available module to its ``depends=`` list;
    ``builtin`` names what is compiled into the kernel (skipped). A module that
    is neither raises :class:`RefHostError`.
    """
    builtin_set = set(builtin)
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in builtin_set or state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise RefHostError(f"kernel module {name}: dependency cycle {' -> '.join(chain + (name,))}")
        if name not in depends:
            via = f" (needed by {chain[-1]})" if chain else ""
            raise RefHostError(
                f"kernel module {name}: not in the kernel package and not built in{via}; "
                "the guest kernel cannot mount the 9p shares or load kvm_amd without it"
            )
        state[name] = 1
        for dep in depends[name]:
            visit(dep, chain + (name,))
        state[name] = 2
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order
