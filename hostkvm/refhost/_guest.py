"""What runs inside the reference host: the initramfs ``/init`` and the per-run script.

Both are busybox ``sh``. The init is fixed at build time (it is part of the
cache key); the per-run script ``cmd.sh`` is written by the host for each run
into the read-write 9p share and only defines ``hk_run``, so that the command's
argv crosses over exactly (every word single-quoted with :func:`shlex.quote`).

The guest tells the host how things went with marker lines on its console
(ttyS0), each carrying the run's nonce so that nothing the command prints can
be taken for one::

    HOSTKVM-REFHOST-KVM <nonce> mmio_caching=Y npt=Y tdp_mmu=Y
    HOSTKVM-REFHOST-START <nonce>
    HOSTKVM-REFHOST-EXIT <nonce> <status>
    HOSTKVM-REFHOST-FAIL <nonce> <what went wrong>
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

MARKER = "HOSTKVM-REFHOST"

# 9p mount tags (QEMU -virtfs mount_tag=...).
TAG_ROOT = "hkroot"
TAG_CHECKOUT = "hkcheckout"
TAG_RUN = "hkrun"

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

INIT_SCRIPT = r"""#!/bin/sh
# hostkvm reference host: /init of the initramfs (busybox sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

NONCE=$(sed -n 's/.*hostkvm\.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
NPT=$(sed -n 's/.*hostkvm\.npt=\([01]\).*/\1/p' /proc/cmdline)
say() { echo "HOSTKVM-REFHOST-$1 $NONCE${2:+ $2}" > /dev/console; }
fail() {
    say FAIL "$1"
    dmesg | tail -n 20 > /dev/console
    poweroff -f
    sleep 10
}
[ -n "$NONCE" ] || fail "no hostkvm.nonce= on the kernel command line"
[ -n "$NPT" ] || fail "no hostkvm.npt=0|1 on the kernel command line"

M=/lib/modules/$(uname -r)
while read -r ko; do
    insmod "$M/$ko" || fail "insmod $ko failed"
done < /etc/hostkvm/modules
insmod "$M/$(cat /etc/hostkvm/kvm.ko)" || fail "insmod kvm failed"
insmod "$M/$(cat /etc/hostkvm/kvm-amd.ko)" npt="$NPT" || fail "insmod kvm_amd npt=$NPT failed (does the CPU model have +svm?)"
[ -c /dev/kvm ] || fail "/dev/kvm did not appear after loading kvm_amd"
P=/sys/module
say KVM "mmio_caching=$(cat $P/kvm/parameters/mmio_caching) npt=$(cat $P/kvm_amd/parameters/npt) tdp_mmu=$(cat $P/kvm/parameters/tdp_mmu 2>/dev/null)"

O=trans=virtio,version=9p2000.L,msize=262144
mkdir -p /rootfs /share /newroot
mount -t 9p -o $O,ro,cache=loose hkroot /rootfs || fail "mount 9p hkroot failed"
mount -t 9p -o $O hkrun /share || fail "mount 9p hkrun failed"
. /share/cmd.sh || fail "cannot read cmd.sh from the run share"

# The command's root: a tmpfs with the read-only Python root bound in, so that
# the checkout can be mounted at the same path as on the host.
mount -t tmpfs -o mode=0755 tmpfs /newroot
for d in /rootfs/*; do
    n=${d#/rootfs/}
    if [ -L "$d" ]; then
        cp -a "$d" "/newroot/$n"
    elif [ -d "$d" ]; then
        mkdir "/newroot/$n" && mount --bind "$d" "/newroot/$n" || fail "bind $n failed"
    fi
done
for d in dev proc sys tmp root run; do mkdir -p "/newroot/$d"; done
chmod 1777 /newroot/tmp
mount -t devtmpfs devtmpfs /newroot/dev
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t tracefs nodev /newroot/sys/kernel/tracing || fail "mount tracefs failed"
mkdir -p "/newroot$HK_CHECKOUT" || fail "cannot make the checkout mount point $HK_CHECKOUT"
mount -t 9p -o $O,ro hkcheckout "/newroot$HK_CHECKOUT" || fail "mount 9p hkcheckout failed"

say START
hk_run > /share/stdout 2> /dev/console < /dev/null
say EXIT $?
poweroff -f
sleep 10
"""


def render_cmd_script(
    argv: Sequence[str],
    *,
    checkout: str,
    cwd: str,
    env: Mapping[str, str],
) -> str:
    """The per-run ``cmd.sh`` sourced by the init: defines ``HK_CHECKOUT`` and ``hk_run``.

    ``hk_run`` clears the environment, sets ``env``, enters the command's root
    and runs ``argv`` from ``cwd`` (both guest paths).
    """
    if not argv:
        raise ValueError("refhost: empty command")
    for k in env:
        if not k or "=" in k or not (k[0].isalpha() or k[0] == "_") or not all(c.isalnum() or c == "_" for c in k):
            raise ValueError(f"refhost: bad environment variable name {k!r}")
    q = shlex.quote
    assigns = " ".join(q(f"{k}={v}") for k, v in env.items())
    words = " ".join(q(a) for a in argv)
    inner = 'cd "$1" || exit 126; shift; exec "$@"'
    return (
        "# written by hostkvm refhost run for one run\n"
        f"HK_CHECKOUT={q(checkout)}\n"
        "hk_run() {\n"
        f"    env -i {assigns} chroot /newroot /bin/sh -c {q(inner)} hostkvm-run {q(cwd)} {words}\n"
        "}\n"
    )
