"""Build and cache the reference host: a Debian kernel, an initramfs and a Python root.

Everything comes from the machine's own package indexes: Debian packages through
``apt-get`` (downloaded, then unpacked with ``dpkg-deb``; nothing is installed on
the host) and the project's runtime dependencies through ``pip`` with the index
it is configured for. A build happens in a temporary directory next to the
cache entry and is renamed into place when complete, so an interrupted build
leaves no half-made entry (and its leftovers are swept by the next build).

Cache layout: ``<cache>/hostkvm/refhost/<key>/`` with ``vmlinuz``,
``initramfs.cpio``, ``root/`` and ``manifest.json``; ``<cache>`` is
``$XDG_CACHE_HOME`` or ``~/.cache``. The key hashes every input: the exact
``.deb`` files, the pinned pip requirements, the init script and the module list.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hostkvm.errors import RefHostError
from hostkvm.refhost import _cpio, _guest, _modules

FORMAT_VERSION = 2
QEMU_BINARY = "qemu-system-x86_64"
KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# python3 plus the C++ runtime that keystone-engine's shared library needs.
ROOT_PACKAGES = ("python3", "libstdc++6")
# The project's runtime dependencies; pinned to the versions installed next to
# the hostkvm being run, when there are any, so both sides use the same ones.
RUNTIME_REQUIREMENTS = {"ioctl-opt": ">=1.3", "capstone": ">=5.0", "keystone-engine": ">=0.9.2"}
ROOT_SITE_PACKAGES = "usr/lib/python3/dist-packages"

Progress = Callable[[str], None]

# Which Debian package provides each host tool we run.
_TOOL_PACKAGES = {
    QEMU_BINARY: "qemu-system-x86",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
}


def _quiet(_msg: str) -> None:
    pass


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/hostkvm/refhost`` (``~/.cache/hostkvm/refhost`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hostkvm" / "refhost"


def missing_tools_message(missing: Sequence[str]) -> str:
    """The error text for host tools that are not on ``PATH``: what to ``apt-get install``."""
    pkgs = sorted({_TOOL_PACKAGES.get(t, t) for t in missing})
    return (
        f"refhost: {', '.join(missing)} not found on PATH; install with: "
        f"apt-get install --no-install-recommends {' '.join(pkgs)}"
    )


def check_host_tools(tools: Sequence[str] = (QEMU_BINARY, "apt-get", "apt-cache", "dpkg-deb")) -> None:
    """Raise :class:`RefHostError` naming the packages to install when a tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise RefHostError(missing_tools_message(missing))


# --- package resolution --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Deb:
    """One ``.deb`` as ``apt-get --print-uris`` names it."""

    uri: str
    filename: str
    size: int
    hash: str  # "SHA256:<hex>" where apt gives one (some archives give none)

    @property
    def package(self) -> str:
        return self.filename.split("_", 1)[0]

    @property
    def version(self) -> str:
        return self.filename.split("_")[1].replace("%3a", ":")


_URI_RE = re.compile(r"^'(?P<uri>[^']+)' (?P<filename>\S+\.deb) (?P<size>\d+)(?:\s+(?P<hash>\S+:\S+))?\s*$")


def parse_print_uris(text: str) -> list[Deb]:
    """Parse ``apt-get --print-uris`` output (one ``'URI' FILE SIZE [HASH]`` per line)."""
    debs = []
    for line in text.splitlines():
        m = _URI_RE.match(line.strip())
        if m:
            debs.append(Deb(m["uri"], m["filename"], int(m["size"]), m["hash"] or ""))
    return debs


def parse_kernel_depends(text: str) -> str:
    """The ``linux-image-<abi>-amd64`` package named by ``apt-cache depends linux-image-amd64``."""
    for line in text.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)\s*$", line)
        if m:
            return m.group(1)
    raise RefHostError(
        f"apt-cache: {KERNEL_METAPACKAGE} depends on no linux-image package; "
        "run `apt-get update` and check that the Debian main archive is in the sources"
    )


def _run_tool(argv: Sequence[str], what: str, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RefHostError(missing_tools_message([argv[0]])) from None
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()[-5:]
        hint = ""
        if any("Unable to locate package" in e or "has no installation candidate" in e for e in err):
            hint = "; run `apt-get update` (the package index does not know the package)"
        raise RefHostError(f"{argv[0]}: {what} failed with status {p.returncode}: {' | '.join(err)}{hint}")
    return p.stdout


def _apt_private_options(state: Path) -> list[str]:
    """apt options that resolve against an empty system and keep apt's own caches untouched."""
    return [
        "-o", f"Dir::State::status={state / 'status'}",
        "-o", f"Dir::Cache::archives={state / 'archives'}",
        "-o", "Dir::Cache::pkgcache=",
        "-o", "Dir::Cache::srcpkgcache=",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Install-Recommends=0",
    ]


def _prepare_apt_state(state: Path) -> None:
    (state / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "status").touch()


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """Every input of a build; :attr:`key` names its cache entry."""

    kernel: Deb
    busybox: Deb
    root: tuple[Deb, ...]
    requirements: tuple[str, ...]

    @property
    def python_version(self) -> str:
        """``3.11`` from the root's ``pythonX.Y`` package."""
        for d in self.root:
            m = re.fullmatch(r"python(\d+\.\d+)", d.package)
            if m:
                return m.group(1)
        raise RefHostError("refhost: the root's packages contain no pythonX.Y interpreter package")

    @property
    def kernel_release(self) -> str:
        """``6.1.0-56-amd64`` from ``linux-image-6.1.0-56-amd64``."""
        return self.kernel.package.removeprefix("linux-image-")

    @property
    def key(self) -> str:
        return cache_key(self)


def cache_key(plan: BuildPlan) -> str:
    """A short hash over every build input (package files, requirements, init, modules)."""
    doc = {
        "format": FORMAT_VERSION,
        "kernel": [plan.kernel.filename, plan.kernel.hash],
        "busybox": [plan.busybox.filename, plan.busybox.hash],
        "root": sorted([d.filename, d.hash] for d in plan.root),
        "requirements": sorted(plan.requirements),
        "init": _guest.INIT_SCRIPT,
        "modules": list(_modules.WANTED_MODULES),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def pinned_requirements() -> tuple[str, ...]:
    """The runtime requirements, pinned to the installed versions where installed."""
    from importlib import metadata

    reqs = []
    for name, spec in RUNTIME_REQUIREMENTS.items():
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(f"{name}{spec}")
    return tuple(reqs)


def resolve_plan(scratch: Path) -> BuildPlan:
    """Ask apt which exact ``.deb`` files a build takes (no download). ``scratch`` holds apt state."""
    check_host_tools(("apt-get", "apt-cache"))
    kernel_pkg = parse_kernel_depends(
        _run_tool(["apt-cache", "depends", KERNEL_METAPACKAGE], f"resolving {KERNEL_METAPACKAGE}")
    )
    singles = parse_print_uris(
        _run_tool(["apt-get", "--print-uris", "-qq", "download", kernel_pkg, BUSYBOX_PACKAGE],
                  f"resolving {kernel_pkg} and {BUSYBOX_PACKAGE}")
    )
    by_pkg = {d.package: d for d in singles}
    missing = [p for p in (kernel_pkg, BUSYBOX_PACKAGE) if p not in by_pkg]
    if missing:
        raise RefHostError(f"apt-get: no download found for {', '.join(missing)}; run `apt-get update`")
    state = scratch / "apt"
    _prepare_apt_state(state)
    root = parse_print_uris(
        _run_tool(["apt-get", "--print-uris", "-qq", "-y", *_apt_private_options(state), "install", *ROOT_PACKAGES],
                  f"resolving {' '.join(ROOT_PACKAGES)} for an empty root")
    )
    if not root:
        raise RefHostError(f"apt-get: resolving {' '.join(ROOT_PACKAGES)} gave no packages to download")
    return BuildPlan(by_pkg[kernel_pkg], by_pkg[BUSYBOX_PACKAGE], tuple(root), pinned_requirements())


# --- the cache entry -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RefHostImage:
    """A complete, cached reference host."""

    path: Path
    manifest: dict[str, object]

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def kernel(self) -> Path:
        """``vmlinux`` (direct PVH boot) when the build made one, else the ``vmlinuz`` bzImage."""
        vmlinux = self.path / "vmlinux"
        return vmlinux if vmlinux.is_file() else self.path / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.path / "initramfs.cpio"

    @property
    def root(self) -> Path:
        return self.path / "root"

    @classmethod
    def load(cls, path: Path) -> RefHostImage:
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise RefHostError(f"refhost: cache entry {path} is unreadable ({e}); delete it and rebuild") from None
        return cls(path, manifest)


def cached_images(root: Path | None = None) -> list[RefHostImage]:
    """Complete cache entries of this format, newest first."""
    root = cache_root() if root is None else root
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if not p.name.startswith(".") and (p / "manifest.json").is_file()]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    images = [RefHostImage.load(p) for p in found]
    return [i for i in images if i.manifest.get("format") == FORMAT_VERSION]


class _Lock:
    """An exclusive ``flock`` on ``<cache>/.lock`` for the length of a build."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _sweep_stale(root: Path) -> None:
    """Remove ``.tmp-*`` directories left by interrupted builds (caller holds the lock)."""
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def ensure_image(
    *, force: bool = False, progress: Progress = _quiet, cache: Path | None = None
) -> tuple[RefHostImage, bool]:
    """The cached reference host for the current package index, built if missing.

    Returns ``(image, built)``. ``force`` rebuilds even when cached.
    """
    check_host_tools()
    root = cache_root() if cache is None else cache
    root.mkdir(parents=True, exist_ok=True)
    with _Lock(root / ".lock"):
        _sweep_stale(root)
        tmp = root / f".tmp-{os.getpid()}"
        try:
            tmp.mkdir()
            t0 = time.monotonic()
            progress("refhost: resolving packages")
            plan = resolve_plan(tmp)
            final = root / plan.key
            if final.is_dir() and not force:
                return RefHostImage.load(final), False
            build_into(plan, tmp / "out", tmp, progress)
            manifest = json.loads((tmp / "out" / "manifest.json").read_text())
            manifest["build_seconds"] = round(time.monotonic() - t0, 1)
            (tmp / "out" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp / "out", final)
            progress(f"refhost: built {final} in {manifest['build_seconds']} s")
            return RefHostImage.load(final), True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def newest_image(cache: Path | None = None, progress: Progress = _quiet) -> RefHostImage:
    """The newest cached image, or a new build when there is none.

    Runs do not ask apt whether the package index moved on (that costs a second
    or two per boot); ``hostkvm refhost build`` does, and its result becomes
    the newest entry.
    """
    images = cached_images(cache)
    if images:
        return images[0]
    return ensure_image(progress=progress, cache=cache)[0]


# --- building ------------------------------------------------------------------------


def build_into(plan: BuildPlan, out: Path, scratch: Path, progress: Progress = _quiet) -> None:
    """Build the whole reference host described by ``plan`` into the new directory ``out``."""
    t0 = time.monotonic()

    def step(msg: str) -> None:
        progress(f"refhost: [{time.monotonic() - t0:5.1f} s] {msg}")

    out.mkdir()
    debs = scratch / "debs"
    debs.mkdir()
    step(f"downloading {plan.kernel.package} and {plan.busybox.package} "
         f"({(plan.kernel.size + plan.busybox.size) >> 20} MiB)")
    _run_tool(["apt-get", "download", "-qq", plan.kernel.package + "=" + plan.kernel.version,
               plan.busybox.package + "=" + plan.busybox.version], "downloading the kernel", cwd=debs)
    step(f"downloading {len(plan.root)} packages for the Python root "
         f"({sum(d.size for d in plan.root) >> 20} MiB)")
    state = scratch / "apt"
    _prepare_apt_state(state)
    _run_tool(["apt-get", "install", "--download-only", "-qq", "-y", *_apt_private_options(state),
               *ROOT_PACKAGES], "downloading the Python root's packages")
    root_debs = [state / "archives" / d.filename for d in plan.root]
    absent = [p.name for p in root_debs if not p.is_file()]
    if absent:
        raise RefHostError(f"apt-get: downloaded packages are missing: {', '.join(absent)}")

    step(f"unpacking {plan.kernel.filename}")
    kdeb = debs / plan.kernel.filename
    bdeb = debs / plan.busybox.filename
    for p in (kdeb, bdeb):
        if not p.is_file():
            raise RefHostError(f"apt-get: download of {p.name} left no file")
    modules = _extract_kernel(kdeb, plan.kernel_release, out / "vmlinuz")
    busybox = _extract_member(bdeb, "./bin/busybox")
    boot = _unpack_vmlinux(out / "vmlinuz", out / "vmlinux")

    step("writing the initramfs")
    _write_initramfs(out / "initramfs.cpio", plan.kernel_release, busybox, modules)

    step("unpacking the Python root")
    root = out / "root"
    root.mkdir()
    for p in root_debs:
        _run_tool(["dpkg-deb", "-x", str(p), str(root)], f"unpacking {p.name}")
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin" / "busybox").write_bytes(busybox)
    (root / "bin" / "busybox").chmod(0o755)
    if not (root / "bin" / "sh").exists():
        (root / "bin" / "sh").symlink_to("busybox")
    python = root / "usr" / "bin" / f"python{plan.python_version}"
    if not python.is_file():
        raise RefHostError(f"refhost: the Python root has no {python.name} after unpacking")

    step(f"installing {' '.join(plan.requirements)} for Python {plan.python_version}")
    _pip_install(plan, root / ROOT_SITE_PACKAGES)
    step("byte-compiling the root's Python library")
    _compile_root(root, plan.python_version)

    manifest = {
        "format": FORMAT_VERSION,
        "key": plan.key,
        "kernel_package": plan.kernel.filename,
        "kernel_release": plan.kernel_release,
        "boot": boot,
        "busybox_package": plan.busybox.filename,
        "root_packages": sorted(d.filename for d in plan.root),
        "python_version": plan.python_version,
        "requirements": list(plan.requirements),
        "modules": [m for m, _ in modules],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _unpack_vmlinux(vmlinuz: Path, vmlinux: Path) -> str:
    """Write ``vmlinux`` when the kernel can boot directly (PVH); return ``"pvh"`` or ``"bzimage"``."""
    from hostkvm.refhost import _kernel

    try:
        elf = _kernel.bzimage_payload(vmlinuz.read_bytes())
        if not _kernel.has_pvh_entry(elf):
            return "bzimage"
    except RefHostError:
        return "bzimage"
    vmlinux.write_bytes(elf)
    return "pvh"


def _fsys_tar(deb: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)


def _extract_member(deb: Path, member: str) -> bytes:
    import tarfile

    proc = _fsys_tar(deb)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for ti in tar:
                if ti.name == member and ti.isfile():
                    f = tar.extractfile(ti)
                    assert f is not None
                    return f.read()
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    raise RefHostError(f"dpkg-deb: {deb.name} has no {member}")


def _extract_kernel(deb: Path, release: str, vmlinuz: Path) -> list[tuple[str, bytes]]:
    """Write the kernel image to ``vmlinuz``; return the modules to load, in order, as (path, bytes).

    Paths are relative to ``/lib/modules/<release>``.
    """
    import tarfile

    mod_prefix = f"./lib/modules/{release}/"
    kos: dict[str, tuple[str, bytes]] = {}
    builtin: list[str] = []
    got_kernel = False
    proc = _fsys_tar(deb)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for ti in tar:
            if not ti.isfile():
                continue
            if ti.name == f"./boot/vmlinuz-{release}":
                f = tar.extractfile(ti)
                assert f is not None
                vmlinuz.write_bytes(f.read())
                got_kernel = True
            elif ti.name == mod_prefix + "modules.builtin":
                f = tar.extractfile(ti)
                assert f is not None
                builtin = [_modules.module_name(x) for x in f.read().decode().split()]
            elif ti.name.startswith(mod_prefix) and ti.name.endswith(".ko"):
                f = tar.extractfile(ti)
                assert f is not None
                rel = ti.name[len(mod_prefix):]
                kos[_modules.module_name(rel)] = (rel, f.read())
    proc.stdout.close()
    if proc.wait() != 0:
        raise RefHostError(f"dpkg-deb: --fsys-tarfile {deb.name} failed with status {proc.returncode}")
    if not got_kernel:
        raise RefHostError(f"dpkg-deb: {deb.name} has no boot/vmlinuz-{release}")
    depends = {name: _modules.modinfo_depends(data) for name, (_, data) in kos.items()}
    order = _modules.load_order(_modules.WANTED_MODULES, depends, builtin)
    for name in _modules.KVM_MODULES:
        if name not in order:
            raise RefHostError(f"kernel module {name}: not a module in {deb.name}; the init loads it with parameters")
    return [kos[name] for name in order]


def _write_initramfs(path: Path, release: str, busybox: bytes, modules: list[tuple[str, bytes]]) -> None:
    """The initramfs: busybox and its applets, /init, the modules and their load order."""
    applets = _busybox_applets(busybox)
    kvm = {_modules.module_name(rel): rel for rel, _ in modules if _modules.module_name(rel) in _modules.KVM_MODULES}
    others = [rel for rel, _ in modules if _modules.module_name(rel) not in _modules.KVM_MODULES]
    with open(path, "wb") as f:
        w = _cpio.CpioWriter(f)
        for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "etc/hostkvm", "lib", "lib/modules"):
            w.add_dir(d)
        w.add_chardev("dev/console", 5, 1, 0o600)
        w.add_chardev("dev/null", 1, 3, 0o666)
        w.add_file("bin/busybox", busybox, 0o755)
        for a in applets:
            if a != "busybox":
                w.add_symlink(f"bin/{a}", "busybox")
        w.add_file("init", _guest.INIT_SCRIPT.encode(), 0o755)
        w.add_file("etc/hostkvm/modules", "".join(f"{rel}\n" for rel in others).encode())
        w.add_file("etc/hostkvm/kvm.ko", f"{kvm['kvm']}\n".encode())
        w.add_file("etc/hostkvm/kvm-amd.ko", f"{kvm['kvm_amd']}\n".encode())
        made: set[str] = set()
        for rel, data in modules:
            parts = f"lib/modules/{release}/{rel}".split("/")
            for i in range(3, len(parts)):
                d = "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    w.add_dir(d)
            w.add_file("/".join(parts), data)
        w.close()


def _busybox_applets(busybox: bytes) -> list[str]:
    """The applet names a busybox binary offers (runs it once with ``--list``)."""
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="busybox-", delete=False) as f:
        f.write(busybox)
    try:
        os.chmod(f.name, 0o755)
        out = _run_tool([f.name, "--list"], "busybox --list")
    finally:
        os.unlink(f.name)
    applets = sorted(set(out.split()))
    for needed in ("sh", "mount", "insmod", "chroot", "env", "poweroff", "sed"):
        if needed not in applets:
            raise RefHostError(f"busybox: applet {needed} missing from {BUSYBOX_PACKAGE}")
    return applets


def pip_install_argv(python: str, target: Path, python_version: str, requirements: Sequence[str]) -> list[str]:
    """The ``pip install`` command that puts binary wheels for the root's Python into ``target``."""
    minor = python_version.replace(".", "")
    platforms = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
    platforms += [f"manylinux_2_{n}_x86_64" for n in range(5, 37)]
    argv = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
            "--target", str(target), "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python_version, "--abi", f"cp{minor}", "--abi", "abi3", "--abi", "none"]
    for p in platforms:
        argv += ["--platform", p]
    return argv + list(requirements)


def _pip_install(plan: BuildPlan, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    argv = pip_install_argv(sys.executable, target, plan.python_version, plan.requirements)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as e:
        raise RefHostError(f"pip: cannot run {sys.executable} -m pip ({e})") from None
    if p.returncode != 0:
        tail = " | ".join(p.stderr.strip().splitlines()[-5:])
        raise RefHostError(
            f"pip: installing {' '.join(plan.requirements)} into the root failed with status {p.returncode}: "
            f"{tail} (the running Python needs pip: python3 -m ensurepip, or apt-get install python3-pip)"
        )


def _compile_root(root: Path, python_version: str) -> None:
    """Byte-compile the root's library with this Python when it is the same X.Y (same magic).

    The root is read-only in the guest, and compiling the standard library from
    source on every boot costs seconds under TCG.
    """
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != python_version:
        return
    import compileall

    for d in (root / "usr" / "lib" / f"python{python_version}", root / ROOT_SITE_PACKAGES):
        if d.is_dir():
            with io.StringIO() as sink:
                stdout, sys.stdout = sys.stdout, sink
                try:
                    compileall.compile_dir(d, quiet=2, workers=1,
                                           ddir="/" + str(d.relative_to(root)))
                finally:
                    sys.stdout = stdout
