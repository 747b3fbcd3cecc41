"""An AML encoder whose objects compose like the ASL they stand for (ACPI 6.5 §20).

Every term is a frozen value with one verb, `encode()`. Blocks take their children
positionally, so a device reads top-down like its ASL:

    Device("NV00", Name("_ADR", 1), Method("_DSM", 4, Return(Call("NCAL", Arg(0), ...))))

Plain Python ints stand for Integer terms and pick their shortest encoding. Logical
operators (`LAnd`, `LOr`, `LNot`, `LEqual`, ...) and bitwise ones (`And`, `Or`, ...) are
different classes with different names; nothing is overloaded.
"""

from __future__ import annotations

import functools
import re
import uuid
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------
# Opcodes (ACPI 6.5 §20.3)

ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
EXT_OP_PREFIX = 0x5B
ROOT_CHAR = 0x5C
PARENT_PREFIX = 0x5E
NULL_NAME = 0x00
LOCAL0_OP = 0x60
ARG0_OP = 0x68
STORE_OP = 0x70
ADD_OP = 0x72
CONCAT_OP = 0x73
SUBTRACT_OP = 0x74
MULTIPLY_OP = 0x77
SHIFT_LEFT_OP = 0x79
SHIFT_RIGHT_OP = 0x7A
AND_OP = 0x7B
OR_OP = 0x7D
XOR_OP = 0x7F
DEREF_OF_OP = 0x83
NOTIFY_OP = 0x86
SIZE_OF_OP = 0x87
INDEX_OP = 0x88
CREATE_DWORD_FIELD_OP = 0x8A
CREATE_WORD_FIELD_OP = 0x8B
CREATE_BYTE_FIELD_OP = 0x8C
OBJECT_TYPE_OP = 0x8E
CREATE_QWORD_FIELD_OP = 0x8F
LAND_OP = 0x90
LOR_OP = 0x91
LNOT_OP = 0x92
LEQUAL_OP = 0x93
LGREATER_OP = 0x94
LLESS_OP = 0x95
TO_BUFFER_OP = 0x96
MID_OP = 0x9E
IF_OP = 0xA0
ELSE_OP = 0xA1
WHILE_OP = 0xA2
RETURN_OP = 0xA4
BREAK_OP = 0xA5
EXT_CREATE_FIELD_OP = 0x13
EXT_OP_REGION_OP = 0x80
EXT_FIELD_OP = 0x81
EXT_DEVICE_OP = 0x82

MAX_PKG_LENGTH = (1 << 28) - 1


class Term:
    """An AML term: something that encodes itself to bytes."""

    def encode(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


TermLike = Term | int


def encode_term(term: TermLike) -> bytes:
    """Encode a term, treating a plain int as an Integer."""
    if isinstance(term, bool):
        raise TypeError("use 0/1, not bool, for AML integers")
    if isinstance(term, int):
        return Integer(term).encode()
    if isinstance(term, Term):
        return term.encode()
    raise TypeError(f"not an AML term: {term!r}")


def _terms(terms: tuple[TermLike, ...]) -> bytes:
    return b"".join(encode_term(t) for t in terms)


# ---------------------------------------------------------------------------------------
# PkgLength (§20.2.4)


def encode_pkg_length(length: int, *, includes_self: bool = True) -> bytes:
    """Encode a PkgLength.

    §20.2.4: "The high 2 bits of the first byte reveal how many follow bytes are in the
    PkgLength. If the PkgLength has only one byte, bit 0 through 5 are used to encode the
    package length (in other words, values 0-63). If the package length value is more than
    63, more than one byte must be used for the encoding in which case bit 4 and 5 of the
    PkgLeadByte are reserved and must be zero. [...] The next ByteData will become the
    next least significant 8 bits of the resulting value and so on, up to 3 ByteData bytes."

    `length` is the number of bytes the package holds after its PkgLength when
    `includes_self` is true (blocks: the encoded value then counts its own bytes); a
    field width (`includes_self=False`) is encoded as given.
    """
    for nbytes in range(1, 5):
        value = length + nbytes if includes_self else length
        limit = 0x3F if nbytes == 1 else (1 << (4 + 8 * (nbytes - 1))) - 1
        if value <= limit:
            break
    else:
        raise ValueError(f"PkgLength {length} exceeds {MAX_PKG_LENGTH}")
    if nbytes == 1:
        return bytes([value])
    lead = ((nbytes - 1) << 6) | (value & 0x0F)
    return bytes([lead]) + (value >> 4).to_bytes(nbytes - 1, "little")


def decode_pkg_length(data: bytes) -> tuple[int, int]:
    """Decode a PkgLength at the start of `data`: (value, bytes used)."""
    lead = data[0]
    follow = lead >> 6
    if follow == 0:
        return lead & 0x3F, 1
    value = lead & 0x0F
    for i in range(follow):
        value |= data[1 + i] << (4 + 8 * i)
    return value, 1 + follow


def _block(opcode: bytes, body: bytes) -> bytes:
    return opcode + encode_pkg_length(len(body)) + body


# ---------------------------------------------------------------------------------------
# Names (§20.2.2)

_SEG_RE = re.compile(r"^[A-Z_][A-Z0-9_]{3}$")


@functools.lru_cache(maxsize=4096)
def name_seg(seg: str) -> bytes:
    """A NameSeg: exactly four characters, a lead of A-Z or _, then A-Z, 0-9 or _."""
    if not _SEG_RE.match(seg):
        raise ValueError(f"invalid AML name segment {seg!r}: need 4 characters [A-Z_][A-Z0-9_]{{3}}")
    return seg.encode("ascii")


@dataclass(frozen=True)
class Path(Term):
    """A NameString: `\\_SB.NVDR`, `^NCAL`, `NV00`. Validated on construction."""

    path: str

    def __post_init__(self) -> None:
        self._parts()

    def _parts(self) -> tuple[bytes, list[str]]:
        return self._split(self.path)

    @staticmethod
    def _split(p: str) -> tuple[bytes, list[str]]:
        prefix = b""
        if p.startswith("\\"):
            prefix, p = b"\\", p[1:]
        else:
            while p.startswith("^"):
                prefix, p = prefix + b"^", p[1:]
        segs = p.split(".") if p else []
        for seg in segs:
            name_seg(seg)
        return prefix, segs

    def encode(self) -> bytes:
        return _encode_path(self.path)


@functools.lru_cache(maxsize=4096)
def _encode_path(path: str) -> bytes:
    """NameString bytes for an already validated path (paths repeat: encode each once)."""
    prefix, segs = Path._split(path)
    prefix, segs = Path._split(path)
    raw = [name_seg(s) for s in segs]
    if not raw:
        return prefix + bytes([NULL_NAME])
    if len(raw) == 1:
        return prefix + raw[0]
    if len(raw) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + raw[0] + raw[1]
    return prefix + bytes([MULTI_NAME_PREFIX, len(raw)]) + b"".join(raw)


# ---------------------------------------------------------------------------------------
# Data objects (§20.2.3)


@dataclass(frozen=True)
class Integer(Term):
    """An integer constant in its shortest encoding: Zero, One, Byte, Word, DWord, QWord."""

    value: int

    def encode(self) -> bytes:
        v = self.value
        if not 0 <= v < 1 << 64:
            raise ValueError(f"AML integer out of range: {v}")
        if v == 0:
            return bytes([ZERO_OP])
        if v == 1:
            return bytes([ONE_OP])
        for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4), (QWORD_PREFIX, 8)):
            if v < 1 << (8 * size):
                return bytes([prefix]) + v.to_bytes(size, "little")
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Ones(Term):
    """All bits set, at the table's integer width."""

    def encode(self) -> bytes:
        return bytes([ONES_OP])


@dataclass(frozen=True)
class String(Term):
    value: str

    def encode(self) -> bytes:
        data = self.value.encode("ascii")
        if 0 in data:
            raise ValueError("AML strings cannot contain NUL")
        return bytes([STRING_PREFIX]) + data + b"\x00"


@dataclass(frozen=True)
class Buffer(Term):
    """Buffer(size){bytes}: `size` defaults to len(data); a TermArg size makes it dynamic."""

    data: bytes = b""
    size: TermLike | None = None

    def encode(self) -> bytes:
        size = len(self.data) if self.size is None else self.size
        return _block(bytes([BUFFER_OP]), encode_term(size) + self.data)


def Uuid(value: str | uuid.UUID) -> Buffer:
    """ToUUID("..."): the 16-byte buffer in EFI (mixed-endian) byte order, as iasl emits it."""
    return Buffer(uuid.UUID(str(value)).bytes_le)


@dataclass(frozen=True)
class Package(Term):
    elements: tuple[TermLike, ...]

    def __init__(self, *elements: TermLike) -> None:
        object.__setattr__(self, "elements", elements)

    def encode(self) -> bytes:
        if len(self.elements) > 255:
            raise ValueError("Package with more than 255 elements needs VarPackage")
        return _block(bytes([PACKAGE_OP]), bytes([len(self.elements)]) + _terms(self.elements))


@dataclass(frozen=True)
class Arg(Term):
    index: int

    def encode(self) -> bytes:
        if not 0 <= self.index <= 6:
            raise ValueError(f"Arg{self.index} does not exist (Arg0-Arg6)")
        return bytes([ARG0_OP + self.index])


@dataclass(frozen=True)
class Local(Term):
    index: int

    def encode(self) -> bytes:
        if not 0 <= self.index <= 7:
            raise ValueError(f"Local{self.index} does not exist (Local0-Local7)")
        return bytes([LOCAL0_OP + self.index])


# ---------------------------------------------------------------------------------------
# Namespace modifiers and named objects (§20.2.5)


@dataclass(frozen=True)
class Name(Term):
    name: str
    value: TermLike

    def encode(self) -> bytes:
        return bytes([NAME_OP]) + Path(self.name).encode() + encode_term(self.value)


@dataclass(frozen=True)
class _Container(Term):
    name: str
    children: tuple[TermLike, ...]

    def __init__(self, name: str, *children: TermLike) -> None:
        Path(name)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "children", children)


class Scope(_Container):
    def encode(self) -> bytes:
        return _block(bytes([SCOPE_OP]), Path(self.name).encode() + _terms(self.children))


class Device(_Container):
    def encode(self) -> bytes:
        return _block(bytes([EXT_OP_PREFIX, EXT_DEVICE_OP]), Path(self.name).encode() + _terms(self.children))


@dataclass(frozen=True)
class Method(Term):
    """Method(name, args, Serialized?){body}; sync level 0."""

    name: str
    args: int
    body: tuple[TermLike, ...]
    serialized: bool

    def __init__(self, name: str, args: int, *body: TermLike, serialized: bool = False) -> None:
        if not 0 <= args <= 7:
            raise ValueError(f"a method takes 0-7 arguments, not {args}")
        Path(name)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "serialized", serialized)

    def encode(self) -> bytes:
        flags = self.args | (0x08 if self.serialized else 0)
        return _block(bytes([METHOD_OP]), Path(self.name).encode() + bytes([flags]) + _terms(self.body))


SYSTEM_MEMORY = 0x00
SYSTEM_IO = 0x01


@dataclass(frozen=True)
class OperationRegion(Term):
    name: str
    space: int
    offset: TermLike
    length: TermLike

    def encode(self) -> bytes:
        return (
            bytes([EXT_OP_PREFIX, EXT_OP_REGION_OP])
            + Path(self.name).encode()
            + bytes([self.space])
            + encode_term(self.offset)
            + encode_term(self.length)
        )


ANY_ACC, BYTE_ACC, WORD_ACC, DWORD_ACC, QWORD_ACC, BUFFER_ACC = range(6)
PRESERVE, WRITE_AS_ONES, WRITE_AS_ZEROS = range(3)


@dataclass(frozen=True)
class FieldUnit:
    """A named field of `bits` bits; name None makes it a reserved gap (Offset())."""

    name: str | None
    bits: int

    def encode(self) -> bytes:
        width = encode_pkg_length(self.bits, includes_self=False)
        if self.name is None:
            return b"\x00" + width
        return name_seg(self.name) + width


@dataclass(frozen=True)
class Field(Term):
    """Field(region, access, NoLock, update){units}."""

    region: str
    access: int
    update: int
    units: tuple[FieldUnit, ...]

    def __init__(self, region: str, *units: FieldUnit, access: int = ANY_ACC, update: int = PRESERVE) -> None:
        Path(region)
        object.__setattr__(self, "region", region)
        object.__setattr__(self, "access", access)
        object.__setattr__(self, "update", update)
        object.__setattr__(self, "units", units)

    def encode(self) -> bytes:
        flags = self.access | (self.update << 5)
        body = Path(self.region).encode() + bytes([flags]) + b"".join(u.encode() for u in self.units)
        return _block(bytes([EXT_OP_PREFIX, EXT_FIELD_OP]), body)


@dataclass(frozen=True)
class _CreateSizedField(Term):
    source: TermLike
    byte_index: TermLike
    name: str
    opcode = 0

    def encode(self) -> bytes:
        return bytes([self.opcode]) + encode_term(self.source) + encode_term(self.byte_index) + Path(self.name).encode()


class CreateByteField(_CreateSizedField):
    opcode = CREATE_BYTE_FIELD_OP


class CreateWordField(_CreateSizedField):
    opcode = CREATE_WORD_FIELD_OP


class CreateDWordField(_CreateSizedField):
    opcode = CREATE_DWORD_FIELD_OP


class CreateQWordField(_CreateSizedField):
    opcode = CREATE_QWORD_FIELD_OP


@dataclass(frozen=True)
class CreateField(Term):
    source: TermLike
    bit_index: TermLike
    num_bits: TermLike
    name: str

    def encode(self) -> bytes:
        return (
            bytes([EXT_OP_PREFIX, EXT_CREATE_FIELD_OP])
            + encode_term(self.source)
            + encode_term(self.bit_index)
            + encode_term(self.num_bits)
            + Path(self.name).encode()
        )


# ---------------------------------------------------------------------------------------
# Statements (§20.2.5.3)


@dataclass(frozen=True)
class _Conditional(Term):
    predicate: TermLike
    body: tuple[TermLike, ...]
    opcode = 0

    def __init__(self, predicate: TermLike, *body: TermLike) -> None:
        object.__setattr__(self, "predicate", predicate)
        object.__setattr__(self, "body", body)

    def encode(self) -> bytes:
        return _block(bytes([self.opcode]), encode_term(self.predicate) + _terms(self.body))


class If(_Conditional):
    opcode = IF_OP


class While(_Conditional):
    opcode = WHILE_OP


@dataclass(frozen=True)
class Else(Term):
    """Else{body}: must directly follow an If in the same term list."""

    body: tuple[TermLike, ...]

    def __init__(self, *body: TermLike) -> None:
        object.__setattr__(self, "body", body)

    def encode(self) -> bytes:
        return _block(bytes([ELSE_OP]), _terms(self.body))


@dataclass(frozen=True)
class Return(Term):
    value: TermLike

    def encode(self) -> bytes:
        return bytes([RETURN_OP]) + encode_term(self.value)


@dataclass(frozen=True)
class Break(Term):
    def encode(self) -> bytes:
        return bytes([BREAK_OP])


@dataclass(frozen=True)
class Notify(Term):
    target: str
    value: TermLike

    def encode(self) -> bytes:
        return bytes([NOTIFY_OP]) + Path(self.target).encode() + encode_term(self.value)


@dataclass(frozen=True)
class Store(Term):
    """Store(source, target)."""

    source: TermLike
    target: TermLike

    def encode(self) -> bytes:
        return bytes([STORE_OP]) + encode_term(self.source) + encode_term(self.target)


@dataclass(frozen=True)
class Call(Term):
    """A method invocation: the method's path followed by its arguments."""

    method: str
    args: tuple[TermLike, ...]

    def __init__(self, method: str, *args: TermLike) -> None:
        Path(method)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "args", args)

    def encode(self) -> bytes:
        return Path(self.method).encode() + _terms(self.args)


# ---------------------------------------------------------------------------------------
# Expressions (§20.2.5.4)

NO_TARGET = Path("")


@dataclass(frozen=True)
class _Binary(Term):
    """Op(a, b[, target]); the target defaults to none (NullName)."""

    left: TermLike
    right: TermLike
    target: TermLike = NO_TARGET
    opcode = 0

    def encode(self) -> bytes:
        return bytes([self.opcode]) + encode_term(self.left) + encode_term(self.right) + encode_term(self.target)


class Add(_Binary):
    opcode = ADD_OP


class Subtract(_Binary):
    opcode = SUBTRACT_OP


class Multiply(_Binary):
    opcode = MULTIPLY_OP


class ShiftLeft(_Binary):
    opcode = SHIFT_LEFT_OP


class ShiftRight(_Binary):
    opcode = SHIFT_RIGHT_OP


class And(_Binary):
    """Bitwise AND (not LAnd)."""

    opcode = AND_OP


class Or(_Binary):
    """Bitwise OR (not LOr)."""

    opcode = OR_OP


class Xor(_Binary):
    opcode = XOR_OP


class Concatenate(_Binary):
    opcode = CONCAT_OP


@dataclass(frozen=True)
class Index(Term):
    source: TermLike
    index: TermLike
    target: TermLike = NO_TARGET

    def encode(self) -> bytes:
        return bytes([INDEX_OP]) + encode_term(self.source) + encode_term(self.index) + encode_term(self.target)


@dataclass(frozen=True)
class Mid(Term):
    source: TermLike
    index: TermLike
    length: TermLike
    target: TermLike = NO_TARGET

    def encode(self) -> bytes:
        return (
            bytes([MID_OP])
            + encode_term(self.source)
            + encode_term(self.index)
            + encode_term(self.length)
            + encode_term(self.target)
        )


@dataclass(frozen=True)
class ToBuffer(Term):
    operand: TermLike
    target: TermLike = NO_TARGET

    def encode(self) -> bytes:
        return bytes([TO_BUFFER_OP]) + encode_term(self.operand) + encode_term(self.target)


@dataclass(frozen=True)
class _Unary(Term):
    operand: TermLike
    opcode = 0

    def encode(self) -> bytes:
        return bytes([self.opcode]) + encode_term(self.operand)


class SizeOf(_Unary):
    opcode = SIZE_OF_OP


class ObjectType(_Unary):
    opcode = OBJECT_TYPE_OP


class DerefOf(_Unary):
    opcode = DEREF_OF_OP


class LNot(_Unary):
    opcode = LNOT_OP


@dataclass(frozen=True)
class _Logical(Term):
    left: TermLike
    right: TermLike
    opcode = 0

    def encode(self) -> bytes:
        return bytes([self.opcode]) + encode_term(self.left) + encode_term(self.right)


class LAnd(_Logical):
    opcode = LAND_OP


class LOr(_Logical):
    opcode = LOR_OP


class LEqual(_Logical):
    opcode = LEQUAL_OP


class LGreater(_Logical):
    opcode = LGREATER_OP


class LLess(_Logical):
    opcode = LLESS_OP


def LNotEqual(left: TermLike, right: TermLike) -> LNot:
    """LNotEqual is LNot(LEqual), as ASL compilers emit it."""
    return LNot(LEqual(left, right))


def LLessEqual(left: TermLike, right: TermLike) -> LNot:
    return LNot(LGreater(left, right))


def LGreaterEqual(left: TermLike, right: TermLike) -> LNot:
    return LNot(LLess(left, right))


# ObjectType results (§19.6.96)
TYPE_INTEGER = 1
TYPE_STRING = 2
TYPE_BUFFER = 3
TYPE_PACKAGE = 4


EXTERNAL_OP = 0x15
METHOD_OBJ = 8  # ObjectType of a method (ACPI 6.5 §19.6.96)


@dataclass(frozen=True)
class External(Term):
    """External(path, type[, args]): declares an object another table defines (§19.6.49);
    the argument count lets a disassembler parse calls to it."""

    path: str
    object_type: int
    args: int = 0

    def encode(self) -> bytes:
        return bytes([EXTERNAL_OP]) + Path(self.path).encode() + bytes([self.object_type, self.args])


@dataclass(frozen=True)
class RawAml(Term):
    """Already-encoded AML, e.g. a device body received from elsewhere (dm-acpi type 1)."""

    data: bytes

    def encode(self) -> bytes:
        return self.data


def definition_block_body(*terms: TermLike) -> bytes:
    """The AML of a table body: its top-level terms, concatenated."""
    return _terms(terms)
