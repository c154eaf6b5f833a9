"""Pure parts of the reference host: archive format, module order, apt parsing, command lines,
the console protocol, the per-run script, and QEMU lifetime with a stand-in QEMU."""

from __future__ import annotations

import argparse
import gzip
import io
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hostkvm.errors import RefHostError
from hostkvm.refhost import _build, _cpio, _guest, _kernel, _modules, _run, cli

NONCE = "0123456789abcdef"


# --- cpio ----------------------------------------------------------------------------


def test_cpio_round_trip_keeps_names_modes_data_and_device_numbers() -> None:
    buf = io.BytesIO()
    w = _cpio.CpioWriter(buf)
    w.add_dir("bin")
    w.add_file("bin/busybox", b"\x7fELF" + b"x" * 5, 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_chardev("dev/console", 5, 1, 0o600)
    w.add_file("/init", b"#!/bin/sh\n", 0o755)
    w.close()
    data = buf.getvalue()
    assert len(data) % 4 == 0
    assert data.count(b"TRAILER!!!") == 1
    got = _cpio.read_newc(data)
    assert [(n, m) for n, m, _, _ in got] == [
        ("bin", stat.S_IFDIR | 0o755),
        ("bin/busybox", stat.S_IFREG | 0o755),
        ("bin/sh", stat.S_IFLNK | 0o777),
        ("dev/console", stat.S_IFCHR | 0o600),
        ("init", stat.S_IFREG | 0o755),
    ]
    assert got[1][2] == b"\x7fELF" + b"x" * 5
    assert got[2][2] == b"busybox"
    assert got[3][3] == (5, 1)


def test_cpio_headers_are_newc_and_every_member_is_4_aligned() -> None:
    buf = io.BytesIO()
    w = _cpio.CpioWriter(buf)
    for n in range(1, 9):
        w.add_file("f" * n, b"d" * n)
    w.close()
    data = buf.getvalue()
    pos = 0
    for n in range(1, 9):
        assert data[pos : pos + 6] == b"070701"
        namesize = int(data[pos + 94 : pos + 102], 16)
        assert namesize == n + 1
        pos += 110 + namesize
        pos += -pos % 4
        pos += n + (-n % 4)
    assert data[pos : pos + 6] == b"070701"


@pytest.mark.parametrize("name", ["", "/", "../etc/passwd", "a/../../b"])
def test_cpio_refuses_names_that_escape(name: str) -> None:
    with pytest.raises(ValueError):
        _cpio.CpioWriter(io.BytesIO()).add_file(name, b"")


def test_cpio_closed_archive_takes_no_more_entries() -> None:
    w = _cpio.CpioWriter(io.BytesIO())
    w.close()
    with pytest.raises(ValueError):
        w.add_dir("x")


# --- modules -------------------------------------------------------------------------


def _ko(depends: str) -> bytes:
    return b"\x7fELF junk\x00license=GPL\x00depends=" + depends.encode() + b"\x00retpoline=Y\x00"


def test_module_names_use_the_kernel_spelling() -> None:
    assert _modules.module_name("kernel/arch/x86/kvm/kvm-amd.ko") == "kvm_amd"
    assert _modules.module_name("kernel/net/9p/9pnet_virtio.ko.xz") == "9pnet_virtio"


def test_modinfo_depends_reads_the_list() -> None:
    assert _modules.modinfo_depends(_ko("kvm,ccp")) == ["kvm", "ccp"]
    assert _modules.modinfo_depends(_ko("")) == []
    assert _modules.modinfo_depends(b"no modinfo here") == []


def test_load_order_puts_dependencies_first_once_and_skips_builtins() -> None:
    deps = {"kvm_amd": ["kvm", "ccp"], "kvm": ["irqbypass"], "irqbypass": [], "ccp": [],
            "9p": ["9pnet", "netfs"], "9pnet": [], "netfs": []}
    order = _modules.load_order(["kvm_amd", "9p", "kvm"], deps, builtin=["netfs"])
    assert order == ["irqbypass", "kvm", "ccp", "kvm_amd", "9pnet", "9p"]


def test_load_order_names_a_missing_module_and_who_needs_it() -> None:
    with pytest.raises(RefHostError, match=r"kernel module ccp: not in the kernel package.*needed by kvm_amd"):
        _modules.load_order(["kvm_amd"], {"kvm_amd": ["ccp"]})


def test_load_order_reports_cycles() -> None:
    with pytest.raises(RefHostError, match="dependency cycle a -> b -> a"):
        _modules.load_order(["a"], {"a": ["b"], "b": ["a"]})


# --- apt output, cache keys, host tools ------------------------------------------------

PRINT_URIS = textwrap.dedent("""\
    'http://archive.invalid/pool/main/p/python3.11/python3.11_3.11.2-6_amd64.deb' python3.11_3.11.2-6_amd64.deb 573920 SHA256:ab12
    'http://archive.invalid/pool/updates/z/zlib/zlib1g_1%3a1.2.13_amd64.deb' zlib1g_1%3a1.2.13_amd64.deb 87000 
    Reading package lists...
""")


def test_parse_print_uris_with_and_without_hash() -> None:
    debs = _build.parse_print_uris(PRINT_URIS)
    assert [(d.package, d.version, d.size, d.hash) for d in debs] == [
        ("python3.11", "3.11.2-6", 573920, "SHA256:ab12"),
        ("zlib1g", "1:1.2.13", 87000, ""),
    ]


def test_parse_kernel_depends() -> None:
    text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
    assert _build.parse_kernel_depends(text) == "linux-image-6.1.0-56-amd64"
    with pytest.raises(RefHostError, match="apt-get update"):
        _build.parse_kernel_depends("linux-image-amd64\n")


def _plan(**over: object) -> _build.BuildPlan:
    deb = _build.Deb
    base: dict[str, object] = {
        "kernel": deb("u", "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb", 1, "SHA256:k"),
        "busybox": deb("u", "busybox-static_1%3a1.35.0-4_amd64.deb", 1, "SHA256:b"),
        "root": (deb("u", "python3.11_3.11.2-6_amd64.deb", 1, ""), deb("u", "libc6_2.36_amd64.deb", 1, "")),
        "requirements": ("capstone==5.0.9",),
    }
    base.update(over)
    return _build.BuildPlan(**base)  # type: ignore[arg-type]


def test_plan_derives_release_and_python_version() -> None:
    p = _plan()
    assert p.kernel_release == "6.1.0-56-amd64"
    assert p.python_version == "3.11"
    with pytest.raises(RefHostError, match="no pythonX.Y"):
        _ = _plan(root=(_build.Deb("u", "libc6_2.36_amd64.deb", 1, ""),)).python_version


def test_cache_key_is_stable_and_follows_every_input() -> None:
    p = _plan()
    assert p.key == _plan().key and len(p.key) == 16
    # order of the root's packages does not matter
    assert _plan(root=tuple(reversed(p.root))).key == p.key
    changed = [
        _plan(kernel=_build.Deb("u", "linux-image-6.1.0-57-amd64_6.1.193-1_amd64.deb", 1, "SHA256:k")),
        _plan(busybox=_build.Deb("u", "busybox-static_1%3a1.36_amd64.deb", 1, "SHA256:b")),
        _plan(root=p.root[:1]),
        _plan(requirements=("capstone==5.0.8",)),
    ]
    assert len({c.key for c in changed} | {p.key}) == 5


def test_cache_key_follows_the_init_script(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _plan().key
    monkeypatch.setattr(_guest, "INIT_SCRIPT", _guest.INIT_SCRIPT + "# changed\n")
    assert _plan().key != before


def test_missing_tools_say_what_to_apt_get_install() -> None:
    msg = _build.missing_tools_message(["qemu-system-x86_64", "dpkg-deb"])
    assert msg.startswith("refhost: qemu-system-x86_64, dpkg-deb not found on PATH")
    assert msg.endswith("apt-get install --no-install-recommends dpkg qemu-system-x86")


def test_check_host_tools_raises_without_qemu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RefHostError, match="apt-get install --no-install-recommends .*qemu-system-x86"):
        _build.check_host_tools()


def test_cache_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _build.cache_root() == tmp_path / "hostkvm" / "refhost"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _build.cache_root() == tmp_path / "home" / ".cache" / "hostkvm" / "refhost"


def test_pip_argv_targets_the_roots_python_with_binary_wheels(tmp_path: Path) -> None:
    argv = _build.pip_install_argv("/py", tmp_path, "3.11", ["capstone==5.0.9"])
    assert argv[:4] == ["/py", "-m", "pip", "install"]
    assert argv[argv.index("--target") + 1] == str(tmp_path)
    assert argv[argv.index("--python-version") + 1] == "3.11"
    assert "--only-binary=:all:" in argv and "cp311" in argv and "manylinux2014_x86_64" in argv
    assert argv[-1] == "capstone==5.0.9"


# --- atomic build ----------------------------------------------------------------------


def _fake_resolution(monkeypatch: pytest.MonkeyPatch, build: object) -> None:
    monkeypatch.setattr(_build, "check_host_tools", lambda *a: None)
    monkeypatch.setattr(_build, "resolve_plan", lambda scratch: _plan())
    monkeypatch.setattr(_build, "build_into", build)


def test_interrupted_build_leaves_no_entry_and_no_temp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def build(plan: _build.BuildPlan, out: Path, scratch: Path, progress: object) -> None:
        out.mkdir()
        (out / "vmlinuz").write_bytes(b"half")
        raise KeyboardInterrupt

    _fake_resolution(monkeypatch, build)
    with pytest.raises(KeyboardInterrupt):
        _build.ensure_image(cache=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    assert _build.cached_images(tmp_path) == []


def test_build_is_renamed_into_place_and_then_found_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []

    def build(plan: _build.BuildPlan, out: Path, scratch: Path, progress: object) -> None:
        calls.append(plan.key)
        out.mkdir()
        (out / "manifest.json").write_text(f'{{"format": {_build.FORMAT_VERSION}, "key": "{plan.key}"}}')

    _fake_resolution(monkeypatch, build)
    (tmp_path / ".tmp-999999").mkdir()  # left by a killed build
    img, built = _build.ensure_image(cache=tmp_path)
    assert built and img.path == tmp_path / _plan().key and img.manifest["build_seconds"] >= 0
    img2, built2 = _build.ensure_image(cache=tmp_path)
    assert not built2 and img2.path == img.path and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", _plan().key]
    assert _build.newest_image(tmp_path).path == img.path


# --- kernel image ----------------------------------------------------------------------


def _bzimage(payload: bytes) -> bytes:
    setup_sects = 1
    head = bytearray((setup_sects + 1) * 512)
    head[0x1F1] = setup_sects
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x20F)
    struct.pack_into("<II", head, 0x248, 16, len(payload))
    return bytes(head) + b"\0" * 16 + payload + b"tail"


def _elf_with_notes(notes: list[tuple[bytes, int, bytes]]) -> bytes:
    blob = b""
    for name, t, desc in notes:
        n = name + b"\0"
        blob += struct.pack("<III", len(n), len(desc), t) + n + b"\0" * (-len(n) % 4) + desc + b"\0" * (-len(desc) % 4)
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", ehdr, 0x20, 64)
    struct.pack_into("<HH", ehdr, 0x36, 56, 1)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 64 + 56, 0, 0, len(blob), len(blob), 4)
    return bytes(ehdr) + phdr + blob


def test_bzimage_payload_unpacks_gzip_and_refuses_other_files() -> None:
    assert _kernel.bzimage_payload(_bzimage(gzip.compress(b"\x7fELF-kernel"))) == b"\x7fELF-kernel"
    with pytest.raises(RefHostError, match="not a bzImage"):
        _kernel.bzimage_payload(b"\0" * 4096)
    with pytest.raises(RefHostError, match="not supported"):
        _kernel.bzimage_payload(_bzimage(b"BZh91AY&SY"))


def test_pvh_entry_note_is_found_only_when_present() -> None:
    with_pvh = _elf_with_notes([(b"Xen", 6, b"linux\0"), (b"Xen", 18, b"\0\0\0\x01")])
    without = _elf_with_notes([(b"Xen", 6, b"linux\0"), (b"GNU", 18, b"x")])
    assert _kernel.elf_notes(with_pvh) == [("Xen", 6, b"linux\0"), ("Xen", 18, b"\0\0\0\x01")]
    assert _kernel.has_pvh_entry(with_pvh)
    assert not _kernel.has_pvh_entry(without)
    with pytest.raises(RefHostError, match="not a 64-bit"):
        _kernel.elf_notes(b"MZ")


# --- command lines -------------------------------------------------------------------


def _cfg(tmp_path: Path, npt: int = 1, checkout: str = "/src/hk") -> _run.QemuConfig:
    return _run.QemuConfig(tmp_path / "vmlinux", tmp_path / "initramfs.cpio", tmp_path / "root",
                           Path(checkout), tmp_path / "run", npt, NONCE)


def test_qemu_argv_is_tcg_with_svm_npt_and_three_9p_shares(tmp_path: Path) -> None:
    argv = _run.qemu_argv(_cfg(tmp_path))
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-cpu") + 1] == "qemu64,+svm,+npt"
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "vmlinux")
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert argv[argv.index("-append") + 1] == (
        f"console=ttyS0 panic=-1 quiet loglevel=4 hostkvm.npt=1 hostkvm.nonce={NONCE}"
    )
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert shares == [
        f"local,path={tmp_path / 'root'},mount_tag=hkroot,security_model=none,readonly=on",
        "local,path=/src/hk,mount_tag=hkcheckout,security_model=none,readonly=on",
        f"local,path={tmp_path / 'run'},mount_tag=hkrun,security_model=none",
    ]


def test_qemu_argv_escapes_commas_in_paths(tmp_path: Path) -> None:
    argv = _run.qemu_argv(_cfg(tmp_path, checkout="/src/a,b"))
    assert "local,path=/src/a,,b,mount_tag=hkcheckout,security_model=none,readonly=on" in argv


@pytest.mark.parametrize(("npt", "nonce"), [(2, NONCE), (-1, NONCE), (1, "XYZ"), (1, "ab cd1234")])
def test_kernel_cmdline_rejects_bad_values(npt: int, nonce: str) -> None:
    with pytest.raises(ValueError):
        _run.kernel_cmdline(npt, nonce)


def test_guest_paths_mirror_the_host_unless_that_lands_in_the_root() -> None:
    entries = ["bin", "etc", "lib", "lib64", "usr", "var"]
    assert _run.guest_checkout_path(Path("/srv/hk"), entries) == "/srv/hk"
    assert _run.guest_checkout_path(Path("/usr/src/hk"), entries) == "/checkout"
    assert _run.guest_checkout_path(Path("/tmp/hk"), entries) == "/checkout"
    assert _run.guest_cwd(Path("/w/hk/tests"), Path("/w/hk"), "/checkout") == "/checkout/tests"
    assert _run.guest_cwd(Path("/w/hk"), Path("/w/hk"), "/w/hk") == "/w/hk"
    assert _run.guest_cwd(Path("/elsewhere"), Path("/w/hk"), "/w/hk") == "/w/hk"


def test_guest_env_puts_the_checkout_on_pythonpath_and_names_the_config() -> None:
    env = _run.guest_env(0, "/w/hk", {"EXTRA": "1"})
    assert env["PYTHONPATH"] == "/w/hk" and env["HOSTKVM_REFHOST"] == "ref-npt0" and env["EXTRA"] == "1"
    assert env["PATH"].endswith("/bin")


def test_cmd_script_passes_argv_word_for_word(tmp_path: Path) -> None:
    argv = ["python3", "-c", "print('a b')", "$HOME", "two\nlines", "", "it's", "*"]
    script = _guest.render_cmd_script(argv, checkout="/w/hk", cwd="/w/hk/tests", env={"A": "x y", "B": "$z"})
    # Stand-ins for busybox env/chroot print the words the real ones would receive.
    probe = tmp_path / "probe.sh"
    probe.write_text(
        'env() { for w in "$@"; do printf "%s\\0" "$w"; done; }\n' + script + 'hk_run\nprintf "%s\\0" "$HK_CHECKOUT"\n'
    )
    out = subprocess.run(["sh", str(probe)], capture_output=True, check=True).stdout.decode()
    words = out.split("\0")[:-1]
    assert words[:3] == ["-i", "A=x y", "B=$z"]
    assert words[3:6] == ["chroot", "/newroot", "/bin/sh"]
    assert words[6] == "-c" and words[8] == "hostkvm-run" and words[9] == "/w/hk/tests"
    assert words[10:-1] == argv
    assert words[-1] == "/w/hk"


def test_cmd_script_inner_shell_changes_directory_then_execs(tmp_path: Path) -> None:
    script = _guest.render_cmd_script(["pwd"], checkout="/", cwd=str(tmp_path), env={})
    inner = 'cd "$1" || exit 126; shift; exec "$@"'
    assert inner.replace('"', "") in script.replace('"', "")
    out = subprocess.run(["sh", "-c", inner, "x", str(tmp_path), "pwd"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path)


@pytest.mark.parametrize("bad", ["", "A=B", "1X", "A-B"])
def test_cmd_script_refuses_bad_env_names(bad: str) -> None:
    with pytest.raises(ValueError):
        _guest.render_cmd_script(["true"], checkout="/c", cwd="/c", env={bad: "v"})


def test_init_script_uses_the_same_tags_and_markers_as_the_host() -> None:
    init = _guest.INIT_SCRIPT
    for tag in (_guest.TAG_ROOT, _guest.TAG_CHECKOUT, _guest.TAG_RUN):
        assert f" {tag} " in init
    for m in ("START", "EXIT", "FAIL", "KVM"):
        assert f"say {m}" in init
    assert 'npt="$NPT"' in init and "tracefs" in init and init.startswith("#!/bin/sh\n")


def test_init_script_parses_with_sh(tmp_path: Path) -> None:
    p = tmp_path / "init"
    p.write_text(_guest.INIT_SCRIPT)
    subprocess.run(["sh", "-n", str(p)], check=True)


# --- console protocol ----------------------------------------------------------------

CONSOLE = (
    b"\x1bc\x1b[?7lSeaBIOS (version 1.16)\r\n"
    b"[    1.2] some kernel line\r\n"
    b"HOSTKVM-REFHOST-KVM " + NONCE.encode() + b" mmio_caching=Y npt=N tdp_mmu=Y\r\n"
    b"HOSTKVM-REFHOST-START " + NONCE.encode() + b"\r\n"
    b"progress 1\r\n"
    b"HOSTKVM-REFHOST-EXIT ffffffffffffffff 9\r\n"
    b"no newline at the end\xe2\x9c\x93HOSTKVM-REFHOST-EXIT " + NONCE.encode() + b" 3\r\n"
    b"[    7.0] reboot: Power down\r\n"
)


@pytest.mark.parametrize("chunk", [len(CONSOLE), 1, 7])
def test_console_parser_splits_noise_stderr_and_status(chunk: int) -> None:
    p = _run.ConsoleParser(NONCE)
    out = "".join(p.feed(CONSOLE[i : i + chunk]) for i in range(0, len(CONSOLE), chunk)) + p.finish()
    assert out == (
        "progress 1\n"
        "HOSTKVM-REFHOST-EXIT ffffffffffffffff 9\n"  # another run's nonce is plain output
        "no newline at the end\u2713"
    )
    assert p.started and p.status == 3 and p.failure is None
    assert p.kvm_params == {"mmio_caching": "Y", "npt": "N", "tdp_mmu": "Y"}
    assert "reboot: Power down" not in p.tail_text()


@pytest.mark.parametrize("status", [0, 1, 126, 255])
def test_console_parser_status_is_exact(status: int) -> None:
    p = _run.ConsoleParser(NONCE)
    p.feed(f"HOSTKVM-REFHOST-START {NONCE}\nHOSTKVM-REFHOST-EXIT {NONCE} {status}\n".encode())
    assert p.status == status and p.done


def test_console_parser_failure_and_tail() -> None:
    p = _run.ConsoleParser(NONCE, tail_lines=3)
    p.feed(b"a\nb\nc\n" + f"HOSTKVM-REFHOST-FAIL {NONCE} insmod kernel/x.ko failed\n".encode())
    assert p.done and p.status is None and not p.started
    assert p.failure == "insmod kernel/x.ko failed"
    assert p.tail_text() == "    b\n    c\n    HOSTKVM-REFHOST-FAIL " + NONCE + " insmod kernel/x.ko failed"


def test_console_parser_ignores_markers_before_start_as_output() -> None:
    p = _run.ConsoleParser(NONCE)
    assert p.feed(f"HOSTKVM-REFHOST-EXIT {NONCE} 0\n".encode()) == ""
    assert p.status is None  # an EXIT before START is boot noise, not a result


# --- QEMU lifetime, with a stand-in for QEMU ----------------------------------------------

FAKE_QEMU = r"""
import os, subprocess, sys, time
mode, nonce, out_path, pidfile = sys.argv[1:5]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(pidfile, "w") as f:
    f.write(f"{os.getpid()} {child.pid}\n")
w = sys.stdout.buffer
w.write(b"SeaBIOS\r\nbooting\r\n"); w.flush()
if mode == "noboot":
    w.write(b"Kernel panic - not syncing: VFS: Unable to mount root fs\r\n"); w.flush(); sys.exit(0)
w.write(f"HOSTKVM-REFHOST-KVM {nonce} mmio_caching=Y npt=Y\r\nHOSTKVM-REFHOST-START {nonce}\r\n".encode()); w.flush()
if mode == "hang":
    time.sleep(600)
with open(out_path, "ab") as f:
    f.write(b'{"backend": "svm"}\n')
w.write(f"warn\r\nHOSTKVM-REFHOST-EXIT {nonce} 5\r\n".encode()); w.flush()
time.sleep(600)  # like a guest that does not power off: the host must still stop it
"""


def _gone(pids: list[int]) -> bool:
    """All of ``pids`` dead within a few seconds (SIGKILL delivery to reparented children is asynchronous)."""
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _drive_fake(tmp_path: Path, mode: str, timeout: float) -> tuple[object, list[int], str]:
    script = tmp_path / "fake_qemu.py"
    script.write_text(FAKE_QEMU)
    out = tmp_path / "stdout"
    out.touch()
    pidfile = tmp_path / "pids"
    cfg = _cfg(tmp_path)
    err = io.StringIO()
    argv = [sys.executable, str(script), mode, NONCE, str(out), str(pidfile)]
    try:
        result: object = _run._drive(argv, cfg, out, timeout, None, err)
    except RefHostError as e:
        result = e
    pids = [int(x) for x in pidfile.read_text().split()]
    return result, pids, err.getvalue()


def test_drive_returns_status_and_stdout_and_kills_the_group(tmp_path: Path) -> None:
    result, pids, err = _drive_fake(tmp_path, "ok", 30)
    assert result == _run.RefHostResult(5, '{"backend": "svm"}\n')
    assert err == "warn\n"
    assert _gone(pids)


def test_drive_timeout_raises_with_console_and_kills_the_group(tmp_path: Path) -> None:
    t0 = time.monotonic()
    result, pids, _ = _drive_fake(tmp_path, "hang", 1.0)
    assert isinstance(result, RefHostError)
    assert "timed out after 1 s (command still running, npt=1)" in str(result)
    assert "HOSTKVM-REFHOST-START" in str(result)
    assert time.monotonic() - t0 < 20
    assert _gone(pids)


def test_drive_guest_that_does_not_boot_shows_its_console(tmp_path: Path) -> None:
    result, pids, _ = _drive_fake(tmp_path, "noboot", 30)
    assert isinstance(result, RefHostError)
    assert str(result).startswith("refhost: the guest did not boot; QEMU exited with status 0")
    assert "Kernel panic - not syncing" in str(result)
    assert _gone(pids)


def test_drive_checks_that_kvm_amd_took_npt(tmp_path: Path) -> None:
    script = tmp_path / "fake_qemu.py"
    script.write_text(FAKE_QEMU)
    cfg = _run.QemuConfig(tmp_path / "k", tmp_path / "i", tmp_path / "r", tmp_path, tmp_path, 0, NONCE)
    (tmp_path / "stdout").touch()
    argv = [sys.executable, str(script), "ok", NONCE, str(tmp_path / "stdout"), str(tmp_path / "pids")]
    with pytest.raises(RefHostError, match="kvm_amd: loaded with npt=0 but .*npt is Y"):
        _run._drive(argv, cfg, tmp_path / "stdout", 30, None, None)


def test_drive_reports_a_qemu_that_cannot_start(tmp_path: Path) -> None:
    (tmp_path / "stdout").touch()
    with pytest.raises(RefHostError, match="cannot start"):
        _run._drive([str(tmp_path / "no-such-qemu")], _cfg(tmp_path), tmp_path / "stdout", 5, None, None)


def test_sigterm_becomes_keyboard_interrupt_only_while_driving() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with _run._TermAsInterrupt():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before


# --- CLI -------------------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hostkvm refhost")
    cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_run_takes_the_command_after_double_dash() -> None:
    a = _parse("run", "--npt", "0", "--timeout", "30", "--", "python3", "-m", "hostkvm.cli", "probe", "--json")
    assert a.npt == 0 and a.timeout == 30
    assert a.cmd[-5:] == ["python3", "-m", "hostkvm.cli", "probe", "--json"]


def test_cli_rejects_bad_npt_and_missing_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("run", "--npt", "2", "--", "true")
    with pytest.raises(SystemExit):
        _parse()


def test_cli_run_without_command_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(_parse("run", "--npt", "1")) == 2
    assert "no command given" in capsys.readouterr().err


def test_cli_build_json_flag() -> None:
    a = _parse("build", "--json", "--force")
    assert a.json and a.force


def test_importing_refhost_is_light() -> None:
    code = "import sys, hostkvm.refhost.cli; print(sorted(m for m in sys.modules if m in ('tarfile','gzip','compileall')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
