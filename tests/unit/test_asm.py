import pytest

from hostkvm.asm import (
    Statement,
    assemble,
    assemble_one,
    decode_one,
    decode_text,
    split_statements,
    strip_comment,
)
from hostkvm.errors import AssemblyError, PayloadError


def test_comments_and_statements():
    assert strip_comment('mov eax, 1 ; set') == "mov eax, 1 "
    assert strip_comment('.ascii "a;b" ; c') == '.ascii "a;b" '
    assert strip_comment(".byte ';'") == ".byte ';'"
    sts = split_statements(";@ mode: long64\n\n  nop ; x\n;only\nret\n", "p.S")
    assert sts == [Statement("nop", 3, "p.S"), Statement("ret", 5, "p.S")]


def test_placements_symbols_and_bytes():
    src = "start: nop\nmov eax, 1\n\njmp start\nmsg: .ascii \"hi\"\n"
    out = assemble(src, address=0x8000, bits=64, export=["msg", "start"], placements=True)
    assert out.code == bytes.fromhex("90" "b801000000" "ebf8" "6869")
    assert out.symbols == {"msg": 0x8008, "start": 0x8000}
    assert [(p.address, p.size, p.statement.line) for p in out.placed] == [
        (0x8000, 1, 1), (0x8001, 5, 2), (0x8006, 2, 4), (0x8008, 2, 5)]
    assert out.end == 0x800A


def test_predefined_symbols():
    out = assemble("call helper\nmov dx, PORT", address=0x1000, bits=64,
                   symbols={"helper": 0x4000, "PORT": 0x6A00})
    assert out.code == bytes.fromhex("e8fb2f0000" "66ba006a")


@pytest.mark.parametrize("src,line,fragment", [
    ("nop\nnop\nfoo rax\nnop", 3, "MNEMONICFAIL"),
    ("nop\n\n; c\nmov eax, [rax+]\n", 4, "INVALIDOPERAND"),
    ("nop\njmp nowhere\n", 2, "undefined symbol 'nowhere'"),
    ("l: nop\nnop\nl: nop", 3, "redefined"),
    ("nop\n.byte 300", 2, "VALUE_RANGE"),
    ("nop\nmov byte [rax], 1\nnop", 2, "produced no bytes"),
    ("helper: nop", 1, "predefined"),
    ("__hostkvm_x: nop", 1, "reserved"),
])
def test_errors_carry_file_line_and_statement(src, line, fragment):
    with pytest.raises(AssemblyError) as info:
        assemble(src, address=0x8000, bits=64, path="pay.S", symbols={"helper": 1})
    err = info.value
    assert isinstance(err, PayloadError)
    assert err.path == "pay.S" and err.line == line
    assert fragment in str(err)
    assert str(err).startswith(f"pay.S:{line}: ")
    assert err.statement in str(err)


def test_modes_differ():
    assert assemble_one("push rax", bits=64) == b"\x50"
    assert assemble_one("mov ax, 1", bits=16) == bytes.fromhex("b80100")
    assert assemble_one("mov ax, 1", bits=32) == bytes.fromhex("66b80100")
    with pytest.raises(ValueError):
        assemble_one("nop", bits=8)


def test_decode():
    insn = decode_one(bytes.fromhex("c70025000000ff"), 0x1000, 64)
    assert insn is not None
    assert (insn.size, insn.text, insn.address) == (6, "mov dword ptr [rax], 0x25", 0x1000)
    assert decode_text(bytes.fromhex("8905"), 0, 16) == "mov word ptr [di], ax"
    assert decode_one(b"\x0f", 0, 64) is None
    assert decode_text(b"\x0f", 0, 64) == "(undecodable: 0f)"


def test_numbers_stay_decimal_after_a_diagnosed_error():
    # keystone reads bare numbers as hex once a symbol resolver is installed; the
    # facade keeps its resolver on a separate diagnostic engine
    with pytest.raises(AssemblyError, match="undefined symbol 'missing'"):
        assemble("push 10\ncall missing\n", address=0x1000, bits=64)
    assert assemble_one("push 10", bits=64) == bytes.fromhex("6a0a")
    assert assemble_one("mov eax, 10", bits=32) == bytes.fromhex("b80a000000")


def test_engine_output_is_repeatable():
    src = "x: mov eax, 10\njmp x\n"
    first = assemble(src, address=0x8000, bits=64).code
    assert assemble(src, address=0x8000, bits=64).code == first == bytes.fromhex("b80a000000ebf9")


# -- long mode: absolute operands the CPU would sign-extend ---------------------------------

@pytest.mark.parametrize("statement", [
    "mov byte ptr [0xfee00000], 0x5a",     # disp32 0xfee00000 -> 0xfffffffffee00000
    "mov rbx, qword ptr [0xd0000008]",     # no moffs form for rbx
    "movdqu xmm0, xmmword ptr [0xd0000000]",
    "lea rax, [0x90000000]",
    "jmp qword ptr [0xffffffff]",
])
def test_long64_sign_extended_absolute_is_refused(statement):
    with pytest.raises(AssemblyError) as info:
        assemble(f"nop\n{statement}\n", address=0x8000, bits=64, path="p.S")
    err = info.value
    assert isinstance(err, PayloadError) and (err.path, err.line) == ("p.S", 2)
    assert "sign-extended" in err.message and "movabs" in err.message
    assert statement in err.message


def test_long64_sign_extension_through_a_symbol_is_refused():
    with pytest.raises(AssemblyError, match="0xffffffffd0000000"):
        assemble("mov ecx, dword ptr [DEV]", address=0x8000, bits=64,
                 symbols={"DEV": 0xD0000000})


@pytest.mark.parametrize("statement", [
    "movabs byte ptr [0xfee00000], al",           # moffs: a full 8-byte address
    "mov eax, dword ptr [0xd0000000]",            # keystone picks moffs for eax
    "mov rcx, qword ptr [0xffffffff80000000]",    # the upper-half address, written out
    "mov rcx, qword ptr [-8]",
    "mov dword ptr [0x7ffffff0], 1",              # below 2 GiB: no sign extension
    "mov rcx, qword ptr [rbx + 0xd0000000]",      # has a base register
])
def test_long64_absolute_operands_that_mean_what_they_say(statement):
    assemble(statement, address=0x8000, bits=64)


def test_32bit_absolute_operands_are_not_checked():
    code = assemble("mov byte ptr [0xfee00000], 0x5a", address=0x8000, bits=32).code
    assert decode_one(code, 0x8000, 32).op_str == "byte ptr [0xfee00000], 0x5a"


def test_sign_extension_check_keeps_placements_optional():
    out = assemble("nop\nret", address=0x8000, bits=64)
    assert out.placed == () and out.code == b"\x90\xc3"
