import importlib.util
import struct
import sys
from pathlib import Path

import pytest

from hostkvm import _resources
from hostkvm.asm import decode_one
from hostkvm.errors import AssemblyError, PayloadError
from hostkvm.guest import (
    KERNEL_SERVICE_MAGIC,
    EXC_FRAME_FIELDS,
    GDT_GPA,
    IDT_GPA,
    KERNEL_STACK_GPA,
    KERNEL_STACK_TOP,
    PAYLOAD_END,
    PAYLOAD_GPA,
    PT_POOL_GPA,
    PT_POOL_SIZE,
    RUNTIME_GPA,
    TSS_GPA,
    TSS_LIMIT,
    UCALL_ARG_REGS,
    UCALL_EXCEPTION,
    UCALL_PORT,
    USER_STACK_GPA,
    USER_STACK_TOP,
    build_guest,
    decode_ucall,
)
from hostkvm.payload import HARNESS_SIZE, parse_payload, parse_payload_text
from hostkvm.x86.constants import EFER_LMA, EXCEPTIONS_WITH_ERROR_CODE, X86_CR0_PG

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(DATA.glob("*.S"))


def _load_ptwalk():
    """The software walker of tests/unit/x86 (that folder is no package)."""
    if "ptwalk" in sys.modules:
        return sys.modules["ptwalk"]
    spec = importlib.util.spec_from_file_location("ptwalk",
                                                  Path(__file__).parent / "x86" / "ptwalk.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ptwalk"] = module
    spec.loader.exec_module(module)
    return module


ptwalk = _load_ptwalk()


def memory_of(image):
    """Guest memory as {page gpa: 4096 bytes}, from the image's blobs."""
    pages: dict[int, bytearray] = {}
    for blob in image.blobs:
        for i, b in enumerate(blob.data):
            gpa = blob.gpa + i
            pages.setdefault(gpa & ~0xFFF, bytearray(4096))[gpa & 0xFFF] = b
    return {k: bytes(v) for k, v in pages.items()}


def read(image, gpa, n):
    mem = memory_of(image)
    return bytes(mem.get((gpa + i) & ~0xFFF, bytes(4096))[(gpa + i) & 0xFFF] for i in range(n))


def walk(image, gva):
    mem = memory_of(image)
    if image.mode == "long64":
        return ptwalk.walk64(mem, image.cpu.cr3, gva)
    return ptwalk.walk32(mem, image.cpu.cr3, gva)


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.stem)
def image(request):
    return build_guest(parse_payload(request.param))


def test_fixtures_present():
    assert len(FIXTURES) >= 4


def test_regions_and_blobs_do_not_overlap(image):
    regions = image.regions
    assert regions[0].kind == "harness" and (regions[0].gpa, regions[0].size) == (0, HARNESS_SIZE)
    for a, b in zip(regions, regions[1:]):
        assert a.end <= b.gpa
    blobs = sorted(image.blobs, key=lambda b: b.gpa)
    for a, b in zip(blobs, blobs[1:]):
        assert a.gpa + len(a.data) <= b.gpa, (hex(a.gpa), hex(b.gpa))
    for blob in blobs:
        assert blob.gpa + len(blob.data) <= HARNESS_SIZE


def test_declared_regions_are_identity_mapped_with_user_bit(image):
    p = image.payload
    if not image.paging:
        assert image.mode == "real16" or not p.paging
        assert image.gva_to_gpa(0xA0123) == 0xA0123
        return
    user = image.cpl == 3
    for r in p.regions:
        for gva in (r.gpa, r.gpa + r.size // 2, r.end - 1):
            w = walk(image, gva)
            assert w.gpa == gva and w.user == user and w.writable
            assert image.gva_to_gpa(gva) == gva
    for a in p.aliases:
        w = walk(image, a.gva + 0x10)
        assert w.gpa == a.gpa + 0x10 and w.user == (user and not a.supervisor)


def test_harness_mapping_permissions(image):
    if not image.paging:
        return
    user = image.cpl == 3
    for gva in (RUNTIME_GPA, PAYLOAD_GPA, PAYLOAD_END - 1, USER_STACK_GPA, USER_STACK_TOP - 8):
        w = walk(image, gva)
        assert w.gpa == gva and w.user == user
    assert not walk(image, RUNTIME_GPA).writable
    for gva in (GDT_GPA, IDT_GPA, KERNEL_STACK_GPA, KERNEL_STACK_TOP - 8, PT_POOL_GPA):
        w = walk(image, gva)
        assert w.gpa == gva and not w.user
    if image.mode == "long64":
        assert walk(image, USER_STACK_GPA).nx and not walk(image, PAYLOAD_GPA).nx
    with pytest.raises(ptwalk.NotMapped):
        walk(image, 0)  # null guard


def test_cpu_state_matches_mode(image):
    cpu = image.cpu
    assert cpu.regs["rip"] == image.entry == PAYLOAD_GPA
    assert cpu.cpl == image.cpl and cpu.cs.dpl == image.cpl
    assert bool(cpu.efer & EFER_LMA) == (image.mode == "long64")
    assert bool(cpu.cr0 & X86_CR0_PG) == image.paging
    if image.paging:
        assert cpu.cr3 == PT_POOL_GPA
        assert all(PT_POOL_GPA <= b.gpa < PT_POOL_GPA + PT_POOL_SIZE
                   for b in image.blobs if b.gpa >= PT_POOL_GPA)
    if image.mode != "real16":
        expected_stack = USER_STACK_TOP if image.cpl == 3 else KERNEL_STACK_TOP
        assert cpu.regs["rsp"] == expected_stack


def test_line_table_maps_code_back_to_source(image):
    p = image.payload
    first = p.statements[0]
    entry = image.line_for_gpa(PAYLOAD_GPA)
    assert entry.line == first.line and entry.path == str(p.path)
    code = read(image, entry.gpa, entry.size)
    insn = decode_one(code, entry.gpa, image.bits)
    assert insn is not None and insn.size == entry.size
    assert insn.mnemonic == first.text.split()[0]
    # the harness appends the done ucall after the body
    tail = [e for e in image.line_table if e.line is None]
    assert [e.text for e in tail][-2:] == ["out dx, al", "jmp __hostkvm_done"]
    assert image.line_for_gpa(image.symbols["payload_end"]) is None


def test_exception_gates_point_at_stubs(image):
    if image.mode == "real16":
        ivt = read(image, 0, 32 * 4)
        for v in range(32):
            off, seg = struct.unpack_from("<HH", ivt, 4 * v)
            assert seg == 0 and off == image.symbols[f"exc_{v}"]
            insn = decode_one(read(image, off, 15), off, 16)
            assert insn.text == f"mov edi, {v:#x}" if v > 9 else f"mov edi, {v}"
        return
    width = 16 if image.mode == "long64" else 8
    idt = read(image, IDT_GPA, 32 * width)
    assert image.cpu.idt.limit == 32 * width - 1
    for v in range(32):
        lo = int.from_bytes(idt[v * width: v * width + 8], "little")
        offset = (lo & 0xFFFF) | ((lo >> 48) & 0xFFFF) << 16
        if width == 16:
            offset |= int.from_bytes(idt[v * width + 8: v * width + 12], "little") << 32
        assert offset == image.symbols[f"exc_{v}"]
        assert (lo >> 47) & 1 and (lo >> 40) & 0xF == 0xE
        insn = decode_one(read(image, offset, 15), offset, image.bits)
        pushed = f"{v:#x}" if v > 9 else f"{v}"
        if v == 6 and image.mode == "long64":
            # #UD doubles as the kernel-service entry: it checks rax first
            assert insn.text == f"cmp rax, {KERNEL_SERVICE_MAGIC:#x}"
            continue
        assert insn.text == ("push " + (pushed if v in EXCEPTIONS_WITH_ERROR_CODE else "0"))


def test_call_to_ucall_helper_lands_on_it():
    # keystone's resolver callback miscomputes such branches; make sure the bytes are right
    for mode, reg in (("long64", "rdi"), ("prot32", "edi"), ("real16", "edi")):
        cpl = "0" if mode == "real16" else "3"
        p = parse_payload_text(f";@ mode: {mode}\n;@ cpl: {cpl}\nmov {reg}, 1\ncall ucall_sync\n"
                               "jmp ucall_done\n", f"{mode}.S")
        img = build_guest(p)
        for line, target in ((4, "ucall_sync"), (5, "ucall_done")):
            e = next(e for e in img.line_table if e.line == line)
            insn = decode_one(read(img, e.gpa, e.size), e.gpa, img.bits)
            assert int(insn.op_str, 16) == img.symbols[target], (mode, insn.text)


def test_runtime_reports_through_the_ucall_port():
    img = build_guest(parse_payload_text("nop\n"))
    code = read(img, img.symbols["ucall_done"], 32)
    texts, addr = [], img.symbols["ucall_done"]
    for _ in range(3):
        insn = decode_one(code[addr - img.symbols["ucall_done"]:], addr, 64)
        texts.append(insn.text)
        addr += insn.size
    assert texts == ["mov eax, 1", f"mov edx, {UCALL_PORT:#x}", "out dx, al"]
    assert img.ucall_port == UCALL_PORT


def test_decode_ucall():
    regs = dict.fromkeys(UCALL_ARG_REGS, 0) | {"rdi": 14, "rsi": 4, "rbx": 0x900000,
                                                  "rcx": 0x8010, "rbp": 0x33}
    u = decode_ucall(bytes([UCALL_EXCEPTION]), regs)
    assert (u.name, u.args) == ("UCALL_EXCEPTION", (14, 4, 0x900000, 0x8010, 0x33))
    assert decode_ucall(b"\x63", regs).name == "UCALL_UNKNOWN"
    assert EXC_FRAME_FIELDS[16:18] == ("rip", "rflags") and len(EXC_FRAME_FIELDS) == 23


def test_1g_pages():
    text = ";@ pages: 1g\n;@ mmio: 0x40000000+1G\nnop\n"
    with pytest.raises(PayloadError) as info:
        build_guest(parse_payload_text(text, "g.S"))
    assert info.value.line == 1 and "PDPE1GB" in str(info.value)
    img = build_guest(parse_payload_text(text, "g.S"), cpu_has_pdpe1gb=True)
    assert walk(img, 0x40000000 + 0x1234567).page_size == 1 << 30


def test_assembly_errors_point_into_the_payload():
    with pytest.raises(AssemblyError) as info:
        build_guest(parse_payload_text(";@ cpl: 0\n\nnop\nmovv rax, rbx\n", "e.S"))
    assert (info.value.path, info.value.line) == ("e.S", 4)
    with pytest.raises(AssemblyError, match="predefined"):
        build_guest(parse_payload_text("ucall_done:\nnop\n", "e.S"))


def test_payload_too_big():
    with pytest.raises(PayloadError, match="past 0x10000"):
        build_guest(parse_payload_text(";@ mode: real16\n;@ cpl: 0\n.fill 0x9000, 1, 0x90\n",
                                       "big.S"))


def test_prot32_without_paging():
    img = build_guest(parse_payload_text(";@ mode: prot32\n;@ cpl: 3\n;@ paging: off\n"
                                         ";@ mmio: 0xd0000000+4K\nnop\n"))
    assert not img.paging and img.cpu.cr3 == 0 and img.mappings == ()
    assert img.gva_to_gpa(0xD0000010) == 0xD0000010


def test_resources_found():
    assert (_resources.guests_dir() / "runtime64.S").is_file()
    path, text = _resources.guest_source("runtime16.S")
    assert path.name == "runtime16.S" and "ucall_done:" in text


PAYLOADS = sorted((Path(__file__).resolve().parents[2] / "payloads").glob("*.S"))


def test_payload_library_builds():
    """Every payload of the library parses, assembles and lays out (no KVM needed)."""
    assert len(PAYLOADS) >= 20
    for path in PAYLOADS:
        img = build_guest(parse_payload(path))
        assert img.payload.expect is not None, path.name


@pytest.mark.parametrize("mode", ["prot32", "long64"])
@pytest.mark.parametrize("cpl", [0, 3])
def test_tss_io_bitmap_opens_only_the_ucall_port(mode, cpl):
    """PVM ignores IOPL at CPL3, so ucalls from CPL3 rely on the TSS I/O bitmap."""
    img = build_guest(parse_payload_text(f";@ mode: {mode}\n;@ cpl: {cpl}\nnop\n"))
    assert img.cpu.tr.base == TSS_GPA and img.cpu.tr.limit == TSS_LIMIT
    iomap_base = struct.unpack("<H", read(img, TSS_GPA + 102, 2))[0]
    assert iomap_base == 104
    bitmap = read(img, TSS_GPA + iomap_base, TSS_LIMIT + 1 - iomap_base)

    def allowed(port):
        byte = iomap_base + port // 8
        return byte <= TSS_LIMIT and not bitmap[port // 8] >> (port % 8) & 1

    assert allowed(UCALL_PORT)
    assert not any(allowed(p) for p in (UCALL_PORT - 1, UCALL_PORT + 1, 0x80, 0x3F8, 0xFFFF))
    assert bitmap[-1] == 0xFF
    # the GDT descriptor that TR was loaded from says the same limit
    gdt = read(img, GDT_GPA + 0x38, 8)
    assert (gdt[0] | gdt[1] << 8 | (gdt[6] & 0xF) << 16) == TSS_LIMIT


def test_sign_extended_operand_is_a_payload_error():
    text = ";@ mmio: 0xd0000000+4K\n\n    mov byte ptr [0xd0000000], 1\n"
    with pytest.raises(PayloadError) as info:
        build_guest(parse_payload_text(text, "s.S"))
    assert (info.value.path, info.value.line) == ("s.S", 3)
    assert "movabs" in str(info.value) and "0xffffffffd0000000" in str(info.value)
