"""A small facade over keystone (assembler) and capstone (decoder).

Source is keystone's Intel syntax, one statement per line; ``;`` starts a comment
(outside string literals), as in the payload format. Engines are created once per
mode and cached (creating one costs far more than assembling a short file).

Errors map to :class:`~hostkvm.errors.AssemblyError` carrying the ``path:line`` of
the failing statement and the statement itself. keystone reports no position, so
on failure the statement is found by assembling statements one by one; keystone
also silently drops whole inputs for some operands (``mov byte [rax], 1`` without
``ptr``), which is caught the same way.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import capstone
import keystone

from hostkvm.errors import AssemblyError

Bits = Literal[16, 32, 64]

_KS_MODES = {16: keystone.KS_MODE_16, 32: keystone.KS_MODE_32, 64: keystone.KS_MODE_64}
_CS_MODES = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}

#: prefix of the labels the facade inserts; payloads must not define names starting with it
RESERVED_PREFIX = "__hostkvm_"

_LABEL_RE = re.compile(r"\s*([A-Za-z_.$@?][\w.$@?]*)\s*:(?!:)")
_ASSIGN_RE = re.compile(r"\s*[A-Za-z_.$][\w.$]*\s*=")
_WORD_RE = re.compile(r"[A-Za-z_.$@?][\w.$@?]*")


@dataclass(frozen=True)
class Statement:
    """One source statement and where it came from (``line`` None for generated code)."""

    text: str
    line: int | None
    path: str = "<string>"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"


@dataclass(frozen=True)
class Placed:
    """Where one statement's bytes landed."""

    address: int
    size: int
    statement: Statement


@dataclass(frozen=True)
class Assembled:
    """Output of :func:`assemble`: the bytes at ``address``, the requested symbols and,
    when asked for, where every statement landed (in source order)."""

    address: int
    code: bytes
    symbols: dict[str, int] = field(default_factory=dict)
    placed: tuple[Placed, ...] = ()

    @property
    def end(self) -> int:
        return self.address + len(self.code)


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction."""

    address: int
    size: int
    mnemonic: str
    op_str: str
    bytes: bytes

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


# -- source splitting ----------------------------------------------------------------

def strip_comment(line: str) -> str:
    """``line`` without its ``;`` comment (a ``;`` inside '…' or "…" is kept)."""
    quote = ""
    escaped = False
    for i, ch in enumerate(line):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == ";":
            return line[:i]
    return line


def split_statements(text: str, path: str = "<string>", first_line: int = 1) -> list[Statement]:
    """The non-empty statements of ``text``, numbered from ``first_line``."""
    out = []
    for number, raw in enumerate(text.splitlines(), start=first_line):
        stmt = strip_comment(raw).strip()
        if stmt:
            out.append(Statement(stmt, number, path))
    return out


def labels_defined(statement: str) -> list[str]:
    """Labels a statement defines (``a: b: nop`` defines ``a`` and ``b``)."""
    names = []
    rest = statement
    while True:
        m = _LABEL_RE.match(rest)
        if not m:
            return names
        names.append(m.group(1))
        rest = rest[m.end():]


def _body_after_labels(statement: str) -> str:
    rest = statement
    while True:
        m = _LABEL_RE.match(rest)
        if not m:
            return rest.strip()
        rest = rest[m.end():]


def _emits_code(statement: str) -> bool:
    """Whether a statement must produce bytes (an instruction, not a label/directive)."""
    body = _body_after_labels(statement)
    return bool(body) and not body.startswith((".", "/")) and not _ASSIGN_RE.match(body)


# -- engines ----------------------------------------------------------------------------

class _KsEngine:
    """One cached keystone engine (guarded by ``lock``).

    A *diagnostic* engine has a symbol-resolver callback that only records the names
    keystone could not find. It is never used for real output: with a resolver
    installed keystone reads every bare number as hexadecimal (``push 10`` pushes 16)
    and miscomputes relative branches to resolved names.
    """

    def __init__(self, bits: int, diagnostic: bool = False) -> None:
        self.ks = keystone.Ks(keystone.KS_ARCH_X86, _KS_MODES[bits])
        self.lock = threading.Lock()
        self.missing: list[str] = []
        if diagnostic:
            self.ks.sym_resolver = self._resolve

    def _resolve(self, name: bytes, value: object) -> bool:
        key = name.decode("ascii", "replace")
        if key not in self.missing:
            self.missing.append(key)
        return False

    def run(self, source: str, address: int) -> bytes | None:
        """Assemble; ``None`` when keystone returns nothing. Raises ``KsError``."""
        self.missing = []
        encoding, _count = self.ks.asm(source, address, as_bytes=True)
        return encoding


_ks_engines: dict[tuple[int, bool], _KsEngine] = {}
_cs_engines: dict[int, capstone.Cs] = {}
_cs_detail_engines: dict[int, capstone.Cs] = {}
_engines_lock = threading.Lock()


def _ks(bits: int, diagnostic: bool = False) -> _KsEngine:
    engine = _ks_engines.get((bits, diagnostic))
    if engine is None:
        if bits not in _KS_MODES:
            raise ValueError(f"mode must be 16, 32 or 64, not {bits!r}")
        with _engines_lock:
            engine = _ks_engines.setdefault((bits, diagnostic), _KsEngine(bits, diagnostic))
    return engine


def _cs(bits: int) -> capstone.Cs:
    engine = _cs_engines.get(bits)
    if engine is None:
        if bits not in _CS_MODES:
            raise ValueError(f"mode must be 16, 32 or 64, not {bits!r}")
        with _engines_lock:
            engine = _cs_engines.setdefault(bits, capstone.Cs(capstone.CS_ARCH_X86, _CS_MODES[bits]))
    return engine


def _cs_detail(bits: int) -> capstone.Cs:
    """A capstone engine with operand details (kept apart from the plain decoder)."""
    engine = _cs_detail_engines.get(bits)
    if engine is None:
        with _engines_lock:
            engine = _cs_detail_engines.get(bits)
            if engine is None:
                engine = capstone.Cs(capstone.CS_ARCH_X86, _CS_MODES[bits])
                engine.detail = True
                _cs_detail_engines[bits] = engine
    return engine


# -- long-mode absolute addresses ------------------------------------------------------

#: first address of the upper canonical half; a 32-bit displacement lands at or above it
#: exactly when bit 31 of the displacement is set
_UPPER_HALF = 1 << 63
_U64 = (1 << 64) - 1
_NUMBER_RE = re.compile(r"(?<![\w.$])(-?)\s*(0[xX][0-9a-fA-F]+|[0-9]+)\b")


def sign_extended_absolute(code: bytes, address: int) -> int | None:
    """The address a 64-bit instruction really accesses when it names an absolute memory
    operand (no base, no index) through a sign-extended 32-bit displacement that lands in
    the upper canonical half (``[0xfee00000]`` encoded as ``disp32`` reaches
    ``0xfffffffffee00000``); ``None`` when it has no such operand. The ``moffs`` forms
    (``movabs``, 8-byte address) and RIP-relative operands are never sign-extended."""
    engine = _cs_detail(64)
    for insn in engine.disasm(bytes(code[:15]), address, 1):
        for op in insn.operands:
            if op.type != capstone.x86.X86_OP_MEM:
                continue
            mem = op.mem
            if mem.base != capstone.x86.X86_REG_INVALID or mem.index != capstone.x86.X86_REG_INVALID:
                continue
            ea = mem.disp & _U64
            # moffs (opcodes a0-a3) carry a full 8-byte address: what was written is used
            if insn.opcode[0] in (0xA0, 0xA1, 0xA2, 0xA3) and not any(insn.opcode[1:]):
                continue
            if ea >= _UPPER_HALF:
                return ea
    return None


def _literals(text: str) -> set[int]:
    """The integer literals written in a statement, as 64-bit values (``-8`` → 2^64-8)."""
    out = set()
    for sign, digits in _NUMBER_RE.findall(text):
        value = int(digits, 0)
        out.add((-value if sign else value) & _U64)
    return out


def _check_sign_extension(placed: Sequence[Placed], code: bytes, base: int, path: str) -> None:
    """Refuse long-mode statements whose absolute operand the CPU would sign-extend into the
    upper half when the source did not write that upper-half address itself."""
    for p in placed:
        if not p.size or not _emits_code(p.statement.text):
            continue
        ea = sign_extended_absolute(code[p.address - base: p.address - base + p.size], p.address)
        if ea is None or ea in _literals(p.statement.text):
            continue
        low = ea & 0xFFFFFFFF
        raise _error(
            f"absolute address {low:#x} is encoded as a sign-extended 32-bit displacement, so "
            f"in 64-bit mode the CPU would access {ea:#x}; put the address in a register "
            f"(`mov rax, {low:#x}` then `[rax]`) or use `movabs` with al/ax/eax/rax "
            f"(`movabs byte ptr [{low:#x}], al`)", p.statement, path)


# -- assembling -------------------------------------------------------------------------

def _ks_message(err: keystone.KsError) -> str:
    return f"keystone: {err}"


def _error(message: str, statement: Statement | None, path: str, errno: int | None = None
           ) -> AssemblyError:
    if statement is None:
        exc = AssemblyError(message, path, None)
    else:
        exc = AssemblyError(f"{message}: `{statement.text}`", statement.path, statement.line)
    exc.statement = statement.text if statement is not None else None  # type: ignore[attr-defined]
    exc.ks_errno = errno  # type: ignore[attr-defined]
    return exc


def _missing_names(bits: int, source: str, address: int) -> list[str]:
    """Names keystone cannot resolve in ``source`` (asked of a diagnostic engine)."""
    engine = _ks(bits, diagnostic=True)
    with engine.lock:
        try:
            engine.run(source, address)
        except keystone.KsError:
            pass
        return list(engine.missing)


def _locate(bits: int, statements: Sequence[Statement], address: int,
            symbols: Mapping[str, int], path: str, first: keystone.KsError | None,
            source: str) -> AssemblyError:
    """Find the statement that keystone rejects and build the error for it."""
    defined: dict[str, Statement] = {}
    for st in statements:
        for name in labels_defined(st.text):
            if name in defined:
                return _error(f"keystone: label '{name}' redefined (defined at "
                              f"{defined[name].where})", st, path,
                              keystone.KS_ERR_ASM_SYMBOL_REDEFINED)
            defined[name] = st
    if first is not None and first.errno == keystone.KS_ERR_ASM_SYMBOL_MISSING:
        for name in _missing_names(bits, source, address):
            if name in defined or name in symbols:
                continue
            for st in statements:
                if name in _WORD_RE.findall(st.text):
                    return _error(f"keystone: undefined symbol '{name}' "
                                  "(KS_ERR_ASM_SYMBOL_MISSING)", st, path,
                                  keystone.KS_ERR_ASM_SYMBOL_MISSING)
    engine = _ks(bits)
    prefix = "".join(f"{name} = {value:#x}\n" for name, value in symbols.items())
    for st in statements:
        try:
            out = engine.run(prefix + st.text, address)
        except keystone.KsError as err:
            if err.errno == keystone.KS_ERR_ASM_SYMBOL_MISSING:
                continue  # refers to a label defined elsewhere: not decidable alone
            return _error(_ks_message(err), st, path, err.errno)
        if not out and _emits_code(st.text):
            return _error("keystone produced no bytes for this statement (a size needs "
                          "'ptr', e.g. 'byte ptr [rax]')", st, path)
    if first is not None:
        return _error(_ks_message(first) + " (statement not found)", None, path, first.errno)
    return _error("keystone produced no output (statement not found)", None, path)


def assemble(
    source: str | Sequence[Statement],
    *,
    address: int,
    bits: int,
    path: str = "<string>",
    symbols: Mapping[str, int] | None = None,
    export: Sequence[str] = (),
    placements: bool = False,
) -> Assembled:
    """Assemble ``source`` for ``bits`` (16, 32, 64) so that it runs at ``address``.

    ``symbols`` predefines names the source may use (``ucall_print``, ``UCALL_PORT``);
    ``export`` names labels whose addresses to return in ``Assembled.symbols``;
    ``placements`` asks for the address and size of every statement.
    Raises :class:`AssemblyError` with the failing statement's ``path:line``.

    In 64-bit mode an absolute memory operand that keystone encodes as a 32-bit
    displacement is sign-extended by the CPU: ``[0xfee00000]`` would reach
    ``0xfffffffffee00000``. Such a statement is refused (with a hint) unless it spells
    out the upper-half address itself.
    """
    statements = (split_statements(source, path) if isinstance(source, str) else list(source))
    symbols = dict(symbols or {})
    for st in statements:
        for name in labels_defined(st.text):
            if name in symbols:
                raise _error(f"label '{name}' redefines a predefined symbol", st, path)
            if name.startswith(RESERVED_PREFIX) and st.line is not None:
                raise _error(f"labels starting with {RESERVED_PREFIX} are reserved", st, path)
    want_placements = placements
    placements = placements or bits == 64
    engine = _ks(bits)
    # Predefined names become assignments: keystone's symbol-resolver callback gets
    # relative branches to resolved names wrong (off by the displacement size).
    lines: list[str] = [f"{name} = {value:#x}" for name, value in symbols.items()]
    trailer: list[str] = []
    for i, st in enumerate(statements):
        if placements:
            lines.append(f"{RESERVED_PREFIX}s{i}:")
        lines.append(st.text)
    lines.append(f"{RESERVED_PREFIX}end:")
    if placements:
        trailer.extend(f"{RESERVED_PREFIX}s{i}" for i in range(len(statements)))
    trailer.extend(export)
    trailer.append(f"{RESERVED_PREFIX}end")
    lines.extend(f".quad {name}" for name in trailer)
    source = "\n".join(lines)
    with engine.lock:
        try:
            out = engine.run(source, address)
            first: keystone.KsError | None = None
        except keystone.KsError as err:
            out, first = None, err
    if out is None or first is not None:
        raise _locate(bits, statements, address, symbols, path, first, source)
    ntrail = len(trailer)
    tail = bytes(out[len(out) - 8 * ntrail:])
    values = [int.from_bytes(tail[8 * k: 8 * k + 8], "little") for k in range(ntrail)]
    end = values[-1]
    code = bytes(out[: end - address])
    if len(code) + 8 * ntrail != len(out):
        raise AssertionError("assembler trailer misplaced")  # would be a facade bug
    placed: list[Placed] = []
    if placements:
        starts = values[: len(statements)] + [end]
        for i, st in enumerate(statements):
            size = starts[i + 1] - starts[i]
            if size == 0 and _emits_code(st.text):
                raise _error("keystone produced no bytes for this statement", st, path)
            placed.append(Placed(starts[i], size, st))
    if bits == 64:
        _check_sign_extension(placed, code, address, path)
    exported = {name: values[len(placed) + k] for k, name in enumerate(export)}
    return Assembled(address, code, exported, tuple(placed) if want_placements else ())


def assemble_one(statement: str, *, address: int = 0, bits: int = 64) -> bytes:
    """Assemble a single statement (a convenience for tests and tools)."""
    return assemble(statement, address=address, bits=bits).code


# -- decoding ---------------------------------------------------------------------------

def decode_one(code: bytes, address: int, bits: int) -> Instruction | None:
    """Decode the first instruction of ``code`` as located at ``address``; ``None`` when
    capstone cannot decode it (invalid encoding, or ``code`` cut short)."""
    engine = _cs(bits)
    for insn in engine.disasm(bytes(code[:15]), address, 1):
        return Instruction(insn.address, insn.size, insn.mnemonic, insn.op_str, bytes(insn.bytes))
    return None


def decode_text(code: bytes, address: int, bits: int) -> str:
    """``"mnemonic op_str"`` of the first instruction, or ``"(undecodable: <hex>)"``."""
    insn = decode_one(code, address, bits)
    if insn is None:
        return f"(undecodable: {bytes(code[:15]).hex()})"
    return insn.text
